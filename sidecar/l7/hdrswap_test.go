package l7

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// rawBackend answers each request with respond(request), written as it is, on kept-alive
// connections. HEAD requests get the same answer (respond leaves the body out for them).
func rawBackend(t *testing.T, respond func(r *http.Request) string) string {
	t.Helper()
	addr, _ := startRaw(t, func(c net.Conn, _ <-chan struct{}) {
		br := bufio.NewReader(c)
		for {
			r, err := readHead(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			if _, err := io.WriteString(c, respond(r)); err != nil {
				return
			}
		}
	})
	return addr
}

// swapSpy is a ResponseWriter wrapper that passes header swaps on to the H1Server's response
// and counts them; noSwap hides swapHeader, so that the forwarder copies the header as it
// does for any other ResponseWriter. Both reach Flush through Unwrap, as state.flush does.
type swapSpy struct {
	http.ResponseWriter
	swaps *atomic.Int64
}

func (s swapSpy) swapHeader(h http.Header) http.Header {
	s.swaps.Add(1)
	return s.ResponseWriter.(headerSwapper).swapHeader(h)
}

func (s swapSpy) Unwrap() http.ResponseWriter { return s.ResponseWriter }

type noSwap struct{ http.ResponseWriter }

func (s noSwap) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// dateField is the Date field of a response head, which may differ between two requests.
var dateField = regexp.MustCompile(`(?m)^Date: [^\r]*\r\n`)

// exchangeBytes sends req on c and returns the raw response up to the end of its body, its
// Date field blanked, 1xx responses before it included: for a HEAD request, only the head.
func exchangeBytes(t *testing.T, c net.Conn, br *bufio.Reader, req string, head bool) string {
	t.Helper()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	// http.ReadResponse reads through a byteReader, which records exactly the bytes it
	// needed: one at a time, so that nothing of the connection's next response is taken.
	var raw strings.Builder
	method := http.MethodGet
	if head {
		method = http.MethodHead
	}
	rr := bufio.NewReaderSize(byteReader{br, &raw}, 16)
	resp, err := http.ReadResponse(rr, &http.Request{Method: method})
	for err == nil && resp.StatusCode < 200 {
		resp, err = http.ReadResponse(rr, &http.Request{Method: method}) // after a 1xx
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return dateField.ReplaceAllString(raw.String(), "Date: -\r\n")
}

// byteReader reads br one byte at a time and records what it read.
type byteReader struct {
	br  *bufio.Reader
	log *strings.Builder
}

func (r byteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	b, err := r.br.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	r.log.WriteByte(b)
	return 1, nil
}

// TestForwardHeaderSwap checks that the client gets the same bytes whether the forwarder
// gives the upstream response's header map to the H1Server's response (swapHeader) or
// copies it, and which responses take the swap.
func TestForwardHeaderSwap(t *testing.T) {
	const body = "hello"
	responses := map[string]string{
		"/hop": "HTTP/1.1 200 OK\r\nConnection: X-Conn-Named, keep-alive\r\nX-Conn-Named: drop\r\n" +
			"Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n" +
			"Te: trailers\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\n" + body,
		"/multi": "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Multi: 1\r\nX-Multi: 2, 3\r\n" +
			"Content-Length: 5\r\n\r\n" + body,
		"/ctype": "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n" + body,
		"/sse":   "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 5\r\n\r\n" + body,
		// Connection names Content-Type: it goes, and the response is not taken for an
		// event stream.
		"/ctype-named": "HTTP/1.1 200 OK\r\nConnection: Content-Type\r\nContent-Type: text/event-stream\r\n" +
			"Content-Length: 5\r\n\r\n" + body,
		"/trailers": "HTTP/1.1 200 OK\r\nTrailer: X-Tail\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n" +
			"5\r\n" + body + "\r\n0\r\nX-Tail: end\r\n\r\n",
		"/chunked":  "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Head: 1\r\n\r\n5\r\n" + body + "\r\n0\r\n\r\n",
		"/head":     "HTTP/1.1 200 OK\r\nX-Head: 1\r\nContent-Length: 5\r\n\r\n",
		"/204":      "HTTP/1.1 204 No Content\r\nX-Head: 1\r\nConnection: X-Gone\r\nX-Gone: 1\r\n\r\n",
		"/304":      "HTTP/1.1 304 Not Modified\r\nEtag: \"x\"\r\nX-Head: 1\r\n\r\n",
		"/empty":    "HTTP/1.1 200 OK\r\nX-Head: 1\r\nContent-Length: 0\r\n\r\n",
		"/hints":    "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nX-Final: 1\r\nContent-Length: 5\r\n\r\n" + body,
		"/routed/x": "HTTP/1.1 200 OK\r\nX-Backend-Drop: 1\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\n" + body,
		"/pre":      "HTTP/1.1 200 OK\r\nX-Handler: upstream\r\nX-Kept: yes\r\nContent-Length: 5\r\n\r\n" + body,
	}
	backend := rawBackend(t, func(r *http.Request) string { return responses[r.URL.Path] })
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 4})
	table, err := route.Compile([]route.Route{{Name: "routed", Match: route.Match{Prefix: "/routed/"}, Upstream: "backend",
		ResponseHeaders: route.HeaderOps{Add: map[string]string{"x-routed": "yes"}, Remove: []string{"x-backend-drop"}}}}, route.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := telemetry.NewMetrics()
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "backend", Upstream: upstreamOf(backend), Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: m.HTTP(telemetry.Outbound, "backend"),
		Routes: &Routing{Table: table,
			Target: func(*route.Entry, string) Target {
				return Target{Name: "backend", Upstream: upstreamOf(backend), Transport: tr, RequestTimeout: 5 * time.Second}
			},
			Metrics: func(up, name string) *telemetry.HTTPMetrics { return m.HTTPRoute(telemetry.Outbound, up, name) }}})
	var swaps atomic.Int64
	serve := func(spy bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/pre" {
				w.Header().Set("X-Handler", "set-before")
			}
			if spy {
				w = swapSpy{w, &swaps}
			} else {
				w = noSwap{w}
			}
			h.ServeHTTP(w, r)
		})
	}
	swapAddr, _ := startH1(t, ServerOptions{}, serve(true), nil)
	copyAddr, _ := startH1(t, ServerOptions{}, serve(false), nil)
	dial := func(addr string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return c, bufio.NewReader(c)
	}
	sc, sbr := dial(swapAddr)
	cc, cbr := dial(copyAddr)

	tests := []struct {
		name, path string
		head       bool
		swapped    bool     // the header map is swapped, not copied
		want       []string // in the response
		absent     []string // not in the response
	}{
		{name: "hop-by-hop and Connection-named fields removed", path: "/hop", swapped: true,
			want:   []string{"X-Kept: yes\r\n", "Content-Length: 5\r\n"},
			absent: []string{"X-Conn-Named", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection", "Upgrade", "Te:", "Connection:"}},
		{name: "multiple values", path: "/multi", swapped: true,
			want: []string{"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n", "X-Multi: 1\r\nX-Multi: 2, 3\r\n"}},
		{name: "Content-Type", path: "/ctype", swapped: true, want: []string{"201 Created", "Content-Type: application/json\r\n"}},
		{name: "event stream", path: "/sse", swapped: true, want: []string{"Content-Type: text/event-stream\r\n"}},
		{name: "Content-Type named by Connection", path: "/ctype-named", swapped: true,
			want: []string{"Content-Length: 5\r\n"}, absent: []string{"event-stream"}},
		{name: "trailers", path: "/trailers", want: []string{"Trailer: X-Tail\r\n", "X-Tail: end\r\n", "X-Head: 1\r\n"}},
		{name: "chunked", path: "/chunked", want: []string{"X-Head: 1\r\n"}},
		{name: "HEAD", path: "/head", head: true, want: []string{"X-Head: 1\r\n", "Content-Length: 5\r\n"}},
		{name: "204", path: "/204", head: true, want: []string{"204 No Content", "X-Head: 1\r\n"}, absent: []string{"X-Gone", "Content-Length"}},
		{name: "304", path: "/304", head: true, want: []string{"304 Not Modified", "Etag: \"x\"\r\n"}},
		{name: "empty body", path: "/empty", swapped: true, want: []string{"X-Head: 1\r\n", "Content-Length: 0\r\n"}},
		{name: "103 then 200", path: "/hints", swapped: true,
			want: []string{"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", "X-Final: 1\r\n"}},
		{name: "route with response header rules", path: "/routed/x",
			want: []string{"X-Routed: yes\r\n", "X-Kept: yes\r\n"}, absent: []string{"X-Backend-Drop"}},
		{name: "handler set a header before", path: "/pre",
			want: []string{"X-Handler: set-before\r\nX-Handler: upstream\r\n", "X-Kept: yes\r\n"}},
	}
	// Twice over the same connections: the second round runs on kept maps and recycled
	// responses.
	for round := range 2 {
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%s/%d", tc.name, round), func(t *testing.T) {
				method := "GET"
				if tc.head && tc.path == "/head" {
					method = "HEAD"
				}
				req := method + " " + tc.path + " HTTP/1.1\r\nHost: test\r\nX-Request-Id: fixed\r\n\r\n"
				before := swaps.Load()
				got := exchangeBytes(t, sc, sbr, req, tc.head)
				if n := swaps.Load() - before; (n == 1) != tc.swapped || n > 1 {
					t.Errorf("swaps = %d, want swapped %v", n, tc.swapped)
				}
				want := exchangeBytes(t, cc, cbr, req, tc.head)
				if got != want {
					t.Errorf("response with the header swapped:\n%q\nwant (copied):\n%q", got, want)
				}
				for _, s := range tc.want {
					if !strings.Contains(got, s) {
						t.Errorf("response %q: no %q", got, s)
					}
				}
				for _, s := range tc.absent {
					if strings.Contains(got, s) {
						t.Errorf("response %q: has %q", got, s)
					}
				}
			})
		}
	}
}

