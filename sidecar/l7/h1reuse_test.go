package l7

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

type testCtxKey struct{}

// TestH1ReqCtx checks the request context of H1Server against what context.WithCancel
// gives: cancellation seen through Err, Done (made after or before the cancellation),
// values of the parent, children and AfterFunc; and that it is reused only when it did
// not escape.
func TestH1ReqCtx(t *testing.T) {
	parent := context.WithValue(context.Background(), testCtxKey{}, "conn")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, x *h1reqCtx)
	}{
		{"err and value", func(t *testing.T, x *h1reqCtx) {
			if err := x.Err(); err != nil {
				t.Errorf("Err() = %v, want nil", err)
			}
			if v := x.Value(testCtxKey{}); v != "conn" {
				t.Errorf("Value() = %v, want conn", v)
			}
			if _, ok := x.Deadline(); ok {
				t.Errorf("Deadline() ok = true, want false")
			}
			x.cancel()
			x.cancel()
			if err := x.Err(); err != context.Canceled {
				t.Errorf("Err() after cancel = %v, want %v", err, context.Canceled)
			}
			if err := context.Cause(x); err != context.Canceled {
				t.Errorf("Cause() after cancel = %v, want %v", err, context.Canceled)
			}
		}},
		{"done before cancel", func(t *testing.T, x *h1reqCtx) {
			d := x.Done()
			if d != x.Done() {
				t.Errorf("Done() returned two channels")
			}
			select {
			case <-d:
				t.Fatalf("Done() closed before cancel")
			default:
			}
			x.cancel()
			select {
			case <-d:
			case <-time.After(5 * time.Second):
				t.Fatalf("Done() not closed by cancel")
			}
		}},
		{"done after cancel", func(t *testing.T, x *h1reqCtx) {
			x.cancel()
			select {
			case <-x.Done():
			default:
				t.Fatalf("Done() after cancel not closed")
			}
		}},
		{"children", func(t *testing.T, x *h1reqCtx) {
			child, cancel := context.WithCancel(x)
			defer cancel()
			cause, cancelCause := context.WithCancelCause(x)
			defer cancelCause(nil)
			timed, cancelTimed := context.WithTimeout(context.WithValue(x, testCtxKey{}, "v"), time.Hour)
			defer cancelTimed()
			stopped, cancelStopped := context.WithCancel(x)
			cancelStopped() // removes it from x's functions
			if err := child.Err(); err != nil {
				t.Errorf("child.Err() = %v, want nil", err)
			}
			x.cancel()
			for _, c := range []context.Context{child, cause, timed, stopped} {
				select {
				case <-c.Done():
				case <-time.After(5 * time.Second):
					t.Fatalf("%v not cancelled with its parent", c)
				}
				if err := c.Err(); err != context.Canceled {
					t.Errorf("%v.Err() = %v, want %v", c, err, context.Canceled)
				}
			}
		}},
		{"child of cancelled", func(t *testing.T, x *h1reqCtx) {
			x.cancel()
			child, cancel := context.WithCancel(x)
			defer cancel()
			if err := child.Err(); err != context.Canceled {
				t.Errorf("child.Err() = %v, want %v", err, context.Canceled)
			}
		}},
		{"after func", func(t *testing.T, x *h1reqCtx) {
			ran := make(chan struct{})
			context.AfterFunc(x, func() { close(ran) })
			stop := context.AfterFunc(x, func() { t.Errorf("stopped AfterFunc ran") })
			if !stop() {
				t.Errorf("stop() = false, want true")
			}
			x.cancel()
			select {
			case <-ran:
			case <-time.After(5 * time.Second):
				t.Fatalf("AfterFunc did not run")
			}
			if stop() {
				t.Errorf("second stop() = true, want false")
			}
			late := make(chan struct{})
			if context.AfterFunc(x, func() { close(late) })() {
				t.Errorf("stop() of an AfterFunc on a cancelled context = true, want false")
			}
			select {
			case <-late:
			case <-time.After(5 * time.Second):
				t.Fatalf("AfterFunc on a cancelled context did not run")
			}
		}},
		{"reuse", func(t *testing.T, x *h1reqCtx) {
			_ = x.Err()
			_ = x.Value(testCtxKey{})
			x.cancel()
			if !x.reuse() {
				t.Fatalf("reuse() = false after Err and Value only, want true")
			}
			if err := x.Err(); err != nil {
				t.Errorf("Err() after reuse = %v, want nil", err)
			}
			_ = x.Done()
			x.cancel()
			if x.reuse() {
				t.Errorf("reuse() = true after Done, want false")
			}
			if err := x.Err(); err != context.Canceled {
				t.Errorf("Err() of an escaped context = %v, want %v", err, context.Canceled)
			}
		}},
		{"reuse after AfterFunc", func(t *testing.T, x *h1reqCtx) {
			stop := context.AfterFunc(x, func() {})
			stop()
			x.cancel()
			if x.reuse() {
				t.Errorf("reuse() = true after AfterFunc, want false")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, &h1reqCtx{parent: parent})
		})
	}
}

