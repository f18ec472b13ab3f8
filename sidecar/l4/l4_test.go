package l4

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// testDeadline bounds every socket operation in the tests, so that a broken proxy fails
// a test instead of hanging it.
const testDeadline = 10 * time.Second

// checkLeaks verifies, after every other cleanup of t has run, that no goroutine leaked.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
}

// startServer listens on loopback and runs handle on each accepted connection, closing
// it afterwards. The listener is closed and the handlers are waited for at cleanup.
func startServer(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(testDeadline))
				handle(c.(*net.TCPConn))
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// deadAddr returns a loopback address on which nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// roundRobin builds a round-robin picker over addrs and returns the function Options.Picker
// wants, with the endpoints so that tests can read their state.
func roundRobin(addrs ...string) (func() balancer.Picker, []*balancer.Endpoint) {
	eps := make([]*balancer.Endpoint, len(addrs))
	for i, a := range addrs {
		eps[i] = balancer.NewEndpoint(discovery.Endpoint{Address: a}, nil)
	}
	pk := balancer.NewRoundRobin(slices.Clone(eps))
	return func() balancer.Picker { return pk }, eps
}

// recorder is an Observer that hands ended sessions over on a channel.
type recorder struct {
	started atomic.Int64
	ended   chan Session
}

func newRecorder() *recorder { return &recorder{ended: make(chan Session, 64)} }

func (r *recorder) SessionStarted(string) { r.started.Add(1) }

func (r *recorder) SessionEnded(_ string, s Session) { r.ended <- s }

// wait returns the next ended session.
func (r *recorder) wait(t *testing.T) Session {
	t.Helper()
	select {
	case s := <-r.ended:
		return s
	case <-time.After(testDeadline):
		t.Fatal("SessionEnded was not called")
		return Session{}
	}
}

// session is one connection through a Proxy, from the client's side.
type session struct {
	client *net.TCPConn
	done   chan struct{} // closed when ServeConn has returned
}

// startSession connects a client to a loopback socket whose accepted side is served by
// p.ServeConn(ctx, ·). At cleanup the client is closed and ServeConn is waited for.
func startSession(t *testing.T, ctx context.Context, p *Proxy) session {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	down, err := ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	client.SetDeadline(time.Now().Add(testDeadline))
	s := session{client: client.(*net.TCPConn), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		p.ServeConn(ctx, down)
	}()
	t.Cleanup(func() {
		s.client.Close()
		select {
		case <-s.done:
		case <-time.After(testDeadline):
			t.Error("ServeConn did not return")
		}
	})
	return s
}

// waitDone fails t unless ServeConn returns within d.
func (s session) waitDone(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		t.Fatalf("ServeConn still running %v later", d)
	}
}

// wrappedConn hides *net.TCPConn from the proxy, which must then copy through its buffers.
type wrappedConn struct{ *net.TCPConn }

// modes are the copy paths the proxy chooses between.
var modes = []struct {
	name string
	idle time.Duration
	wrap bool // upstream connection is not a *net.TCPConn
}{
	{name: "splice", idle: 0},
	{name: "buffer", idle: 0, wrap: true},
	{name: "buffer-idle-timeout", idle: 5 * time.Second},
}

// newProxy returns a Proxy to addrs in the given mode, with a recorder as its Observer.
func newProxy(t *testing.T, idle time.Duration, wrap bool, addrs ...string) (*Proxy, *recorder) {
	t.Helper()
	picker, _ := roundRobin(addrs...)
	rec := newRecorder()
	o := Options{
		Upstream:       "db",
		Picker:         picker,
		ConnectTimeout: time.Second,
		IdleTimeout:    idle,
		Observer:       rec,
	}
	if wrap {
		o.Dial = func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", ep.Address)
			if err != nil {
				return nil, err
			}
			return wrappedConn{c.(*net.TCPConn)}, nil
		}
	}
	return New(o), rec
}

