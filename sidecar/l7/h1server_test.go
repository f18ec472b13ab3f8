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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// startH1 serves h with an H1Server on a loopback port. HTTP/2 connections go to h2 (closed
// when nil). The server is shut down when the test ends.
func startH1(t *testing.T, o ServerOptions, h http.Handler, h2 func(net.Conn) bool) (string, *H1Server) {
	t.Helper()
	if o.ReadHeaderTimeout == 0 {
		o.ReadHeaderTimeout = 5 * time.Second
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = time.Minute
	}
	if o.MaxHeaderBytes == 0 {
		o.MaxHeaderBytes = 8 << 10
	}
	if h2 == nil {
		h2 = func(c net.Conn) bool { _ = c.Close(); return true }
	}
	s := NewH1Server(o, h, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !s.ServeConn(c, h2) {
				_ = c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		<-accepted
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v, want nil", err)
		}
	})
	return ln.Addr().String(), s
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echoHandler answers with the request's method, path, body and trailer X-T.
func echoHandler(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s %s %s %s", r.Method, r.URL.Path, b, r.Trailer.Get("X-T"))
}

type wantResp struct {
	status  int
	body    string
	headers map[string]string // "" means absent
}

func TestH1ServerExchanges(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("/", echoHandler)
	mux.HandleFunc("/nocontent", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/notmodified", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"x"`)
		w.WriteHeader(http.StatusNotModified)
	})
	mux.HandleFunc("/close", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		_, _ = io.WriteString(w, "bye")
	})
	mux.HandleFunc("/big", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Repeat("b", 10000))
	})
	mux.HandleFunc("/ignore", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ignored") })
	mux.HandleFunc("/trailer", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		_, _ = io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "late")
	})
	mux.HandleFunc("/guard", func(w http.ResponseWriter, r *http.Request) {
		if guardFrom(r.Context()).takeConflict() {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		_, _ = io.WriteString(w, "clean")
	})
	addr, _ := startH1(t, ServerOptions{MaxHeaderBytes: 1024}, mux, nil)

	ok := func(body string) wantResp { return wantResp{status: 200, body: body} }
	for _, tc := range []struct {
		name      string
		req       string // one write; may hold several pipelined requests
		head      bool   // responses are to HEAD requests
		want      []wantResp
		wantClose bool // the server closes the connection after the responses
	}{
		{name: "keep-alive pipelined", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{ok("GET /a  "), ok("POST /b abc "), {status: 200, body: "GET /c  ", headers: map[string]string{"Content-Length": "8", "Content-Type": "text/plain"}}}},
		{name: "http/1.0 closes", req: "GET /a HTTP/1.0\r\n\r\n", want: []wantResp{{status: 200, body: "GET /a  ", headers: map[string]string{"Connection": ""}}}, wantClose: true},
		{name: "http/1.0 keep-alive", req: "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
			want: []wantResp{{status: 200, body: "GET /a  ", headers: map[string]string{"Connection": "keep-alive"}}, ok("GET /b  ")}, wantClose: true},
		{name: "http/1.0 large body is close-delimited", req: "GET /big HTTP/1.0\r\n\r\n",
			want: []wantResp{{status: 200, body: strings.Repeat("b", 10000), headers: map[string]string{"Transfer-Encoding": "", "Content-Length": ""}}}, wantClose: true},
		{name: "client asks close", req: "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 200, body: "GET /a  ", headers: map[string]string{"Connection": "close"}}}, wantClose: true},
		{name: "handler asks close", req: "GET /close HTTP/1.1\r\nHost: x\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 200, body: "bye", headers: map[string]string{"Connection": "close"}}}, wantClose: true},
		{name: "chunked body with trailer", req: "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: tt\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{ok("POST /c abcde tt"), ok("GET /after  ")}},
		{name: "large response is chunked", req: "GET /big HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 200, body: strings.Repeat("b", 10000), headers: map[string]string{"Transfer-Encoding": "chunked"}}}},
		{name: "head keeps content-length", req: "HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nHEAD /big HTTP/1.1\r\nHost: x\r\n\r\n", head: true,
			want: []wantResp{{status: 200, headers: map[string]string{"Content-Length": "9"}}, {status: 200, headers: map[string]string{"Content-Length": "", "Transfer-Encoding": ""}}}},
		{name: "204 and 304 have no body", req: "GET /nocontent HTTP/1.1\r\nHost: x\r\n\r\nGET /notmodified HTTP/1.1\r\nHost: x\r\n\r\nGET /a HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 204, headers: map[string]string{"Content-Length": ""}}, {status: 304, headers: map[string]string{"Etag": `"x"`}}, ok("GET /a  ")}},
		{name: "unread body drained", req: "POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{ok("ignored"), ok("GET /a  ")}},
		{name: "response trailers", req: "GET /trailer HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 200, body: "body", headers: map[string]string{"Transfer-Encoding": "chunked"}}}},
		{name: "date header", req: "GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 200, body: "GET /a  ", headers: map[string]string{"Date": time.Now().UTC().Format(http.TimeFormat)[:16]}}}},
		{name: "headers too large", req: "GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("x", 6000) + "\r\n\r\n",
			want: []wantResp{{status: 431, headers: map[string]string{"Connection": "close"}}}, wantClose: true},
		{name: "malformed request line", req: "THIS IS NOT HTTP\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 400, headers: map[string]string{"Connection": "close", "Proxy-Status": "ferry; error=http_request_error"}}}, wantClose: true},
		{name: "short garbage", req: "GARBAGE\r\n\r\n", want: []wantResp{{status: 400}}, wantClose: true},
		{name: "missing host", req: "GET /a HTTP/1.1\r\n\r\n", want: []wantResp{{status: 400}}, wantClose: true},
		// net/http joins a folded line to the previous field, and refuses a fold with nothing before it.
		{name: "obs-fold joined", req: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\n\r\n", want: []wantResp{ok("GET /a  ")}},
		{name: "obs-fold first", req: "GET /a HTTP/1.1\r\n Host: x\r\n\r\n", want: []wantResp{{status: 400}}, wantClose: true},
		{name: "two content-lengths", req: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", want: []wantResp{{status: 400}}, wantClose: true},
		{name: "bad content-length", req: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", want: []wantResp{{status: 400}}, wantClose: true},
		{name: "unknown transfer-encoding", req: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", want: []wantResp{{status: 501}}, wantClose: true},
		{name: "http/2 version on h1", req: "GET /a HTTP/2.0\r\nHost: x\r\n\r\n", want: []wantResp{{status: 505}}, wantClose: true},
		{name: "expect other than continue", req: "GET /a HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", want: []wantResp{{status: 417}}, wantClose: true},
		{name: "options star", req: "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", want: []wantResp{{status: 200, headers: map[string]string{"Content-Length": "0"}}}},
		{name: "guard: clean request", req: "POST /guard HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", want: []wantResp{ok("clean")}},
		{name: "guard: TE with CL", req: "POST /guard HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /guard HTTP/1.1\r\nHost: x\r\n\r\n",
			want: []wantResp{{status: 400}, ok("clean")}},
		{name: "guard: TE on HTTP/1.0", req: "POST /guard HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", want: []wantResp{{status: 400}}, wantClose: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			if _, err := io.WriteString(c, tc.req); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			for i, want := range tc.want {
				method := "GET"
				if tc.head {
					method = "HEAD"
				}
				resp, err := http.ReadResponse(br, &http.Request{Method: method})
				if err != nil {
					t.Fatalf("response %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatalf("response %d body: %v", i, err)
				}
				if resp.StatusCode != want.status {
					t.Errorf("response %d: status = %d (%q), want %d", i, resp.StatusCode, body, want.status)
				}
				if want.body != "" || want.status == 200 && !tc.head {
					if string(body) != want.body {
						t.Errorf("response %d: body = %q, want %q", i, body, want.body)
					}
				}
				for k, v := range want.headers {
					got := resp.Header.Get(k)
					if k == "Connection" && v == "close" && resp.Close {
						got = "close" // http.ReadResponse takes it out of the header
					}
					if k == "Transfer-Encoding" && len(resp.TransferEncoding) > 0 {
						got = resp.TransferEncoding[0]
					}
					if k == "Content-Length" && got == "" && resp.ContentLength >= 0 && !tc.head && resp.StatusCode != 204 && resp.StatusCode != 304 {
						got = fmt.Sprint(resp.ContentLength)
					}
					if !strings.HasPrefix(got, v) || v == "" && got != "" {
						t.Errorf("response %d: %s = %q, want %q", i, k, got, v)
					}
				}
				if tc.name == "response trailers" {
					if resp.Trailer.Get("X-Sum") != "42" || resp.Trailer.Get("X-Late") != "late" {
						t.Errorf("trailers = %v, want X-Sum 42 and X-Late late", resp.Trailer)
					}
				}
			}
			_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, err := br.Read(make([]byte, 1))
			closed := errors.Is(err, io.EOF)
			if n > 0 {
				t.Errorf("unexpected bytes after the responses")
			}
			if closed != tc.wantClose {
				t.Errorf("connection closed = %v (%v), want %v", closed, err, tc.wantClose)
			}
		})
	}
}

// TestH1ServerLongHeaders checks a header section longer than the pooled read buffer but
// within MaxHeaderBytes.
func TestH1ServerLongHeaders(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{MaxHeaderBytes: 64 << 10}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = fmt.Fprint(w, len(r.Header.Get("X-Big")))
	}), nil)
	c := dial(t, addr)
	big := strings.Repeat("y", 20000)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: "+big+"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Big: ab\r\n\r\n")
	br := bufio.NewReader(c)
	for i, want := range []string{"20000", "2"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("response %d = %d %q, want 200 %q", i, resp.StatusCode, b, want)
		}
	}
}

func TestH1ServerExpectContinue(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(echoHandler), nil)
	c := dial(t, addr)
	_, _ = io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line = %q, %v; want HTTP/1.1 100 Continue", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("after 100 Continue: %q, want a blank line", blank)
	}
	_, _ = io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "POST /up hello " {
		t.Errorf("response = %d %q, want 200 %q", resp.StatusCode, b, "POST /up hello ")
	}

	// A handler that answers without reading the body: no 100, and the connection closes.
	addr2, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusForbidden)
	}), nil)
	c2 := dial(t, addr2)
	_, _ = io.WriteString(c2, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden || !resp.Close {
		t.Errorf("response = %d Close %v, want 403 close", resp.StatusCode, resp.Close)
	}
}

func TestH1ServerInformational(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		_, _ = io.WriteString(w, "final")
	}), nil)
	c := dial(t, addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusEarlyHints || resp.Header.Get("Link") == "" {
		t.Fatalf("first response = %d Link %q, want 103 with Link", resp.StatusCode, resp.Header.Get("Link"))
	}
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "final" || resp.Header.Get("Link") != "" {
		t.Errorf("final response = %d %q Link %q, want 200 \"final\" without Link", resp.StatusCode, b, resp.Header.Get("Link"))
	}
}

func TestH1ServerStreaming(t *testing.T) {
	seen := make(chan struct{})
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("Flush() = %v, want nil", err)
		}
		select {
		case <-seen:
		case <-time.After(5 * time.Second):
			t.Error("the client did not see the first chunk before the handler ended")
		}
		_, _ = io.WriteString(w, "second")
	}), nil)
	c := dial(t, addr)
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 5)
	if _, err := io.ReadFull(resp.Body, first); err != nil || string(first) != "first" {
		t.Fatalf("first chunk = %q, %v; want \"first\"", first, err)
	}
	close(seen)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "second" || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("rest = %q (%v), want \"second\" chunked", rest, resp.TransferEncoding)
	}
}

