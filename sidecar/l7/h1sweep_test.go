package l7

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// sweepState is what a test reads of a server's sweeper.
func sweepState(s *H1Server) (listed, joins int, running bool) {
	s.sweep.mu.Lock()
	defer s.sweep.mu.Unlock()
	return len(s.sweep.conns), s.sweep.joins, s.sweep.running
}

// waitUnlisted waits until s's sweeper lists no connection and has stopped its timer.
func waitUnlisted(t *testing.T, s *H1Server, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		listed, _, running := sweepState(s)
		if listed == 0 && !running {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: listed = %d, running = %v, want 0, false", within, listed, running)
		}
		time.Sleep(time.Millisecond)
	}
}

// get sends a GET for path on c and reads the answer, reporting errors rather than
// failing the test (it runs on the test's helper goroutines).
func get(c net.Conn, br *bufio.Reader, path string) error {
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

// TestH1SweeperCostPerServer checks that the client-gone watch costs a constant number of
// timer callbacks per h1WatchDelay whatever the number of busy connections, and that a
// busy connection joins the sweeper's list once, not per request.
func TestH1SweeperCostPerServer(t *testing.T) {
	for _, n := range []int{1, 8, 48} {
		t.Run(fmt.Sprintf("%d connections", n), func(t *testing.T) {
			addr, s := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(500 * time.Microsecond)
				_, _ = io.WriteString(w, "ok")
			}), nil)
			var sweeps, maxListed atomic.Int64
			s.sweep.onSweep = func(listed int) {
				sweeps.Add(1)
				if int64(listed) > maxListed.Load() {
					maxListed.Store(int64(listed))
				}
			}
			conns := make([]net.Conn, n)
			for i := range conns {
				conns[i] = dial(t, addr)
			}
			const run = 300 * time.Millisecond
			var requests atomic.Int64
			errs := make(chan error, n)
			var wg sync.WaitGroup
			start := time.Now()
			for _, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					br := bufio.NewReader(c)
					for time.Since(start) < run {
						if err := get(c, br, "/"); err != nil {
							errs <- err
							return
						}
						requests.Add(1)
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			close(errs)
			for err := range errs {
				t.Fatalf("request: %v", err)
			}
			got := sweeps.Load()
			// Every h1SweepEvery: 2 per h1WatchDelay (timers only fire late), with
			// room for the last sweeps after the load.
			limit := 2*int64(elapsed/h1WatchDelay) + 4
			if got == 0 || got > limit {
				t.Errorf("sweeps = %d in %v with %d busy connections, want 1..%d (O(1) per h1WatchDelay)", got, elapsed, n, limit)
			}
			if int(maxListed.Load()) != n {
				t.Errorf("most connections listed at a sweep = %d, want %d", maxListed.Load(), n)
			}
			_, joins, _ := sweepState(s)
			if reqs := requests.Load(); int64(joins) > int64(n)+reqs/10 {
				t.Errorf("joins = %d for %d requests on %d busy connections, want at most %d (a join per idle→busy transition, not per request)",
					joins, reqs, n, int64(n)+reqs/10)
			}
			t.Logf("%d connections: %d requests, %d sweeps, %d joins in %v", n, requests.Load(), got, joins, elapsed)
		})
	}
}

// TestH1SweeperClientGoneLatency checks that a client that goes away during a request
// running 40 ms has the request's context cancelled within about 2×h1WatchDelay of the
// request's start (the sweeper guarantees 1.5×), whether the sweeper was idle, busy with
// other connections, or already listing the connection.
func TestH1SweeperClientGoneLatency(t *testing.T) {
	const runs = 40 * time.Millisecond
	const within = 2*h1WatchDelay + h1SweepEvery // 1.5×h1WatchDelay, and room for a late timer
	for _, tc := range []struct {
		name      string
		req       string
		quick     int // quick requests on the connection first (it is listed already)
		neighbors int // other connections kept busy meanwhile (the sweeper is running)
	}{
		{name: "idle sweeper", req: "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "after quick requests", req: "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", quick: 3},
		{name: "busy neighbors", req: "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n", neighbors: 4},
		{name: "body read", req: "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", neighbors: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type result struct {
				cancelled bool
				after     time.Duration
			}
			done := make(chan result, 1)
			started := make(chan struct{})
			addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/slow" {
					_, _ = io.WriteString(w, "ok")
					return
				}
				_, _ = io.ReadAll(r.Body)
				close(started)
				begin := requestStart(r)
				select {
				case <-r.Context().Done():
					done <- result{true, time.Since(begin)}
				case <-time.After(runs):
					done <- result{false, time.Since(begin)}
				}
			}), nil)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range tc.neighbors {
				nc := dial(t, addr)
				wg.Add(1)
				go func() {
					defer wg.Done()
					br := bufio.NewReader(nc)
					for {
						select {
						case <-stop:
							return
						default:
						}
						if get(nc, br, "/quick") != nil {
							return
						}
					}
				}()
			}
			defer wg.Wait()
			defer close(stop)
			c := dial(t, addr)
			br := bufio.NewReader(c)
			for range tc.quick {
				exchange(t, c, br, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
			}
			_, _ = io.WriteString(c, tc.req)
			<-started
			_ = c.Close()
			res := <-done
			if !res.cancelled {
				t.Fatalf("request context not cancelled within the request's %v after the client left", runs)
			}
			if res.after > within {
				t.Errorf("request context cancelled %v after the request's start, want at most %v", res.after, within)
			}
		})
	}
}

