package l7

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// rawRequest sends the HTTP/1.1 request text req to addr and returns the response, with its
// body read.
func rawRequest(t *testing.T, addr, req string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body: %v", err)
	}
	return resp, string(body)
}

// keepAliveClients runs clients connections to addr at once, each sending requests
// requests one after another on its own connection: raw(client, i) gives request i's
// bytes, and check(client, i, resp, body, hints) says what is wrong with its final
// response (after hints 1xx responses), or nil. A client stops at its first failure.
func keepAliveClients(t *testing.T, addr string, clients, requests int, raw func(client, i int) string,
	check func(client, i int, resp *http.Response, body []byte, hints int) error) {
	t.Helper()
	var wg sync.WaitGroup
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			for i := range requests {
				if _, err := io.WriteString(c, raw(cl, i)); err != nil {
					t.Errorf("client %d, request %d: %v", cl, i, err)
					return
				}
				hints := 0
				var resp *http.Response
				for {
					if resp, err = http.ReadResponse(br, nil); err != nil {
						t.Errorf("client %d, request %d: %v", cl, i, err)
						return
					}
					if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
						break
					}
					hints++
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err == nil {
					err = check(cl, i, resp, body, hints)
				}
				if err != nil {
					t.Errorf("client %d, request %d: %v", cl, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// exchange sends the request text req on c, a kept-alive connection read through br, and
// returns the response with its body read and closed.
func exchange(t *testing.T, c net.Conn, br *bufio.Reader, req string) *http.Response {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestForwardHeaderRules(t *testing.T) {
	type seen struct {
		header http.Header
		query  string
	}
	got := make(chan seen, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Clone(), r.URL.RawQuery}
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "must-go")
		w.Header().Set("Proxy-Authenticate", "Basic")
		w.Header().Set("X-Resp-Keep", "stays")
		_, _ = io.WriteString(w, "ok")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, tc := range []struct {
		name    string
		target  string
		headers string // request header lines, each ending in \r\n
		want    map[string]string
		absent  []string
		query   string
	}{
		{
			name: "hop-by-hop headers removed",
			headers: "Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n" +
				"Te: gzip\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Keep: stays\r\nUser-Agent: test/1\r\n",
			want:   map[string]string{"X-Keep": "stays", "User-Agent": "test/1"},
			absent: []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Te", "Trailer", "Upgrade", "Connection"},
		},
		{
			name:    "headers named in Connection removed, any case",
			headers: "Connection: X-Hop, x-lower-hop,keep-alive\r\nX-Hop: a\r\nX-Lower-Hop: b\r\nX-Hop-Not: c\r\n",
			want:    map[string]string{"X-Hop-Not": "c"},
			absent:  []string{"X-Hop", "X-Lower-Hop", "Connection"},
		},
		{
			name:    "TE trailers kept",
			headers: "TE: gzip, Trailers\r\n",
			want:    map[string]string{"Te": "trailers"},
		},
		{
			name:    "X-Forwarded-For appended, Proto and Host passed on, Forwarded dropped",
			headers: "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\nForwarded: for=10.9.9.9\r\n",
			want: map[string]string{"X-Forwarded-For": "10.0.0.1, 10.0.0.2, 127.0.0.1", "X-Forwarded-Proto": "https",
				"X-Forwarded-Host": "shop.example"},
			absent: []string{"Forwarded"},
		},
		{
			name:   "X-Forwarded-* set for a direct client",
			want:   map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http"},
			absent: []string{"X-Forwarded-Host"},
		},
		{
			name:   "no User-Agent stays none",
			absent: []string{"User-Agent"},
		},
		{
			name:    "Connection naming X-Forwarded-For does not lose the chain",
			headers: "Connection: X-Forwarded-For\r\nX-Forwarded-For: 10.0.0.1\r\n",
			want:    map[string]string{"X-Forwarded-For": "10.0.0.1, 127.0.0.1"},
		},
		{
			name:   "unparsable query re-encoded",
			target: "/q?x=1&a=1;b=2",
			query:  "x=1",
		},
		{
			name:   "good query untouched",
			target: "/q?b=2&a=%20",
			query:  "b=2&a=%20",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target
			if target == "" {
				target = "/"
			}
			resp, body := rawRequest(t, proxy, "GET "+target+" HTTP/1.1\r\nHost: api.mesh\r\n"+tc.headers+"\r\n")
			if resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("response = %d %q, want 200 ok", resp.StatusCode, body)
			}
			s := <-got
			for k, v := range tc.want {
				if got := strings.Join(s.header[k], "|"); got != v {
					t.Errorf("upstream %s = %q, want %q", k, got, v)
				}
			}
			for _, k := range tc.absent {
				if v, ok := s.header[k]; ok {
					t.Errorf("upstream %s = %q, want none", k, v)
				}
			}
			if tc.target != "" && s.query != tc.query {
				t.Errorf("upstream query = %q, want %q", s.query, tc.query)
			}
			for _, k := range []string{"X-Resp-Hop", "Proxy-Authenticate"} {
				if v := resp.Header.Get(k); v != "" {
					t.Errorf("response %s = %q reached the client, want none", k, v)
				}
			}
			if v := resp.Header.Get("X-Resp-Keep"); v != "stays" {
				t.Errorf("response X-Resp-Keep = %q, want stays", v)
			}
		})
	}
}

// TestForwardStreamsFlush checks that a streaming response's header and first bytes reach
// the client while the upstream is still writing: the backend waits for the client to
// have read them before it finishes.
func TestForwardStreamsFlush(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
		first  string
		rest   string
	}{
		{"chunked", nil, "part1\n", "part2\n"},
		{"server-sent events with a length", map[string]string{"Content-Type": "text/event-stream; charset=utf-8",
			"Content-Length": "22"}, "data: one\n\n", "data: two\n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headerSeen, firstSeen := make(chan struct{}), make(chan struct{})
			backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header().Set(k, v)
				}
				rc := http.NewResponseController(w)
				w.WriteHeader(200)
				_ = rc.Flush()
				select {
				case <-headerSeen:
				case <-time.After(5 * time.Second):
					return
				}
				_, _ = io.WriteString(w, tc.first)
				_ = rc.Flush()
				select {
				case <-firstSeen:
				case <-time.After(5 * time.Second):
					return
				}
				_, _ = io.WriteString(w, tc.rest)
			}))
			proxy := startProxy(t, upstreamOf(backend), nil)
			for _, h2c := range []bool{false, true} {
				headerSeen, firstSeen = make(chan struct{}), make(chan struct{})
				resp, err := client(h2c).Get("http://" + proxy + "/events")
				if err != nil {
					t.Fatalf("h2c=%v: %v (the response header did not arrive before the body)", h2c, err)
				}
				close(headerSeen)
				buf := make([]byte, len(tc.first))
				if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != tc.first {
					t.Fatalf("h2c=%v: first bytes = %q, %v; want %q", h2c, buf, err, tc.first)
				}
				close(firstSeen)
				rest, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || string(rest) != tc.rest {
					t.Errorf("h2c=%v: rest = %q, %v; want %q", h2c, rest, err, tc.rest)
				}
			}
		})
	}
}