func TestH1ServerHijack(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Upgrade", "echo")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack() = %v, want nil", err)
			return
		}
		defer conn.Close()
		line, err := brw.ReadString('\n')
		if err != nil {
			t.Errorf("reading after Hijack: %v", err)
			return
		}
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}), nil)
	c := dial(t, addr)
	// The bytes after the request arrive with it: they must reach the hijacker.
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\nping\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Upgrade") != "echo" {
		t.Fatalf("response = %d Upgrade %q, want 101 echo", resp.StatusCode, resp.Header.Get("Upgrade"))
	}
	line, err := br.ReadString('\n')
	if err != nil || line != "echo: ping\n" {
		t.Errorf("after upgrade = %q, %v; want \"echo: ping\\n\"", line, err)
	}
}

func TestH1ServerTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    ServerOptions
		send string
	}{
		{name: "idle", o: ServerOptions{IdleTimeout: 200 * time.Millisecond}, send: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "header", o: ServerOptions{ReadHeaderTimeout: 200 * time.Millisecond}, send: "GET / HTTP/1.1\r\nHost: x\r\n"},
		{name: "first byte", o: ServerOptions{ReadHeaderTimeout: 200 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := startH1(t, tc.o, http.HandlerFunc(echoHandler), nil)
			c := dial(t, addr)
			start := time.Now()
			_, _ = io.WriteString(c, tc.send)
			_, err := io.ReadAll(c) // a response (idle case) then EOF
			if err != nil {
				t.Fatalf("read: %v, want EOF", err)
			}
			if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
				t.Errorf("closed after %v, want about 200ms", d)
			}
		})
	}
}

