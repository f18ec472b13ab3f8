package l7

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// H1Server serves HTTP/1.0 and HTTP/1.1 connections with one goroutine per connection: it
// reads a request, runs the handler on the same goroutine, finishes the response and loops
// while the connection may be kept alive. It gives handlers what net/http's server gives
// them (request context cancelled when the client goes away, Flush, Hijack, trailers,
// 1xx responses, Expect: 100-continue) without net/http's per-request background-read
// goroutine: the client is watched only for requests still running after a short delay.
//
// Connections that speak HTTP/2 (ALPN h2, or the cleartext prior-knowledge preface) are
// handed to another server; see ServeConn.
//
// The Request and its Header are reused after ServeHTTP returns, as net/http's contract
// allows (neither the ResponseWriter nor the Request may be used after or concurrently
// with the completion of ServeHTTP): a connection parses its next request into the same
// http.Request, URL and (cleared) header map, so that a request costs no allocation for
// them. Strings taken from a request (method, target, header values) stay valid: each
// head gets a fresh copy that they point into. A handler that keeps the Request, its
// URL or its Header map (not just strings from them) beyond ServeHTTP must copy them.
// The request context is reused too, unless someone asked for its Done channel or
// derived a context from it (see h1reqCtx); in that case, which is how a goroutine
// outliving the handler would watch the request, the Request's storage is not reused
// either; nor is that of a request with a body (a transport may still be sending it
// upstream after the response). A connection that was hijacked or whose handler panicked serves no further
// request.
//
// ServeConn and Shutdown are safe to call concurrently.
type H1Server struct {
	o       ServerOptions
	handler http.Handler
	log     *slog.Logger
	track   func(delta int)
	pool    sync.Pool // *bufio.Reader of h1ReadBufferSize
	wpool   sync.Pool // *bufio.Writer of h1WriteBufferSize

	mu      sync.Mutex
	conns   map[*h1conn]struct{}
	closing atomic.Bool
	wg      sync.WaitGroup // connection goroutines

	sweep h1sweeper // the client-gone watch's timer for all connections; see watch
}

const (
	h1ReadBufferSize  = 4 << 10
	h1WriteBufferSize = 4 << 10
	// h1BodyBuffer is how much of a response body is held back so that a small response
	// goes out with a Content-Length, in one write with its header.
	h1BodyBuffer = 2 << 10
	// h1MaxDrain is how much of a request body the handler left unread is discarded so
	// that the connection can be reused; a longer remainder closes the connection.
	h1MaxDrain = 256 << 10
	// h1WatchDelay is how long a request runs before the connection is watched for the
	// client going away (it is, within 1.5×h1WatchDelay of the request's start: see watch).
	h1WatchDelay = 10 * time.Millisecond
	// h1LingerTime bounds how long a connection that is being closed after an answer
	// discards what the client still sends, so that the client reads the answer rather
	// than a reset.
	h1LingerTime = 500 * time.Millisecond
)

// NewH1Server returns a server that runs handler for every HTTP/1.x request. track, if not
// nil, is called with +1 when the server starts serving a connection and -1 when the
// connection is closed or hijacked (listener metrics).
func NewH1Server(o ServerOptions, handler http.Handler, track func(delta int)) *H1Server {
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	if track == nil {
		track = func(int) {}
	}
	s := &H1Server{o: o, handler: handler, log: lg, track: track, conns: make(map[*h1conn]struct{})}
	s.pool.New = func() any { return bufio.NewReaderSize(nil, h1ReadBufferSize) }
	s.wpool.New = func() any { return bufio.NewWriterSize(nil, h1WriteBufferSize) }
	return s
}

// h2Preface is the client connection preface of HTTP/2 (RFC 9113 §3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// ServeConn serves c on a new goroutine and returns true, or returns false (taking nothing)
// once Shutdown has been called. A TLS connection whose ALPN chose h2, and a plaintext
// connection that starts with the HTTP/2 preface, are given to h2 instead (with the bytes
// read so far replayed); h2 returning false (or h2 nil) closes the connection. c may be
// a *tls.Conn whose handshake is complete: its state is then the requests' TLS state.
func (s *H1Server) ServeConn(c net.Conn, h2 func(net.Conn) bool) bool {
	if h2 == nil {
		h2 = func(net.Conn) bool { return false } // no HTTP/2 here: close such connections
	}
	hc := &h1conn{s: s, rwc: c, start: time.Now()}
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		return false
	}
	s.conns[hc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.track(1)
	go hc.serve(h2)
	return true
}

