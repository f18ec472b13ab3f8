package l7

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/circuit"
)

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startCounted serves h over HTTP/1.1 and counts the connections accepted.
func startCounted(t *testing.T, h http.Handler, mod func(*http.Server)) (string, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &http.Server{Handler: h}
	if mod != nil {
		mod(srv)
	}
	go func() { _ = srv.Serve(cl) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), cl
}

// startRaw runs serve on every connection accepted on a loopback port.
func startRaw(t *testing.T, serve func(c net.Conn, stop <-chan struct{})) (string, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	stop := make(chan struct{})
	go func() {
		for {
			c, err := cl.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c, stop)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(stop)
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String(), cl
}

// readHead reads a request head from br.
func readHead(br *bufio.Reader) (*http.Request, error) { return http.ReadRequest(br) }

func newTestTransport(t *testing.T, o TransportOptions) *Transport {
	t.Helper()
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = time.Minute
	}
	o.Protocol = ProtocolHTTP1
	tr := NewTransport(o)
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

// do sends one request through tr and returns the response with its body read.
func do(t *testing.T, tr *Transport, method, url string, body io.Reader, mod func(*http.Request)) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(req)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip(%s %s) = %v", method, url, err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of %s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp, string(b)
}

func TestH1KeepAliveReuse(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			_, _ = io.WriteString(w, "hello")
		case "/chunked":
			_, _ = io.WriteString(w, "hel")
			http.NewResponseController(w).Flush()
			_, _ = io.WriteString(w, "lo")
		case "/empty":
		case "/204":
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.WriteHeader(http.StatusNotModified)
		case "/big":
			_, _ = w.Write(bytes.Repeat([]byte("x"), 100<<10))
		}
	})
	for _, tc := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/length", 200, "hello"},
		{"GET", "/chunked", 200, "hello"},
		{"GET", "/empty", 200, ""},
		{"HEAD", "/length", 200, ""},
		{"GET", "/204", 204, ""},
		{"GET", "/304", 304, ""},
		{"GET", "/big", 200, strings.Repeat("x", 100<<10)},
		{"DELETE", "/length", 200, "hello"},
		{"POST", "/length", 200, "hello"},
	} {
		t.Run(tc.method+tc.path, func(t *testing.T) {
			addr, ln := startCounted(t, h, nil)
			tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 4})
			for i := range 5 {
				resp, body := do(t, tr, tc.method, "http://"+addr+tc.path, nil, nil)
				if resp.StatusCode != tc.status || body != tc.body {
					t.Fatalf("request %d: RoundTrip() = %d %.20q, want %d %.20q", i, resp.StatusCode, body, tc.status, tc.body)
				}
			}
			if got := ln.n.Load(); got != 1 {
				t.Errorf("connections accepted for 5 sequential requests = %d, want 1", got)
			}
		})
	}
}

func TestH1LIFOAndMaxIdle(t *testing.T) {
	var gate sync.WaitGroup
	gate.Add(3)
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			gate.Done()
			gate.Wait() // three requests in flight at once: three connections
		}
		w.Header().Set("X-Remote", r.RemoteAddr)
		_, _ = io.WriteString(w, "ok")
	}), nil)
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 2})
	resps := make([]*http.Response, 3)
	var wg sync.WaitGroup
	for i := range resps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", "http://"+addr+"/hold", nil)
			resp, err := tr.RoundTrip(req)
			if err != nil {
				t.Error(err)
				return
			}
			resps[i] = resp
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Finish them in order: the pool keeps the first two and closes the third; the last
	// one kept is the first one taken again.
	var remotes []string
	for _, r := range resps {
		remotes = append(remotes, r.Header.Get("X-Remote"))
		_, _ = io.ReadAll(r.Body)
		r.Body.Close()
	}
	if got := ln.n.Load(); got != 3 {
		t.Fatalf("connections = %d, want 3", got)
	}
	h := tr.h1.host(addr)
	h.mu.Lock()
	idle := len(h.idle)
	h.mu.Unlock()
	if idle != 2 {
		t.Errorf("idle connections = %d, want 2 (MaxIdleConnsPerHost)", idle)
	}
	// Hold each response (its body unread) so that the next request takes another one.
	for i, want := range []string{remotes[1], remotes[0], "new"} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/next", nil)
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got := resp.Header.Get("X-Remote")
		if want == "new" {
			if got == remotes[0] || got == remotes[1] || ln.n.Load() != 4 {
				t.Errorf("request %d went out from %s on connection %d, want a new one", i, got, ln.n.Load())
			}
		} else if got != want {
			t.Errorf("request %d went out from %s, want %s (LIFO)", i, got, want)
		}
	}
}