func TestServerSpeaksFirst(t *testing.T) {
	const (
		greeting = "R\x00\x00\x00\x08\x00\x00\x00\x00" // PostgreSQL-like AuthenticationOk
		query    = "SELECT 1;\n"
		reply    = "1\n"
	)
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			checkLeaks(t)
			addr := startServer(t, func(c *net.TCPConn) {
				if _, err := io.WriteString(c, greeting); err != nil {
					t.Errorf("server: write greeting: %v", err)
					return
				}
				buf := make([]byte, len(query))
				if _, err := io.ReadFull(c, buf); err != nil || string(buf) != query {
					t.Errorf("server: read query = %q, %v; want %q", buf, err, query)
					return
				}
				io.WriteString(c, reply)
				io.Copy(io.Discard, c)
			})
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			s := startSession(t, t.Context(), p)

			// The client reads before it writes anything.
			got := make([]byte, len(greeting))
			if _, err := io.ReadFull(s.client, got); err != nil {
				t.Fatalf("read greeting: %v", err)
			}
			if string(got) != greeting {
				t.Fatalf("greeting = %q, want %q", got, greeting)
			}
			io.WriteString(s.client, query)
			got = make([]byte, len(reply))
			if _, err := io.ReadFull(s.client, got); err != nil || string(got) != reply {
				t.Fatalf("reply = %q, %v; want %q", got, err, reply)
			}
			s.client.CloseWrite()
			if rest, err := io.ReadAll(s.client); err != nil || len(rest) != 0 {
				t.Fatalf("after close: read %q, %v; want EOF", rest, err)
			}

			sess := rec.wait(t)
			want := Session{
				Endpoint:   addr,
				Downstream: s.client.LocalAddr().String(),
				BytesIn:    int64(len(query)),
				BytesOut:   int64(len(greeting) + len(reply)),
			}
			sess.Duration = 0
			if sess != want {
				t.Errorf("Session = %+v, want %+v", sess, want)
			}
			if n := rec.started.Load(); n != 1 {
				t.Errorf("SessionStarted calls = %d, want 1", n)
			}
		})
	}
}

func TestEchoByteCounts(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			checkLeaks(t)
			addr := startServer(t, echo)
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			s := startSession(t, t.Context(), p)

			var sent int64
			for i := range 20 {
				msg := []byte(fmt.Sprintf("message %d %s", i, strings.Repeat("x", i*100)))
				if _, err := s.client.Write(msg); err != nil {
					t.Fatalf("write: %v", err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(s.client, got); err != nil {
					t.Fatalf("read echo: %v", err)
				}
				if !bytes.Equal(got, msg) {
					t.Fatalf("echo = %q, want %q", got, msg)
				}
				sent += int64(len(msg))
			}
			s.client.CloseWrite()
			if rest, err := io.ReadAll(s.client); err != nil || len(rest) != 0 {
				t.Fatalf("after close: read %q, %v; want EOF", rest, err)
			}

			sess := rec.wait(t)
			if sess.Err != nil {
				t.Errorf("Session.Err = %v, want nil", sess.Err)
			}
			if sess.BytesIn != sent || sess.BytesOut != sent {
				t.Errorf("Session bytes in/out = %d/%d, want %d/%d", sess.BytesIn, sess.BytesOut, sent, sent)
			}
			if sess.Duration <= 0 {
				t.Errorf("Session.Duration = %v, want > 0", sess.Duration)
			}
		})
	}
}

// echo copies c back to itself, then half-closes it.
func echo(c *net.TCPConn) {
	io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 64<<10))
	c.CloseWrite()
}