// TestForwardHeaderSwapNoLeak sends many requests on one client connection, through one
// upstream connection, each answered with fields of its own: with the header maps swapped
// between the H1Server's response and the pool's recycled responses, no response may show
// another's fields (run with -race: the maps move between goroutines too).
func TestForwardHeaderSwapNoLeak(t *testing.T) {
	backend := rawBackend(t, func(r *http.Request) string {
		id := r.Header.Get("X-Id")
		n, _ := strconv.Atoi(id)
		var b strings.Builder
		b.WriteString("HTTP/1.1 200 OK\r\n")
		fmt.Fprintf(&b, "X-Only-%d: %s\r\nX-Echo: %s\r\n", n, id, id)
		for i := range n % 4 * 10 { // up to 30 more fields: past maxKeptResponseHeader at times
			fmt.Fprintf(&b, "X-Extra-%d-%d: v\r\n", n, i)
		}
		if n%3 == 0 {
			b.WriteString("Connection: X-Named\r\nX-Named: 1\r\n")
		}
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(id), id)
		return b.String()
	})
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 1})
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend), Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")})
	var swaps atomic.Int64
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(swapSpy{w, &swaps}, r)
	}), nil)
	const clients, requests = 3, 100
	keepAliveClients(t, addr, clients, requests, func(c, i int) string {
		return fmt.Sprintf("GET / HTTP/1.1\r\nHost: test\r\nX-Id: %d\r\n\r\n", c*1000+i)
	}, func(c, i int, resp *http.Response, body []byte, _ int) error {
		n := c*1000 + i
		id := strconv.Itoa(n)
		if string(body) != id {
			return fmt.Errorf("body %q, want %q", body, id)
		}
		// X-Only-n, X-Echo, the extras, Content-Length, Date and the Content-Type the
		// H1Server sniffs: nothing else.
		want := 2 + n%4*10 + 3
		if resp.Header.Get("X-Echo") != id || resp.Header.Get("X-Only-"+id) != id || len(resp.Header) != want ||
			resp.Header.Get("X-Named") != "" {
			return fmt.Errorf("header %v (%d fields, want %d)", resp.Header, len(resp.Header), want)
		}
		return nil
	})
	if n := swaps.Load(); n != clients*requests {
		t.Errorf("swaps = %d, want %d (every response's header swapped)", n, clients*requests)
	}
}

