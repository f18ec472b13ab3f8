package l7

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestH1ServerCoarseIdleDeadline checks the idle timeout when it is long enough for the
// server to keep its read deadline across bodiless requests (coarseIdle): a handler
// running longer than the idle timeout still answers on a connection that stays usable,
// requests with a body are read without the deadline, pipelined requests are served, and
// an idle connection is still closed after about the idle timeout.
func TestH1ServerCoarseIdleDeadline(t *testing.T) {
	const idle = coarseIdle
	addr, _ := startH1(t, ServerOptions{IdleTimeout: idle}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			time.Sleep(idle + idle/2)
			if err := r.Context().Err(); err != nil {
				// The client-gone watch took the idle deadline for the client leaving.
				http.Error(w, "cancelled: "+err.Error(), http.StatusInternalServerError)
				return
			}
			_, _ = io.WriteString(w, "slow")
		case "/upload":
			b, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			_, _ = io.WriteString(w, "got "+string(b))
		default:
			_, _ = io.WriteString(w, "ok"+r.URL.Path)
		}
	}), nil)
	c := dial(t, addr)
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	get := func(path, want string) {
		t.Helper()
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("write %s: %v", path, err)
		}
		expect(t, br, path, want)
	}
	for range 20 {
		get("/quick", "ok/quick")
	}
	get("/slow", "slow") // longer than the idle timeout, after deadlines were kept
	get("/after", "ok/after")

	// A body sent slowly, over more than the idle timeout, is read without a deadline.
	if _, err := io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(idle + idle/4)
	if _, err := io.WriteString(c, "cd"); err != nil {
		t.Fatal(err)
	}
	expect(t, br, "/upload", "got abcd")

	// Pipelined requests right after a kept deadline.
	get("/quick", "ok/quick")
	if _, err := io.WriteString(c, "GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	expect(t, br, "/p1", "ok/p1")
	expect(t, br, "/p2", "ok/p2")

	// Idle now: the server closes the connection after about the idle timeout (the kept
	// deadline may be up to idle/64 early), not never and not at once.
	start := time.Now()
	_, err := br.ReadByte()
	took := time.Since(start)
	if !errors.Is(err, io.EOF) {
		t.Fatalf("read on the idle connection = %v, want io.EOF (closed by the server)", err)
	}
	if took < idle-idle/64-50*time.Millisecond || took > idle+3*time.Second {
		t.Errorf("idle connection closed after %v, want about %v", took, idle)
	}
}

// expect reads one response from br and checks it is 200 with body want.
func expect(t *testing.T, br *bufio.Reader, what, want string) {
	t.Helper()
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s: reading the response: %v", what, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || strings.TrimSpace(string(b)) != want {
		t.Fatalf("%s: %d %q, %v; want 200 %q", what, resp.StatusCode, b, err, want)
	}
}