func TestH1IdleTimeout(t *testing.T) {
	closed := make(chan struct{}, 4)
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), func(s *http.Server) {
		s.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed {
				closed <- struct{}{}
			}
		}
	})
	tr := newTestTransport(t, TransportOptions{IdleTimeout: 100 * time.Millisecond})
	start := time.Now()
	do(t, tr, "GET", "http://"+addr+"/", nil, nil)
	select {
	case <-closed:
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Errorf("idle connection closed after %v, before IdleTimeout", d)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("idle connection still open 3s after IdleTimeout (100ms)")
	}
	if _, ok := tr.h1.hosts.Load(addr); ok {
		t.Error("an endpoint with no idle connection left is still in the pool")
	}
	do(t, tr, "GET", "http://"+addr+"/", nil, nil)
	if got := ln.n.Load(); got != 2 {
		t.Errorf("connections = %d, want 2 (a new one after the idle timeout)", got)
	}
}

func TestH1ConnectionClose(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		mod     func(*http.Request)
		want    string
	}{
		{"request Close", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, r.Header.Get("Connection")+fmt.Sprint(r.Close))
		}, func(r *http.Request) { r.Close = true }, "closetrue"},
		{"request header", func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, fmt.Sprint(r.Close))
		}, func(r *http.Request) { r.Header.Set("Connection", "close") }, "true"},
		{"response header", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			_, _ = io.WriteString(w, "bye")
		}, nil, "bye"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, ln := startCounted(t, tc.handler, nil)
			tr := newTestTransport(t, TransportOptions{})
			for range 2 {
				if _, body := do(t, tr, "GET", "http://"+addr+"/", nil, tc.mod); body != tc.want {
					t.Errorf("body = %q, want %q", body, tc.want)
				}
			}
			if got := ln.n.Load(); got != 2 {
				t.Errorf("connections = %d, want 2 (none reused)", got)
			}
		})
	}
	t.Run("HTTP/1.0 upstream", func(t *testing.T) {
		addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
			br := bufio.NewReader(c)
			if _, err := readHead(br); err != nil {
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close")
		})
		tr := newTestTransport(t, TransportOptions{})
		for range 2 {
			resp, body := do(t, tr, "GET", "http://"+addr+"/", nil, nil)
			if resp.ProtoMinor != 0 || body != "until close" {
				t.Errorf("RoundTrip() = %s %q, want HTTP/1.0 %q", resp.Proto, body, "until close")
			}
		}
		if got := ln.n.Load(); got != 2 {
			t.Errorf("connections = %d, want 2 (HTTP/1.0 is not kept alive)", got)
		}
	})
}

func TestH1BodiesAndTrailers(t *testing.T) {
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Resp-Sum")
		fmt.Fprintf(w, "%s|cl=%d|te=%v|trailer=%s", b, r.ContentLength, r.TransferEncoding, r.Trailer.Get("X-Req-Sum"))
		http.NewResponseController(w).Flush() // chunked response
		w.Header().Set("X-Resp-Sum", "42")
	}), nil)
	tr := newTestTransport(t, TransportOptions{})
	for _, tc := range []struct {
		name string
		body func() io.Reader
		mod  func(*http.Request)
		want string
	}{
		{"content-length", func() io.Reader { return strings.NewReader("abc") }, nil, "abc|cl=3|te=[]|trailer="},
		{"chunked", func() io.Reader { return io.MultiReader(strings.NewReader("ab"), strings.NewReader("cd")) },
			func(r *http.Request) { r.ContentLength = -1 }, "abcd|cl=-1|te=[chunked]|trailer="},
		{"chunked with trailers", func() io.Reader { return strings.NewReader("xyz") },
			func(r *http.Request) {
				r.ContentLength = -1
				r.Trailer = http.Header{"X-Req-Sum": {"7"}}
			}, "xyz|cl=-1|te=[chunked]|trailer=7"},
		{"large", func() io.Reader { return strings.NewReader(strings.Repeat("b", 1<<20)) }, nil,
			strings.Repeat("b", 1<<20) + fmt.Sprintf("|cl=%d|te=[]|trailer=", 1<<20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := do(t, tr, "POST", "http://"+addr+"/", tc.body(), tc.mod)
			if body != tc.want {
				t.Errorf("body = %.60q, want %.60q", body, tc.want)
			}
			if got := resp.Trailer.Get("X-Resp-Sum"); got != "42" {
				t.Errorf("response trailer X-Resp-Sum = %q, want 42", got)
			}
		})
	}
	if got := ln.n.Load(); got != 1 {
		t.Errorf("connections = %d, want 1 (every request and response framing keeps it alive)", got)
	}
}