func TestH1ServerClientGone(t *testing.T) {
	for _, tc := range []struct {
		name, req string
		quick     int // quick requests on the connection first (each stops the watch's timer)
	}{
		{name: "no body", req: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"},
		{name: "body read", req: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"},
		{name: "after quick requests", req: "GET / HTTP/1.1\r\nHost: x\r\n\r\n", quick: 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cancelled := make(chan error, 1)
			started := make(chan struct{})
			addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/quick" {
					_, _ = io.WriteString(w, "ok")
					return
				}
				_, _ = io.ReadAll(r.Body)
				close(started)
				select {
				case <-r.Context().Done():
					cancelled <- r.Context().Err()
				case <-time.After(5 * time.Second):
					cancelled <- nil
				}
			}), nil)
			c := dial(t, addr)
			br := bufio.NewReader(c)
			for range tc.quick {
				exchange(t, c, br, "GET /quick HTTP/1.1\r\nHost: x\r\n\r\n")
			}
			_, _ = io.WriteString(c, tc.req)
			<-started
			_ = c.Close()
			if err := <-cancelled; !errors.Is(err, context.Canceled) {
				t.Errorf("request context after the client left = %v, want %v", err, context.Canceled)
			}
		})
	}
}

// TestH1ServerPipelinedWhileWatched checks that a pipelined request read by the client-gone
// watch is served, not lost.
func TestH1ServerPipelinedWhileWatched(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * h1WatchDelay)
		if err := r.Context().Err(); err != nil {
			t.Errorf("request context = %v, want nil (the client is still there)", err)
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}), nil)
	c := dial(t, addr)
	br := bufio.NewReader(c)
	_, _ = io.WriteString(c, "GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
	time.Sleep(2 * h1WatchDelay) // the watch is reading by now
	_, _ = io.WriteString(c, "GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
	for _, want := range []string{"/one", "/two"} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		if string(b) != want {
			t.Errorf("body = %q, want %q", b, want)
		}
	}
}

