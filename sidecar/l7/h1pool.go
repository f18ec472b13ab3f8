package l7

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// h1Pool is Ferry's own pool of HTTP/1.1 upstream connections. Unlike http.Transport it runs
// each round trip on the caller's goroutine: the request is written and the response read
// by the goroutine that asked for it, with no per-connection read and write goroutines and
// no channel hand-offs (a goroutine writes the request body, only when there is one).
// Idle connections are kept per endpoint address, most recently used first, at most maxIdle
// of them, each closed after idleTimeout. It is safe for concurrent use.
type h1Pool struct {
	// dial connects to an endpoint (TLS included); its errors are *DialError or
	// *circuit.OverflowError, and the connection it returns is counted by the breaker.
	dial func(ctx context.Context, addr string) (net.Conn, error)
	// idleTimeout closes connections idle this long; 0 keeps them.
	idleTimeout time.Duration
	// maxIdle bounds the idle connections per endpoint, as http.Transport's
	// MaxIdleConnsPerHost (0 means http.DefaultMaxIdleConnsPerHost, < 0 none).
	maxIdle int
	// maxHeaderBytes bounds the response headers (and the 1xx responses before them).
	maxHeaderBytes int64
	// onPeek, if not nil, is called before each liveness check (alive) getUntil makes:
	// tests count them with it.
	onPeek func()

	hosts sync.Map // endpoint address → *h1Host
}

func newH1Pool(dial func(ctx context.Context, addr string) (net.Conn, error), idleTimeout time.Duration, maxIdle int) *h1Pool {
	if maxIdle == 0 {
		maxIdle = http.DefaultMaxIdleConnsPerHost
	}
	return &h1Pool{dial: dial, idleTimeout: idleTimeout, maxIdle: maxIdle, maxHeaderBytes: 1 << 20}
}

// h1Host holds the idle connections to one endpoint address.
type h1Host struct {
	p    *h1Pool
	addr string

	mu    sync.Mutex
	idle  []*h1Conn   // oldest first; taken from the end (LIFO)
	timer *time.Timer // the janitor: fires when the oldest idle connection expires
	armed bool        // timer is set to fire
	dead  bool        // removed from p.hosts: put goes to the new entry
}

func (p *h1Pool) host(addr string) *h1Host {
	if h, ok := p.hosts.Load(addr); ok {
		return h.(*h1Host)
	}
	h, _ := p.hosts.LoadOrStore(addr, &h1Host{p: p, addr: addr})
	return h.(*h1Host)
}

// getUntil returns an idle connection to addr that is still open, or dials a new one, by
// deadline if not zero: past it the dial is cancelled with cause. It also returns the time
// it read as it took an idle connection (which the round trip's deadline is armed with),
// zero for a connection it dialed. now, if not zero, is that time: a reading the caller
// took a few microseconds before (the base of deadline), which makes a connection look
// idle for that much less (its liveness check is skipped only if it was idle for less
// than the bound plus those microseconds) and the round trip's deadline timer fire that
// much later, never earlier. replay tells whether the request to be sent is replayable
// (see replayable): an idle connection is checked with alive only past
// peekAfterReplayable then, past peekAfter otherwise.
func (p *h1Pool) getUntil(ctx context.Context, addr string, now, deadline time.Time, cause error, replay bool) (*h1Conn, time.Time, error) {
	h := p.host(addr)
	after := peekAfter
	if replay {
		after = peekAfterReplayable
	}
	for {
		c := h.take()
		if c == nil {
			break
		}
		if now.IsZero() {
			now = time.Now()
		}
		if now.Sub(c.idleSince) < after {
			return c, now, nil
		}
		if p.onPeek != nil {
			p.onPeek()
		}
		if c.alive() {
			return c, now, nil
		}
		c.close()
	}
	if !deadline.IsZero() {
		if now.IsZero() {
			now = time.Now()
		}
		d := deadline.Sub(now)
		if d <= 0 {
			return nil, time.Time{}, cause
		}
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		t := time.AfterFunc(d, func() { cancel(cause) })
		defer func() {
			t.Stop()
			cancel(nil) // the dial is over: the connection does not keep ctx
		}()
	}
	conn, err := p.dial(ctx, addr)
	if err != nil {
		if ctx.Err() != nil {
			// As http.Transport: a dial the request's cancellation cut short reports the
			// cancellation (a client gone, a timeout), not a connect failure.
			return nil, time.Time{}, context.Cause(ctx)
		}
		return nil, time.Time{}, err
	}
	return newH1Conn(h, conn), time.Time{}, nil
}