// TestH1EarlyResponse: an upstream answering before it read the request body, and not
// reading it at all. The round trip must not wait for the body to be written, and the
// connection, whose request was not sent in full, must not be reused.
func TestH1EarlyResponse(t *testing.T) {
	addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		for {
			req, err := readHead(br)
			if err != nil {
				return
			}
			if req.Method == "POST" {
				_, _ = io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\n\r\ntoo much")
				<-stop // never reads the body
				return
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	tr := newTestTransport(t, TransportOptions{})
	start := time.Now()
	resp, body := do(t, tr, "POST", "http://"+addr+"/", bytes.NewReader(make([]byte, 64<<20)), nil)
	if resp.StatusCode != 413 || body != "too much" {
		t.Errorf("RoundTrip() = %d %q, want 413 %q", resp.StatusCode, body, "too much")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("early response took %v", d)
	}
	if _, body := do(t, tr, "GET", "http://"+addr+"/", nil, nil); body != "ok" {
		t.Errorf("next request = %q, want ok", body)
	}
	if got := ln.n.Load(); got != 2 {
		t.Errorf("connections = %d, want 2 (the one with an unsent body is closed)", got)
	}
}

func TestH1InformationalResponses(t *testing.T) {
	addr, _ := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		req, err := readHead(br)
		if err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\n")
		b, _ := io.ReadAll(req.Body)
		_, _ = io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
	})
	tr := newTestTransport(t, TransportOptions{})
	var got []string
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		got = append(got, fmt.Sprintf("%d %s", code, h.Get("Link")))
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "POST", "http://"+addr+"/", strings.NewReader("body"))
	req.Header.Set("Expect", "100-continue")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := []string{"100 ", "103 </style.css>; rel=preload"}; fmt.Sprint(got) != fmt.Sprint(want) || string(b) != "body" {
		t.Errorf("Got1xxResponse saw %q and the body %q, want %q and %q", got, b, want, "body")
	}
}

// TestH1EarlyHintsThroughHandler: a 103 from the upstream reaches the client through the
// reverse proxy.
func TestH1EarlyHintsThroughHandler(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</a.js>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		_, _ = io.WriteString(w, "done")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	var codes []int
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
		codes = append(codes, code)
		return nil
	}}
	req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", "http://"+proxy+"/", nil)
	resp, err := client(false).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if fmt.Sprint(codes) != "[103]" || string(b) != "done" {
		t.Errorf("client saw 1xx %v and %q, want [103] and done", codes, b)
	}
}

func TestH1UpgradeLeavesThePool(t *testing.T) {
	addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		req, err := readHead(br)
		if err != nil {
			return
		}
		if req.Header.Get("Upgrade") == "" {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nhello ")
		_, _ = io.Copy(c, br)
	})
	tr := newTestTransport(t, TransportOptions{})
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "echo")
	resp, err := tr.RoundTrip(req)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("RoundTrip() = %v, %v; want 101", resp, err)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		t.Fatalf("101 body is a %T, want an io.ReadWriteCloser", resp.Body)
	}
	_, _ = io.WriteString(rwc, "world")
	buf := make([]byte, len("hello world"))
	if _, err := io.ReadFull(rwc, buf); err != nil || string(buf) != "hello world" {
		t.Errorf("upgraded connection read %q, %v; want %q", buf, err, "hello world")
	}
	rwc.Close()
	do(t, tr, "GET", "http://"+addr+"/", nil, nil)
	if got := ln.n.Load(); got != 2 {
		t.Errorf("connections = %d, want 2 (the upgraded one left the pool)", got)
	}
}

var errTestCause = errors.New("test cancel cause")