// TestH1ReqCtxNoGoroutine checks that contexts derived from the request context register
// with it rather than start a goroutine each (as they would on a custom context without
// AfterFunc).
func TestH1ReqCtxNoGoroutine(t *testing.T) {
	x := &h1reqCtx{parent: context.Background()}
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for i := range 100 {
		var parent context.Context = x
		if i%2 == 0 {
			parent = context.WithValue(x, testCtxKey{}, i) // found through values too
		}
		_, cancel := context.WithCancel(parent)
		cancels = append(cancels, cancel)
		stop := context.AfterFunc(parent, func() {})
		cancels = append(cancels, func() { stop() })
	}
	if n := runtime.NumGoroutine() - before; n >= 50 {
		t.Errorf("100 WithCancel children and 100 AfterFuncs started %d goroutines, want none", n)
	}
	for _, c := range cancels {
		c()
	}
}

// TestH1ServerRequestContextReuse serves two requests on one connection and checks that
// the first one's context, kept by a goroutine past its handler, stays cancelled while
// the second runs, and that the second one's is live, whether or not the first escaped.
func TestH1ServerRequestContextReuse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		escape func(ctx context.Context) // what request 1 does with its context
		same   bool                      // the second request gets the same context object
	}{
		{"kept", func(ctx context.Context) {}, true},
		{"done", func(ctx context.Context) { _ = ctx.Done() }, false},
		{"child", func(ctx context.Context) {
			_, cancel := context.WithCancel(ctx)
			_ = cancel
		}, false},
		{"after func", func(ctx context.Context) { context.AfterFunc(ctx, func() {}) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var (
				mu    sync.Mutex
				first context.Context
				done  <-chan struct{}
				fail  []string
			)
			addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				mu.Lock()
				defer mu.Unlock()
				switch r.URL.Path {
				case "/1":
					first = ctx
					tc.escape(ctx)
					if !tc.same {
						done = ctx.Done()
					}
				case "/2":
					if err := ctx.Err(); err != nil {
						fail = append(fail, fmt.Sprintf("request 2: Err() = %v, want nil", err))
					}
					if (ctx == first) != tc.same {
						fail = append(fail, fmt.Sprintf("request 2 has request 1's context: %v, want %v", ctx == first, tc.same))
					}
					if !tc.same {
						if err := first.Err(); err != context.Canceled {
							fail = append(fail, fmt.Sprintf("request 1's context while request 2 runs: Err() = %v, want %v", err, context.Canceled))
						}
						select {
						case <-done:
						default:
							fail = append(fail, "request 1's Done() not closed while request 2 runs")
						}
					}
				}
				fmt.Fprint(w, r.URL.Path)
			}), nil)
			c := dial(t, addr)
			br := bufio.NewReader(c)
			for _, p := range []string{"/1", "/2"} {
				fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", p)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			}
			mu.Lock()
			defer mu.Unlock()
			if len(fail) > 0 {
				t.Error(strings.Join(fail, "\n"))
			}
		})
	}
}

// reusingParser returns a parseRequest that fills ru, and scribbles on what it returned
// the way a handler may (a header added, the URL changed), so that what is left of a
// request shows in the next one.
func reusingParser(ru *requestReuse) func(*bufio.Reader, []byte) (*http.Request, bool, error) {
	return func(br *bufio.Reader, hdr []byte) (*http.Request, bool, error) {
		return parseRequestReusing(br, hdr, ru)
	}
}

func scribble(r *http.Request) {
	r.Header["X-Left-Over"] = []string{"1"}
	r.URL.Fragment = "left-over"
	r.Form = map[string][]string{"a": {"b"}}
	r.Pattern = "/left-over"
}

