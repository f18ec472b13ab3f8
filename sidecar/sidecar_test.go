package sidecar

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/sidecar/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func parse(t *testing.T, yaml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	return cfg
}

func backend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func drained(t *testing.T, s *Sidecar) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Drain(ctx)
	})
}

// get sends a GET on an existing connection and returns the body.
func get(t *testing.T, c net.Conn, br *bufio.Reader) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestReloadKeepsSocketsAndConnections(t *testing.T) {
	a, b := backend(t, "a"), backend(t, "b")
	out := freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfgA := fmt.Sprintf("service: web\nadmin: {address: %s}\noutbound: [{upstream: api, address: %s}]\nupstreams: [{name: api, endpoints: [%s]}]\n", freeAddr(t), out, a)
	if err := s.Apply(parse(t, cfgA)); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if got := get(t, c, br); got != "a" {
		t.Fatalf("before reload: body = %q, want a", got)
	}
	sock := s.listeners[out].ln

	// New endpoints: the same connection now reaches b; the socket is the same one.
	if err := s.Apply(parse(t, strings.Replace(cfgA, a, b, 1))); err != nil {
		t.Fatal(err)
	}
	if got := get(t, c, br); got != "b" {
		t.Errorf("after reload on a kept-alive connection: body = %q, want b", got)
	}
	if s.listeners[out].ln != sock {
		t.Errorf("listener socket was replaced on reload; want it kept")
	}
}

func TestApplyFailureChangesNothing(t *testing.T) {
	a := backend(t, "a")
	out, busyAddr := freeAddr(t), freeAddr(t)
	busy, err := net.Listen("tcp", busyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s := New(Options{})
	drained(t, s)
	good := parse(t, fmt.Sprintf("service: web\noutbound: [{upstream: api, address: %s}]\nupstreams: [{name: api, endpoints: [%s]}]\n", out, a))
	if err := s.Apply(good); err != nil {
		t.Fatal(err)
	}
	second := freeAddr(t)
	bad := parse(t, fmt.Sprintf("service: web\noutbound: [{upstream: api, address: %s}, {upstream: api, address: %s}, {upstream: api, address: %s}]\nupstreams: [{name: api, endpoints: [%s]}]\n", out, second, busyAddr, a))
	if err := s.Apply(bad); err == nil || !strings.Contains(err.Error(), busyAddr) {
		t.Fatalf("Apply() error = %v, want one naming %s", err, busyAddr)
	}
	if s.Config().Version != good.Version {
		t.Errorf("config version = %s, want the previous %s kept", s.Config().Version, good.Version)
	}
	// The listener bound for the refused config was released again.
	if ln, err := net.Listen("tcp", second); err != nil {
		t.Errorf("address %s still held after a refused Apply: %v", second, err)
	} else {
		ln.Close()
	}
	resp, err := http.Get("http://" + out + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("old listener after refused Apply: status %d, want 200", resp.StatusCode)
	}
}

func TestProtocolSwitchOnSameAddress(t *testing.T) {
	// The backend answers with the X-Forwarded-For it received: Ferry adds one in HTTP mode,
	// while in TCP mode the client's bytes arrive untouched.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "xff="+r.Header.Get("X-Forwarded-For"))
	}))
	t.Cleanup(srv.Close)
	a := srv.Listener.Addr().String()
	out := freeAddr(t)
	s := New(Options{})
	drained(t, s)
	cfg := "service: web\noutbound: [{upstream: api, address: %s, protocol: %s}]\nupstreams: [{name: api, endpoints: [%s]}]\n"
	if err := s.Apply(parse(t, fmt.Sprintf(cfg, out, "http", a))); err != nil {
		t.Fatal(err)
	}
	if err := s.Apply(parse(t, fmt.Sprintf(cfg, out, "tcp", a))); err != nil {
		t.Fatal(err)
	}
	// As TCP, Ferry passes bytes through: the backend's own response comes back verbatim,
	// without the headers Ferry adds in HTTP mode.
	c, err := net.Dial("tcp", out)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "xff=" {
		t.Errorf("after the switch to tcp: %d %q, want 200 \"xff=\" (bytes passed through, no header added)", resp.StatusCode, body)
	}
	if resp.Header.Get("X-Request-Id") != "" || resp.Header.Get("Proxy-Status") != "" {
		t.Errorf("response carries headers of Ferry's HTTP mode: %v", resp.Header)
	}
	if ok, why := s.Ready(); !ok {
		t.Errorf("Ready() = false (%s), want true", why)
	}
}

func TestDrainMakesUnreadyAndWaitsForInFlight(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		_, _ = io.WriteString(w, "done")
	}))
	defer srv.Close()
	out := freeAddr(t)
	s := New(Options{})
	if err := s.Apply(parse(t, fmt.Sprintf("service: web\noutbound: [{upstream: api, address: %s}]\nupstreams: [{name: api, endpoints: [%s]}]\n", out, srv.Listener.Addr()))); err != nil {
		t.Fatal(err)
	}
	result := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + out + "/")
		if err != nil {
			result <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		result <- fmt.Sprintf("%d %s", resp.StatusCode, b)
	}()
	time.Sleep(200 * time.Millisecond) // the request is in flight
	drainDone := make(chan struct{})
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Drain(ctx)
		close(drainDone)
	}()
	time.Sleep(100 * time.Millisecond)
	if ok, why := s.Ready(); ok || why != "draining" {
		t.Errorf("Ready() during drain = %v, %q; want false, draining", ok, why)
	}
	if c, err := net.DialTimeout("tcp", out, time.Second); err == nil {
		c.Close()
		t.Errorf("new connection accepted during drain")
	}
	close(release)
	if got := <-result; got != "200 done" {
		t.Errorf("in-flight request = %q, want 200 done", got)
	}
	<-drainDone
}
