package l7

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

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

// TestAcceptPeerPerConnection: the caller's identity and the X-Forwarded-Client-Cert made
// for it are computed once per connection and reused by its next requests, a forged header
// is removed from every one of them, and a change of this proxy's own identity (the By
// element) makes a new value.
func TestAcceptPeerPerConnection(t *testing.T) {
	now := time.Now()
	ca, err := mtls.NewCA(spiffeid.RequireTrustDomainFromString("mesh.local"), time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(svc string) *x509svid.SVID {
		svid, err := ca.Issue(mtls.IssueRequest{ID: spiffeid.RequireFromString("spiffe://mesh.local/svc/" + svc), TTL: time.Hour, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return svid
	}
	store := mtls.NewStore("test")
	publish := func(svc string) {
		m, err := mtls.NewMaterial("test", issue(svc), now, ca.Bundle(ca.TrustDomain()))
		if err != nil {
			t.Fatal(err)
		}
		store.Publish(m)
	}
	publish("api")
	caller := issue("web")
	ct := &connTLS{state: tls.ConnectionState{HandshakeComplete: true, PeerCertificates: caller.Certificates}}
	ctx := context.WithValue(context.Background(), connTLSKey{}, ct)
	h := &Handler{o: Options{MTLS: store}}

	request := func() (string, *state) {
		r := httptest.NewRequest("GET", "/", nil).WithContext(ctx)
		r.Header.Set(mtls.XFCCHeader, "URI=spiffe://mesh.local/svc/admin")
		st := &state{}
		h.acceptPeer(st, r)
		v := r.Header.Values(mtls.XFCCHeader)
		if len(v) != 1 {
			t.Fatalf("X-Forwarded-Client-Cert = %q, want one value", v)
		}
		return v[0], st
	}
	first, st := request()
	if st.peer != "spiffe://mesh.local/svc/web" || !strings.Contains(first, "URI=spiffe://mesh.local/svc/web") ||
		!strings.Contains(first, "By=spiffe://mesh.local/svc/api") || strings.Contains(first, "svc/admin") {
		t.Fatalf("first request: peer %q, X-Forwarded-Client-Cert %q", st.peer, first)
	}
	cached := ct.peer.Load()
	if cached == nil {
		t.Fatal("the connection has no cached peer after its first request")
	}
	second, st := request()
	if second != first || st.peer != "spiffe://mesh.local/svc/web" || ct.peer.Load() != cached {
		t.Errorf("second request: X-Forwarded-Client-Cert %q (want %q), peer %q, cache replaced: %v",
			second, first, st.peer, ct.peer.Load() != cached)
	}
	publish("api-v2")
	third, _ := request()
	if !strings.Contains(third, "By=spiffe://mesh.local/svc/api-v2") || !strings.Contains(third, "URI=spiffe://mesh.local/svc/web") {
		t.Errorf("after this proxy's identity changed: X-Forwarded-Client-Cert %q, want By=…/api-v2", third)
	}
}