func TestHalfClose(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name+"/client-first", func(t *testing.T) {
			// The client sends a request and half-closes; the server reads to EOF and only
			// then answers.
			checkLeaks(t)
			addr := startServer(t, func(c *net.TCPConn) {
				data, err := io.ReadAll(c)
				if err != nil {
					t.Errorf("server: read: %v", err)
					return
				}
				time.Sleep(50 * time.Millisecond)
				fmt.Fprintf(c, "got %d bytes, sum %x", len(data), sha256.Sum256(data))
			})
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			s := startSession(t, t.Context(), p)

			req := bytes.Repeat([]byte("request "), 10000)
			if _, err := s.client.Write(req); err != nil {
				t.Fatal(err)
			}
			if err := s.client.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			answer, err := io.ReadAll(s.client)
			if err != nil {
				t.Fatalf("read answer: %v", err)
			}
			want := fmt.Sprintf("got %d bytes, sum %x", len(req), sha256.Sum256(req))
			if string(answer) != want {
				t.Fatalf("answer = %q, want %q", answer, want)
			}
			sess := rec.wait(t)
			if sess.Err != nil || sess.BytesIn != int64(len(req)) || sess.BytesOut != int64(len(want)) {
				t.Errorf("Session = %+v, want Err nil, BytesIn %d, BytesOut %d", sess, len(req), len(want))
			}
		})
		t.Run(m.name+"/server-first", func(t *testing.T) {
			// The server sends its data and half-closes; the client reads to EOF and then
			// sends its own, which must still reach the server.
			checkLeaks(t)
			const banner = "here is everything I have to say"
			received := make(chan string, 1)
			addr := startServer(t, func(c *net.TCPConn) {
				io.WriteString(c, banner)
				c.CloseWrite()
				data, err := io.ReadAll(c)
				if err != nil {
					t.Errorf("server: read: %v", err)
				}
				received <- string(data)
			})
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			s := startSession(t, t.Context(), p)

			got, err := io.ReadAll(s.client)
			if err != nil || string(got) != banner {
				t.Fatalf("read = %q, %v; want %q", got, err, banner)
			}
			const reply = "thanks, bye"
			if _, err := io.WriteString(s.client, reply); err != nil {
				t.Fatalf("write after EOF from server: %v", err)
			}
			s.client.CloseWrite()
			select {
			case r := <-received:
				if r != reply {
					t.Errorf("server received %q, want %q", r, reply)
				}
			case <-time.After(testDeadline):
				t.Fatal("server did not receive the client's data")
			}
			sess := rec.wait(t)
			if sess.Err != nil || sess.BytesIn != int64(len(reply)) || sess.BytesOut != int64(len(banner)) {
				t.Errorf("Session = %+v, want Err nil, BytesIn %d, BytesOut %d", sess, len(reply), len(banner))
			}
		})
	}
}

func TestNoEndpoint(t *testing.T) {
	tests := []struct {
		name   string
		picker func() balancer.Picker
	}{
		{name: "empty picker", picker: func() balancer.Picker { return balancer.NewRoundRobin(nil) }},
		{name: "no picker yet", picker: func() balancer.Picker { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			rec := newRecorder()
			p := New(Options{Upstream: "db", Picker: tt.picker, Observer: rec, ConnectAttempts: 3})
			s := startSession(t, t.Context(), p)

			s.client.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := s.client.Read(make([]byte, 1))
			if n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
				t.Fatalf("client Read() = %d, %v; want the connection closed", n, err)
			}
			s.waitDone(t, 2*time.Second)
			sess := rec.wait(t)
			if !errors.Is(sess.Err, balancer.ErrNoEndpoint) {
				t.Errorf("Session.Err = %v, want %v", sess.Err, balancer.ErrNoEndpoint)
			}
			if sess.Endpoint != "" || sess.BytesIn != 0 || sess.BytesOut != 0 {
				t.Errorf("Session = %+v, want no endpoint and no bytes", sess)
			}
		})
	}
}

