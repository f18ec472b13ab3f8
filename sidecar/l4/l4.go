// Package l4 proxies plain TCP connections (databases and other opaque protocols) to an
// endpoint of one upstream chosen by a balancer.Picker.
//
// The upstream is dialled as soon as a connection is handed over, without waiting for the
// client to write, so protocols in which the server speaks first (PostgreSQL, MySQL, SMTP)
// work. Bytes are copied both ways without inspection. An EOF from one side is passed on as
// a half-close (CloseWrite) to the other side, and the other direction keeps flowing until
// it ends too. Between two *net.TCPConn with no idle timeout the copy goes through
// (*net.TCPConn).ReadFrom, which Linux serves with splice(2).
package l4

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"go.opentelemetry.io/otel/trace"
)

// ErrIdleTimeout is the Session.Err of a session that was closed because no bytes flowed
// in either direction for Options.IdleTimeout.
var ErrIdleTimeout = errors.New("idle timeout")

const (
	// bufSize is the size of the pooled copy buffers.
	bufSize = 32 << 10
	// spliceChunk is how many bytes one splice call may move before the byte counters are
	// updated, so that they show progress on long transfers.
	spliceChunk = 256 << 10
)

// Options configures a Proxy. Only Picker is required.
type Options struct {
	// Upstream is the upstream's name, used in logs and passed to the Observer.
	Upstream string
	// Picker returns the upstream's current picker, typically an atomic load. It is called
	// once per dial attempt, concurrently from every session. It may return nil or a picker
	// that fails with balancer.ErrNoEndpoint; the session then ends at once.
	Picker func() balancer.Picker
	// ConnectTimeout bounds each dial attempt; 0 leaves it to the dialer and the OS.
	ConnectTimeout time.Duration
	// IdleTimeout closes a session when no bytes have flowed in either direction for this
	// long. A session where only one direction is active is not idle. 0 disables it.
	IdleTimeout time.Duration
	// ConnectAttempts is how many dial attempts a session makes before it gives up, each to
	// an endpoint not tried yet when there is one. Values below 1 mean 1.
	ConnectAttempts int
	// Endpoints, if not nil, returns the endpoints the current picker was built from; a
	// retry scans them for one not tried yet when the picker keeps offering tried ones.
	Endpoints func() []*balancer.Endpoint
	// Breaker, if not nil, is the upstream's circuit breaker: each dial is admitted through
	// it (max_pending, max_connections) and each upstream connection counted until the
	// session ends. A session over a limit is closed at once.
	Breaker *circuit.Breaker
	// Dial connects to an endpoint. It must honour ctx, which carries the ConnectTimeout,
	// and be safe for concurrent use. The default dials TCP to ep.Address with a
	// net.Dialer whose Timeout is ConnectTimeout.
	Dial func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error)
	// Observer, if not nil, is told when sessions start and end.
	Observer Observer
	// Logger receives connect failures (Warn) and session summaries (Debug); nil discards.
	Logger *slog.Logger
	// Tracing, if not nil, records one span per session (see telemetry.Tracing.StartTCP)
	// with the bytes each way; Direction (telemetry.Inbound or telemetry.Outbound) names
	// the session's side on it.
	Tracing   *telemetry.Tracing
	Direction string
	// Policy, if not nil, is enforced on every connection before the upstream is dialled
	// (inbound): the IP lists and the caller part of the access rules
	// (policy.Policy.CheckConn) on the peer's address and SPIFFE ID. (Its connection rate
	// limit, AllowConn, is for whoever accepts the connection.) A refused connection is closed at once and its Session.Err is a
	// *RefusedError. nil costs nothing.
	Policy *policy.Policy
	// Port is the listener's port, matched by access rules with ports; 0 if unknown.
	Port uint16
}

// RefusedError is the Session.Err of a connection the policy refused.
type RefusedError struct {
	// Decision is the refusing decision: its Kind, Rule and Reply say why.
	Decision policy.Decision
}

func (e *RefusedError) Error() string {
	return "refused by policy: " + e.Decision.Reply.Details
}

// Observer is told about the sessions of a Proxy, typically to record metrics and an
// access log. Its methods are called from the goroutines that run ServeConn, concurrently
// for different sessions, so implementations must be safe for concurrent use; they should
// not block, as they run on the session's path.
type Observer interface {
	// SessionStarted is called when ServeConn starts, before the upstream is dialled.
	SessionStarted(upstream string)
	// SessionEnded is called exactly once per ServeConn call, after both connections of
	// the session are closed.
	SessionEnded(upstream string, s Session)
}

