package l7

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestH1RoundTripUntil checks the response-header deadline of Ferry's HTTP/1.1 pool,
// enforced with a timer of the connection's: a deadline met leaves the connection
// reusable and its timer harmless to later requests; a deadline missed fails the round
// trip with errResponseTimeout and the connection is not reused; a deadline already
// passed fails at once.
func TestH1RoundTripUntil(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		_, _ = io.WriteString(w, "ok")
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	tr := NewTransport(TransportOptions{Protocol: ProtocolHTTP1, ConnectTimeout: time.Second, IdleTimeout: time.Minute})
	defer tr.CloseIdleConnections()
	get := func(path string, deadline time.Time) (string, error) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := tr.h1.roundTripUntil(req, time.Time{}, deadline, errResponseTimeout)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}

	for i := range 5 {
		if body, err := get("/", time.Now().Add(50*time.Millisecond)); err != nil || body != "ok" {
			t.Fatalf("request %d: get() = %q, %v, want \"ok\", nil", i, body, err)
		}
	}
	// Past every deadline armed above: a timer left running would have aborted the
	// connection by now.
	time.Sleep(100 * time.Millisecond)
	if body, err := get("/", time.Time{}); err != nil || body != "ok" {
		t.Fatalf("get() without deadline = %q, %v, want \"ok\", nil", body, err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("connections = %d, want 1 (reused throughout)", n)
	}

	start := time.Now()
	if _, err := get("/slow", time.Now().Add(50*time.Millisecond)); !errors.Is(err, errResponseTimeout) {
		t.Fatalf("get(/slow) error = %v, want %v", err, errResponseTimeout)
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("get(/slow) took %v, want the deadline's 50ms", d)
	}
	if body, err := get("/", time.Now().Add(time.Second)); err != nil || body != "ok" {
		t.Fatalf("get() after a timeout = %q, %v, want \"ok\", nil", body, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("connections = %d, want 2 (the timed-out one not reused)", n)
	}

	if _, err := get("/", time.Now().Add(-time.Millisecond)); !errors.Is(err, errResponseTimeout) {
		t.Errorf("get() past its deadline error = %v, want %v", err, errResponseTimeout)
	}
}