func TestConnectFailure(t *testing.T) {
	const live, dead = "live", "dead" // replaced by addresses in each subtest
	tests := []struct {
		name      string
		addrs     []string
		attempts  int
		sessions  int
		wantErr   error  // nil: every session must succeed on wantAddr
		wantAddr  string // Session.Endpoint
		wantFails []uint64
		minFails  []uint64
	}{
		{
			// Round robin puts the dead endpoint first in one of two consecutive sessions;
			// the second attempt must then go to the live one.
			name: "retry reaches live endpoint", addrs: []string{dead, live}, attempts: 2,
			sessions: 2, wantAddr: live, minFails: []uint64{1, 0},
		},
		{
			name: "single dead endpoint", addrs: []string{dead}, attempts: 1,
			sessions: 1, wantErr: syscall.ECONNREFUSED, wantAddr: dead, wantFails: []uint64{1},
		},
		{
			name: "retries the only endpoint", addrs: []string{dead}, attempts: 3,
			sessions: 1, wantErr: syscall.ECONNREFUSED, wantAddr: dead, wantFails: []uint64{3},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLeaks(t)
			addrOf := map[string]string{live: startServer(t, echo), dead: deadAddr(t)}
			addrs := make([]string, len(tt.addrs))
			for i, a := range tt.addrs {
				addrs[i] = addrOf[a]
			}
			wantAddr := addrOf[tt.wantAddr]
			picker, eps := roundRobin(addrs...)
			var dials []string
			var mu sync.Mutex
			rec := newRecorder()
			p := New(Options{
				Upstream:        "db",
				Picker:          picker,
				ConnectTimeout:  time.Second,
				ConnectAttempts: tt.attempts,
				Observer:        rec,
				Dial: func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
					mu.Lock()
					dials = append(dials, ep.Address)
					mu.Unlock()
					var d net.Dialer
					return d.DialContext(ctx, "tcp", ep.Address)
				},
			})
			for i := range tt.sessions {
				s := startSession(t, t.Context(), p)
				if tt.wantErr == nil {
					msg := fmt.Sprintf("ping %d", i)
					io.WriteString(s.client, msg)
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(s.client, got); err != nil || string(got) != msg {
						t.Fatalf("session %d: echo = %q, %v; want %q", i, got, err, msg)
					}
				}
				s.client.Close()
				s.waitDone(t, 2*time.Second)
				sess := rec.wait(t)
				if !errors.Is(sess.Err, tt.wantErr) {
					t.Errorf("session %d: Session.Err = %v, want %v", i, sess.Err, tt.wantErr)
				}
				if sess.Endpoint != wantAddr {
					t.Errorf("session %d: Session.Endpoint = %q, want %q", i, sess.Endpoint, wantAddr)
				}
			}
			mu.Lock()
			t.Logf("dials: %v", dials)
			for i := 1; i < len(dials); i++ {
				if len(addrs) > 1 && dials[i] == dials[i-1] && dials[i] == addrOf[dead] {
					t.Errorf("dials = %v: retried the dead endpoint while another was available", dials)
				}
			}
			mu.Unlock()
			for i, ep := range eps {
				if a := ep.State.Active.Load(); a != 0 {
					t.Errorf("%s: Active = %d, want 0", ep.Address, a)
				}
				f := ep.State.Failures.Load()
				if tt.wantFails != nil && f != tt.wantFails[i] {
					t.Errorf("%s: Failures = %d, want %d", ep.Address, f, tt.wantFails[i])
				}
				if tt.minFails != nil && f < tt.minFails[i] {
					t.Errorf("%s: Failures = %d, want at least %d", ep.Address, f, tt.minFails[i])
				}
				if ep.Address == addrOf[live] && f != 0 {
					t.Errorf("%s (live): Failures = %d, want 0", ep.Address, f)
				}
			}
			if tt.wantErr == nil {
				if got := eps[1].State.Total.Load(); got != uint64(tt.sessions) {
					t.Errorf("live endpoint Total = %d, want %d", got, tt.sessions)
				}
			}
		})
	}
}

