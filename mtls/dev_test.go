package mtls

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestDevSourceIssuedFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, testTD)
	if err := ca.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	s1 := issueSVID(t, ca, "api")
	if _, err := WriteSVID(dir, "api", s1, ca.Bundle(spiffeid.TrustDomain{})); err != nil {
		t.Fatal(err)
	}
	src, err := NewDevSource(DevOptions{Dir: dir, Service: "api", Debounce: 20 * time.Millisecond})
	if err != nil {
		t.Fatalf("NewDevSource() error = %v", err)
	}
	defer src.Close()
	m, err := src.Current()
	if err != nil {
		t.Fatalf("Current() error = %v", err)
	}
	if m.Source() != "dev" || currentSerial(src) != FormatSerial(s1.Certificates[0].SerialNumber) {
		t.Errorf("Current() = serial %s from %s, want the issued %s from dev", currentSerial(src), m.Source(), FormatSerial(s1.Certificates[0].SerialNumber))
	}
	// Issuing again rotates.
	s2 := issueSVID(t, ca, "api")
	if _, err := WriteSVID(dir, "api", s2, ca.Bundle(spiffeid.TrustDomain{})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the re-issued certificate", func() bool { return currentSerial(src) == FormatSerial(s2.Certificates[0].SerialNumber) })
}

func TestDevSourceFallsBackToCAFile(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, testTD)
	if err := ca.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	if _, err := WriteSVID(dir, "api", issueSVID(t, ca, "api"), ca.Bundle(spiffeid.TrustDomain{})); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, BundleFile)); err != nil {
		t.Fatal(err)
	}
	src, err := NewDevSource(DevOptions{Dir: dir, Service: "api"})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.Current(); err != nil {
		t.Errorf("Current() with only ca.pem as the bundle error = %v", err)
	}
}

// TestDevSourceSelfIssued: with only the CA in the directory, the source issues its own
// SVID and renews it at half its lifetime.
func TestDevSourceSelfIssued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		ca, err := NewCA(testTD, DefaultCATTL, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := ca.Write(dir, false); err != nil {
			t.Fatal(err)
		}
		src, err := NewDevSource(DevOptions{Dir: dir, Service: "web", TTL: time.Hour})
		if err != nil {
			t.Fatalf("NewDevSource() error = %v", err)
		}
		defer src.Close()
		m1, err := src.Current()
		if err != nil {
			t.Fatalf("Current() error = %v", err)
		}
		if m1.ID().String() != "spiffe://mesh.local/svc/web" || m1.Source() != "dev" {
			t.Errorf("self-issued ID = %s from %s, want spiffe://mesh.local/svc/web from dev", m1.ID(), m1.Source())
		}
		if life := time.Until(m1.NotAfter()); life != time.Hour {
			t.Errorf("self-issued lifetime = %s, want 1h", life)
		}
		time.Sleep(29 * time.Minute)
		synctest.Wait()
		if m, _ := src.Current(); m != m1 {
			t.Error("renewed before half the lifetime")
		}
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		m2, _ := src.Current()
		if m2 == m1 || m2.Leaf().SerialNumber.Cmp(m1.Leaf().SerialNumber) == 0 {
			t.Fatal("not renewed after half the lifetime")
		}
		if m2.Valid(time.Now()) != nil || m2.NotAfter().Sub(m2.LoadedAt()) != time.Hour || m2.LoadedAt().Sub(m1.LoadedAt()) != 30*time.Minute {
			t.Errorf("renewed at %s until %s, want at 30m for an hour", m2.LoadedAt(), m2.NotAfter())
		}
		if st := src.Status(); st.Updates != 2 {
			t.Errorf("Status().Updates = %d, want 2", st.Updates)
		}

		// A broken CA is reported and retried every 30s; the current certificate stays.
		if err := os.WriteFile(filepath.Join(dir, CACertFile), []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
		time.Sleep(29*time.Minute + 45*time.Second) // renewal due at 1h00m, retried at 1h00m30s
		synctest.Wait()
		if st := src.Status(); st.Failures != 2 || !strings.Contains(st.LastError, "PEM") {
			t.Errorf("Status() = %+v, want two failures about the CA's PEM", st)
		}
		if m, _ := src.Current(); m != m2 {
			t.Error("a failed renewal replaced the current certificate")
		}
		if err := ca.Write(dir, true); err != nil {
			t.Fatal(err)
		}
		time.Sleep(devRetry + time.Second)
		synctest.Wait()
		if m, _ := src.Current(); m == m2 {
			t.Error("no renewal after the CA was repaired")
		}
	})
}

func TestDevSourceOptions(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, testTD)
	if err := ca.Write(dir, false); err != nil {
		t.Fatal(err)
	}
	consul := spiffeid.RequireFromString("spiffe://mesh.local/ns/default/dc/dc1/svc/web")
	src, err := NewDevSource(DevOptions{Dir: dir, Service: "web", ID: consul})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := src.Current(); err != nil || m.ID() != consul {
		t.Errorf("Current() with ID set = %v, %v, want %s", m, err, consul)
	}
	_ = src.Close()

	src, err = NewDevSource(DevOptions{Dir: dir, Service: "web", TrustDomain: spiffeid.RequireTrustDomainFromString("other.org")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.Current(); !errors.Is(err, ErrNoCertificate) || !strings.Contains(err.Error(), `not "other.org"`) {
		t.Errorf("Current() with a trust-domain mismatch error = %v, want ErrNoCertificate naming other.org", err)
	}
	_ = src.Close()

	tests := []struct {
		name    string
		opts    DevOptions
		wantErr string
	}{
		{"no dir", DevOptions{Service: "web"}, "needs a directory"},
		{"path as service", DevOptions{Dir: dir, Service: "../web"}, "invalid service name"},
		{"empty dir", DevOptions{Dir: t.TempDir(), Service: "web"}, "ferry ca create"},
		{"negative ttl", DevOptions{Dir: dir, Service: "web", TTL: -time.Second}, "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewDevSource(tt.opts); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("NewDevSource() error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}