func TestH1ServerPanics(t *testing.T) {
	for _, tc := range []struct {
		name string
		v    any
	}{
		{name: "abort", v: http.ErrAbortHandler},
		{name: "other", v: "boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				panic(tc.v)
			}), nil)
			c := dial(t, addr)
			_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
			b, err := io.ReadAll(c)
			if err != nil || len(b) != 0 {
				t.Errorf("after a panic: read %q, %v; want a closed connection and nothing else", b, err)
			}
		})
	}
}

func TestH1ServerHTTP2Dispatch(t *testing.T) {
	got := make(chan string, 1)
	addr, _ := startH1(t, ServerOptions{ReadHeaderTimeout: 100 * time.Millisecond}, http.HandlerFunc(echoHandler), func(c net.Conn) bool {
		go func() {
			defer c.Close()
			b := make([]byte, len(h2Preface)+4)
			_, err := io.ReadFull(c, b[:len(h2Preface)])
			if err == nil {
				time.Sleep(300 * time.Millisecond)
				_, err = io.ReadFull(c, b[len(h2Preface):])
			}
			if err != nil {
				got <- err.Error()
				return
			}
			got <- string(b)
		}()
		return true
	})
	c := dial(t, addr)
	// Sent in two parts: the server must wait for the whole preface. The read deadline used
	// while sniffing (100ms here) must not follow the connection to the HTTP/2 server.
	_, _ = io.WriteString(c, h2Preface[:10])
	time.Sleep(20 * time.Millisecond)
	_, _ = io.WriteString(c, h2Preface[10:])
	time.Sleep(200 * time.Millisecond)
	_, _ = io.WriteString(c, "more")
	if s := <-got; s != h2Preface+"more" {
		t.Errorf("HTTP/2 server read %q, want the preface and what followed", s)
	}
}

