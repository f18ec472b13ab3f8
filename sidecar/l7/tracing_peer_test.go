package l7

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
)

// identities is an IdentityLookup from a map.
type identities map[string]string

func (m identities) IdentityOf(addr string) string { return m[addr] }

// TestPeerIdentity checks the SPIFFE ID a client span records for an endpoint that
// answered: the one discovery gave the endpoint, else the upstream's, and none without
// mesh TLS.
func TestPeerIdentity(t *testing.T) {
	api := spiffeid.RequireFromString("spiffe://mesh.local/svc/api")
	src := mtls.NewStore("test")
	for _, tc := range []struct {
		name string
		tls  UpstreamTLS
		addr string
		want string
	}{
		{"plaintext", UpstreamTLS{}, "10.0.0.1:80", ""},
		{"simple TLS", UpstreamTLS{Simple: true}, "10.0.0.1:443", ""},
		{"mesh, upstream identity", UpstreamTLS{Source: src, Expected: api}, "10.0.0.1:21000", api.String()},
		{"mesh, identity from discovery", UpstreamTLS{Source: src, Expected: api,
			Identities: identities{"10.0.0.2:21000": "spiffe://dc1.consul/ns/default/dc/dc1/svc/api"}},
			"10.0.0.2:21000", "spiffe://dc1.consul/ns/default/dc/dc1/svc/api"},
		{"mesh, discovery silent on this endpoint", UpstreamTLS{Source: src, Expected: api,
			Identities: identities{"10.0.0.2:21000": "spiffe://x/y"}}, "10.0.0.3:21000", api.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tg := &target{transport: NewTransport(TransportOptions{TLS: tc.tls})}
			if got := tg.peerOf(tc.addr); got != tc.want {
				t.Errorf("peerOf(%s) = %q, want %q", tc.addr, got, tc.want)
			}
		})
	}
	if got := (&target{}).peerOf("10.0.0.1:80"); got != "" {
		t.Errorf("peerOf without a transport = %q, want none", got)
	}
}