// TestH1SweeperListEmpties checks that connections leave the sweeper's list when they go
// idle, when they close and when they are hijacked, and that the sweeper's timer stops
// then.
func TestH1SweeperListEmpties(t *testing.T) {
	const within = 500 * time.Millisecond // the list empties within ~1.5×h1WatchDelay
	release := make(chan struct{})        // hijacking handlers hold their connection until then
	var hijackers sync.WaitGroup
	defer hijackers.Wait()
	defer close(release)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(2 * h1WatchDelay) // watched (background read) before it ends
		case "/hijack":
			hijackers.Add(1)
			defer hijackers.Done()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("Hijack() = %v, want nil", err)
				return
			}
			defer conn.Close()
			_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			// The handler keeps the connection: it must leave the list meanwhile.
			<-release
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	t.Run("idle", func(t *testing.T) {
		addr, s := startH1(t, ServerOptions{}, handler, nil)
		for i := range 20 {
			c := dial(t, addr)
			path := "/"
			if i%4 == 0 {
				path = "/slow"
			}
			if err := get(c, bufio.NewReader(c), path); err != nil {
				t.Fatal(err)
			}
			// c stays open, idle.
		}
		if _, joins, _ := sweepState(s); joins < 20 {
			t.Errorf("joins = %d after 20 connections' first request, want at least 20", joins)
		}
		waitUnlisted(t, s, within)
	})
	t.Run("closed", func(t *testing.T) {
		addr, s := startH1(t, ServerOptions{}, handler, nil)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					c, err := net.Dial("tcp", addr)
					if err != nil {
						errs <- err
						return
					}
					path := "/"
					if (w+i)%10 == 0 {
						path = "/slow"
					}
					err = get(c, bufio.NewReader(c), path)
					_ = c.Close()
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		waitUnlisted(t, s, within)
		s.sweep.mu.Lock()
		for i, c := range s.sweep.conns[:cap(s.sweep.conns)] {
			if c != nil {
				t.Errorf("sweeper's list keeps connection %d in its storage after it left", i)
			}
		}
		s.sweep.mu.Unlock()
	})
	t.Run("hijacked", func(t *testing.T) {
		addr, s := startH1(t, ServerOptions{}, handler, nil)
		for range 5 {
			c := dial(t, addr)
			if err := get(c, bufio.NewReader(c), "/hijack"); err != nil {
				t.Fatal(err)
			}
		}
		waitUnlisted(t, s, within) // the handlers still hold their connections
	})
}

// TestH1ConnLook checks the sweeper's decision for one connection in each watch state.
func TestH1ConnLook(t *testing.T) {
	now := time.Now()
	fresh, old := now.Add(-h1WatchDelay/2), now.Add(-h1WatchDelay)
	for _, tc := range []struct {
		name      string
		state     int
		bodyDone  bool
		reqStart  time.Time
		wantStay  bool
		wantState int
	}{
		{"request just started", h1Watching, true, fresh, true, h1Watching},
		{"request with a body, running h1WatchDelay", h1Watching, false, old, false, h1Waiting},
		{"between requests of a busy connection", h1Unwatched, false, fresh, true, h1Unwatched},
		{"idle", h1Unwatched, false, old, false, h1Unwatched},
		{"waiting for the body's end", h1Waiting, false, old, false, h1Waiting},
		{"reading", h1Reading, true, fresh, false, h1Reading},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &h1conn{wstate: tc.state, bodyDone: tc.bodyDone, reqStart: tc.reqStart, armed: true}
			if got := c.look(now); got != tc.wantStay {
				t.Errorf("look() = %v, want %v", got, tc.wantStay)
			}
			if c.wstate != tc.wantState {
				t.Errorf("wstate after look() = %d, want %d", c.wstate, tc.wantState)
			}
			if c.armed != tc.wantStay {
				t.Errorf("armed after look() = %v, want %v (listed)", c.armed, tc.wantStay)
			}
		})
	}
}
