package l7

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type staticUpstream struct{ p balancer.Picker }

func (s staticUpstream) Picker() balancer.Picker { return s.p }

func upstreamOf(addrs ...string) staticUpstream {
	var eps []*balancer.Endpoint
	for _, a := range addrs {
		eps = append(eps, balancer.NewEndpoint(discovery.Endpoint{Address: a, Weight: 1}, nil))
	}
	return staticUpstream{balancer.NewRoundRobin(eps)}
}

// guardListener wraps accepted connections as the sidecar's listeners do.
type guardListener struct{ net.Listener }

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return GuardConn(c), nil
}

// startProxy serves a Handler for up on a loopback port and returns its address.
func startProxy(t *testing.T, up Upstream, mod func(*Options)) string {
	t.Helper()
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	o := Options{Direction: telemetry.Outbound, Name: "test", Upstream: up, Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")}
	if mod != nil {
		mod(&o)
	}
	srv := NewServer(ServerOptions{ReadHeaderTimeout: time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 8 << 10}, NewHandler(o))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(guardListener{ln}) }()
	t.Cleanup(func() { _ = srv.Close(); tr.CloseIdleConnections() })
	return ln.Addr().String()
}

// startBackend serves h (HTTP/1.1 and h2c) on a loopback port.
func startBackend(t *testing.T, h http.Handler) string {
	t.Helper()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

func client(h2c bool) *http.Client {
	var p http.Protocols
	if h2c {
		p.SetUnencryptedHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Client{Transport: &http.Transport{Protocols: &p, TLSClientConfig: &tls.Config{}}, Timeout: 10 * time.Second}
}

func TestProxyHeadersAndProtocols(t *testing.T) {
	type seen struct {
		proto, xff, xfp, rid, conn, custom, host string
	}
	got := make(chan seen, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Proto, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Request-Id"),
			r.Header.Get("X-Hop"), r.Header.Get("X-Custom"), r.Host}
		w.Header().Set("Keep-Alive", "timeout=5")
		_, _ = io.WriteString(w, "hello")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, tc := range []struct {
		name      string
		h2c       bool
		xff       string
		rid       string
		wantProto string
		wantXFF   string
	}{
		{name: "http1", wantProto: "HTTP/1.1", wantXFF: "127.0.0.1"},
		{name: "h2c", h2c: true, wantProto: "HTTP/2.0", wantXFF: "127.0.0.1"},
		{name: "xff appended and request id kept", xff: "10.1.2.3", rid: "abc-123", wantProto: "HTTP/1.1", wantXFF: "10.1.2.3, 127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "http://"+proxy+"/x", nil)
			req.Host = "api.mesh"
			if !tc.h2c { // HTTP/2 has no Connection header
				req.Header.Set("Connection", "X-Hop")
				req.Header.Set("X-Hop", "must-go")
			}
			req.Header.Set("X-Custom", "stays")
			if tc.xff != "" {
				req.Header.Set("X-Forwarded-For", tc.xff)
			}
			if tc.rid != "" {
				req.Header.Set("X-Request-Id", tc.rid)
			}
			resp, err := client(tc.h2c).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "hello" {
				t.Fatalf("response = %d %q, want 200 hello", resp.StatusCode, body)
			}
			if resp.Header.Get("Keep-Alive") != "" {
				t.Errorf("hop-by-hop Keep-Alive reached the client")
			}
			s := <-got
			if s.proto != tc.wantProto {
				t.Errorf("backend proto = %s, want %s (auto keeps the downstream protocol)", s.proto, tc.wantProto)
			}
			if s.xff != tc.wantXFF {
				t.Errorf("X-Forwarded-For = %q, want %q", s.xff, tc.wantXFF)
			}
			if s.xfp != "http" {
				t.Errorf("X-Forwarded-Proto = %q, want http", s.xfp)
			}
			if s.conn != "" {
				t.Errorf("header named in Connection reached the backend: %q", s.conn)
			}
			if s.custom != "stays" || s.host != "api.mesh" {
				t.Errorf("X-Custom = %q, Host = %q; want stays, api.mesh", s.custom, s.host)
			}
			switch {
			case tc.rid != "" && s.rid != tc.rid:
				t.Errorf("X-Request-Id = %q, want %q passed on", s.rid, tc.rid)
			case tc.rid == "" && len(s.rid) != 36:
				t.Errorf("X-Request-Id = %q, want a generated UUID", s.rid)
			}
		})
	}
}

func TestLocalReplies(t *testing.T) {
	refused := func() string { // a port nobody listens on
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	slow := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	}))
	hangup := func() string { // accepts, reads the request, closes without answering
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = bufio.NewReader(c).ReadString('\n')
				c.Close()
			}
		}()
		return ln.Addr().String()
	}()
	for _, tc := range []struct {
		name       string
		up         Upstream
		timeout    time.Duration
		wantStatus int
		wantType   string
	}{
		{"no endpoint", upstreamOf(), 0, 503, ErrDestinationUnavailable},
		{"connection refused", upstreamOf(refused), 0, 503, ErrConnectionRefused},
		{"response timeout", upstreamOf(slow), 200 * time.Millisecond, 504, ErrHTTPResponseTimeout},
		{"closed without response", upstreamOf(hangup), 0, 502, ErrConnectionTerminated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxy := startProxy(t, tc.up, func(o *Options) { o.RequestTimeout = tc.timeout })
			resp, err := client(false).Get("http://" + proxy + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			ps := resp.Header.Get("Proxy-Status")
			if resp.StatusCode != tc.wantStatus || !strings.HasPrefix(ps, "ferry; error="+tc.wantType+"; details=") {
				t.Errorf("got %d Proxy-Status %q, want %d with error=%s", resp.StatusCode, ps, tc.wantStatus, tc.wantType)
			}
			if resp.Header.Get("X-Request-Id") == "" {
				t.Errorf("local reply has no X-Request-Id")
			}
		})
	}
}

