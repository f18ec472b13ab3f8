package l7

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// idEchoBackend answers every request with its X-Id in the X-Echo header and the body, an
// X-Odd header for odd ids; when the request has X-Empty, with an empty body; when it has
// X-Stream, with a chunked body and a trailer (which http.ReadResponse reads, not
// parseResponse).
func idEchoBackend(t *testing.T) string {
	return startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Id")
		w.Header().Set("X-Echo", id)
		if n, _ := strconv.Atoi(id); n%2 == 1 {
			w.Header().Set("X-Odd", id)
		}
		if r.Header.Get("X-Empty") != "" {
			w.Header().Set("Content-Length", "0")
			return
		}
		if r.Header.Get("X-Stream") != "" {
			w.Header().Set("Trailer", "X-Tail")
			_, _ = io.WriteString(w, id)
			w.(http.Flusher).Flush()
			w.Header().Set("X-Tail", id)
			return
		}
		_, _ = io.WriteString(w, id)
	}))
}

// TestH1ResponseRecycledPerConnection checks that a response given back with recycle is
// the next one read on its connection, emptied of the last response's fields, and that one
// not given back is never reused.
func TestH1ResponseRecycledPerConnection(t *testing.T) {
	backend := idEchoBackend(t)
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 1})
	get := func(id int) (*http.Response, *h1Body) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+backend+"/", nil)
		req.Header.Set("X-Id", strconv.Itoa(id))
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, ok := resp.Body.(*h1Body)
		if !ok || b.pr == nil {
			t.Fatalf("response %d: body %T, want an *h1Body of a parsedResponse", id, resp.Body)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || string(body) != strconv.Itoa(id) {
			t.Fatalf("response %d: body %q, %v, want %q", id, body, err, strconv.Itoa(id))
		}
		if got := resp.Header.Get("X-Echo"); got != strconv.Itoa(id) {
			t.Fatalf("response %d: X-Echo = %q, want %q", id, got, strconv.Itoa(id))
		}
		if got, want := resp.Header.Get("X-Odd") != "", id%2 == 1; got != want {
			t.Fatalf("response %d: has X-Odd = %v, want %v (header %v)", id, got, want, resp.Header)
		}
		return resp, b
	}
	_, b1 := get(1)
	pr1 := b1.pr
	b1.recycle()
	_, b2 := get(2) // X-Odd of response 1 must be gone
	if b2.pr != pr1 {
		t.Errorf("response 2 read into %p, want the recycled %p", b2.pr, pr1)
	}
	_, b3 := get(3) // response 2 not given back
	if b3.pr == b2.pr {
		t.Errorf("response 3 read into %p, the response 2 still holds", b3.pr)
	}
	b3.recycle()
	// An empty body is at its end at once, and is recycled as well.
	req, _ := http.NewRequest(http.MethodGet, "http://"+backend+"/", nil)
	req.Header.Set("X-Empty", "1")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	b4, ok := resp.Body.(*h1Body)
	if !ok || b4.pr != b3.pr || resp.ContentLength != 0 {
		t.Fatalf("empty response: body %T, length %d, want the recycled response's h1Body, length 0", resp.Body, resp.ContentLength)
	}
	if n, err := resp.Body.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("empty response: Read() = %d, %v, want 0, EOF", n, err)
	}
	if err := resp.Body.Close(); err != nil {
		t.Fatalf("empty response: Close() = %v", err)
	}
	b4.recycle()
	_, b5 := get(5)
	if b5.pr != b3.pr {
		t.Errorf("response 5 read into %p, want the recycled %p", b5.pr, b3.pr)
	}
}

// TestH1UnrecycledResponseSurvivesReuse reads a response's header and trailer from another
// goroutine while its connection, back in the pool at the end of the body, serves further
// requests whose responses are recycled: the first response is never touched (the race
// detector would see it).
func TestH1UnrecycledResponseSurvivesReuse(t *testing.T) {
	backend := idEchoBackend(t)
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 1})
	send := func(id int, stream bool) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+backend+"/", nil)
		req.Header.Set("X-Id", strconv.Itoa(id))
		if stream {
			req.Header.Set("X-Stream", "1")
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := send(1, false)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if first.StatusCode != 200 || first.Header.Get("X-Echo") != "1" || first.Header.Get("X-Odd") != "1" ||
				len(first.Header) != 5 || first.Trailer != nil {
				t.Errorf("response 1 changed: %d %v %v", first.StatusCode, first.Header, first.Trailer)
				return
			}
		}
	}()
	for id := 2; id < 40; id++ {
		resp := send(id, id%5 == 0)
		if got := resp.Header.Get("X-Echo"); got != strconv.Itoa(id) {
			t.Errorf("response %d: X-Echo = %q", id, got)
		}
		if b, ok := resp.Body.(*h1Body); ok {
			b.recycle()
		}
	}
	close(stop)
	wg.Wait()
}