// Shutdown stops taking connections, closes idle ones, waits for the others to finish
// their request and close, and, when ctx ends first, closes them all (cancelling the
// requests still running) and returns ctx's error. It returns once every connection
// goroutine has ended and the client-gone watch's timer has stopped.
func (s *H1Server) Shutdown(ctx context.Context) error {
	defer s.sweep.stop()
	s.mu.Lock()
	s.closing.Store(true)
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		s.closeIdle()
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			s.mu.Lock()
			for c := range s.conns {
				c.cut()
			}
			s.mu.Unlock()
			<-done
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *H1Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		// As net/http: a new connection that has sent nothing for a while counts as idle.
		if c.state.CompareAndSwap(h1Idle, h1Closed) ||
			time.Since(c.start) > h1NewGrace && c.state.CompareAndSwap(h1New, h1Closed) {
			_ = c.rwc.Close()
		}
	}
}

func (s *H1Server) forget(c *h1conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.track(-1)
}

// Connection states, for Shutdown.
const (
	h1New    int32 = iota // accepted, nothing received yet
	h1Idle                // waiting for a request's first byte: Shutdown may close it
	h1Active              // reading or serving a request
	h1Closed              // closed by Shutdown
)

// h1NewGrace is how long Shutdown lets a new connection send its first request.
const h1NewGrace = 5 * time.Second

// h1conn is one HTTP/1.x connection. Its fields are used by the connection's goroutine,
// except where a comment says otherwise.
type h1conn struct {
	s     *H1Server
	rwc   net.Conn
	start time.Time
	state atomic.Int32
	ctx   context.Context // connection context: framing guard, TLS state, local address
	guard *guardConn      // carries the framing-conflict signal to the Handler
	cr    h1connReader
	br    *bufio.Reader
	big   bool // br is a larger reader than the pool's (long header section)
	bw    *bufio.Writer
	res   h1response
	date  h1date
	// respAt is when the handler of the request being finished returned, as it read the
	// clock (Unix nanoseconds; see h1reqCtx.end): the response's Date. 0: read the clock.
	respAt int64
	keys   []string // scratch for sorting header keys
	// reuse is the storage of the last request (its http.Request, URL and header map),
	// filled again by the next one; see H1Server.
	reuse requestReuse

	// remote is rwc.RemoteAddr().String(), formatted once for all the connection's
	// requests (http.Request.RemoteAddr).
	remote string

	hijacked bool
	// deadline: a read deadline is set on rwc; headerDeadline: the header timeout has
	// been applied to the request being read. idleAt: when the deadline set is the idle
	// timeout's, the time it was set (see idleDeadline); zero otherwise.
	deadline, headerDeadline bool
	idleAt                   time.Time
	released                 bool // the connection's goroutine no longer counts for Shutdown (hijacked)

	// The request being served and its cancellation (also read by cut, under s.mu).
	reqMu sync.Mutex
	// reqCtx is the context of the request being served, nil between requests. aborts are
	// what to abort when it is cancelled: the upstream connections of the request's round
	// trips, which register here (hookAbort) rather than with a context.AfterFunc each.
	reqCtx    *h1reqCtx
	aborts    []aborter
	abortsBuf [2]aborter
	// spareCtx is the last request's context, used again for the next request unless it
	// escaped (see h1reqCtx). Only the connection's goroutine uses it.
	spareCtx *h1reqCtx

	// Client-gone watch; see watch.
	wmu      sync.Mutex
	wstate   int
	bodyDone bool
	reqStart time.Time
	armed    bool // listed by the server's sweeper (or about to be, by watch)
	sweepPos int  // 1 + index in the sweeper's list, 0 if not listed; under s.sweep.mu
	bgDone   chan struct{}
	aborting atomic.Bool
}

// cut closes the connection and cancels its request; called by Shutdown under s.mu.
func (c *h1conn) cut() {
	c.state.Store(h1Closed)
	c.reqMu.Lock()
	ctx := c.reqCtx
	c.reqMu.Unlock()
	if ctx != nil {
		c.cancelRequest(ctx, false)
	}
	_ = c.rwc.Close()
}

// aborter is an upstream connection whose round trip fails at once when abort is called.
type aborter interface{ abort() }

// h1connKey is the key under which the connection's context holds its *h1conn, for
// hookAbort.
type h1connKey struct{}