// TestH1Cancellation: cancelling the request's context ends a round trip blocked at any
// step at once, with the cause, as http.Transport reports it.
func TestH1Cancellation(t *testing.T) {
	// An endpoint that accepts but never completes a TLS handshake: the dial blocks.
	tlsAddr, _ := startRaw(t, func(c net.Conn, stop <-chan struct{}) { <-stop })
	addr, _ := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
		br := bufio.NewReader(c)
		req, err := readHead(br)
		if err != nil {
			return
		}
		switch req.URL.Path {
		case "/headers": // never answers
		case "/body":
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
		case "/write": // never reads the body, never answers
		}
		<-stop
	})
	for _, tc := range []struct {
		name     string
		tls      bool
		path     string
		body     io.Reader
		readBody bool
	}{
		{"dial", true, "/", nil, false},
		{"write", false, "/write", bytes.NewReader(make([]byte, 64<<20)), false},
		{"header wait", false, "/headers", nil, false},
		{"body read", false, "/body", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := TransportOptions{ConnectTimeout: 10 * time.Second}
			target := addr
			if tc.tls {
				o.TLS = UpstreamTLS{Simple: true}
				target = tlsAddr
			}
			tr := newTestTransport(t, o)
			ctx, cancel := context.WithCancelCause(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+target+tc.path, tc.body)
			time.AfterFunc(100*time.Millisecond, func() { cancel(errTestCause) })
			start := time.Now()
			resp, err := tr.RoundTrip(req)
			if tc.readBody {
				if err != nil {
					t.Fatal(err)
				}
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			if !errors.Is(err, errTestCause) {
				t.Errorf("error = %v, want the cancellation cause", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("cancellation took %v", d)
			}
		})
	}
}

// TestH1UpstreamClosesIdleConnections: an upstream with a short keep-alive timeout. The
// next request after it must not fail.
func TestH1UpstreamClosesIdleConnections(t *testing.T) {
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = io.WriteString(w, "ok"+string(b))
	}), func(s *http.Server) { s.IdleTimeout = 50 * time.Millisecond })
	tr := newTestTransport(t, TransportOptions{})
	for i, m := range []string{"GET", "POST", "GET"} {
		var body io.Reader
		if m == "POST" {
			body = strings.NewReader("!")
		}
		// As the reverse proxy's requests, the body cannot be made again: the request
		// must go out on a connection known to be open.
		noReplay := func(r *http.Request) { r.GetBody = nil }
		if _, got := do(t, tr, m, "http://"+addr+"/", body, noReplay); got != "ok" && got != "ok!" {
			t.Errorf("request %d = %q", i, got)
		}
		time.Sleep(120 * time.Millisecond)
	}
	if got := ln.n.Load(); got != 3 {
		t.Errorf("connections = %d, want 3", got)
	}
}

// TestH1RetryOnReusedConnection: the upstream closes a kept-alive connection as the next
// request arrives (after the liveness check). A replayable request is sent again on a new
// connection, once; one that is not is reported.
func TestH1RetryOnReusedConnection(t *testing.T) {
	for _, tc := range []struct {
		name    string
		method  string
		body    string
		header  string
		wantErr bool
	}{
		{"GET", "GET", "", "", false},
		{"HEAD", "HEAD", "", "", false},
		{"POST without key", "POST", "x", "", true},
		{"POST with Idempotency-Key", "POST", "", "Idempotency-Key", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
				br := bufio.NewReader(c)
				// One request per connection, then the next one is read and dropped.
				req, err := readHead(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				if req.Method == "HEAD" {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
				} else {
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				}
				_, _ = readHead(br)
			})
			tr := newTestTransport(t, TransportOptions{})
			mod := func(r *http.Request) {
				if tc.header != "" {
					r.Header.Set(tc.header, "k1")
				}
			}
			do(t, tr, tc.method, "http://"+addr+"/", nil, mod)
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			req, _ := http.NewRequest(tc.method, "http://"+addr+"/", body)
			mod(req)
			resp, err := tr.RoundTrip(req)
			if tc.wantErr {
				if err == nil || !errors.Is(err, io.EOF) {
					t.Errorf("RoundTrip() error = %v, want EOF (not retried)", err)
				}
				if got := ln.n.Load(); got != 1 {
					t.Errorf("connections = %d, want 1", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("RoundTrip() = %v, want a retry on a new connection", err)
			}
			resp.Body.Close()
			if got := ln.n.Load(); got != 2 {
				t.Errorf("connections = %d, want 2", got)
			}
		})
	}
	t.Run("fresh connection is not retried", func(t *testing.T) {
		addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) { _, _ = readHead(bufio.NewReader(c)) })
		tr := newTestTransport(t, TransportOptions{})
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		if _, err := tr.RoundTrip(req); !errors.Is(err, io.EOF) {
			t.Errorf("RoundTrip() error = %v, want EOF", err)
		}
		if got := ln.n.Load(); got != 1 {
			t.Errorf("connections = %d, want 1", got)
		}
	})
}