// Session describes one proxied connection after it has ended. It is a value owned by
// whoever receives it.
type Session struct {
	// Endpoint is the address of the endpoint the session was connected to or, when no
	// dial succeeded, of the last endpoint tried; empty when no endpoint was picked.
	Endpoint string
	// Downstream is the client's address, as down.RemoteAddr() reported it.
	Downstream string
	// BytesIn counts the bytes received from the client and written to the upstream.
	BytesIn int64
	// BytesOut counts the bytes received from the upstream and written to the client.
	BytesOut int64
	// Duration runs from the call to ServeConn to the end of the session.
	Duration time.Duration
	// Err is nil when both sides closed cleanly. Otherwise it says why the session ended:
	// the picker's error (balancer.ErrNoEndpoint), the last dial error, ErrIdleTimeout,
	// the cause of the context's cancellation, or the read or write error that broke the
	// session.
	Err error
	// TraceID is the trace ID of the session's span, "" with tracing off.
	TraceID string
	// PeerID is the SPIFFE ID of the downstream peer when it connected over mTLS (its
	// handshake done before ServeConn), "" otherwise.
	PeerID string
}

// Proxy proxies TCP connections to one upstream. It is immutable after New and safe for
// concurrent ServeConn calls.
type Proxy struct {
	upstream       string
	picker         func() balancer.Picker
	connectTimeout time.Duration
	idleTimeout    time.Duration
	attempts       int
	endpoints      func() []*balancer.Endpoint
	breaker        *circuit.Breaker
	dial           func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error)
	observer       Observer
	log            *slog.Logger
	tracing        *telemetry.Tracing
	direction      string
	policy         *policy.Policy
	port           uint16
	bufs           sync.Pool // of *[]byte, bufSize long
}