// cancelRequest cancels the request being served if its context is ctx and then aborts what hookAbort registered for it; end also forgets the request
// (it is over). It is safe to call from any goroutine.
func (c *h1conn) cancelRequest(ctx *h1reqCtx, end bool) {
	var buf [2]aborter
	c.reqMu.Lock()
	if c.reqCtx == nil || ctx != c.reqCtx {
		c.reqMu.Unlock()
		return
	}
	// Cancelled under reqMu, so that hookAbort either sees the context cancelled or
	// registers before the list is taken.
	ctx.cancel()
	fire := c.aborts
	if len(fire) <= len(buf) {
		fire = buf[:copy(buf[:], fire)] // c.aborts is abortsBuf, reused from here
	}
	c.abortsBuf = [2]aborter{}
	c.aborts = c.abortsBuf[:0]
	if end {
		c.reqCtx = nil
	}
	c.reqMu.Unlock()
	for _, a := range fire {
		a.abort()
	}
}

// hookAbort arranges for a.abort to run when ctx is cancelled, as context.AfterFunc(ctx,
// a.abort) would (at once if it is cancelled already), without allocating, and reports
// true; or reports false, doing nothing, when ctx is not cancelled exactly when the
// request being served is (another request's context, or one derived with a cancellation
// of its own). base is ctx, or a context ctx only adds values to (the same Done). It is
// safe to call from any goroutine; unhookAbort undoes it.
func (c *h1conn) hookAbort(ctx, base context.Context, a aborter) bool {
	c.reqMu.Lock()
	rc := c.reqCtx
	c.reqMu.Unlock()
	// The comparisons run without the lock: a Done method is the caller's code. rc is a
	// pointer, so comparing it with base cannot panic. Done is only asked for when base
	// is not rc (it makes rc's channel, and rc is then not reused).
	if rc == nil || base != context.Context(rc) && ctx.Done() != rc.Done() {
		return false
	}
	c.reqMu.Lock()
	if c.reqCtx != rc {
		c.reqMu.Unlock()
		return false // that request ended meanwhile
	}
	if rc.Err() != nil {
		c.reqMu.Unlock()
		a.abort()
		return true
	}
	if c.aborts == nil {
		c.aborts = c.abortsBuf[:0]
	}
	c.aborts = append(c.aborts, a)
	c.reqMu.Unlock()
	return true
}

// unhookAbort undoes hookAbort for a, reporting whether it did so before a was aborted
// (context.AfterFunc's stop). It is safe to call from any goroutine.
func (c *h1conn) unhookAbort(a aborter) bool {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	for i, x := range c.aborts {
		if x == a {
			last := len(c.aborts) - 1
			c.aborts[i] = c.aborts[last]
			c.aborts[last] = nil
			c.aborts = c.aborts[:last]
			return true
		}
	}
	return false
}

// h1connReader is what the connection's buffered reader reads from: the connection, after
// any bytes set aside (a byte the client-gone watch read, or bytes carried over from a
// smaller buffer).
type h1connReader struct {
	c       *h1conn
	pending []byte
	oneByte [1]byte
}

func (r *h1connReader) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.c.rwc.Read(p)
}

func (c *h1conn) serve(h2 func(net.Conn) bool) {
	defer func() {
		if !c.released {
			c.s.wg.Done()
		}
	}()
	c.cr.c = c
	c.br = c.s.pool.Get().(*bufio.Reader)
	c.br.Reset(&c.cr)
	closeConn := true
	defer func() {
		if !c.hijacked {
			c.s.forget(c)
		}
		c.unlist()
		if !c.hijacked && !c.big {
			c.br.Reset(nil)
			c.s.pool.Put(c.br)
		}
		if c.bw != nil && !c.hijacked {
			c.bw.Reset(nil)
			c.s.wpool.Put(c.bw)
		}
		if closeConn && !c.hijacked {
			_ = c.rwc.Close()
		}
	}()
	tc, _ := c.rwc.(*tls.Conn)
	if tc != nil && tc.ConnectionState().NegotiatedProtocol == "h2" {
		closeConn = false
		c.s.forget(c)
		c.hijacked = true // not ours any more
		if !h2(c.rwc) {
			_ = c.rwc.Close()
		}
		return
	}
	if isH2, err := c.sniffPreface(); err != nil {
		return
	} else if isH2 {
		b, _ := c.br.Peek(c.br.Buffered())
		pc := &prefixConn{Conn: c.rwc, pre: append([]byte(nil), b...)}
		_ = c.rwc.SetReadDeadline(time.Time{}) // the sniffing's; the HTTP/2 server keeps its own
		closeConn = false
		c.s.forget(c)
		c.hijacked = true
		c.s.pool.Put(c.br)
		if !h2(pc) {
			_ = c.rwc.Close()
		}
		return
	}
	c.guard = &guardConn{Conn: c.rwc, off: true}
	ctx := context.WithValue(context.Background(), http.LocalAddrContextKey, c.rwc.LocalAddr())
	c.ctx = context.WithValue(connContext(ctx, c.guard), h1connKey{}, c)
	c.bw = c.s.wpool.Get().(*bufio.Writer)
	c.bw.Reset(c.rwc)
	for c.serveOne() {
	}
}