func TestConnectTimeout(t *testing.T) {
	checkLeaks(t)
	picker, eps := roundRobin("192.0.2.1:5432")
	rec := newRecorder()
	p := New(Options{
		Upstream:       "db",
		Picker:         picker,
		ConnectTimeout: 100 * time.Millisecond,
		Observer:       rec,
		Dial: func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
			<-ctx.Done() // a peer that never answers the SYN
			return nil, ctx.Err()
		},
	})
	start := time.Now()
	s := startSession(t, t.Context(), p)
	s.waitDone(t, 2*time.Second)
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("ServeConn returned after %v, before the connect timeout", d)
	}
	sess := rec.wait(t)
	if !errors.Is(sess.Err, context.DeadlineExceeded) {
		t.Errorf("Session.Err = %v, want %v", sess.Err, context.DeadlineExceeded)
	}
	if f := eps[0].State.Failures.Load(); f != 1 {
		t.Errorf("Failures = %d, want 1", f)
	}
}

func TestIdleTimeout(t *testing.T) {
	const (
		idle = 800 * time.Millisecond // wide enough that a loaded CI machine does not stall past it
		tick = 50 * time.Millisecond
		busy = 3 * idle // how long the active direction keeps sending
	)
	ticks := int(busy / tick)
	tests := []struct {
		name    string
		server  func(c *net.TCPConn)
		client  func(t *testing.T, c *net.TCPConn)
		wantErr error
	}{
		{
			name:   "both directions idle",
			server: func(c *net.TCPConn) { io.Copy(io.Discard, c) },
			client: func(t *testing.T, c *net.TCPConn) {
				start := time.Now()
				if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
					t.Errorf("Read() = %d, %v; want 0, EOF", n, err)
				}
				if d := time.Since(start); d < idle-tick || d > idle+time.Second {
					t.Errorf("closed after %v, want about %v", d, idle)
				}
			},
			wantErr: ErrIdleTimeout,
		},
		{
			name: "only the server sends",
			server: func(c *net.TCPConn) {
				for range ticks {
					if _, err := c.Write([]byte{'s'}); err != nil {
						return
					}
					time.Sleep(tick)
				}
			},
			client: func(t *testing.T, c *net.TCPConn) {
				got, err := io.ReadAll(c)
				if err != nil || len(got) != ticks {
					t.Errorf("read %d bytes, %v; want %d, nil", len(got), err, ticks)
				}
			},
		},
		{
			name: "only the client sends",
			server: func(c *net.TCPConn) {
				data, _ := io.ReadAll(c)
				fmt.Fprintf(c, "%d", len(data))
			},
			client: func(t *testing.T, c *net.TCPConn) {
				for range ticks {
					if _, err := c.Write([]byte{'c'}); err != nil {
						t.Errorf("write: %v", err)
						return
					}
					time.Sleep(tick)
				}
				c.CloseWrite()
				got, err := io.ReadAll(c)
				if want := fmt.Sprint(ticks); err != nil || string(got) != want {
					t.Errorf("answer = %q, %v; want %q", got, err, want)
				}
			},
		},
	}
	for _, tt := range tests {
		for _, wrap := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/wrapped=%v", tt.name, wrap), func(t *testing.T) {
				checkLeaks(t)
				addr := startServer(t, tt.server)
				p, rec := newProxy(t, idle, wrap, addr)
				s := startSession(t, t.Context(), p)
				tt.client(t, s.client)
				s.client.Close()
				s.waitDone(t, 2*time.Second)
				sess := rec.wait(t)
				if !errors.Is(sess.Err, tt.wantErr) { // errors.Is(err, nil) is err == nil
					t.Errorf("Session.Err = %v, want %v", sess.Err, tt.wantErr)
				}
			})
		}
	}
}