func TestH1BreakerLimits(t *testing.T) {
	release := make(chan struct{})
	addr, _ := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}), nil)
	br := circuit.New(nil)
	br.SetLimits(circuit.Limits{MaxConnections: 1})
	tr := newTestTransport(t, TransportOptions{Breaker: br})
	held := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+addr+"/hold", nil)
		resp, err := tr.RoundTrip(req)
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		held <- err
	}()
	for br.Stats().Connections != 1 {
		time.Sleep(time.Millisecond)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
	var oe *circuit.OverflowError
	if _, err := tr.RoundTrip(req); !errors.As(err, &oe) || oe.Limit != circuit.MaxConnections {
		t.Errorf("RoundTrip() over max_connections = %v, want a *circuit.OverflowError", err)
	}
	close(release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	do(t, tr, "GET", "http://"+addr+"/", nil, nil) // reuses the one connection
	if got := br.Stats().Connections; got != 1 {
		t.Errorf("breaker connections = %d, want 1", got)
	}
	tr.CloseIdleConnections()
	if got := br.Stats().Connections; got != 0 {
		t.Errorf("breaker connections after CloseIdleConnections = %d, want 0", got)
	}
}

func TestH1DialErrors(t *testing.T) {
	tr := newTestTransport(t, TransportOptions{})
	req, _ := http.NewRequest("GET", "http://"+deadAddr(t)+"/", nil)
	_, err := tr.RoundTrip(req)
	if !IsDialError(err) {
		t.Errorf("RoundTrip() to a closed port = %v, want a *DialError", err)
	}
	if lr := classify(context.Background(), err); lr.Type != ErrConnectionRefused {
		t.Errorf("classify() = %s, want %s", lr.Type, ErrConnectionRefused)
	}
}

// TestH1RequestHead: the head written for a request without body says what
// http.Request.Write would (which is what http.Transport sends), field order aside.
func TestH1RequestHead(t *testing.T) {
	for _, tc := range []struct {
		name string
		req  func() *http.Request
	}{
		{"GET", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://10.0.0.1:80/a/b?x=1&y=%20", nil)
			r.Host = "api.example"
			r.Header["User-Agent"] = []string{""}
			r.Header["X-Multi"] = []string{"a", " b "}
			return r
		}},
		{"escaped path", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://h/a%2Fb/c%20d?", nil)
			r.Header["User-Agent"] = []string{"curl/8"}
			return r
		}},
		{"POST no body", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://h/", http.NoBody)
			r.Header["User-Agent"] = []string{""}
			return r
		}},
		{"DELETE no body", func() *http.Request {
			r, _ := http.NewRequest("DELETE", "http://h/x", nil)
			r.Header["User-Agent"] = []string{""}
			return r
		}},
		{"close", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://h/", nil)
			r.Close = true
			r.Header["User-Agent"] = []string{""}
			r.Header["Content-Length"] = []string{"12"} // left out, as Write does
			return r
		}},
		{"POST with body", func() *http.Request {
			r, _ := http.NewRequest("POST", "http://h/p", strings.NewReader("hello"))
			r.Header["User-Agent"] = []string{""}
			r.Header["Content-Type"] = []string{"text/plain"}
			return r
		}},
		{"invalid Host", func() *http.Request {
			r, _ := http.NewRequest("GET", "http://h/", nil)
			r.Host = "a b"
			r.Header["User-Agent"] = []string{""}
			return r
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := tc.req()
			if !h1Fast(req) {
				t.Fatal("h1Fast() = false, want true")
			}
			c := &h1Conn{}
			if err := c.buildHead(req); err != nil {
				t.Fatal(err)
			}
			var want bytes.Buffer
			if err := tc.req().Write(&want); err != nil {
				t.Fatal(err)
			}
			wantLen := want.Len()
			got, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(c.wbuf)))
			if err != nil {
				t.Fatalf("ReadRequest(%q) = %v", c.wbuf, err)
			}
			exp, err := http.ReadRequest(bufio.NewReader(&want))
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprint(got.Method, " ", got.RequestURI, " ", got.Host, " ", got.ContentLength, " ", got.Close),
				fmt.Sprint(exp.Method, " ", exp.RequestURI, " ", exp.Host, " ", exp.ContentLength, " ", exp.Close); g != w {
				t.Errorf("buildHead() request line and framing = %s, want %s", g, w)
			}
			if g, w := fmt.Sprint(got.Header), fmt.Sprint(exp.Header); g != w {
				t.Errorf("buildHead() header = %s, want %s", g, w)
			}
			if len(c.wbuf)+int(max(req.ContentLength, 0)) != wantLen {
				// Same fields, same values: same length whatever their order.
				t.Errorf("buildHead() wrote %d bytes %q, Write %d", len(c.wbuf), c.wbuf, wantLen)
			}
		})
	}
}