// take removes the most recently used idle connection, or returns nil.
func (h *h1Host) take() *h1Conn {
	h.mu.Lock()
	n := len(h.idle)
	if n == 0 {
		h.mu.Unlock()
		return nil
	}
	c := h.idle[n-1]
	h.idle[n-1] = nil
	h.idle = h.idle[:n-1]
	h.mu.Unlock()
	c.reused = true
	return c
}

// put keeps c for a later request, or closes it when the endpoint has enough idle ones.
// It returns the time it read, which c's idle time counts from.
func (h *h1Host) put(c *h1Conn) time.Time {
	now := time.Now()
	for {
		h.mu.Lock()
		if !h.dead {
			break
		}
		h.mu.Unlock()
		h = h.p.host(h.addr)
		c.h = h
	}
	if len(h.idle) >= h.p.maxIdle {
		h.mu.Unlock()
		c.close()
		return now
	}
	c.idleSince = now
	h.idle = append(h.idle, c)
	if to := h.p.idleTimeout; to > 0 && !h.armed {
		h.armed = true
		if h.timer == nil {
			h.timer = time.AfterFunc(to, h.expire)
		} else {
			h.timer.Reset(to)
		}
	}
	h.mu.Unlock()
	return now
}

// expire closes the connections idle for idleTimeout and sets the timer for the next one
// to expire. An endpoint left with no idle connection is dropped from the pool, so that
// the addresses of endpoints long gone do not accumulate.
func (h *h1Host) expire() {
	now := time.Now()
	to := h.p.idleTimeout
	h.mu.Lock()
	n := 0
	for n < len(h.idle) && now.Sub(h.idle[n].idleSince) >= to {
		n++
	}
	old := make([]*h1Conn, n)
	copy(old, h.idle[:n])
	rest := copy(h.idle, h.idle[n:])
	clear(h.idle[rest:])
	h.idle = h.idle[:rest]
	if rest > 0 {
		h.timer.Reset(h.idle[0].idleSince.Add(to).Sub(now))
	} else {
		h.armed = false
		h.dead = true
		h.p.hosts.CompareAndDelete(h.addr, h)
	}
	h.mu.Unlock()
	for _, c := range old {
		c.close()
	}
}

// closeIdle closes every idle connection.
func (p *h1Pool) closeIdle() {
	p.hosts.Range(func(_, v any) bool {
		h := v.(*h1Host)
		h.mu.Lock()
		idle := h.idle
		h.idle = nil
		if h.timer != nil && h.armed {
			h.timer.Stop()
			h.armed = false
		}
		h.mu.Unlock()
		for _, c := range idle {
			c.close()
		}
		return true
	})
}

// h1Conn is one upstream connection. It is used by one request at a time: the pool hands
// it to a single caller until that caller's response body is done with it.
type h1Conn struct {
	h    *h1Host
	conn net.Conn
	raw  syscall.RawConn // the socket under conn, for the liveness check; nil if unknown
	tls  *tls.ConnectionState
	br   *bufio.Reader
	bw   *bufio.Writer // for requests written by http.Request.Write; made on first use
	wbuf []byte        // the request head of the fast path

	// readLimit is what may still be read before the response headers end.
	readLimit int64
	// written counts the bytes written to conn (by the caller or the body writer).
	written atomic.Int64
	// writeFailed: a write to conn failed during this round trip. Written by whoever
	// writes (the caller, or the body writer before it reports).
	writeFailed bool

	// The writer of request bodies of known length (writeWithBody), made on first use;
	// wBody and wLen are what its goroutine sends next, set before it starts.
	bodyW       *h1BodyWriter
	writeBodyFn func() // c.writeBody, bound once
	wBody       io.ReadCloser
	wLen        int64

	// spare is a parsedResponse a caller is done with (h1Body.recycle), for the next
	// response read on the connection; nil if none. Given back from the caller's
	// goroutine while the connection may serve another round trip already, hence atomic.
	spare atomic.Pointer[parsedResponse]

	reused    bool      // taken from the idle list: the upstream may have closed it since
	idleSince time.Time // when it was put in the idle list
	closed    atomic.Bool

	abortFn func() // c.abort, bound once: the cancellation callback
	// hookedOn is the downstream connection whose request's cancellation aborts the
	// round trip (see onCancel); unhookFn is c.unhook, bound once.
	hookedOn *h1conn
	unhookFn func() bool
	// The deadline of the round trip's response headers (h1Pool.roundTripUntil; see arm):
	// a timer kept from one request to the next, armed by the round trip's goroutine.
	timer     atomic.Pointer[time.Timer] // made on first use; stopped by close
	timeoutFn func()                     // c.timeout, bound once
	epoch     time.Time                  // what due and fireAt count from
	due       atomic.Int64               // the deadline armed (offset), 0 for none, dueFired
	fireAt    atomic.Int64               // when the timer is set to fire (offset), 0 if not set
	armed     bool                       // a deadline is armed (the round trip's goroutine's)
	timedOut  atomic.Bool                // the timer fired during this round trip
	cause     error                      // what the round trip fails with when it does
	peekFn    func(fd uintptr) bool      // c.peek, bound once: the liveness check
	peekBuf   [1]byte
	peekN     int
	peekErr   error
	peekDone  bool
}