// TestForwardRecyclesResponsesSafely sends requests from several clients through an
// H1Server and the Handler over few upstream connections, so that responses are recycled
// from one request to another while the H1Server still writes the earlier response's
// header (it does so after the handler returns): every client must get its own header,
// trailer and body, race-clean.
func TestForwardRecyclesResponsesSafely(t *testing.T) {
	backend := idEchoBackend(t)
	tr := NewTransport(TransportOptions{Protocol: ProtocolHTTP1, ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 2})
	t.Cleanup(tr.CloseIdleConnections)
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend), Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")})
	addr, _ := startH1(t, ServerOptions{}, h, nil)
	const clients, requests = 6, 60
	kind := func(id int) (stream, empty bool) { return id%7 == 3, id%5 == 1 && id%7 != 3 }
	keepAliveClients(t, addr, clients, requests, func(c, i int) string {
		id := c*1000 + i
		extra := ""
		switch stream, empty := kind(i); {
		case stream:
			extra = "X-Stream: 1\r\n"
		case empty:
			extra = "X-Empty: 1\r\n"
		}
		return fmt.Sprintf("GET / HTTP/1.1\r\nHost: test\r\nX-Id: %d\r\n%s\r\n", id, extra)
	}, func(c, i int, resp *http.Response, body []byte, _ int) error {
		id := c*1000 + i
		stream, empty := kind(i)
		want, wantBody := strconv.Itoa(id), strconv.Itoa(id)
		if empty {
			wantBody = ""
		}
		switch {
		case string(body) != wantBody:
			return fmt.Errorf("body %q, want %q", body, wantBody)
		case resp.Header.Get("X-Echo") != want:
			return fmt.Errorf("X-Echo = %q, want %q", resp.Header.Get("X-Echo"), want)
		case (resp.Header.Get("X-Odd") == want) != (id%2 == 1) || id%2 == 0 && resp.Header.Get("X-Odd") != "":
			return fmt.Errorf("X-Odd = %q", resp.Header.Get("X-Odd"))
		case stream && resp.Trailer.Get("X-Tail") != want:
			return fmt.Errorf("trailer X-Tail = %q, want %q", resp.Trailer.Get("X-Tail"), want)
		}
		return nil
	})
}

// FuzzParseResponseRecycled: parsing a head into a parsedResponse recycled from an earlier
// response (with more fields than most) gives what parsing it into a new one gives.
func FuzzParseResponseRecycled(f *testing.F) {
	for _, s := range responseSeeds {
		f.Add([]byte(s))
	}
	const earlier = "HTTP/1.1 404 Not Found\r\nA: 1\r\nB: 2\r\nC: 3\r\nSet-Cookie: x\r\nSet-Cookie: y\r\n" +
		"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nno"
	f.Fuzz(func(t *testing.T, in []byte) {
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		parse := func(b []byte, pr *parsedResponse) (*parsedResponse, bool) {
			br := bufio.NewReaderSize(bytes.NewReader(b), 4096)
			_, _ = br.Peek(1)
			return parseResponse(br, req, pr)
		}
		fresh, ok := parse(in, nil)
		pr, eok := parse([]byte(earlier), nil)
		if !eok {
			t.Fatalf("parseResponse(%q) declined", earlier)
		}
		pr.reset()
		recycled, rok := parse(in, pr)
		if rok != ok {
			t.Fatalf("parseResponse(%q) ok = %v into a recycled response, %v into a new one", in, rok, ok)
		}
		if !ok {
			// Declined, perhaps half-filled: once reset, it reads the next response right.
			pr.reset()
			again, _ := parse([]byte(earlier), pr)
			want, _ := parse([]byte(earlier), nil)
			got, wantResp := again.resp, want.resp
			got.Body, wantResp.Body = nil, nil
			if again != pr || !reflect.DeepEqual(got, wantResp) {
				t.Fatalf("after declining %q, parseResponse into the reset response =\n%#v\nwant\n%#v", in, got, wantResp)
			}
			return
		}
		if recycled != pr {
			t.Fatalf("parseResponse(%q) did not use the recycled response", in)
		}
		got, want := recycled.resp, fresh.resp
		got.Body, want.Body = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("parseResponse(%q) into a recycled response =\n%#v\ninto a new one:\n%#v", in, got, want)
		}
	})
}