// TestParseRequestReusing parses every case of parseRequestCases, in order and in
// reverse, with one requestReuse, and checks each request is what a fresh parse makes of
// it: nothing of the request before it (header fields, URL, Host, framing, trailers, what
// the handler added) is left.
func TestParseRequestReusing(t *testing.T) {
	var ru requestReuse
	parse := reusingParser(&ru)
	n := len(parseRequestCases)
	for i := range 2 * n {
		tc := parseRequestCases[i%n]
		if i >= n {
			tc = parseRequestCases[2*n-1-i]
		}
		got := runParser(parse, []byte(tc.in))
		want := runParser(parseRequest, []byte(tc.in))
		if d := sameRequest(got, want); d != "" {
			t.Errorf("%s: parseRequestReusing(%q): %s", tc.name, tc.in, d)
		}
		if got.status == 0 {
			if got.req != &ru.a.req {
				t.Errorf("%s: parseRequestReusing() did not fill the reused request", tc.name)
			}
			scribble(got.req)
		}
	}
}

// TestRequestReuseHeaderLimit checks that a header map grown past maxReusedHeader is
// replaced rather than cleared.
func TestRequestReuseHeaderLimit(t *testing.T) {
	var ru requestReuse
	h := ru.header(3)
	if again := ru.header(3); reflect.ValueOf(again).Pointer() != reflect.ValueOf(h).Pointer() {
		t.Errorf("header() = a new map, want the previous one")
	}
	// Grown past its first size (one group), within the limit: kept, emptied.
	for i := range 20 {
		h[fmt.Sprint("K", i)] = nil
	}
	if again := ru.header(3); reflect.ValueOf(again).Pointer() != reflect.ValueOf(h).Pointer() || len(again) != 0 {
		t.Errorf("header() after 20 entries = a new map or a full one (len %d), want the previous one emptied", len(again))
	}
	for i := range maxReusedHeader + 1 {
		h[fmt.Sprint("K", i)] = nil
	}
	if again := ru.header(3); reflect.ValueOf(again).Pointer() == reflect.ValueOf(h).Pointer() || len(again) != 0 {
		t.Errorf("header() after %d entries = the previous map (len %d), want a new empty one", len(h), len(again))
	}
}

// FuzzParseRequestReusing parses two requests with one requestReuse and checks the second
// is what a fresh parse makes of it.
func FuzzParseRequestReusing(f *testing.F) {
	for i, tc := range parseRequestCases {
		f.Add([]byte(tc.in), []byte(parseRequestCases[(i+1)%len(parseRequestCases)].in))
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		if headerSectionEnd(first) < 0 || headerSectionEnd(second) < 0 {
			return
		}
		var ru requestReuse
		parse := reusingParser(&ru)
		if p := runParser(parse, first); p.status == 0 {
			scribble(p.req)
		}
		if d := sameRequest(runParser(parse, second), runParser(parseRequest, second)); d != "" {
			t.Fatalf("parseRequestReusing(%q) after %q: %s", second, first, d)
		}
	})
}