func TestForwardUndeclaredTrailers(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Declared")
		_, _ = io.WriteString(w, "body")
		_ = http.NewResponseController(w).Flush()
		w.Header().Set("X-Declared", "d")
		w.Header().Set(http.TrailerPrefix+"X-Late", "l")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, h2c := range []bool{false, true} {
		resp, err := client(h2c).Get("http://" + proxy + "/")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != "body" {
			t.Fatalf("h2c=%v: body = %q, %v; want body", h2c, body, err)
		}
		for k, want := range map[string]string{"X-Declared": "d", "X-Late": "l"} {
			if got := resp.Trailer.Get(k); got != want {
				t.Errorf("h2c=%v: trailer %s = %q, want %q", h2c, k, got, want)
			}
		}
	}
}

// TestForwardAbortsTruncatedBody checks that an upstream body failing mid-stream resets the
// client's response instead of ending it as if it were complete, and that the handler still
// accounts for the request: the circuit breaker's request slot is given back (with
// max_requests 1 a later request is admitted), the active-requests gauge returns to 0 and
// the access log records Proxy-Status http_response_incomplete.
func TestForwardAbortsTruncatedBody(t *testing.T) {
	for _, tc := range []struct {
		name     string
		response string
	}{
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n10\r\npartial"},
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					req, err := http.ReadRequest(bufio.NewReader(c))
					if err == nil && req.URL.Path == "/ok" {
						_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
					} else {
						_, _ = io.WriteString(c, tc.response)
					}
					c.Close()
				}
			}()
			br := circuit.New(nil)
			br.SetLimits(circuit.Limits{MaxConnections: 100, MaxPending: 100, MaxRequests: 1, BudgetPercent: 20})
			metrics := telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")
			logPath := filepath.Join(t.TempDir(), "access.log")
			al, err := telemetry.OpenAccessLog(logPath)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { al.Close() })
			proxy := startProxy(t, upstreamOf(ln.Addr().String()), func(o *Options) {
				tr := NewTransport(TransportOptions{Protocol: ProtocolHTTP1, ConnectTimeout: time.Second})
				t.Cleanup(tr.CloseIdleConnections)
				o.Transport, o.Breaker, o.Metrics, o.AccessLog = tr, br, metrics, al
			})
			for _, h2c := range []bool{false, true} {
				resp, err := client(h2c).Get("http://" + proxy + "/cut")
				if err == nil {
					body, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil {
						t.Errorf("h2c=%v: body = %q read to its end, want an error (the response was cut short)", h2c, body)
					}
				} // else: cut short before the header left the proxy's buffer, an error too
				// The handler finishes its accounting after the client saw the reset.
				deadline := time.Now().Add(5 * time.Second)
				for testutil.ToFloat64(metrics.Active) != 0 && time.Now().Before(deadline) {
					time.Sleep(5 * time.Millisecond)
				}
				if got := testutil.ToFloat64(metrics.Active); got != 0 {
					t.Fatalf("h2c=%v: active requests = %v after the abort, want 0", h2c, got)
				}
				resp, err = client(h2c).Get("http://" + proxy + "/ok")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || string(body) != "ok" {
					t.Fatalf("h2c=%v: request after the abort = %d %q, want 200 ok (max_requests 1: the aborted request must give its slot back)",
						h2c, resp.StatusCode, body)
				}
			}
			logged, err := os.ReadFile(logPath)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(logged), ErrHTTPResponseIncomplete); n != 2 {
				t.Errorf("access log has %d records with %s, want 2:\n%s", n, ErrHTTPResponseIncomplete, logged)
			}
		})
	}
}