// sniffPreface reads until the bytes received either differ from the HTTP/2 preface or
// are all of it, within the header timeout.
func (c *h1conn) sniffPreface() (bool, error) {
	if d := c.s.o.ReadHeaderTimeout; d > 0 {
		_ = c.rwc.SetReadDeadline(time.Now().Add(d))
		c.deadline = true
	}
	for {
		b, _ := c.br.Peek(c.br.Buffered())
		m := min(len(b), len(h2Preface))
		if string(b[:m]) != h2Preface[:m] {
			return false, nil
		}
		if m == len(h2Preface) {
			return true, nil
		}
		if _, err := c.br.Peek(len(b) + 1); err != nil {
			return false, err
		}
		if c.state.Load() != h1Active && !c.state.CompareAndSwap(h1New, h1Active) {
			return false, net.ErrClosed // Shutdown closed it
		}
	}
}

// prefixConn replays bytes already read from its connection.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.pre) > 0 {
		n := copy(b, p.pre)
		p.pre = p.pre[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// CloseWrite half-closes the underlying connection when it can.
func (p *prefixConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Conn.Close()
}

// coarseIdle is the shortest idle timeout whose deadline idleDeadline and
// keepIdleDeadline handle coarsely; shorter ones are set and cleared for every request.
const coarseIdle = time.Second

// idleDeadline arms the idle timeout d for the wait for the next request. Setting a read
// deadline costs as much as parsing a request (the runtime moves a timer under locks), so
// on a busy connection the deadline armed for the previous wait is kept when it was set
// less than d/64 ago and is still armed: the connection may then be closed up to d/64
// (under 2 % of the timeout) before a full idle period.
func (c *h1conn) idleDeadline(d time.Duration) {
	now := time.Now()
	if d < coarseIdle || c.idleAt.IsZero() || now.Sub(c.idleAt) > d/64 {
		_ = c.rwc.SetReadDeadline(now.Add(d))
		c.idleAt = now
	}
	c.deadline = true
}

// keepIdleDeadline reports whether the idle deadline still armed may stay while req is
// served, saving its clearing now and its setting for the next wait: a request without a
// body is not read from by its handler, the client-gone watch clears the deadline before
// it reads (startBackgroundRead), and hijacking clears it. An idle timeout of at least
// coarseIdle cannot expire within a request the watch has not yet looked at.
func (c *h1conn) keepIdleDeadline(req *http.Request) bool {
	return !c.idleAt.IsZero() && c.s.o.IdleTimeout >= coarseIdle && req.Body == http.NoBody
}

// serveOne reads and serves one request; false means the connection must be closed.
func (c *h1conn) serveOne() bool {
	// Idle until the request's first byte.
	if c.br.Buffered() == 0 {
		if !c.state.CompareAndSwap(h1Active, h1Idle) || c.s.closing.Load() {
			return false
		}
		if d := c.s.o.IdleTimeout; d > 0 {
			c.idleDeadline(d)
		} else if c.deadline {
			_ = c.rwc.SetReadDeadline(time.Time{})
			c.deadline = false
		}
		if _, err := c.br.Peek(1); err != nil {
			return false
		}
		if !c.state.CompareAndSwap(h1Idle, h1Active) {
			return false // Shutdown closed it
		}
	}
	// The header timeout is set when the header section is not all here yet (see
	// headerEnd): a request that came in one piece costs no deadline change.
	c.headerDeadline = false
	req, conflict, err := c.readRequest()
	if err != nil {
		var he *h1Error
		if errors.As(err, &he) {
			c.writeError(he)
		}
		return false
	}
	if c.deadline && !c.keepIdleDeadline(req) {
		// The handler reads the body with no deadline, as with net/http without ReadTimeout.
		_ = c.rwc.SetReadDeadline(time.Time{})
		c.deadline = false
		c.idleAt = time.Time{}
	}
	return c.serveRequest(req, conflict)
}

// readRequest reads the next request's header section and parses it.
func (c *h1conn) readRequest() (*http.Request, bool, error) {
	limit := c.s.o.MaxHeaderBytes
	if limit <= 0 {
		limit = http.DefaultMaxHeaderBytes
	}
	limit += 4096 // as net/http: room for the request line
	end, err := c.headerEnd(limit)
	if err != nil {
		return nil, false, err
	}
	hdr, _ := c.br.Peek(end)
	return parseRequestReusing(c.br, hdr, &c.reuse)
}

// headerEnd waits until br holds a complete header section (ending with an empty line) and
// returns its length, growing br if the section is longer than br's buffer.
func (c *h1conn) headerEnd(limit int) (int, error) {
	pos, lineStart := 0, 0
	for {
		buf, _ := c.br.Peek(c.br.Buffered())
		for pos < len(buf) {
			i := indexByte(buf[pos:], '\n')
			if i < 0 {
				pos = len(buf)
				break
			}
			nl := pos + i
			if line := buf[lineStart:nl]; len(line) == 0 || (len(line) == 1 && line[0] == '\r') {
				return nl + 1, nil
			}
			pos, lineStart = nl+1, nl+1
		}
		if len(buf) >= limit {
			return 0, &h1Error{status: http.StatusRequestHeaderFieldsTooLarge, msg: "request header fields too large"}
		}
		if len(buf) == c.br.Size() {
			c.growReader(limit)
		}
		if !c.headerDeadline {
			c.headerDeadline = true
			c.idleAt = time.Time{}
			if d := c.s.o.ReadHeaderTimeout; d > 0 {
				_ = c.rwc.SetReadDeadline(time.Now().Add(d))
				c.deadline = true
			} else if c.deadline {
				_ = c.rwc.SetReadDeadline(time.Time{})
				c.deadline = false
			}
		}
		if _, err := c.br.Peek(len(buf) + 1); err != nil {
			if len(buf) > 0 && !errors.Is(err, io.EOF) && !isTimeout(err) {
				return 0, &h1Error{status: http.StatusBadRequest, msg: "malformed request"}
			}
			return 0, err
		}
	}
}

// indexByte is bytes.IndexByte, whose vector scan beats a byte loop already on a header
// line.
func indexByte(b []byte, c byte) int { return bytes.IndexByte(b, c) }

// growReader replaces the connection's reader with one that can hold limit bytes,
// carrying over what the old one buffered. Long header sections are rare: the larger
// reader stays with the connection and is not pooled.
func (c *h1conn) growReader(limit int) {
	b, _ := c.br.Peek(c.br.Buffered())
	c.cr.pending = append(append([]byte(nil), b...), c.cr.pending...)
	old := c.br
	c.br = bufio.NewReaderSize(&c.cr, limit)
	if !c.big {
		old.Reset(nil)
		c.s.pool.Put(old)
	}
	c.big = true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// h1Error is a request the server answers itself, closing the connection.
type h1Error struct {
	status int
	msg    string
}

func (e *h1Error) Error() string { return e.msg }

// writeError answers a request the server refuses before any handler runs, then closes
// the connection (lingering so that the client sees the answer, not a reset).
func (c *h1conn) writeError(e *h1Error) {
	body := http.StatusText(e.status) + ": " + e.msg + "\n"
	b := make([]byte, 0, 256)
	b = appendStatusLine(b, true, e.status)
	b = append(b, "Content-Type: text/plain; charset=utf-8\r\nProxy-Status: "...)
	b = append(b, (&LocalReply{Type: ErrHTTPRequestError, Details: e.msg}).ProxyStatus()...)
	b = append(b, "\r\nConnection: close\r\nContent-Length: "...)
	b = appendInt(b, int64(len(body)))
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	_ = c.rwc.SetWriteDeadline(time.Now().Add(h1LingerTime))
	if _, err := c.rwc.Write(b); err == nil {
		c.linger()
	}
}

// linger half-closes the connection and discards what the client still sends, briefly,
// before the connection is closed.
func (c *h1conn) linger() {
	if cw, ok := c.rwc.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			_ = c.rwc.SetReadDeadline(time.Now().Add(h1LingerTime))
			_, _ = io.Copy(io.Discard, io.LimitReader(c.rwc, h1MaxDrain))
		}
	}
}