// New returns a Proxy configured by o. It panics if o.Picker is nil.
func New(o Options) *Proxy {
	if o.Picker == nil {
		panic("l4: Options.Picker is nil")
	}
	p := &Proxy{
		upstream:       o.Upstream,
		picker:         o.Picker,
		connectTimeout: max(o.ConnectTimeout, 0),
		idleTimeout:    max(o.IdleTimeout, 0),
		attempts:       max(o.ConnectAttempts, 1),
		endpoints:      o.Endpoints,
		breaker:        o.Breaker,
		dial:           o.Dial,
		observer:       o.Observer,
		log:            o.Logger,
		tracing:        o.Tracing,
		direction:      o.Direction,
		policy:         o.Policy,
		port:           o.Port,
	}
	if p.dial == nil {
		d := &net.Dialer{Timeout: p.connectTimeout}
		p.dial = func(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", ep.Address)
		}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.bufs.New = func() any {
		b := make([]byte, bufSize)
		return &b
	}
	return p
}

// ServeConn proxies down to an endpoint of the upstream and blocks until the session ends;
// it always closes down. It dials at once; when no endpoint is available or every dial
// attempt fails, it closes down straight away. When ctx is cancelled, both connections are
// closed promptly and the session ends with the context's cause as its error. Safe for
// concurrent use.
func (p *Proxy) ServeConn(ctx context.Context, down net.Conn) {
	start := time.Now()
	if p.observer != nil {
		p.observer.SessionStarted(p.upstream)
	}
	s := Session{Downstream: addrString(down.RemoteAddr())}
	if id, err := mtls.PeerIDFromConn(down); err == nil {
		s.PeerID = id.String()
	}
	var span trace.Span
	if p.tracing != nil {
		_, span = p.tracing.StartTCP(ctx, p.direction, p.upstream, down.RemoteAddr())
		s.TraceID = telemetry.TraceID(span)
	}

	if p.policy != nil {
		if d, ok := p.check(down, s.PeerID); !ok {
			down.Close()
			s.Err = &RefusedError{Decision: d}
			s.Duration = time.Since(start)
			// Per-session outcomes belong to the access log, metrics and span (Observer);
			// logging each one here would let a flood of refused connections flood the log.
			p.log.Debug("tcp connection refused by policy", "upstream", p.upstream, "downstream", s.Downstream,
				"peer_identity", s.PeerID, "rule", d.Rule, "details", d.Reply.Details)
			p.endSpan(span, s, true)
			p.end(ctx, s)
			return
		}
	}

	up, ep, err := p.connect(ctx, &s)
	if err != nil {
		down.Close()
		s.Err = err
		s.Duration = time.Since(start)
		p.log.Debug("tcp connect failed", "upstream", p.upstream, "endpoint", s.Endpoint,
			"downstream", s.Downstream, "err", err)
		p.endSpan(span, s, true)
		p.end(ctx, s)
		return
	}

	c := &pipe{p: p, down: down, up: up, start: time.Now()}
	s.Err = c.run(ctx)
	if p.breaker != nil {
		p.breaker.EndConnection()
	}
	ep.Done(balancer.DoneInfo{})
	s.BytesIn = c.in.Load()
	s.BytesOut = c.out.Load()
	s.Duration = time.Since(start)
	p.endSpan(span, s, false)
	p.end(ctx, s)
}

// end logs s and hands it to the observer.
func (p *Proxy) end(ctx context.Context, s Session) {
	if p.log.Enabled(ctx, slog.LevelDebug) {
		p.log.Debug("tcp session ended", "upstream", p.upstream, "endpoint", s.Endpoint,
			"downstream", s.Downstream, "bytes_in", s.BytesIn, "bytes_out", s.BytesOut,
			"duration", s.Duration, "err", s.Err)
	}
	if p.observer != nil {
		p.observer.SessionEnded(p.upstream, s)
	}
}

// connect picks endpoints and dials them, up to p.attempts times, and returns the
// connection with the endpoint it belongs to, on which Begin has been called. Every failed
// attempt's endpoint gets its Done. s.Endpoint is set to the last endpoint tried.
func (p *Proxy) connect(ctx context.Context, s *Session) (net.Conn, *balancer.Endpoint, error) {
	var (
		tried   []string
		dialErr error
	)
	for attempt := 1; attempt <= p.attempts; attempt++ {
		ep, err := p.pick(tried)
		if err != nil {
			if dialErr != nil {
				return nil, nil, dialErr
			}
			return nil, nil, err
		}
		s.Endpoint = ep.Address
		tried = append(tried, ep.Address)

		if p.breaker != nil {
			if err := p.breaker.StartConnect(); err != nil {
				return nil, nil, err
			}
		}
		ep.Begin()
		up, err := p.dialOnce(ctx, ep)
		if p.breaker != nil {
			p.breaker.EndConnect(err == nil)
		}
		if err == nil {
			return up, ep, nil
		}
		if ctx.Err() != nil {
			// The caller gave up (shutdown): not the endpoint's failure.
			ep.Done(balancer.DoneInfo{Err: err, Dropped: true})
			return nil, nil, err
		}
		ep.Done(balancer.DoneInfo{Err: err})
		dialErr = err
		if attempt < p.attempts {
			p.log.Debug("tcp connect attempt failed", "upstream", p.upstream,
				"endpoint", ep.Address, "attempt", attempt, "err", err)
		}
	}
	return nil, nil, dialErr
}

// pick asks the current picker for an endpoint, preferring one whose address is not in
// tried.
func (p *Proxy) pick(tried []string) (*balancer.Endpoint, error) {
	pk := p.picker()
	if pk == nil {
		return nil, balancer.ErrNoEndpoint
	}
	var candidates []*balancer.Endpoint
	if len(tried) > 0 && p.endpoints != nil {
		candidates = p.endpoints()
	}
	ep, err := balancer.PickAvoiding(pk, candidates, balancer.PickInfo{}, tried)
	if err == nil && ep == nil {
		err = balancer.ErrNoEndpoint
	}
	return ep, err
}

// dialOnce makes one dial attempt bounded by the connect timeout.
func (p *Proxy) dialOnce(ctx context.Context, ep *balancer.Endpoint) (net.Conn, error) {
	if p.connectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.connectTimeout)
		defer cancel()
	}
	up, err := p.dial(ctx, ep)
	if err == nil && up == nil {
		err = fmt.Errorf("dial %s: dialer returned no connection", ep.Address)
	}
	return up, err
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// pipe is one connected session: the two connections and the copies between them.
type pipe struct {
	p        *Proxy
	down, up net.Conn
	start    time.Time

	in, out atomic.Int64 // bytes written to up and to down
	// last is when a byte last moved either way, as a duration since start (idle mode).
	last atomic.Int64

	once sync.Once
	err  error // why the session was torn down; written once, inside once
}

// run copies both ways until both directions have ended, then closes both connections
// and returns the session's error.
func (c *pipe) run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { c.shutdown(context.Cause(ctx)) })
	var wg sync.WaitGroup
	wg.Go(func() { c.copy(c.up, c.down, &c.in, "downstream", "upstream") })
	c.copy(c.down, c.up, &c.out, "upstream", "downstream")
	wg.Wait()
	stop()
	// Once.Do returns only after the first call's function has returned, so c.err is
	// settled after this, even if the AfterFunc above is running it concurrently.
	c.shutdown(nil)
	return c.err
}

// shutdown closes both connections; the first call's err becomes the session's error.
// Safe for concurrent use.
func (c *pipe) shutdown(err error) {
	c.once.Do(func() {
		c.err = err
		c.down.Close()
		c.up.Close()
	})
}