// TestMalformedRequestsNeverReachBackend sends smuggling and malformed requests on raw
// connections and checks Ferry answers 4xx and the backend saw nothing.
func TestMalformedRequestsNeverReachBackend(t *testing.T) {
	var hits atomic.Int64
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, tc := range []struct{ name, raw string }{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"TE and CL, mixed case", "POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n0\r\n\r\n"},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"two different Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"},
		{"unsupported TE", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"},
		{"space before colon", "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"},
		{"bad request line", "GET /a b c\r\nHost: a\r\n\r\n"},
		{"no host on 1.1", "GET / HTTP/1.1\r\n\r\n"},
		{"oversized headers", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("a", 64<<10) + "\r\n\r\n"},
		{"bare LF in header value", "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			status := rawStatus(t, proxy, tc.raw)
			if (status < 400 || status >= 500) && status != http.StatusNotImplemented {
				t.Errorf("status = %d, want 4xx (or 501 for an unknown transfer coding)", status)
			}
			if n := hits.Load() - before; n != 0 {
				t.Errorf("backend received %d request(s), want 0", n)
			}
		})
	}
	// A clean request on a fresh connection still works, and a clean request after a
	// chunked one on the same connection is not flagged.
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i, raw := range []string{
		"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	} {
		resp := exchange(t, c, br, raw)
		if resp.StatusCode != 200 {
			t.Errorf("request %d on a kept-alive connection: status %d, want 200", i, resp.StatusCode)
		}
	}
}

func rawStatus(t *testing.T, addr, raw string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() { _, _ = io.WriteString(c, raw) }()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading status: %v", err)
	}
	var proto string
	var code int
	if _, err := fmt.Sscanf(line, "%s %d", &proto, &code); err != nil {
		t.Fatalf("status line %q: %v", line, err)
	}
	return code
}

func TestStreamingAndTrailers(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		rc := http.NewResponseController(w)
		for i := range 3 {
			fmt.Fprintf(w, "chunk%d\n", i)
			_ = rc.Flush()
			time.Sleep(20 * time.Millisecond)
		}
		w.Header().Set("X-Sum", "3")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, h2c := range []bool{false, true} {
		resp, err := client(h2c).Get("http://" + proxy + "/")
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(resp.Body)
		first, err := br.ReadString('\n')
		if err != nil || first != "chunk0\n" {
			t.Fatalf("first chunk = %q, %v", first, err)
		}
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		if string(rest) != "chunk1\nchunk2\n" {
			t.Errorf("rest = %q", rest)
		}
		if got := resp.Trailer.Get("X-Sum"); got != "3" {
			t.Errorf("h2c=%v: trailer X-Sum = %q, want 3", h2c, got)
		}
	}
}

func TestWebSocketUpgradePassesThrough(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "websocket" {
			http.Error(w, "want upgrade", 400)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		line, _ := brw.ReadString('\n')
		_, _ = io.WriteString(c, "echo:"+line)
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade response = %v, %v; want 101", resp, err)
	}
	_, _ = io.WriteString(c, "ping\n")
	line, err := br.ReadString('\n')
	if err != nil || line != "echo:ping\n" {
		t.Errorf("after upgrade got %q, %v; want echo:ping", line, err)
	}
}

func TestLeastRequestSeesStreamsAsActive(t *testing.T) {
	release := make(chan struct{})
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		_ = http.NewResponseController(w).Flush()
		<-release
	}))
	ep := balancer.NewEndpoint(discovery.Endpoint{Address: backend, Weight: 1}, nil)
	proxy := startProxy(t, staticUpstream{balancer.NewRoundRobin([]*balancer.Endpoint{ep})}, nil)
	resp, err := client(false).Get("http://" + proxy + "/")
	if err != nil {
		t.Fatal(err)
	}
	if got := ep.State.Active.Load(); got != 1 {
		t.Errorf("Active while the body streams = %d, want 1", got)
	}
	close(release)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	deadline := time.Now().Add(2 * time.Second)
	for ep.State.Active.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := ep.State.Active.Load(); got != 0 {
		t.Errorf("Active after the body ended = %d, want 0", got)
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"100m", 100 * time.Millisecond, true}, {"5S", 5 * time.Second, true}, {"1H", time.Hour, true},
		{"7u", 7 * time.Microsecond, true}, {"x", 0, false}, {"10", 0, false}, {"-1S", 0, false}, {"123456789S", 0, false},
	} {
		got, ok := parseGRPCTimeout(tc.in)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}