// serveRequest runs the handler for req and finishes its response; false means the
// connection must be closed.
func (c *h1conn) serveRequest(req *http.Request, conflict bool) (keep bool) {
	c.respAt = 0 // until the handler says when it finished
	ctx := c.spareCtx
	if ctx == nil || !ctx.reuse() {
		ctx = &h1reqCtx{parent: c.ctx}
		c.spareCtx = ctx
	}
	c.reqMu.Lock()
	c.reqCtx = ctx
	c.reqMu.Unlock()
	if c.state.Load() == h1Closed {
		c.cancelRequest(ctx, false) // cut by Shutdown while the request was read
	}
	hasBody := false
	defer func() {
		c.res.body.shut()
		c.cancelRequest(ctx, true)
		if ctx.real.Load() != nil || hasBody {
			// Its context was handed to something that may outlive it (a goroutine, a
			// child context), or it had a body, which a transport's goroutine may still
			// be sending upstream, with a head whose header values point into the
			// request's storage, for a while after the response (maxWriteWait): to be
			// safe, the request's storage is not reused.
			c.reuse = requestReuse{}
		}
	}()
	// In place: the parser made req for this server only, and its body (the trailers of a
	// chunked one) refers to it. The copy WithContext makes stays on the stack.
	*req = *req.WithContext(ctx)
	if c.remote == "" {
		c.remote = c.rwc.RemoteAddr().String()
	}
	req.RemoteAddr = c.remote
	if conflict {
		c.guard.conflict.Store(true)
	} else {
		c.guard.conflict.Store(false)
	}
	w := &c.res
	w.reset(c, req)
	body := &w.body
	body.c, body.rc, body.w = c, req.Body, w
	noBody := req.Body == nil || req.Body == http.NoBody
	hasBody = !noBody
	if noBody {
		body.eof = true
	}
	// One lookup of Expect for both questions (a map lookup costs more than the rest).
	if expect := req.Header["Expect"]; len(expect) > 0 && expect[0] != "" {
		if expectsContinue(expect[0]) && req.ProtoAtLeast(1, 1) && req.ContentLength != 0 {
			body.expect = true
			w.canContinue = true
		} else {
			// An expectation other than 100-continue, or 100-continue without a body
			// to wait for or from an HTTP/1.0 client.
			w.closeAfter = true
			w.header.Set("Connection", "close")
			w.WriteHeader(http.StatusExpectationFailed)
			w.finish()
			return false
		}
	}
	if !noBody {
		req.Body = body
	}

	// One reading of the clock for the watch and the handler's start (requestStart).
	now := time.Now()
	ctx.start = now
	ctx.end.Store(0)
	c.watch(noBody, now)
	if req.RequestURI == "*" && req.Method == http.MethodOptions {
		w.header.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	} else if !c.runHandler(w, req) {
		c.unwatch()
		return false
	}
	c.unwatch()
	if c.hijacked {
		return false
	}
	c.respAt = ctx.end.Load()
	w.finish()
	return !w.closeAfter && !w.werr
}

