package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/l4"
	"github.com/ferrymesh/ferry/sidecar/l7"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// listener owns one listening socket for as long as its address stays in the config. What
// serves the accepted connections (its front) can be replaced by a reload without closing
// the socket.
type listener struct {
	addr    string
	ln      net.Listener
	log     *slog.Logger
	metrics telemetry.ListenerMetrics
	front   atomic.Pointer[front]
	done    chan struct{} // closed when the accept loop has returned
	// pol is the policy whose connection rate limit applies on accept, before any TLS
	// handshake or request is read (the inbound listener's; nil elsewhere).
	pol atomic.Pointer[policy.Policy]
}

// front serves a listener's connections with one set of downstream settings: an
// http.Server (whose handler is swapped per reload) or a TCP proxy. A change of those
// settings builds a new front; the old one finishes its connections and goes away.
type front struct {
	key string // protocol and downstream settings; equal keys share a front

	tlsIn *tlsLayer // terminates (m)TLS before HTTP or TCP; nil for plaintext (see tls.go)

	// HTTP
	h1      *l7.H1Server // HTTP/1.x connections; HTTP/2 ones go on to srv
	srv     *http.Server
	conns   *chanListener
	handler atomic.Pointer[http.Handler]
	served  chan struct{} // closed when srv.Serve returns

	// TCP
	tcp      atomic.Pointer[l4.Proxy]
	mu       sync.Mutex // guards closing against sessions.Add; taken once per connection
	closing  bool
	sessions sync.WaitGroup
	ctx      context.Context // cancelled to cut TCP sessions when a drain times out
	cut      context.CancelFunc
}

func listen(addr string, log *slog.Logger, m telemetry.ListenerMetrics) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &listener{addr: addr, ln: ln, log: log, metrics: m, done: make(chan struct{})}, nil
}

// serve runs the accept loop until the socket is closed.
func (l *listener) serve() {
	defer close(l.done)
	var delay time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			l.log.Error("accept failed", "listener", l.addr, "error", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		l.metrics.Total.Inc()
		if p := l.pol.Load(); p != nil && !l.allowConn(p, c) {
			continue
		}
		// A reload may retire the front between the load and the hand-off: then the
		// connection goes to the front that replaced it, never to the floor.
		for !l.front.Load().serveConn(c, l.metrics) {
		}
	}
}

// allowConn applies p's connection rate limit to c, closing c when it refuses.
func (l *listener) allowConn(p *policy.Policy, c net.Conn) bool {
	var src netip.Addr
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort().Addr().Unmap()
	}
	d := p.AllowConn(src)
	if d.Allowed {
		return true
	}
	_ = c.Close()
	l.log.Debug("connection refused by the connection rate limit", "listener", l.addr,
		"downstream", c.RemoteAddr().String(), "rule", d.Rule)
	return false
}

// close stops accepting; connections already accepted are left to their front.
func (l *listener) close() {
	_ = l.ln.Close()
	<-l.done
}

func newHTTPFront(key string, o l7.ServerOptions, h http.Handler, m telemetry.ListenerMetrics, addr net.Addr) *front {
	f := &front{key: key, conns: newChanListener(addr), served: make(chan struct{})}
	f.handler.Store(&h)
	f.srv = l7.NewServer(o, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*f.handler.Load()).ServeHTTP(w, r)
	}))
	f.srv.ConnState = func(c net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			m.Active.Inc()
		case http.StateClosed, http.StateHijacked:
			m.Active.Dec()
		}
	}
	f.h1 = l7.NewH1Server(o, f.srv.Handler, func(d int) { m.Active.Add(float64(d)) })
	go func() {
		defer close(f.served)
		_ = f.srv.Serve(f.conns)
	}()
	return f
}

// serveH2 hands an HTTP/2 connection to the front's http.Server; false if it is shutting
// down.
func (f *front) serveH2(c net.Conn) bool {
	return f.conns.push(l7.GuardConn(c))
}

func newTCPFront(key string, p *l4.Proxy) *front {
	f := &front{key: key}
	f.ctx, f.cut = context.WithCancel(context.Background())
	f.tcp.Store(p)
	return f
}

// serveDecrypted hands c, plaintext or with its TLS handshake done, to the front; false
// means the front is shutting down and took nothing.
func (f *front) serveDecrypted(c net.Conn, m telemetry.ListenerMetrics) bool {
	if f.srv != nil {
		// HTTP/1.x stays on Ferry's own server; HTTP/2 (by ALPN or by its preface) goes to
		// the http.Server.
		return f.h1.ServeConn(c, f.serveH2)
	}
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return false
	}
	f.sessions.Add(1)
	f.mu.Unlock()
	m.Active.Inc()
	go func() {
		defer f.sessions.Done()
		defer m.Active.Dec()
		f.tcp.Load().ServeConn(f.ctx, c)
	}()
	return true
}

// shutdown lets the front's connections finish (HTTP: in-flight requests complete and
// keep-alive connections are closed; TCP: sessions run to their end) until ctx is done,
// then cuts what is left.
func (f *front) shutdown(ctx context.Context) {
	if f.tlsIn != nil {
		f.tlsIn.close()
	}
	if f.srv != nil {
		h1 := make(chan struct{})
		go func() { defer close(h1); _ = f.h1.Shutdown(ctx) }()
		if err := f.srv.Shutdown(ctx); err != nil {
			_ = f.srv.Close()
		}
		<-f.served
		<-h1
		return
	}
	f.mu.Lock()
	f.closing = true
	f.mu.Unlock()
	idle := make(chan struct{})
	go func() { f.sessions.Wait(); close(idle) }()
	select {
	case <-idle:
	case <-ctx.Done():
		f.cut()
		<-idle
	}
	f.cut()
}

// chanListener is the net.Listener an HTTP front's server accepts from: the listener's
// accept loop hands it connections.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; false if the listener is closed and c was not taken. A
// closed listener never takes a connection: Accept prefers closed when both are ready.
func (l *chanListener) push(c net.Conn) bool {
	select {
	case <-l.closed:
		return false
	default:
	}
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