// copy moves bytes from src to dst, counting them in n, until src reaches EOF, which it
// passes on to dst as a half-close, or until an error, which tears the session down.
func (c *pipe) copy(dst, src net.Conn, n *atomic.Int64, from, to string) {
	var err error
	dt, dok := dst.(*net.TCPConn)
	st, sok := src.(*net.TCPConn)
	if c.p.idleTimeout == 0 && dok && sok {
		err = spliceCopy(dt, st, n, from, to)
	} else {
		err = c.copyBuffer(dst, src, n, from, to)
	}
	if err != nil {
		c.shutdown(err)
		return
	}
	cw, ok := dst.(interface{ CloseWrite() error })
	if !ok {
		// dst cannot carry the EOF on its own, and its peer would wait for it forever:
		// end the whole session.
		c.shutdown(nil)
		return
	}
	if err := cw.CloseWrite(); err != nil {
		c.shutdown(fmt.Errorf("half-close %s: %w", to, err))
	}
}

// spliceCopy copies between TCP connections with (*net.TCPConn).ReadFrom, which uses
// splice(2) on Linux, in chunks so that n shows progress. It returns nil at EOF.
func spliceCopy(dst, src *net.TCPConn, n *atomic.Int64, from, to string) error {
	for {
		written, err := io.CopyN(dst, src, spliceChunk)
		n.Add(written)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("copy from %s to %s: %w", from, to, err)
		}
	}
}

// copyBuffer copies through a pooled buffer. With an idle timeout, the read deadline of
// src is moved forward only when it expires, to IdleTimeout after the last byte moved in
// either direction, so a session is closed only when both directions are idle. It
// returns nil at EOF.
func (c *pipe) copyBuffer(dst, src net.Conn, n *atomic.Int64, from, to string) error {
	bp := c.p.bufs.Get().(*[]byte)
	defer c.p.bufs.Put(bp)
	buf := *bp

	idle := c.p.idleTimeout
	if idle > 0 {
		if err := src.SetReadDeadline(c.start.Add(idle)); err != nil {
			return fmt.Errorf("read from %s: %w", from, err)
		}
	}
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			if idle > 0 {
				c.touch()
			}
			if werr := c.write(dst, buf[:nr], n); werr != nil {
				if errors.Is(werr, ErrIdleTimeout) {
					return ErrIdleTimeout
				}
				return fmt.Errorf("write to %s: %w", to, werr)
			}
		}
		switch {
		case rerr == nil:
		case rerr == io.EOF:
			return nil
		case idle > 0 && errors.Is(rerr, os.ErrDeadlineExceeded):
			deadline, ok := c.idleDeadline()
			if !ok {
				return ErrIdleTimeout
			}
			if err := src.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("read from %s: %w", from, err)
			}
		default:
			return fmt.Errorf("read from %s: %w", from, rerr)
		}
	}
}

// write writes b to dst, counting the bytes in n. With an idle timeout, each write gets a
// deadline IdleTimeout away; when it expires and the other direction moved bytes in the
// meantime, the write goes on. (A *tls.Conn cannot go on after a write timeout; it then
// fails the session, which only happens when the peer accepted no byte for IdleTimeout.)
func (c *pipe) write(dst net.Conn, b []byte, n *atomic.Int64) error {
	idle := c.p.idleTimeout
	for len(b) > 0 {
		if idle > 0 {
			if err := dst.SetWriteDeadline(time.Now().Add(idle)); err != nil {
				return err
			}
		}
		nw, err := dst.Write(b)
		n.Add(int64(nw))
		b = b[nw:]
		if nw > 0 && idle > 0 {
			c.touch()
		}
		switch {
		case err == nil:
			if nw == 0 {
				return io.ErrShortWrite
			}
		case idle > 0 && errors.Is(err, os.ErrDeadlineExceeded):
			if _, ok := c.idleDeadline(); !ok {
				return ErrIdleTimeout
			}
		default:
			return err
		}
	}
	return nil
}

// touch records that bytes moved now.
func (c *pipe) touch() {
	c.last.Store(int64(time.Since(c.start)))
}

// idleDeadline returns when the session becomes idle: IdleTimeout after the last byte
// moved either way. ok is false when that moment has already passed.
func (c *pipe) idleDeadline() (deadline time.Time, ok bool) {
	deadline = c.start.Add(time.Duration(c.last.Load()) + c.p.idleTimeout)
	return deadline, time.Now().Before(deadline)
}

// check applies the policy's CheckConn to a connection from down's address whose peer is
// id (the connection rate limit applies on accept, in the sidecar's listener). It returns the refusing decision and false when
// the connection must be closed.
func (p *Proxy) check(down net.Conn, id string) (policy.Decision, bool) {
	var src netip.Addr
	if ta, ok := down.RemoteAddr().(*net.TCPAddr); ok {
		src = ta.AddrPort().Addr().Unmap()
	} else if ap, err := netip.ParseAddrPort(addrString(down.RemoteAddr())); err == nil {
		src = ap.Addr().Unmap()
	}
	if d := p.policy.CheckConn(src, id, p.port); !d.Allowed {
		return d, false
	}
	return policy.Decision{Allowed: true}, true
}