// TestRemoveHopFields: deleting the hop-by-hop fields parseResponse noted (the swap's
// path) leaves a response header as removeHopByHop's walk over it does.
func TestRemoveHopFields(t *testing.T) {
	for _, tc := range []struct{ name, fields string }{
		{"none", "X-A: 1\r\n"},
		{"keep-alive", "Connection: keep-alive\r\nServer: nginx\r\n"},
		{"all", "Connection: keep-alive\r\nProxy-Connection: x\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\n" +
			"Proxy-Authorization: Basic eA==\r\nTe: trailers\r\nUpgrade: h2c\r\nX-A: 1\r\n"},
		{"lower case names", "connection: X-Named\r\nkeep-alive: 1\r\nupgrade: websocket\r\nx-named: 1\r\nx-b: 2\r\n"},
		{"Connection twice, naming fields", "Connection: X-A, Keep-Alive\r\nConnection: x-b\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n"},
		{"Connection naming Content-Type", "Connection: Content-Type\r\nContent-Type: text/plain\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			head := "HTTP/1.1 200 OK\r\n" + tc.fields + "Content-Length: 0\r\n\r\n"
			req, _ := http.NewRequest("GET", "http://x/", nil)
			br := bufio.NewReader(strings.NewReader(head))
			_, _ = br.Peek(1) // as readResponse: parseResponse reads what is buffered
			pr, ok := parseResponse(br, req, nil)
			if !ok {
				t.Fatalf("parseResponse(%q) declined", head)
			}
			want := pr.resp.Header.Clone()
			removeHopByHop(want)
			got := pr.resp.Header
			removeHopFields(got, pr.hop)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("removeHopFields() left %v, want %v", got, want)
			}
		})
	}
}