// runHandler calls the handler; false means it panicked (the connection is closed).
func (c *h1conn) runHandler(w *h1response, req *http.Request) (ok bool) {
	defer func() {
		if err := recover(); err != nil {
			ok = false
			if err != http.ErrAbortHandler {
				const size = 64 << 10
				buf := make([]byte, size)
				buf = buf[:runtime.Stack(buf, false)]
				c.s.log.Error("panic serving HTTP request", "downstream", req.RemoteAddr, "panic", err, "stack", string(buf))
			}
		}
	}()
	c.s.handler.ServeHTTP(w, req)
	return true
}

// watch arms the client-gone watch for the request starting at start (now): a request
// still running after h1WatchDelay, once its body has been read to its end (before that,
// the handler's body reads see the client go away), gets a background read of the
// connection, and its context is cancelled when that read sees the connection end. A
// byte it reads (the next, pipelined request) is kept for the next request.
//
// The server's sweeper (h1sweeper) looks at the busy connections every h1SweepEvery
// (h1WatchDelay/2), so a request running for h1WatchDelay gets its background read
// within 1.5×h1WatchDelay of its start (not exactly at h1WatchDelay, as a timer per
// request would do, at a cost per request). A connection joins the sweeper's list when
// it turns busy (armed false) and stays on it while requests keep coming: then watch
// only sets the request's fields under c.wmu.
func (c *h1conn) watch(bodyDone bool, start time.Time) {
	c.wmu.Lock()
	c.wstate, c.bodyDone, c.reqStart = h1Watching, bodyDone, start
	join := !c.armed
	c.armed = true
	c.wmu.Unlock()
	if join {
		c.s.sweep.join(c) // after c.wmu: the sweeper's lock comes first
	}
}

