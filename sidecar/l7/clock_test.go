package l7

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// TestH1SharedReadingDeadline: a round trip given the caller's clock reading (the base of
// its deadline) takes its connection and arms the deadline with it: the response timeout
// fires neither before the deadline nor much after it, on a new connection and on a
// pooled one.
func TestH1SharedReadingDeadline(t *testing.T) {
	addr, _ := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		for {
			req, err := readHead(br)
			if err != nil {
				return
			}
			if req.URL.Path != "/ok" {
				<-stop // never answers
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr := newTestTransport(t, TransportOptions{})
	const to = 100 * time.Millisecond
	send := func(path string) (time.Duration, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		now := time.Now()
		resp, err := tr.h1.roundTripUntil(req, now, now.Add(to), errResponseTimeout)
		el := time.Since(now)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return el, err
	}
	for _, tc := range []struct{ name, path string }{
		{"new connection", "/hang"},
		{"answered", "/ok"},
		{"pooled connection", "/hang"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			el, err := send(tc.path)
			if tc.path == "/ok" {
				if err != nil {
					t.Fatalf("RoundTrip() = %v", err)
				}
				return
			}
			if !errors.Is(err, errResponseTimeout) || el < to || el > to+150*time.Millisecond {
				t.Errorf("RoundTrip() = %v after %v, want %v after %v (a little more at most)", err, el, errResponseTimeout, to)
			}
		})
	}
}

// TestH1RetryReadsClockAgain: a retried round trip does not take its next connection with
// the reading the first try was given: that one is as old as the failed try, and a
// connection idle past the liveness check's bound would look idle for less and go unchecked.
// Here the first try waits 150 ms for nothing on one connection; the other, idle since
// before, has an unsolicited response waiting, which the check must find.
func TestH1RetryReadsClockAgain(t *testing.T) {
	var conns atomic.Int32
	release := make(chan struct{})
	addr, _ := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		id := conns.Add(1)
		for i := 0; ; i++ {
			if _, err := readHead(br); err != nil {
				return
			}
			switch {
			case id == 1 && i == 0:
				// The first connection's first answer waits for the second's request,
				// so that both are open at once.
				<-release
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none")
				time.Sleep(20 * time.Millisecond)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
			case id == 2 && i == 0:
				close(release)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
			case id == 2:
				time.Sleep(150 * time.Millisecond)
				return // closed without an answer: the request is sent again
			default:
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			}
		}
	})
	tr := newTestTransport(t, TransportOptions{})
	send := func() (*http.Response, error) {
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		now := time.Now()
		return tr.h1.roundTripUntil(req, now, now.Add(5*time.Second), errResponseTimeout)
	}
	// Two connections: the first one's answer comes once the second has its request.
	first := make(chan *http.Response, 1)
	go func() {
		resp, err := send()
		if err != nil {
			t.Error(err)
		}
		first <- resp
	}()
	for conns.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	second, err := send()
	if err != nil {
		t.Fatal(err)
	}
	r1 := <-first
	if r1 == nil {
		t.FailNow()
	}
	// Back in the pool in that order: the second connection is taken first (LIFO).
	for _, r := range []*http.Response{r1, second} {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	resp, err := send()
	if err != nil {
		t.Fatalf("RoundTrip() = %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("body = %q, want ok from a new connection (the first one was checked and closed)", b)
	}
	if got := conns.Load(); got != 3 {
		t.Errorf("connections = %d, want 3", got)
	}
}

// slowWriter is a ResponseWriter that takes pause after each body write it passes on, as
// a write to a client that does not read would. It holds the response back (see
// responseHolder) while the H1Server's response under it does.
type slowWriter struct {
	http.ResponseWriter
	pause time.Duration
}

func (w slowWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	time.Sleep(w.pause)
	return n, err
}

func (w slowWriter) holding() bool               { return w.ResponseWriter.(responseHolder).holding() }
func (w slowWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// TestForwardEndReading: the request's end (its duration, the response's Date) is the
// reading the pool took as the upstream connection went back, when nothing went to the
// client since; else ServeHTTP reads the clock. A reading taken before the upstream's
// body ended would cut the duration short, and so would the pool's reading after a write
// to the client that had to wait.
func TestForwardEndReading(t *testing.T) {
	const pause = 150 * time.Millisecond
	backend := rawBackend(t, func(r *http.Request) string {
		switch r.URL.Path {
		case "/late":
			time.Sleep(pause) // head and body together, late
			return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate"
		case "/large":
			// Larger than the H1Server holds back, read from the upstream in one go.
			return "HTTP/1.1 200 OK\r\nContent-Length: 8000\r\n\r\n" + strings.Repeat("x", 8000)
		}
		return "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmall"
	})
	var last atomic.Int64 // the last duration observed, in nanoseconds
	m := telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")
	m.Duration = prometheus.ObserverFunc(func(s float64) { last.Store(int64(s * float64(time.Second))) })
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend),
		Transport: newTestTransport(t, TransportOptions{}), RequestTimeout: 5 * time.Second, Metrics: m})
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow") != "" {
			w = slowWriter{w, pause}
		}
		h.ServeHTTP(w, r)
	}), nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		name     string
		path     string
		slow     bool
		min, max time.Duration // the duration observed
	}{
		{name: "upstream late", path: "/late", min: pause, max: 10 * pause},
		{name: "slow client write after the header went out", path: "/large", slow: true, min: pause, max: 10 * pause},
		// The writer says it held everything back: the pause after its write is not
		// counted (a fresh reading would count all of it), which shows the pool's reading
		// was taken (the H1Server's own writes to its buffer take no time).
		{name: "response held back", path: "/small", slow: true, min: 0, max: pause - 1},
		{name: "plain", path: "/small", min: 0, max: 10 * pause},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slow := ""
			if tc.slow {
				slow = "X-Slow: 1\r\n"
			}
			resp := exchange(t, c, br, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: test\r\n%s\r\n", tc.path, slow))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if d := time.Duration(last.Load()); d < tc.min || d > tc.max {
				t.Errorf("duration = %v, want [%v, %v]", d, tc.min, tc.max)
			}
		})
	}
}