func TestForwardInformationalResponses(t *testing.T) {
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	for _, h2c := range []bool{false, true} {
		var hints []string
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				hints = append(hints, h.Get("Link"))
				return nil
			}})
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+proxy+"/", nil)
		resp, err := client(h2c).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "final" || resp.Header.Get("Link") != "" {
			t.Errorf("h2c=%v: final response = %q with Link %q, want final without Link", h2c, body, resp.Header.Get("Link"))
		}
		if len(hints) != 1 || hints[0] != "</style.css>; rel=preload" {
			t.Errorf("h2c=%v: 103 Early Hints seen = %q, want one with the Link", h2c, hints)
		}
	}
}

func TestForwardHelpers(t *testing.T) {
	for _, tc := range []struct {
		v     []string
		token string
		want  bool
	}{
		{[]string{"gzip, trailers"}, "trailers", true},
		{[]string{"gzip", " Trailers\t"}, "trailers", true},
		{[]string{"trailersx"}, "trailers", false},
		{nil, "upgrade", false},
		{[]string{"keep-alive, Upgrade"}, "upgrade", true},
		{[]string{"trailer\u017f"}, "trailers", false}, // no Unicode folding (U+017F folds to s)
	} {
		if got := containsToken(tc.v, tc.token); got != tc.want {
			t.Errorf("containsToken(%q, %q) = %v, want %v", tc.v, tc.token, got, tc.want)
		}
	}
	for _, tc := range []struct {
		ct     string
		length int64
		want   bool
	}{
		{"text/plain", 10, false},
		{"", -1, true},
		{"TEXT/Event-Stream ; charset=utf-8", 10, true},
		{"text/event-streamx", 10, false},
	} {
		res := &http.Response{ContentLength: tc.length, Header: http.Header{}}
		if tc.ct != "" {
			res.Header.Set("Content-Type", tc.ct)
		}
		if got := streaming(res); got != tc.want {
			t.Errorf("streaming(%q, length %d) = %v, want %v", tc.ct, tc.length, got, tc.want)
		}
	}
	h := http.Header{"Connection": {"x-a, close", "KEEP-alive"}, "X-A": {"1"}, "Keep-Alive": {"5"}, "X-B": {"2"},
		"Te": {"trailers"}, "Transfer-Encoding": {"chunked"}, "Proxy-Authenticate": {"Basic"}, "Upgrade": {"h2c"},
		"\u212aeep-Alive": {"not a hop-by-hop header"}}
	removeHopByHop(h)
	if len(h) != 2 || h.Get("X-B") != "2" || h["\u212aeep-Alive"] == nil {
		t.Errorf("removeHopByHop() left %v, want only X-B and \\u212aeep-Alive", h)
	}
	for _, tc := range []struct {
		token string
		want  bool
	}{{"te", true}, {"KEEP-ALIVE", true}, {"proxy-authorization", true}, {"x-te", false}, {"\u212aeep-Alive", false}} {
		if got := hopToken(tc.token); got != tc.want {
			t.Errorf("hopToken(%q) = %v, want %v", tc.token, got, tc.want)
		}
	}
	var ct connTokens
	ct.parse([]string{"x-token ,  Other"})
	for k, want := range map[string]bool{"X-Token": true, "Other": true, "X-Tok": false} {
		if got := ct.names(k); got != want {
			t.Errorf("names(%q) = %v, want %v", k, got, want)
		}
	}
}