// TestH1ServerRequestReuse serves requests on one connection and checks that each
// handler sees its own request only (a header field or trailer of the one before, or a
// header the handler before added, is absent), that the Request is reused when its
// context did not escape, and that it is not when it did.
func TestH1ServerRequestReuse(t *testing.T) {
	type seen struct {
		req     *http.Request
		header  http.Header
		host    string
		url     string
		cl      int64
		te      []string
		trailer http.Header
		body    string
	}
	var (
		mu   sync.Mutex
		seq  []seen
		escs = map[string]bool{"/escape": true}
	)
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seq = append(seq, seen{req: r, header: r.Header.Clone(), host: r.Host, url: r.URL.String(),
			cl: r.ContentLength, te: slices.Clone(r.TransferEncoding), trailer: r.Trailer.Clone(), body: string(b)})
		mu.Unlock()
		if escs[r.URL.Path] {
			_ = r.Context().Done()
		}
		r.Header.Set("X-Added-By-Handler", "1")
		fmt.Fprint(w, "ok")
	}), nil)
	reqs := []string{
		"GET /one?q=1 HTTP/1.1\r\nHost: one\r\nX-Secret: s\r\nCookie: c=1\r\n\r\n",
		"GET /two HTTP/1.1\r\nHost: two\r\n\r\n",
		"GET /escape HTTP/1.1\r\nHost: three\r\nX-Three: 3\r\n\r\n",
		"PUT /four HTTP/1.1\r\nHost: four\r\nContent-Length: 2\r\n\r\nhi",
		"POST /five HTTP/1.1\r\nHost: five\r\nX-Secret: s\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: t\r\n\r\n",
		"GET /six HTTP/1.1\r\nHost: six\r\n\r\n",
	}
	want := []seen{
		{header: http.Header{"X-Secret": {"s"}, "Cookie": {"c=1"}}, host: "one", url: "/one?q=1"},
		{header: http.Header{}, host: "two", url: "/two"},
		{header: http.Header{"X-Three": {"3"}}, host: "three", url: "/escape"},
		{header: http.Header{"Content-Length": {"2"}}, host: "four", url: "/four", cl: 2, body: "hi"},
		{header: http.Header{"X-Secret": {"s"}}, host: "five", url: "/five", cl: -1, te: []string{"chunked"},
			trailer: http.Header{"X-T": {"t"}}, body: "abc"},
		{header: http.Header{}, host: "six", url: "/six"},
	}
	c := dial(t, addr)
	br := bufio.NewReader(c)
	for _, r := range reqs {
		exchange(t, c, br, r)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seq) != len(want) {
		t.Fatalf("handled %d requests, want %d", len(seq), len(want))
	}
	for i, g := range seq {
		w := want[i]
		if !reflect.DeepEqual(g.header, w.header) || g.host != w.host || g.url != w.url || g.cl != w.cl ||
			!reflect.DeepEqual(g.te, w.te) || g.body != w.body {
			t.Errorf("request %d: Header, Host, URL, ContentLength, TransferEncoding, body = %v, %q, %q, %d, %q, %q, want %v, %q, %q, %d, %q, %q",
				i+1, g.header, g.host, g.url, g.cl, g.te, g.body, w.header, w.host, w.url, w.cl, w.te, w.body)
		}
		if !reflect.DeepEqual(g.trailer, w.trailer) {
			t.Errorf("request %d: Trailer = %v, want %v", i+1, g.trailer, w.trailer)
		}
	}
	// Requests 1 and 2 did not escape: 2 and 3 fill the same Request. 3 escaped: 4 gets
	// a new one. 4 and 5 had a body (which a transport may still be sending): 5 and 6
	// get new ones too.
	if seq[1].req != seq[0].req || seq[2].req != seq[1].req {
		t.Errorf("requests 1 to 3 have distinct Requests, want one reused")
	}
	if seq[3].req == seq[2].req {
		t.Errorf("request 4 reuses the Request of request 3, whose context escaped")
	}
	if seq[4].req == seq[3].req || seq[5].req == seq[4].req {
		t.Errorf("requests 5 and 6 reuse the Request of the request before, which had a body")
	}
}