func TestH1ServerShutdown(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := NewH1Server(ServerOptions{IdleTimeout: time.Minute}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var refused atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !s.ServeConn(c, nil) {
				refused.Add(1)
				_ = c.Close()
			}
		}
	}()
	idle := dial(t, ln.Addr().String())
	_, _ = io.WriteString(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idleBR := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(idleBR, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("idle connection's first request: %v", err)
	} else {
		_, _ = io.ReadAll(resp.Body)
	}
	busy := dial(t, ln.Addr().String())
	_, _ = io.WriteString(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	<-started

	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	// The idle connection is closed.
	if _, err := idleBR.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection during shutdown: %v, want EOF", err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown() = %v before the in-flight request ended", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	resp, err := http.ReadResponse(bufio.NewReader(busy), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "done" || !resp.Close {
		t.Errorf("in-flight response = %q Close %v, want \"done\" close", b, resp.Close)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown() = %v, want nil", err)
	}
	if s.ServeConn(&net.TCPConn{}, nil) {
		t.Error("ServeConn() after Shutdown = true, want false")
	}
}

func TestH1ServerShutdownCut(t *testing.T) {
	started := make(chan struct{})
	s := NewH1Server(ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done() // cancelled when the drain times out
	}), nil)
	a, b := net.Pipe()
	defer b.Close()
	s.ServeConn(a, nil)
	go func() { _, _ = io.WriteString(b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); _, _ = io.Copy(io.Discard, b) }()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown() = %v, want %v", err, context.DeadlineExceeded)
	}
}

// TestH1ServerHandlerSmuggling runs the l7 Handler on the H1Server: ambiguous framing is
// refused by the Handler with its Proxy-Status, and never reaches the upstream.
func TestH1ServerHandlerSmuggling(t *testing.T) {
	var hits atomic.Int32
	backend := startBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		_, _ = io.WriteString(w, "backend")
	}))
	tr := NewTransport(TransportOptions{ConnectTimeout: time.Second, IdleTimeout: time.Minute, MaxIdleConnsPerHost: 16})
	t.Cleanup(tr.CloseIdleConnections)
	h := NewHandler(Options{Direction: telemetry.Outbound, Name: "test", Upstream: upstreamOf(backend), Transport: tr,
		RequestTimeout: 5 * time.Second, Metrics: telemetry.NewMetrics().HTTP(telemetry.Outbound, "test")})
	addr, _ := startH1(t, ServerOptions{}, h, nil)
	for _, tc := range []struct {
		name, req  string
		wantStatus int
	}{
		{"content_length_then_chunked", "POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"chunked_then_content_length", "POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
		{"chunked_on_http10", "POST / HTTP/1.0\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"clean", "GET / HTTP/1.1\r\nHost: api\r\n\r\n", 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := hits.Load()
			c := dial(t, addr)
			_, _ = io.WriteString(c, tc.req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status = %d (%q), want %d", resp.StatusCode, b, tc.wantStatus)
			}
			reached := hits.Load() != before
			if tc.wantStatus == 400 {
				if ps := resp.Header.Get("Proxy-Status"); !strings.Contains(ps, ErrHTTPRequestError) {
					t.Errorf("Proxy-Status = %q, want %s", ps, ErrHTTPRequestError)
				}
				if reached {
					t.Error("the ambiguous request reached the upstream")
				}
			} else if !reached || string(b) != "backend" {
				t.Errorf("clean request: body %q, reached %v; want \"backend\", true", b, reached)
			}
		})
	}
}