// TestParseResponseAllocations checks that a head parsed into a recycled response costs
// one allocation when it fits one of newHead's sizes, two otherwise, and that it reads as
// http.ReadResponse reads it either way.
func TestParseResponseAllocations(t *testing.T) {
	head := func(fields, valueLen int) string {
		var b strings.Builder
		b.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n")
		for i := 1; i < fields; i++ {
			fmt.Fprintf(&b, "X-F%d: %s\r\n", i, strings.Repeat("v", valueLen))
		}
		return b.String() + "\r\nok"
	}
	for _, tc := range []struct {
		name   string
		in     string
		allocs float64
	}{
		{"2 fields", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok", 1},
		{"4 fields, 117 bytes", head(4, 19), 1},
		{"4 fields, 180 bytes", head(4, 40), 1}, // the next size
		{"8 fields", head(8, 20), 1},
		{"12 fields", head(12, 30), 1},
		{"16 fields", head(16, 50), 1},
		{"17 fields", head(17, 2), 2},
		{"3 fields, 1100 bytes", head(3, 520), 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			parse := func(pr *parsedResponse) *parsedResponse {
				br := bufio.NewReaderSize(strings.NewReader(tc.in), 4096)
				_, _ = br.Peek(1)
				got, ok := parseResponse(br, req, pr)
				if !ok {
					t.Fatalf("parseResponse(%q) declined", tc.in)
				}
				return got
			}
			pr := parse(nil)
			want, err := http.ReadResponse(bufio.NewReader(strings.NewReader(tc.in)), req)
			if err != nil {
				t.Fatal(err)
			}
			if got := pr.resp; got.Status != want.Status || !reflect.DeepEqual(got.Header, want.Header) {
				t.Fatalf("parseResponse() = %q %v, want %q %v", got.Status, got.Header, want.Status, want.Header)
			}
			// The bufio.Reader is made outside: only parseResponse's allocations count.
			sr := strings.NewReader(tc.in)
			br := bufio.NewReaderSize(sr, 4096)
			allocs := testing.AllocsPerRun(50, func() {
				pr.reset()
				sr.Reset(tc.in)
				br.Reset(sr)
				_, _ = br.Peek(1)
				if _, ok := parseResponse(br, req, pr); !ok {
					t.Fatal("declined")
				}
			})
			if allocs != tc.allocs {
				t.Errorf("parseResponse() into a recycled response: %v allocs, want %v", allocs, tc.allocs)
			}
		})
	}
}

// TestH1BodyWriterReusedPerConnection sends request bodies of known length one after the
// other on one connection, which keeps its body writer from one to the next: each body
// arrives whole, and the writer of a request whose body failed (shorter than its length)
// leaves with its connection.
func TestH1BodyWriterReusedPerConnection(t *testing.T) {
	addr, ln := startCounted(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		_, _ = w.Write(body)
	}), nil)
	tr := newTestTransport(t, TransportOptions{MaxIdleConnsPerHost: 1})
	var writer *h1BodyWriter
	for i, tc := range []struct {
		body   string
		length int64
		fails  bool
		dials  int32 // connections dialed so far, after the request
	}{
		{"a", 1, false, 1},
		{strings.Repeat("b", 40000), 40000, false, 1}, // more than one write
		{"cc", 2, false, 1},
		{"short", 10, true, 1},
		{"dd", 2, false, 2},
		{"eee", 3, false, 2},
	} {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", io.NopCloser(strings.NewReader(tc.body)))
		req.ContentLength = tc.length
		resp, err := tr.RoundTrip(req)
		if tc.fails {
			if err == nil {
				resp.Body.Close()
				t.Fatalf("request %d: RoundTrip() succeeded, want the length mismatch", i)
			}
			writer = nil
		} else {
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			got, err := io.ReadAll(resp.Body)
			if err != nil || string(got) != tc.body {
				t.Fatalf("request %d: the upstream got %d bytes (%v), want %d", i, len(got), err, len(tc.body))
			}
			c := tr.h1.host(addr).take()
			if c == nil {
				t.Fatalf("request %d: no idle connection after the response", i)
			}
			if writer != nil && c.bodyW != writer {
				t.Errorf("request %d: the connection has a new body writer, want the one it had", i)
			}
			writer = c.bodyW
			tr.h1.host(addr).put(c)
		}
		if got := ln.n.Load(); got != tc.dials {
			t.Errorf("request %d: %d connections dialed, want %d", i, got, tc.dials)
		}
	}
}