func newH1Conn(h *h1Host, conn net.Conn) *h1Conn {
	c := &h1Conn{h: h, conn: conn, readLimit: math.MaxInt64, epoch: time.Now()}
	c.br = bufio.NewReaderSize(c, 16<<10)
	c.abortFn = c.abort
	c.unhookFn = c.unhook
	c.timeoutFn = c.timeout
	inner := conn
	if cc, ok := inner.(*countedConn); ok {
		inner = cc.Conn
	}
	if tc, ok := inner.(*tls.Conn); ok {
		cs := tc.ConnectionState()
		c.tls = &cs
		inner = tc.NetConn()
	}
	if sc, ok := inner.(syscall.Conn); ok && canPeek {
		if raw, err := sc.SyscallConn(); err == nil {
			c.raw = raw
			c.peekFn = c.peek
		}
	}
	return c
}

// Read reads from the connection, failing once readLimit bytes were read (response
// headers too large). It is what c.br reads from.
func (c *h1Conn) Read(p []byte) (int, error) {
	if c.readLimit <= 0 {
		return 0, fmt.Errorf("net/http: response headers exceed %d bytes", c.h.p.maxHeaderBytes)
	}
	if int64(len(p)) > c.readLimit {
		p = p[:c.readLimit+1]
	}
	n, err := c.conn.Read(p)
	if c.readLimit != math.MaxInt64 {
		c.readLimit -= int64(n)
	}
	return n, err
}

// Write writes to the connection and counts the bytes written.
func (c *h1Conn) Write(p []byte) (int, error) {
	n, err := c.conn.Write(p)
	c.written.Add(int64(n))
	if err != nil {
		c.writeFailed = true
	}
	return n, err
}

// abort makes every blocked and future read and write on the connection fail at once: the
// request's context was cancelled. A connection aborted is never reused.
func (c *h1Conn) abort() { _ = c.conn.SetDeadline(aLongTimeAgo) }

// aLongTimeAgo is a deadline in the past, which fails I/O immediately.
var aLongTimeAgo = time.Unix(1, 0)

// peekAfter is how long a connection must have been idle for get to check it with alive:
// one put back this recently is taken as it is (under load, the usual case), which saves a
// system call per request. An upstream closing a connection in that window is no more
// likely than net/http's idle reader noticing it too late, and is covered the same way: a
// replayable request that got nothing back is sent again on another connection.
const peekAfter = time.Millisecond

// peekAfterReplayable is peekAfter for a replayable request (replayable: no body or one
// that can be made again, and an idempotent method or an idempotency key), which skips the
// check on a connection idle for less. Under load that saves the system call on almost
// every request (HAProxy makes none). What the check guards against cannot happen unnoticed
// in that window:
//   - an upstream that closed the connection (shut down, or reached its keep-alive
//     timeout): the request fails before any byte of a response arrives (h1NoResponse, or
//     h1NothingWritten), and a replayable request that did is sent again on another
//     connection by roundTripUntil, as net/http does;
//   - an upstream that sent something unsolicited on the idle connection, which would be
//     taken for the answer to the request: servers do that when they close an idle
//     connection on their keep-alive (or request) timeout, a 408 Request Timeout, and those
//     timeouts are seconds long (nginx 75 s, Node 5 s, gunicorn 2 s), far above this bound.
//
// Requests that are not replayable keep the check past peekAfter: a failure on a dead
// connection could not be retried for them.
const peekAfterReplayable = 100 * time.Millisecond

// alive reports whether an idle connection is still usable: its upstream neither closed
// it nor sent anything while it sat idle (an unsolicited response would be taken for the
// next request's). net/http has a goroutine reading every idle connection for this; Ferry
// asks the socket without blocking when it takes the connection.
func (c *h1Conn) alive() bool {
	if c.raw == nil {
		return true
	}
	c.peekDone = false
	if err := c.raw.Read(c.peekFn); err != nil || !c.peekDone {
		return false
	}
	// EAGAIN: nothing to read, the connection is open and quiet.
	return c.peekN < 0 && errors.Is(c.peekErr, syscall.EAGAIN)
}

func (c *h1Conn) close() {
	if c.closed.CompareAndSwap(false, true) {
		_ = c.conn.Close()
		if t := c.timer.Load(); t != nil {
			t.Stop() // it may be set for a deadline long gone: let c go now
			c.fireAt.Store(0)
		}
	}
}
