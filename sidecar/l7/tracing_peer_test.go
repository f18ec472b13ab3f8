package l7

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
)

// TestAttemptResultPeerIdentity checks that a client span records the SPIFFE ID the
// upstream sidecar presented, and nothing for plaintext or for a certificate without one.
func TestAttemptResultPeerIdentity(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	ca, err := mtls.NewCA(td, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/svc/api")
	svid, err := ca.Issue(mtls.IssueRequest{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	web := httptest.NewUnstartedServer(http.NotFoundHandler())
	web.StartTLS()
	defer web.Close()
	for _, tc := range []struct {
		name string
		tls  *tls.ConnectionState
		want string
	}{
		{"mesh mTLS", &tls.ConnectionState{PeerCertificates: svid.Certificates}, id.String()},
		{"plaintext", nil, ""},
		{"server TLS without a SPIFFE ID", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{web.Certificate()}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, TLS: tc.tls}
			if got := attemptResult("127.0.0.1:1", resp, nil).PeerID; got != tc.want {
				t.Errorf("attemptResult().PeerID = %q, want %q", got, tc.want)
			}
		})
	}
}