// TestForwardXFFAcrossRequests sends requests with different X-Forwarded-For headers on
// one connection (so through reused states, which remember the last value they made)
// and checks each reaches the upstream with its own chain and the client's address.
func TestForwardXFFAcrossRequests(t *testing.T) {
	got := make(chan string, 1)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- strings.Join(r.Header["X-Forwarded-For"], "|")
		_, _ = io.WriteString(w, "ok")
	}))
	proxy := startProxy(t, upstreamOf(backend), nil)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for i, tc := range []struct{ headers, want string }{
		{"X-Forwarded-For: 10.0.0.1\r\n", "10.0.0.1, 127.0.0.1"},
		{"X-Forwarded-For: 10.0.0.1\r\n", "10.0.0.1, 127.0.0.1"},
		{"X-Forwarded-For: 10.0.0.9\r\n", "10.0.0.9, 127.0.0.1"},
		{"", "127.0.0.1"},
		{"X-Forwarded-For: 10.0.0.9\r\n", "10.0.0.9, 127.0.0.1"},
		{"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.9\r\n", "10.0.0.1, 10.0.0.9, 127.0.0.1"},
		{"X-Forwarded-For: 10.0.0.9\r\n", "10.0.0.9, 127.0.0.1"},
	} {
		exchange(t, c, br, "GET / HTTP/1.1\r\nHost: api.mesh\r\n"+tc.headers+"\r\n")
		if xff := <-got; xff != tc.want {
			t.Errorf("request %d: upstream X-Forwarded-For = %q, want %q", i+1, xff, tc.want)
		}
	}
}

func TestOnlyHopTokens(t *testing.T) {
	for _, tc := range []struct {
		conn []string
		want bool
	}{
		{[]string{"keep-alive"}, true},
		{[]string{"close"}, false}, // "close" names no header but is not a hop-by-hop one
		{[]string{"Keep-Alive, TE"}, true},
		{[]string{" upgrade ,, te"}, true},
		{[]string{"keep-alive", "X-Hop"}, false},
		{[]string{"keep-alive, x-hop"}, false},
		{[]string{""}, true},
	} {
		if got := onlyHopTokens(tc.conn); got != tc.want {
			t.Errorf("onlyHopTokens(%q) = %v, want %v", tc.conn, got, tc.want)
		}
		var ct connTokens
		ct.parse(tc.conn)
		named := false
		for _, tok := range ct.list {
			if !hopToken(tok) {
				named = true
			}
		}
		if named == tc.want {
			t.Errorf("onlyHopTokens(%q) = %v, but connTokens finds a non-hop token: %v", tc.conn, tc.want, named)
		}
	}
}
