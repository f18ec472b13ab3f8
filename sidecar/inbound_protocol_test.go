package sidecar

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestInboundTargetProtocol: an HTTP/2 caller reaches an application that speaks only
// HTTP/1.1 when the inbound says target_protocol: http1; with auto the request is
// forwarded as h2c, which such an application cannot answer.
func TestInboundTargetProtocol(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw %s", r.Proto)
	}))
	t.Cleanup(app.Close)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Transport: &http.Transport{Protocols: &p}}
	t.Cleanup(h2c.CloseIdleConnections)

	for _, tc := range []struct {
		protocol   string
		wantStatus int
		wantBody   string
	}{
		{"http1", http.StatusOK, "app saw HTTP/1.1"},
		{"auto", http.StatusBadGateway, ""},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			in, admin := freeAddr(t), freeAddr(t)
			s := New(Options{})
			drained(t, s)
			if err := s.Apply(parse(t, fmt.Sprintf("service: api\nadmin: {address: %s}\n"+
				"inbound: {address: %s, target: %s, target_protocol: %s}\n", admin, in, app.Listener.Addr(), tc.protocol))); err != nil {
				t.Fatalf("Apply() error = %v", err)
			}
			resp, err := h2c.Get("http://" + in + "/")
			if err != nil {
				t.Fatalf("GET over h2c: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.Proto != "HTTP/2.0" {
				t.Errorf("caller spoke %s, want HTTP/2.0", resp.Proto)
			}
			if resp.StatusCode != tc.wantStatus || (tc.wantBody != "" && string(body) != tc.wantBody) {
				t.Errorf("GET = %d %q, want %d %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
		})
	}
}
