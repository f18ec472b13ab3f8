package l7

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countPeeks counts the liveness checks tr's HTTP/1.1 pool makes. Call it before tr
// serves any request.
func countPeeks(tr *Transport) *atomic.Int64 {
	var n atomic.Int64
	tr.h1.onPeek = func() { n.Add(1) }
	return &n
}

// TestH1PeekOnlyPastBound: an idle connection is checked with a system call before a
// request that is not replayable when it has been idle for peekAfter, before a replayable
// one only past peekAfterReplayable.
func TestH1PeekOnlyPastBound(t *testing.T) {
	addr, _ := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	}), nil)
	for _, tc := range []struct {
		name   string
		method string
		body   string
		header string
		idle   time.Duration // before each request but the first
		n      int           // requests
		peeks  int64         // liveness checks made
	}{
		{name: "GETs back to back", method: "GET", n: 20, peeks: 0},
		{name: "GETs 5ms apart", method: "GET", idle: 5 * time.Millisecond, n: 5, peeks: 0},
		{name: "HEAD 5ms apart", method: "HEAD", idle: 5 * time.Millisecond, n: 3, peeks: 0},
		{name: "POST with Idempotency-Key 5ms apart", method: "POST", header: "Idempotency-Key", idle: 5 * time.Millisecond, n: 3, peeks: 0},
		{name: "GET idle past the replayable bound", method: "GET", idle: 120 * time.Millisecond, n: 2, peeks: 1},
		{name: "POST 5ms apart", method: "POST", body: "x", idle: 5 * time.Millisecond, n: 3, peeks: 2},
		{name: "DELETE 5ms apart", method: "DELETE", idle: 5 * time.Millisecond, n: 3, peeks: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 1})
			peeks := countPeeks(tr)
			// The bound that applies to these requests (replayable: GET and HEAD, and
			// requests with an idempotency key), and how many of the idle times, as
			// measured from here, are surely past it (lo) or may be (hi): a stall of the
			// machine makes a check due that the case does not count on, and must not
			// fail the test.
			// The bounds are the documented 1 ms and 100 ms, not the constants, so that
			// changing a constant fails the test rather than moves its expectations.
			bound := time.Millisecond
			if tc.method == "GET" || tc.method == "HEAD" || tc.header != "" {
				bound = 100 * time.Millisecond
			}
			var prevBefore, last time.Time
			var lo, hi int64
			for i := range tc.n {
				if i > 0 {
					time.Sleep(tc.idle)
				}
				var body io.Reader
				if tc.body != "" {
					body = strings.NewReader(tc.body)
				}
				mod := func(r *http.Request) {
					r.GetBody = nil // as the reverse proxy's requests
					if tc.header != "" {
						r.Header.Set(tc.header, "k")
					}
				}
				before := time.Now()
				do(t, tr, tc.method, "http://"+addr+"/", body, mod)
				after := time.Now()
				if i > 0 {
					// The connection went back to the pool during the previous request
					// (between prevBefore and last) and was taken during this one (between
					// before and after).
					if before.Sub(last) >= bound {
						lo++
					}
					if after.Sub(prevBefore) >= bound {
						hi++
					}
				}
				prevBefore, last = before, after
			}
			if lo != tc.peeks || hi != tc.peeks {
				// The machine stalled: hold the count to what the idle times allow.
				t.Logf("idle times allow %d to %d checks (the case counts on %d)", lo, hi, tc.peeks)
				if got := peeks.Load(); got < lo || got > hi {
					t.Errorf("liveness checks = %d, want %d to %d", got, lo, hi)
				}
			} else if got := peeks.Load(); got != tc.peeks {
				t.Errorf("liveness checks = %d, want %d", got, tc.peeks)
			}
		})
	}
}

// TestH1ClosedWithinReplayableBound: the upstream closed a pooled connection 5ms ago. A
// GET takes it unchecked, finds it closed before any response byte and is sent again on a
// new connection, where the upstream sees it once; a POST whose body cannot be made again
// is checked first and goes to a new connection at once.
func TestH1ClosedWithinReplayableBound(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		body   string
		peeks  int64
	}{
		{name: "GET retried", method: "GET", peeks: 0},
		{name: "POST checked", method: "POST", body: "x", peeks: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int32
			closed := make(chan struct{}, 4)
			// One request per connection, answered as if kept alive, then the connection
			// is closed.
			addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
				req, err := readHead(bufio.NewReader(c))
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				requests.Add(1)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				c.Close()
				closed <- struct{}{}
			})
			tr := newTestTransport(t, TransportOptions{})
			peeks := countPeeks(tr)
			noReplay := func(r *http.Request) { r.GetBody = nil }
			do(t, tr, tc.method, "http://"+addr+"/", nil, noReplay)
			<-closed
			time.Sleep(5 * time.Millisecond)
			start := time.Now()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			if _, got := do(t, tr, tc.method, "http://"+addr+"/", body, noReplay); got != "ok" {
				t.Errorf("second request = %q, want ok", got)
			}
			if got := ln.n.Load(); got != 2 {
				t.Errorf("connections = %d, want 2", got)
			}
			if got := requests.Load(); got != 2 {
				t.Errorf("requests the upstream read = %d, want 2 (one per connection)", got)
			}
			if got := peeks.Load(); got != tc.peeks && time.Since(start) < peekAfterReplayable {
				t.Errorf("liveness checks = %d, want %d", got, tc.peeks)
			}
		})
	}
}
