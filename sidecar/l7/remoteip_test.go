package l7

import (
	"net/netip"
	"testing"
)

var remoteAddrs = []string{"127.0.0.1:54321", "10.1.2.3:0", "10.1.2.3:65535", "10.1.2.3:65536", "10.1.2.3:", "10.1.2.3",
	"10.1.2.3:08080", "10.1.2.3:+80", "[::1]:80", "[::ffff:10.1.2.3]:80", "::1:80", "[fe80::1%eth0]:80",
	"1.2.3.4%eth0:80", "01.2.3.4:80", "1.2.3.04:80", "1.2.3:80", "1.2.3.4.5:80", "0.0.0.0:1", "", ":80", "256.1.1.1:80", "pipe", "@", "10.1.2.3:80:80", "::ffff:1.2.3.4:80"}

func TestRemoteIP(t *testing.T) {
	for _, s := range remoteAddrs {
		ap, _ := netip.ParseAddrPort(s)
		if got, want := remoteIP(s), ap.Addr().Unmap(); got != want {
			t.Errorf("remoteIP(%q) = %v, want %v", s, got, want)
		}
	}
}

// FuzzRemoteIP checks remoteIP against netip.ParseAddrPort.
func FuzzRemoteIP(f *testing.F) {
	for _, s := range remoteAddrs {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, _ := netip.ParseAddrPort(s)
		if got, want := remoteIP(s), ap.Addr().Unmap(); got != want {
			t.Fatalf("remoteIP(%q) = %v, want %v", s, got, want)
		}
	})
}

// TestRemoteIPv4Fields checks remoteIP's one-pass IPv4 parse on malformed fields, each
// followed by a valid port, against netip.
func TestRemoteIPv4Fields(t *testing.T) {
	for _, s := range []string{"127.0.0.1", "0.0.0.0", "255.255.255.255", "256.0.0.1", "01.2.3.4", "1.2.3", "1.2.3.4.5",
		"1..3.4", ".1.2.3", "1.2.3.", "", "1.2.3.04", "10.0.0.0", "::1", "1.2.3.4%eth0", "1.2.3.1000"} {
		for _, port := range []string{":80", ":0", ":65535", ":65536", ":", ":080", ":8a"} {
			ap, _ := netip.ParseAddrPort(s + port)
			if got, want := remoteIP(s+port), ap.Addr().Unmap(); got != want {
				t.Errorf("remoteIP(%q) = %v, want %v", s+port, got, want)
			}
		}
	}
}