// FuzzH1ServerRequest checks the request reader against http.ReadRequest: it never panics,
// and a request it accepts is one http.ReadRequest accepts and parses the same way; one it
// refuses gets a 4xx/5xx answer.
func FuzzH1ServerRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\nHost: x\n\n",
		"\r\nGET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewH1Server(ServerOptions{MaxHeaderBytes: 1 << 20}, http.NotFoundHandler(), nil)
		c := &h1conn{s: s, rwc: eofConn{}}
		c.cr.c = c
		c.cr.pending = data
		c.br = bufio.NewReaderSize(&c.cr, h1ReadBufferSize)
		got, _, err := c.readRequest()

		want, werr := http.ReadRequest(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			var he *h1Error
			if errors.As(err, &he) {
				if he.status < 400 || he.status > 505 {
					t.Fatalf("refused with status %d", he.status)
				}
			} else if !errors.Is(err, io.EOF) && !isTimeout(err) {
				t.Fatalf("readRequest() error %v is neither an answer nor the end of input", err)
			} else if werr == nil && bytes.Contains(data, []byte("\n\n")) == false && bytes.Contains(data, []byte("\n\r\n")) == false {
				// Incomplete header sections are waited for; http.ReadRequest accepts none either.
				t.Fatalf("readRequest() = %v, http.ReadRequest accepted %q", err, data)
			}
			return
		}
		if werr != nil {
			t.Fatalf("readRequest() accepted what http.ReadRequest refuses (%v): %q", werr, data)
		}
		for k, vv := range got.Header { // what net/http's server checks on top of ReadRequest
			if !httpguts.ValidHeaderFieldName(k) {
				t.Fatalf("readRequest() accepted header name %q", k)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					t.Fatalf("readRequest() accepted header value %q", v)
				}
			}
		}
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.Proto != want.Proto ||
			got.Host != want.Host || got.ContentLength != want.ContentLength || got.Close != want.Close ||
			fmt.Sprint(got.TransferEncoding) != fmt.Sprint(want.TransferEncoding) {
			t.Fatalf("readRequest() = %s %s %s host %q len %d close %v te %v, http.ReadRequest %s %s %s host %q len %d close %v te %v",
				got.Method, got.RequestURI, got.Proto, got.Host, got.ContentLength, got.Close, got.TransferEncoding,
				want.Method, want.RequestURI, want.Proto, want.Host, want.ContentLength, want.Close, want.TransferEncoding)
		}
	})
}

// eofConn is a connection with nothing more to read.
type eofConn struct{ net.Conn }

func (eofConn) Read([]byte) (int, error) { return 0, io.EOF }

// TestH1ServerShutdownHijacked checks that, as with net/http, Shutdown does not wait for a
// hijacked connection (a WebSocket runs as long as its peers want).
func TestH1ServerShutdownHijacked(t *testing.T) {
	hijacked := make(chan net.Conn, 1)
	s := NewH1Server(ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack() = %v, want nil", err)
			return
		}
		hijacked <- c
	}), nil)
	a, b := net.Pipe()
	defer b.Close()
	s.ServeConn(a, nil)
	go func() { _, _ = io.WriteString(b, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") }()
	c := <-hijacked
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v, want nil (the hijacked connection is not the server's)", err)
	}
}

// TestH1ServerBodyLeftUnread checks that a body too long to drain closes the connection
// (announced in the response) rather than being read to its end.
func TestH1ServerBodyLeftUnread(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "not reading that")
	}), nil)
	c := dial(t, addr)
	const size = 4 * h1MaxDrain
	go func() {
		_, _ = io.WriteString(c, fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size))
		_, _ = c.Write(make([]byte, size)) // may fail once the server closes
	}()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "not reading that" || !resp.Close {
		t.Errorf("response = %q Close %v, want \"not reading that\" and Connection: close", b, resp.Close)
	}
}

// TestH1ServerContinueConcurrent reads an Expect: 100-continue body on another goroutine
// while the handler writes its header: both orders must finish (no lock-order deadlock).
func TestH1ServerContinueConcurrent(t *testing.T) {
	addr, _ := startH1(t, ServerOptions{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.ReadAll(r.Body)
		}()
		w.WriteHeader(http.StatusAccepted)
		_ = http.NewResponseController(w).Flush()
		<-done
	}), nil)
	for i := range 20 {
		c := dial(t, addr)
		_, _ = io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("exchange %d: %v", i, err)
		}
		if resp.StatusCode == http.StatusContinue {
			_, _ = io.WriteString(c, "ok")
			if resp, err = http.ReadResponse(br, nil); err != nil {
				t.Fatalf("exchange %d: %v", i, err)
			}
		} else {
			_, _ = io.WriteString(c, "ok") // the handler's reader is still waiting for it
		}
		if resp.StatusCode != http.StatusAccepted {
			t.Errorf("exchange %d: status = %d, want 202", i, resp.StatusCode)
		}
		_, _ = io.ReadAll(resp.Body)
		_ = c.Close()
	}
}