const (
	h1Unwatched = iota
	h1Watching  // the sweeper looks at the request
	h1Waiting   // the request ran h1WatchDelay; waiting for its body's end
	h1Reading   // background read running
)

// look is the sweeper's visit of c at now (its lock held): it starts the background read
// of a request running for h1WatchDelay (or waits for its body's end), and reports
// whether c stays listed: while a request is still to be looked at, or while the
// connection is between requests that keep coming (one started within h1WatchDelay).
// A connection idle for longer, hijacked (unwatched), or whose request is watched already
// leaves the list; its next request lists it again.
func (c *h1conn) look(now time.Time) bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	switch c.wstate {
	case h1Watching:
		if now.Sub(c.reqStart) < h1WatchDelay {
			return true
		}
		if c.bodyDone {
			c.startBackgroundRead()
		} else {
			c.wstate = h1Waiting
		}
	case h1Unwatched:
		if now.Sub(c.reqStart) < h1WatchDelay {
			return true
		}
	}
	c.armed = false
	return false
}

// unlist takes c off the sweeper's list when its goroutine ends (closed or hijacked).
func (c *h1conn) unlist() {
	c.wmu.Lock()
	armed := c.armed
	c.armed = false
	c.wmu.Unlock()
	if armed {
		c.s.sweep.leave(c)
	}
}

// bodyEOF is called (on any goroutine) when the request body has been read to its end.
func (c *h1conn) bodyEOF() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.bodyDone = true
	if c.wstate == h1Waiting {
		c.startBackgroundRead()
	}
}

// startBackgroundRead runs with c.wmu held.
func (c *h1conn) startBackgroundRead() {
	c.wstate = h1Reading
	c.bgDone = make(chan struct{})
	c.reqMu.Lock()
	ctx := c.reqCtx
	c.reqMu.Unlock()
	// The idle deadline may still be armed (keepIdleDeadline): the watch waits without one.
	_ = c.rwc.SetReadDeadline(time.Time{})
	go func() {
		defer close(c.bgDone)
		n, err := c.rwc.Read(c.cr.oneByte[:])
		if n > 0 {
			c.cr.pending = c.cr.oneByte[:n]
			return
		}
		if err != nil && !c.aborting.Load() && ctx != nil {
			c.cancelRequest(ctx, false) // the client went away (or the connection failed)
		}
	}()
}

// unwatch stops the watch when the handler is done (or hijacks the connection).
func (c *h1conn) unwatch() {
	c.wmu.Lock()
	st := c.wstate
	c.wstate = h1Unwatched
	c.wmu.Unlock()
	if st == h1Reading {
		c.aborting.Store(true)
		_ = c.rwc.SetReadDeadline(aLongTimeAgo)
		<-c.bgDone
		c.aborting.Store(false)
		_ = c.rwc.SetReadDeadline(time.Time{})
		c.deadline = false
		c.idleAt = time.Time{}
	}
}

// expectsContinue reports whether expect, the first Expect field of a request, asks for
// 100-continue.
func expectsContinue(expect string) bool {
	return valueHasToken(expect, "100-continue")
}

