package l7

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ferrymesh/ferry/mtls"
)

func TestClassifyTLS(t *testing.T) {
	want := spiffeid.RequireFromString("spiffe://mesh.local/svc/api")
	got := spiffeid.RequireFromString("spiffe://mesh.local/svc/web")
	tests := []struct {
		name        string
		err         error
		wantType    string
		wantDetails string
	}{
		{"identity mismatch in a dial", &DialError{Err: fmt.Errorf("tls: %w", &mtls.PeerError{Want: want, Got: got})},
			ErrTLSCertificateError, "want spiffe://mesh.local/svc/api, got spiffe://mesh.local/svc/web"},
		{"unverifiable certificate", &DialError{Err: &mtls.PeerError{Want: want, Err: errors.New("x509: unknown authority")}},
			ErrTLSCertificateError, "want spiffe://mesh.local/svc/api, got none: x509: unknown authority"},
		{"our certificate refused (TLS 1.3: on first read)", fmt.Errorf("read: %w", tls.AlertError(42)),
			ErrTLSAlertReceived, "upstream refused the TLS session: tls: bad certificate"},
		{"not a TLS error", errors.New("boom"), "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			lr := classifyTLS(tc.err)
			if tc.wantType == "" {
				if lr != nil {
					t.Fatalf("classifyTLS() = %+v, want nil", lr)
				}
				return
			}
			if lr == nil || lr.Type != tc.wantType || lr.Details != tc.wantDetails || lr.Status != 503 {
				t.Fatalf("classifyTLS() = %+v, want 503 %s %q", lr, tc.wantType, tc.wantDetails)
			}
		})
	}
	lr := classifyTLS(&DialError{Err: &mtls.PeerError{Want: want, Got: got}})
	if ps, want := lr.ProxyStatus(), `ferry; error=tls_certificate_error; details="want spiffe://mesh.local/svc/api, got spiffe://mesh.local/svc/web"`; ps != want {
		t.Errorf("ProxyStatus() = %s, want %s", ps, want)
	}
}

func TestAcceptPeerRemovesForgedXFCC(t *testing.T) {
	h := &Handler{}
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set(mtls.XFCCHeader, "URI=spiffe://mesh.local/svc/admin")
	st := &state{}
	h.acceptPeer(st, r)
	if v := r.Header.Values(mtls.XFCCHeader); len(v) != 0 || st.peer != "" {
		t.Errorf("plaintext request: X-Forwarded-Client-Cert = %q, peer = %q, want both removed/empty", v, st.peer)
	}
}
