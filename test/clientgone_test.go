package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// TestClientGoneCancelsUpstream checks, through a real ferry, that a client that goes away
// in the middle of a slow HTTP/1.1 request has the upstream request cancelled promptly
// (the client-gone watch looks at a request within 15 ms of its start), on a fresh
// connection and on a kept-alive one that served quick requests first, and that the
// request is counted with nginx's 499.
func TestClientGoneCancelsUpstream(t *testing.T) {
	ferrytest.CheckLeaks(t)
	arrived := make(chan struct{}, 1)
	held := make(chan time.Duration, 1) // how long the backend's request lived; -1: never cancelled
	backend := startHTTPBackend(t, "api", func(mux *http.ServeMux) {
		mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			arrived <- struct{}{}
			select {
			case <-r.Context().Done():
				held <- time.Since(start)
			case <-time.After(ioTimeout):
				held <- -1
			}
		})
	})
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	cfg := ferrytest.WriteFile(t, t.TempDir(), "ferry.yaml", fmt.Sprintf(`service: e2e
admin: {address: %s}
outbound:
  - {upstream: api, address: %s}
upstreams:
  - name: api
    endpoints: [%s]
`, admin, out, backend.addr))
	f := startFerry(t, cfg, admin)
	f.WaitReady()

	// Far above the watch's 15 ms, far below the backend's ioTimeout: a machine shared with
	// other tests delays timers and scheduling by tens of milliseconds, not seconds.
	const within = time.Second
	for i, tc := range []struct {
		name  string
		quick int // quick requests on the connection first
	}{
		{name: "fresh connection"},
		{name: "after quick requests", quick: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", out, ioTimeout)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			br := bufio.NewReader(c)
			for range tc.quick {
				if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("quick request: status %d, want 200", resp.StatusCode)
				}
			}
			if _, err := io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: api\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-arrived:
			case <-time.After(ioTimeout):
				t.Fatal("the request never reached the backend")
			}
			_ = c.Close()
			d := <-held
			t.Logf("backend request cancelled %v after it arrived", d)
			if d < 0 || d > within {
				t.Errorf("the backend's request ended %v after it arrived, want at most %v (negative: never cancelled)", d, within)
			}
			want := float64(i + 1)
			ferrytest.Eventually(t, 5*time.Second, func() bool {
				return f.MetricWith("ferry_requests_total", `direction="outbound"`, `code="499"`) == want
			}, func() string {
				return fmt.Sprintf("ferry_requests_total{code=\"499\"} = %v, want %v",
					f.MetricWith("ferry_requests_total", `direction="outbound"`, `code="499"`), want)
			})
		})
	}
}