func TestContextCancel(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			checkLeaks(t)
			serverEOF := make(chan error, 1)
			addr := startServer(t, func(c *net.TCPConn) {
				io.WriteString(c, "hello")
				_, err := io.Copy(io.Discard, c)
				serverEOF <- err
			})
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s := startSession(t, ctx, p)
			if _, err := io.ReadFull(s.client, make([]byte, 5)); err != nil {
				t.Fatalf("read greeting: %v", err)
			}

			cancel()
			s.waitDone(t, time.Second)
			s.client.SetReadDeadline(time.Now().Add(time.Second))
			if n, err := s.client.Read(make([]byte, 1)); n != 0 || (err != io.EOF && !errors.Is(err, syscall.ECONNRESET)) {
				t.Errorf("client Read() = %d, %v; want the connection closed", n, err)
			}
			select {
			case err := <-serverEOF:
				if err != nil && !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("server read: %v, want EOF", err)
				}
			case <-time.After(time.Second):
				t.Error("upstream connection still open after cancel")
			}
			sess := rec.wait(t)
			if !errors.Is(sess.Err, context.Canceled) {
				t.Errorf("Session.Err = %v, want %v", sess.Err, context.Canceled)
			}
		})
	}
	t.Run("while dialling", func(t *testing.T) {
		checkLeaks(t)
		picker, eps := roundRobin("192.0.2.1:5432")
		rec := newRecorder()
		dialing := make(chan struct{})
		p := New(Options{
			Upstream: "db",
			Picker:   picker,
			Observer: rec,
			Dial: func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
				close(dialing)
				<-ctx.Done()
				return nil, ctx.Err()
			},
		})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		s := startSession(t, ctx, p)
		<-dialing
		cancel()
		s.waitDone(t, time.Second)
		sess := rec.wait(t)
		if !errors.Is(sess.Err, context.Canceled) {
			t.Errorf("Session.Err = %v, want %v", sess.Err, context.Canceled)
		}
		// Our own cancellation is not the endpoint's failure.
		if f, a := eps[0].State.Failures.Load(), eps[0].State.Active.Load(); f != 0 || a != 0 {
			t.Errorf("Failures, Active = %d, %d; want 0, 0", f, a)
		}
	})
}

func TestLargeTransfer(t *testing.T) {
	const size = 32 << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1, 2, 3})
	rng.Read(data)
	want := sha256.Sum256(data)

	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			checkLeaks(t)
			addr := startServer(t, echo)
			p, rec := newProxy(t, m.idle, m.wrap, addr)
			s := startSession(t, t.Context(), p)

			writeErr := make(chan error, 1)
			go func() {
				_, err := s.client.Write(data)
				if err == nil {
					err = s.client.CloseWrite()
				}
				writeErr <- err
			}()
			h := sha256.New()
			n, err := io.Copy(h, s.client)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if err := <-writeErr; err != nil {
				t.Fatalf("write: %v", err)
			}
			if n != size {
				t.Fatalf("read %d bytes, want %d", n, size)
			}
			if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
				t.Fatalf("sha256 = %x, want %x", got, want)
			}
			sess := rec.wait(t)
			if sess.Err != nil || sess.BytesIn != size || sess.BytesOut != size {
				t.Errorf("Session = %+v, want Err nil and %d bytes each way", sess, size)
			}
		})
	}
}

func TestConcurrentSessions(t *testing.T) {
	checkLeaks(t)
	a := startServer(t, echo)
	b := startServer(t, echo)
	p, rec := newProxy(t, 0, false, a, b)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		s := startSession(t, t.Context(), p)
		wg.Go(func() {
			msg := fmt.Sprintf("hello from %d", i)
			io.WriteString(s.client, msg)
			s.client.CloseWrite()
			got, err := io.ReadAll(s.client)
			if err != nil || string(got) != msg {
				t.Errorf("session %d: echo = %q, %v; want %q", i, got, err, msg)
			}
		})
	}
	wg.Wait()
	perEndpoint := map[string]int{}
	for range n {
		sess := rec.wait(t)
		if sess.Err != nil {
			t.Errorf("Session.Err = %v, want nil", sess.Err)
		}
		perEndpoint[sess.Endpoint]++
	}
	if perEndpoint[a] != n/2 || perEndpoint[b] != n/2 {
		t.Errorf("sessions per endpoint = %v, want %d each", perEndpoint, n/2)
	}
}

func TestNewPanicsWithoutPicker(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("New(Options{}) did not panic")
		}
	}()
	New(Options{})
}