func TestH1RequestValidation(t *testing.T) {
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), nil)
	tr := newTestTransport(t, TransportOptions{})
	for _, tc := range []struct {
		name string
		mod  func(*http.Request)
	}{
		{"header name", func(r *http.Request) { r.Header["Bad Name"] = []string{"v"} }},
		{"header value", func(r *http.Request) { r.Header["X-A"] = []string{"v\r\nX-Injected: 1"} }},
		{"query control byte", func(r *http.Request) { r.URL.RawQuery = "a=\n" }},
		{"method", func(r *http.Request) { r.Method = "GE T" }},
		{"trailer", func(r *http.Request) {
			r.Body, r.ContentLength = io.NopCloser(strings.NewReader("x")), -1
			r.Trailer = http.Header{"X-T": {"a\nb"}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
			tc.mod(req)
			if _, err := tr.RoundTrip(req); err == nil {
				t.Error("RoundTrip() = nil error, want a refusal")
			}
		})
	}
	do(t, tr, "GET", "http://"+addr+"/", nil, nil)
	if got := ln.n.Load(); got != 1 {
		t.Errorf("connections = %d, want 1 (refused requests leave the connection usable)", got)
	}
}

func TestCanonicalAddr(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"http://10.0.0.1:8080/x", "10.0.0.1:8080"},
		{"http://api/x", "api:80"},
		{"https://api/x", "api:443"},
		{"http://[::1]/", "[::1]:80"},
	} {
		u, _ := url.Parse(tc.in)
		if got := canonicalAddr(u); got != tc.want {
			t.Errorf("canonicalAddr(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestH1UnsolicitedResponseWhileIdle: bytes an upstream sends on an idle connection are not
// taken for the answer to the next request on it, once the connection has been idle for
// longer than the liveness check's bound: peekAfter for a request that cannot be sent
// again, peekAfterReplayable for one that can.
func TestH1UnsolicitedResponseWhileIdle(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		body   string
		idle   time.Duration
	}{
		{name: "GET", method: "GET", idle: peekAfterReplayable + 50*time.Millisecond},
		{name: "POST", method: "POST", body: "x", idle: 60 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, ln := startRaw(t, func(c net.Conn, stop <-chan struct{}) {
				br := bufio.NewReader(c)
				req, err := readHead(br)
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, req.Body)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				time.Sleep(20 * time.Millisecond)
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
				for {
					req, err := readHead(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater")
				}
			})
			tr := newTestTransport(t, TransportOptions{})
			noReplay := func(r *http.Request) { r.GetBody = nil }
			do(t, tr, "GET", "http://"+addr+"/", nil, nil)
			time.Sleep(tc.idle)
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			if _, got := do(t, tr, tc.method, "http://"+addr+"/", body, noReplay); got != "ok" {
				t.Errorf("second request = %q, want ok from a new connection", got)
			}
			if got := ln.n.Load(); got != 2 {
				t.Errorf("connections = %d, want 2", got)
			}
		})
	}
}

// TestH1BodyLengthMismatch: a body shorter or longer than its Content-Length fails the
// round trip at once with http.Request.Write's error, instead of leaving the upstream (and
// the round trip) waiting for bytes that will not come.
func TestH1BodyLengthMismatch(t *testing.T) {
	addr, _ := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		time.Sleep(100 * time.Millisecond) // "long": the error comes before the answer
	}), nil)
	tr := newTestTransport(t, TransportOptions{})
	for _, tc := range []struct {
		name   string
		length int64
		host   string
		want   string
	}{
		{"short", 10, "", "http: ContentLength=10 with Body length 3"},
		{"long", 2, "", "http: ContentLength=2 with Body length 3"},
		{"short, written by Request.Write", 10, "h\u00e9", "http: ContentLength=10 with Body length 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("POST", "http://"+addr+"/", io.NopCloser(strings.NewReader("abc")))
			req.ContentLength = tc.length
			if tc.host != "" {
				req.Host = tc.host
			}
			start := time.Now()
			_, err := tr.RoundTrip(req)
			if err == nil || err.Error() != tc.want {
				t.Errorf("RoundTrip() error = %v, want %q", err, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("RoundTrip() took %v", d)
			}
		})
	}
}