// h1reqCtx is the context of a request an h1conn serves: the connection's context (values
// only, never cancelled) cancelled when the request ends, the client goes away or
// Shutdown cuts the connection. It replaces a context.WithCancel per request (a context
// and its cancel function: two allocations) with an object the connection uses again for
// its next request, and allocates nothing on the fast path, where nobody asks for Done.
//
// The first Done (or AfterFunc) makes a context.WithCancel of the connection's context,
// whose Done it returns and which is cancelled with the request; Value then answers
// through it. So a context derived from the request's, directly or through contexts that
// only add values (the server span, an httptrace), finds that cancelCtx as its parent
// the way the context package looks for one and registers as its child: no goroutine per
// derived context, as with a plain context.WithCancel. (AfterFunc, the context package's
// other way to do without a goroutine, is implemented on top of it.)
//
// Reuse: a context someone called Done or AfterFunc on may be kept beyond its request
// (a child context of a retry, a goroutine selecting on Done): it "escapes", and the
// connection makes a new one for its next request, so that what was handed out stays
// cancelled. One that did not escape is reset for the next request; what only calls
// Err or Value on a request's context after its handler has returned (net/http cancels
// the context then) may see the next request's instead.
//
// All methods are safe to call concurrently.
type h1reqCtx struct {
	parent    context.Context
	cancelled atomic.Bool
	real      atomic.Pointer[h1cancelCtx] // made by the first Done or AfterFunc

	mu      sync.Mutex // orders cancel against the making of real
	escaped bool       // real was made: x is not reused

	// The clock as read for the request, so that the server and its handler share
	// readings: start, when the server started serving it (set before the handler
	// runs); end, when the handler finished (Unix nanoseconds, 0 if it did not say).
	// See requestStart and requestEnd.
	start time.Time
	end   atomic.Int64
}

// requestStart returns when the server started serving r: the reading H1Server took for
// it (the client-gone watch's), else the clock now.
func requestStart(r *http.Request) time.Time {
	if rc, ok := r.Context().(*h1reqCtx); ok && !rc.start.IsZero() {
		return rc.start
	}
	return time.Now()
}

// requestEnd tells the server serving r that its handler finished at t (a reading the
// handler took anyway): H1Server dates the response with it rather than read the clock
// again. It is safe to call from any goroutine.
func requestEnd(r *http.Request, t time.Time) {
	if rc, ok := r.Context().(*h1reqCtx); ok {
		rc.end.Store(t.UnixNano())
	}
}

// h1cancelCtx is the context.WithCancel an h1reqCtx makes when asked for its Done.
type h1cancelCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

var _ interface {
	context.Context
	AfterFunc(func()) func() bool
} = (*h1reqCtx)(nil)

// Deadline returns the connection context's deadline (it has none).
func (x *h1reqCtx) Deadline() (time.Time, bool) { return x.parent.Deadline() }

// Done returns a channel closed when the request is cancelled.
func (x *h1reqCtx) Done() <-chan struct{} { return x.cancelCtx().Done() }

// cancelCtx returns the context.WithCancel cancelled with x, making it (x escapes) on the
// first call.
func (x *h1reqCtx) cancelCtx() context.Context {
	if r := x.real.Load(); r != nil {
		return r.ctx
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if r := x.real.Load(); r != nil {
		return r.ctx
	}
	x.escaped = true
	ctx, cancel := context.WithCancel(x.parent)
	if x.cancelled.Load() {
		cancel()
	}
	x.real.Store(&h1cancelCtx{ctx: ctx, cancel: cancel})
	return ctx
}

// Err returns context.Canceled once the request is cancelled, nil before.
func (x *h1reqCtx) Err() error {
	if x.cancelled.Load() {
		return context.Canceled
	}
	return nil
}

// Value returns the connection context's value for key (through the cancelCtx once
// there is one, which the context package finds that way).
func (x *h1reqCtx) Value(key any) any {
	if r := x.real.Load(); r != nil {
		return r.ctx.Value(key)
	}
	return x.parent.Value(key)
}

// String names the context for context's String methods.
func (x *h1reqCtx) String() string { return "l7.h1reqCtx" }

// AfterFunc arranges for f to run on a goroutine of its own once the request is
// cancelled (at once if it is) and returns a function that stops it, as
// context.AfterFunc(x, f) does.
func (x *h1reqCtx) AfterFunc(f func()) (stop func() bool) {
	return context.AfterFunc(x.cancelCtx(), f)
}

// cancel cancels the request: Err reports context.Canceled, and Done is closed (and the
// contexts derived from it cancelled) if it was asked for. Later calls do nothing.
func (x *h1reqCtx) cancel() {
	x.mu.Lock()
	x.cancelled.Store(true)
	r := x.real.Load()
	x.mu.Unlock()
	if r != nil {
		r.cancel()
	}
}

// reuse readies x, whose request is over (cancelled), for the connection's next request
// and reports true, or reports false if x escaped (it stays cancelled).
func (x *h1reqCtx) reuse() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.escaped {
		return false
	}
	x.cancelled.Store(false)
	return true
}