// TestProxyRequestReuse sends requests on one connection through the Handler and checks
// that the upstream sees each request's own header: a field of the request before, or
// the X-Request-Id generated for it, does not come back.
func TestProxyRequestReuse(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []http.Header
	)
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Clone())
		mu.Unlock()
	}))
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	t.Cleanup(tr.CloseIdleConnections)
	addr, _ := startH1(t, ServerOptions{}, NewHandler(Options{Direction: telemetry.Outbound, Name: "test",
		Upstream: upstreamOf(backend), Transport: tr, RequestTimeout: 5 * time.Second,
		Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")}), nil)
	reqs := []string{
		"GET /1 HTTP/1.1\r\nHost: a\r\nX-Secret: s\r\nCookie: c=1\r\n\r\n",
		"GET /2 HTTP/1.1\r\nHost: a\r\nX-Request-Id: given\r\n\r\n",
		"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
	}
	c := dial(t, addr)
	br := bufio.NewReader(c)
	for _, r := range reqs {
		resp := exchange(t, c, br, r)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, want 200", resp.StatusCode)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("the upstream got %d requests, want 3", len(seen))
	}
	for i, h := range seen {
		if got, want := h.Get("X-Secret"), map[int]string{0: "s"}[i]; got != want {
			t.Errorf("request %d: X-Secret = %q, want %q", i+1, got, want)
		}
		if got, want := h.Get("Cookie"), map[int]string{0: "c=1"}[i]; got != want {
			t.Errorf("request %d: Cookie = %q, want %q", i+1, got, want)
		}
	}
	id1, id2, id3 := seen[0].Get("X-Request-Id"), seen[1].Get("X-Request-Id"), seen[2].Get("X-Request-Id")
	if id2 != "given" || id1 == "" || id3 == "" || id1 == id3 || id1 == "given" || id3 == "given" {
		t.Errorf("X-Request-Id = %q, %q, %q, want a generated one, \"given\", another generated one", id1, id2, id3)
	}
}

// TestH1ServerSharedClock checks the readings of the clock H1Server shares with its
// handler: requestStart is the server's reading taken before the handler ran, and the
// response's Date is the time the handler gave requestEnd when the header goes out after
// the handler (the clock's otherwise).
func TestH1ServerSharedClock(t *testing.T) {
	past := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	var (
		mu     sync.Mutex
		starts []time.Time
		ins    []time.Time
	)
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := time.Now()
		mu.Lock()
		starts, ins = append(starts, requestStart(r)), append(ins, in)
		mu.Unlock()
		switch r.URL.Path {
		case "/end":
			requestEnd(r, past)
		case "/flushed":
			w.(http.Flusher).Flush() // the header goes out now
			requestEnd(r, past)
		}
	}), nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		path     string
		wantPast bool
	}{
		{"/end", true},
		{"/none", false},
		{"/flushed", false},
		{"/end", true},
		// Refused before the handler (and closing the connection): the clock's time,
		// not the handler's before it.
		{"/expect", false},
	} {
		before := time.Now()
		expect := ""
		if tc.path == "/expect" {
			expect = "Expect: something\r\n"
		}
		resp := exchange(t, c, br, fmt.Sprintf("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", tc.path, expect))
		after := time.Now()
		date, err := http.ParseTime(resp.Header.Get("Date"))
		if err != nil {
			t.Fatalf("%s: Date %q: %v", tc.path, resp.Header.Get("Date"), err)
		}
		if tc.wantPast {
			if !date.Equal(past) {
				t.Errorf("%s: Date = %v, want the handler's end %v", tc.path, date, past)
			}
		} else if date.Before(before.Truncate(time.Second)) || date.After(after) {
			t.Errorf("%s: Date = %v, want between %v and %v", tc.path, date, before, after)
		}
		if tc.path == "/expect" {
			if resp.StatusCode != http.StatusExpectationFailed {
				t.Errorf("%s: status = %d, want %d", tc.path, resp.StatusCode, http.StatusExpectationFailed)
			}
			continue
		}
		mu.Lock()
		start, in := starts[len(starts)-1], ins[len(ins)-1]
		mu.Unlock()
		if start.Before(before) || start.After(in) {
			t.Errorf("%s: requestStart() = %v, want between the request's sending %v and the handler's start %v", tc.path, start, before, in)
		}
	}
	// Outside H1Server, requestStart reads the clock.
	before := time.Now()
	if got := requestStart(httptest.NewRequest("GET", "/", nil)); got.Before(before) || got.After(time.Now()) {
		t.Errorf("requestStart() outside H1Server = %v, want now", got)
	}
}

// TestH1ServerRequestAllocs measures what H1Server allocates per request on a kept-alive
// connection, with a handler that allocates nothing and a client that writes a fixed
// request and reads the fixed-size response into a fixed buffer: one allocation, the
// copy of the request's head (its strings outlive the request), for a request without a
// body as for one with a Content-Length.
func TestH1ServerRequestAllocs(t *testing.T) {
	// The handler reads the body and answers "ok" (the server adds its Content-Length and
	// Content-Type), allocating nothing itself.
	ok := []byte("ok")
	var (
		mu  sync.Mutex
		buf = make([]byte, 64) // a local array would escape through Body.Read
	)
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		for {
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
		}
		_, _ = w.Write(ok)
	}), nil)
	for _, tc := range []struct {
		name string
		req  string
		max  float64 // allocations per request
	}{
		// The head's copy.
		{"GET", "GET /a?b=c HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nAccept: */*\r\nX-Request-Id: 0123\r\n\r\n", 1},
		// A request with a body lends no storage to the next one: the head's copy, the
		// Request, URL and values, the header map and its group.
		{"POST", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world", 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			req := []byte(tc.req)
			// The response's length, learnt once (the Date header is of fixed width): its
			// head up to the empty line, and the 2 bytes of its body.
			if _, err := c.Write(req); err != nil {
				t.Fatal(err)
			}
			var resp []byte
			one := make([]byte, 1)
			for !strings.HasSuffix(string(resp), "\r\n\r\nok") {
				if _, err := io.ReadFull(c, one); err != nil {
					t.Fatal(err)
				}
				resp = append(resp, one[0])
			}
			buf := make([]byte, len(resp))
			allocs := testing.AllocsPerRun(200, func() {
				if _, err := c.Write(req); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatal(err)
				}
			})
			if !strings.HasSuffix(string(buf), "\r\n\r\nok") {
				t.Fatalf("last response = %q, want one like %q", buf, resp)
			}
			if allocs > tc.max {
				t.Errorf("%v allocations per request, want at most %v", allocs, tc.max)
			}
		})
	}
}
