package l7

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// h1NothingWritten is the failure of a round trip that could not write any byte of the
// request: it may be sent again on another connection.
type h1NothingWritten struct{ err error }

func (e *h1NothingWritten) Error() string { return e.err.Error() }
func (e *h1NothingWritten) Unwrap() error { return e.err }

// h1NoResponse is the failure of a round trip whose connection failed before any byte of
// the response arrived: on a reused connection, most likely closed by the upstream's
// keep-alive timeout as the request went out.
type h1NoResponse struct{ err error }

func (e *h1NoResponse) Error() string { return e.err.Error() }
func (e *h1NoResponse) Unwrap() error { return e.err }

// maxWriteWait is how long a finished response waits for its request body to be written
// before giving up on reusing the connection (http.Transport's maxWriteWaitBeforeConnReuse).
const maxWriteWait = 50 * time.Millisecond

// roundTrip sends req to the endpoint req.URL.Host over HTTP/1.1 on a pooled connection and
// returns the response once its headers are read; its body streams from the connection,
// which returns to the pool when the body was read to its end. It is safe for concurrent
// use. A request on a reused connection that failed before anything of the response
// arrived is sent again on another connection when that is safe, as http.Transport does.
func (p *h1Pool) roundTrip(req *http.Request) (*http.Response, error) {
	return p.roundTripUntil(req, time.Time{}, time.Time{}, nil)
}

// roundTripUntil is roundTrip with a deadline for the response headers (none if zero):
// past it, the round trip fails with cause (errResponseTimeout, errPerTryTimeout), as it
// does when the request's context is cancelled with that cause. The deadline is enforced
// with a timer of the connection's, reused from one request to the next, rather than a
// context per request. now is the clock as the caller read it just before (the deadline's
// base), or zero: the first connection is taken from the pool at that time rather than
// at a reading of its own (see getUntil). A connection taken again after a failed try
// reads the clock.
func (p *h1Pool) roundTripUntil(req *http.Request, now, deadline time.Time, cause error) (*http.Response, error) {
	if err := checkH1Request(req); err != nil {
		closeRequestBody(req)
		return nil, err
	}
	ctx := req.Context()
	addr := canonicalAddr(req.URL)
	replay := replayable(req)
	for {
		c, took, err := p.getUntil(ctx, addr, now, deadline, cause, replay)
		if err != nil {
			closeRequestBody(req)
			return nil, err
		}
		resp, err := c.roundTrip(ctx, req, took, deadline, cause)
		if err == nil {
			return resp, nil
		}
		if !c.reused || ctx.Err() != nil || !h1CanRetry(req, err) {
			closeRequestBody(req)
			var nw *h1NothingWritten
			var nr *h1NoResponse
			switch {
			case errors.As(err, &nw):
				err = nw.err
			case errors.As(err, &nr):
				err = nr.err
			}
			return nil, err
		}
		if req.Body != nil && req.Body != http.NoBody {
			closeRequestBody(req)
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req = shallowCopy(req)
			req.Body = body
		}
		// The reading passed in is as old as the failed try by now: the next try reads
		// the clock (a stale one could take a connection idle past the liveness check's
		// bound unchecked).
		now = time.Time{}
	}
}

// checkH1Request refuses what http.Transport refuses before sending anything.
func checkH1Request(req *http.Request) error {
	switch {
	case req.URL == nil:
		return errors.New("http: nil Request.URL")
	case req.Header == nil:
		return errors.New("http: nil Request.Header")
	case req.URL.Host == "":
		return errors.New("http: no Host in request URL")
	case req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method):
		return fmt.Errorf("net/http: invalid method %q", req.Method)
	}
	return nil
}

// h1CanRetry reports whether a request that failed with err on a reused connection may be
// sent again on another one (net/http's shouldRetryRequest).
func h1CanRetry(req *http.Request, err error) bool {
	var nw *h1NothingWritten
	var nr *h1NoResponse
	switch {
	case errors.As(err, &nw):
		return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	case errors.As(err, &nr):
		return replayable(req)
	}
	return false
}

// replayable is net/http's Request.isReplayable: the request has no body (or can make it
// again) and its method is idempotent, or it carries an idempotency key.
func replayable(req *http.Request) bool {
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return false
	}
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	_, k1 := req.Header["Idempotency-Key"]
	_, k2 := req.Header["X-Idempotency-Key"]
	return k1 || k2
}

func closeRequestBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

func shallowCopy(req *http.Request) *http.Request {
	r := new(http.Request)
	*r = *req
	return r
}

// canonicalAddr is the host:port to dial for u, with the scheme's port when u has none.
func canonicalAddr(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// roundTrip sends req on c and reads the response headers, by deadline if not zero (else
// it fails with cause). now is the time read as c was taken from the pool, zero if none
// was. On failure c is closed.
func (c *h1Conn) roundTrip(ctx context.Context, req *http.Request, now, deadline time.Time, cause error) (*http.Response, error) {
	fast := h1Fast(req)
	if fast {
		if err := c.buildHead(req); err != nil {
			// Nothing was sent: the connection is as good as before.
			c.h.put(c)
			return nil, err
		}
	} else if err := checkHeaders(req); err != nil {
		c.h.put(c)
		return nil, err
	}
	if !deadline.IsZero() && !c.arm(now, deadline, cause) {
		// Nothing was sent: the connection is as good as before.
		c.h.put(c)
		return nil, cause
	}
	// Cancellation (and the deadline) fail the connection's blocked and future I/O; from
	// here the connection is reused only if this is undone before it fires (stop() and
	// disarm() are true).
	stop := c.onCancel(ctx)
	start := c.written.Load()
	c.writeFailed = false
	var w *h1BodyWriter
	switch {
	case fast && req.ContentLength > 0:
		w = c.writeWithBody(req.Body, req.ContentLength)
	case fast:
		if n, err := c.Write(c.wbuf); err != nil {
			if n == 0 {
				err = &h1NothingWritten{err}
			}
			return nil, c.fail(ctx, stop, err)
		}
	default:
		var err error
		if w, err = c.writeGeneral(req); err != nil {
			if c.written.Load() == start {
				err = &h1NothingWritten{err}
			}
			return nil, c.fail(ctx, stop, err)
		}
	}
	resp, pr, err := c.readResponse(ctx, req)
	if err != nil {
		c.close() // a body writer still running fails at once
		if w != nil {
			if werr, done := w.result(maxWriteWait); done && werr != nil {
				switch {
				case w.body.err != nil:
					// The request body could not be read (http.Transport reports this too).
					err = w.body.err
				case !w.connFailed:
					// The body did not match its length, say.
					err = werr
				case c.written.Load() == start:
					// Report why the connection failed, not the write that failed
					// because of it.
					var nr *h1NoResponse
					if errors.As(err, &nr) {
						err = nr.err
					}
					err = &h1NothingWritten{err}
				}
			}
		}
		return nil, c.fail(ctx, stop, err)
	}
	if !c.disarm() {
		// The deadline passed as the headers arrived: the connection is being aborted.
		c.close()
		if w != nil {
			w.result(maxWriteWait)
		}
		return nil, c.fail(ctx, stop, c.cause)
	}
	resp.TLS = c.tls
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now belongs to the caller, whatever it switched to; the request
		// (and its body, if any) was sent in full before.
		if w != nil {
			if werr, _ := w.result(-1); werr != nil {
				return nil, c.fail(ctx, stop, werr)
			}
		}
		if !stop() {
			c.close()
			return nil, context.Cause(ctx)
		}
		resp.Body = &h1Upgraded{c: c}
		return resp, nil
	}
	if resp.Body == http.NoBody {
		at := c.release(req, resp, w, stop, true)
		if pr != nil {
			// A body already at its end, so that the response is recycled as others are.
			b := &pr.h1
			b.c, b.pr, b.done, b.err, b.at = c, pr, true, io.EOF, at
			resp.Body = b
		}
		return resp, nil
	}
	// The body comes with the response's other parts when there are.
	var b *h1Body
	if pr != nil {
		b = &pr.h1
		b.pr = pr
	} else {
		b = new(h1Body)
	}
	b.c, b.rc, b.req, b.resp, b.w, b.stop, b.ctx = c, resp.Body, req, resp, w, stop, ctx
	resp.Body = b
	return resp, nil
}

// onCancel arranges for c.abort to run when ctx is cancelled, as context.AfterFunc does,
// and returns the function that undoes it (AfterFunc's stop). A request served by
// H1Server whose context only adds values to the downstream request's (the common case)
// registers with the downstream connection instead, which costs no allocation.
func (c *h1Conn) onCancel(ctx context.Context) func() bool {
	if hc, _ := ctx.Value(h1connKey{}).(*h1conn); hc != nil {
		base := ctx
		if v, ok := ctx.(valueContext); ok {
			base = v.valueParent()
		}
		if hc.hookAbort(ctx, base, c) {
			c.hookedOn = hc
			return c.unhookFn
		}
	}
	return context.AfterFunc(ctx, c.abortFn)
}

// valueContext is a context that adds values to its parent and is cancelled with it.
type valueContext interface {
	valueParent() context.Context
}

// unhook is the stop function of a round trip that onCancel registered with hookedOn.
func (c *h1Conn) unhook() bool { return c.hookedOn.unhookAbort(c) }

// fail closes c after a failed round trip and returns the error to report: the cause of
// the cancellation, when the request was cancelled (as http.Transport reports it).
// A deadline that passed is reported as its cause.
func (c *h1Conn) fail(ctx context.Context, stop func() bool, err error) error {
	stop()
	fired := !c.disarm()
	c.close()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if fired || c.timedOut.Load() {
		return c.cause
	}
	return err
}

// The deadline of a round trip's response headers is enforced with one timer per
// connection that is rarely reset: it fires no later than the deadline of the round trip
// in progress and, when it fires early (it was set for an earlier round trip, or the
// connection is idle), it looks at the round trip in progress, if any, and sets itself for
// the rest of that one's time. A connection used back to back with the same timeout thus
// resets its timer about once per timeout instead of for every request (a Reset moves a
// runtime timer under locks), and disarming it is one atomic swap instead of a Stop.
// Requests time out exactly when they did with a timer of their own.

// dueFired is c.due once the timer aborted the round trip armed with it.
const dueFired = -1

// offset is t as c.due and c.fireAt hold it: the nanoseconds since c.epoch (monotonic when
// t has a monotonic reading).
func (c *h1Conn) offset(t time.Time) int64 { return int64(t.Sub(c.epoch)) }

// arm sets the deadline of a round trip on c that fails with cause past it, reporting
// false if deadline has passed already. now is the current time, or zero to read it. Only
// the goroutine running the round trip arms and disarms.
func (c *h1Conn) arm(now, deadline time.Time, cause error) bool {
	if now.IsZero() {
		now = time.Now()
	}
	d := deadline.Sub(now)
	if d <= 0 {
		return false
	}
	due := c.offset(deadline)
	c.timedOut.Store(false)
	c.cause = cause
	// Published before the timer is looked at: a timer firing from here on sees it (see
	// timeout), and one that fired before has left fireAt at 0.
	c.due.Store(due)
	c.armed = true
	if f := c.fireAt.Load(); f > 0 && f <= due {
		return true // it fires before the deadline and then sets itself for the rest
	}
	c.fireAt.Store(due)
	if t := c.timer.Load(); t != nil {
		t.Reset(d)
	} else {
		c.timer.Store(time.AfterFunc(d, c.timeoutFn))
	}
	return true
}

// disarm ends the deadline of the round trip, reporting false if it passed (the
// connection is aborted and must not be reused). It is true when there was none. The timer
// stays set: firing with no round trip armed does nothing.
func (c *h1Conn) disarm() bool {
	if !c.armed {
		return true
	}
	c.armed = false
	return c.due.Swap(0) != dueFired
}

// timeout is what c's deadline timer runs: past the deadline of the round trip in
// progress, the round trip fails at once, as on cancellation, and reports the cause it was
// armed with; before it, the timer is set again for the time left.
func (c *h1Conn) timeout() {
	c.fireAt.Store(0) // not set any more: arm sets it again if it needs it
	for {
		due := c.due.Load()
		if due <= 0 {
			return // no round trip in progress (or already aborted)
		}
		left := due - c.offset(time.Now())
		if left > 0 {
			// Set for an earlier round trip (or early): wait for the rest of this one.
			// arm may set it at the same time, for the same deadline.
			c.fireAt.Store(due)
			c.timer.Load().Reset(time.Duration(left))
			return
		}
		if c.due.CompareAndSwap(due, dueFired) {
			c.timedOut.Store(true)
			c.abort()
			return
		}
		// Disarmed, or armed for another round trip, meanwhile: look again.
	}
}

// release is the end of a round trip on c: c goes back to the pool when the response was
// read to its end, neither side asked to close, the request was written in full and the
// request was not cancelled meanwhile; otherwise it is closed. It returns the clock as put
// read it (c back in the pool, or closed there for want of room), zero when c was closed
// here.
func (c *h1Conn) release(req *http.Request, resp *http.Response, w *h1BodyWriter, stop func() bool, eof bool) time.Time {
	reuse := stop() && eof && !resp.Close && !req.Close && c.br.Buffered() == 0 &&
		!hasToken(req.Header["Connection"], "close")
	if reuse && w != nil {
		werr, done := w.result(maxWriteWait)
		reuse = done && werr == nil
	}
	if reuse {
		return c.h.put(c)
	}
	c.close()
	return time.Time{}
}

// readResponse reads the response head, passing 1xx informational responses to the
// request's httptrace.ClientTrace (the reverse proxy forwards 100 and 103 through it).
// The parsedResponse is the response's when parseResponse read it, else nil.
func (c *h1Conn) readResponse(ctx context.Context, req *http.Request) (*http.Response, *parsedResponse, error) {
	limit := c.h.p.maxHeaderBytes
	c.readLimit = limit
	if _, err := c.br.Peek(1); err != nil {
		return nil, nil, &h1NoResponse{err}
	}
	var trace *httptrace.ClientTrace
	traced := false
	// The parsedResponse a caller gave back (recycle), if any; it stays the connection's
	// when http.ReadResponse reads the response instead.
	spare := c.spare.Swap(nil)
	for {
		pr, ok := parseResponse(c.br, req, spare)
		if ok {
			// A final response (parseResponse takes no other).
			c.readLimit = math.MaxInt64
			return &pr.resp, pr, nil
		}
		if spare != nil {
			spare.reset() // parseResponse may have filled part of it
		}
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			c.keepSpare(spare)
			return nil, nil, err
		}
		code := resp.StatusCode
		if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
			c.readLimit = math.MaxInt64
			c.keepSpare(spare)
			return resp, nil, nil
		}
		if !traced {
			trace, traced = httptrace.ContextClientTrace(ctx), true
			if trace == nil {
				if inf, ok := ctx.Value(informationalKey{}).(informational); ok {
					trace = &httptrace.ClientTrace{Got1xxResponse: inf.got1xx}
				}
			}
		}
		if trace != nil && code == http.StatusContinue && trace.Got100Continue != nil {
			trace.Got100Continue()
		}
		if trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(code, textproto.MIMEHeader(resp.Header)); err != nil {
				c.keepSpare(spare)
				return nil, nil, err
			}
			// Whoever took the 1xx response limits how many it accepts.
			c.readLimit = limit
		}
	}
}

// keepSpare gives pr (reset, or nil) back to c for its next response, unless a caller has
// given another back meanwhile.
func (c *h1Conn) keepSpare(pr *parsedResponse) {
	if pr != nil {
		c.spare.CompareAndSwap(nil, pr)
	}
}

// informational takes the 1xx responses of a request whose context has no
// httptrace.ClientTrace: its context's value for informationalKey{} (the proxy's state,
// which saves a trace and a context per request that way).
type informational interface {
	got1xx(code int, header textproto.MIMEHeader) error
}

type informationalKey struct{}

// h1Fast reports whether req is written by buildHead (and writeWithBody): no body or one of
// a known length, no framing or trailers of its own, an ordinary request target and an
// ASCII Host without a zone. Anything else is written by http.Request.Write.
func h1Fast(req *http.Request) bool {
	hasBody := req.Body != nil && req.Body != http.NoBody
	if hasBody != (req.ContentLength > 0) || req.ContentLength < 0 ||
		len(req.TransferEncoding) > 0 || len(req.Trailer) > 0 || req.URL.Opaque != "" ||
		req.Method == http.MethodConnect {
		return false
	}
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	for i := 0; i < len(host); i++ {
		if host[i] >= 0x80 || host[i] == '%' {
			return false
		}
	}
	return true
}

// buildHead writes the head of a request into c.wbuf, byte for byte what
// http.Transport would send except that header fields are in map order, and validates the
// header fields as http.Transport does. A User-Agent is sent only if the request has one
// (net/http adds its own when the header is absent; a proxy should not).
func (c *h1Conn) buildHead(req *http.Request) error {
	b := c.wbuf[:0]
	if req.Method == "" {
		b = append(b, "GET"...)
	} else {
		b = append(b, req.Method...)
	}
	b = append(b, ' ')
	mark := len(b)
	if p := req.URL.EscapedPath(); p != "" {
		b = append(b, p...)
	} else {
		b = append(b, '/')
	}
	if req.URL.ForceQuery || req.URL.RawQuery != "" {
		b = append(b, '?')
		b = append(b, req.URL.RawQuery...)
	}
	for _, ch := range b[mark:] {
		if ch < ' ' || ch == 0x7f {
			return errors.New("net/http: can't write control character in Request.URL")
		}
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if httpguts.ValidHostHeader(host) {
		b = append(b, host...)
	}
	b = append(b, "\r\n"...)
	for k, vv := range req.Header {
		if !validFieldName(k) {
			return fmt.Errorf("net/http: invalid header field name %q", k)
		}
		for _, v := range vv {
			if !validFieldValue(v) {
				return fmt.Errorf("net/http: invalid header field value for %q", k)
			}
		}
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
			continue // http.Request.Write leaves them out too
		case "User-Agent":
			if len(vv) > 0 && vv[0] != "" {
				b = appendField(b, k, vv[0])
			}
			continue
		}
		for _, v := range vv {
			b = appendField(b, k, v)
		}
	}
	if req.Close && !hasToken(req.Header["Connection"], "close") {
		b = append(b, "Connection: close\r\n"...)
	}
	switch {
	case req.ContentLength > 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, "\r\n"...)
	case req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch:
		// As http.Transport: many servers expect a length for these methods.
		b = append(b, "Content-Length: 0\r\n"...)
	}
	b = append(b, "\r\n"...)
	c.wbuf = b
	return nil
}

func appendField(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	b = append(b, textproto.TrimString(v)...)
	return append(b, "\r\n"...)
}

// hasToken reports whether a comma-separated header value of vv holds token, ignoring
// case.
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for part := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(part), token) {
				return true
			}
		}
	}
	return false
}

// checkHeaders validates the header and trailer fields of a request written by
// http.Request.Write, which does not (http.Transport does it before).
func checkHeaders(req *http.Request) error {
	for _, h := range []http.Header{req.Header, req.Trailer} {
		for k, vv := range h {
			if !httpguts.ValidHeaderFieldName(k) {
				return fmt.Errorf("net/http: invalid header field name %q", k)
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return fmt.Errorf("net/http: invalid header field value for %q", k)
				}
			}
		}
	}
	return nil
}

// writeGeneral writes req with http.Request.Write: at once when it has no body, else on a
// goroutine, so that the response is read while the body is sent (an upstream may answer
// before reading it all, 413 or 401 say, and stop reading).
func (c *h1Conn) writeGeneral(req *http.Request) (*h1BodyWriter, error) {
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(c, 16<<10)
	}
	r := shallowCopy(req)
	if _, ok := req.Header["User-Agent"]; !ok {
		// An empty User-Agent keeps http.Request.Write from adding Go's.
		r.Header = req.Header.Clone()
		r.Header["User-Agent"] = []string{""}
	}
	if req.Body == nil || req.Body == http.NoBody {
		err := r.Write(c.bw)
		if err == nil {
			err = c.bw.Flush()
		}
		return nil, err
	}
	w := &h1BodyWriter{ch: make(chan error, 1), body: &h1RequestBody{rc: req.Body}}
	r.Body = w.body
	go func() {
		err := r.Write(c.bw)
		if err == nil {
			err = c.bw.Flush()
		}
		w.finish(c, err)
	}()
	return w, nil
}

// writeWithBody writes the head in c.wbuf and a body of n bytes on a goroutine, so that
// the response is read while it is sent. The head and the first bytes of the body (all of
// a small one) go out in one write. A body shorter or longer than n is an error, as with
// http.Request.Write; the body is closed at the end.
//
// The writer (its h1BodyWriter, channel and goroutine function) is c's, made on first use
// and used again by the next round trip on c: a connection is only reused once the
// writer's result was received (release, or a round trip that fails closes it), after
// which its goroutine touches nothing of c.
func (c *h1Conn) writeWithBody(body io.ReadCloser, n int64) *h1BodyWriter {
	w := c.bodyW
	if w == nil {
		w = &h1BodyWriter{ch: make(chan error, 1)}
		w.body = &w.reqBody
		c.bodyW = w
		c.writeBodyFn = c.writeBody
	}
	w.reqBody = h1RequestBody{rc: body}
	w.connFailed, w.got, w.err = false, false, nil
	c.wBody, c.wLen = body, n
	go c.writeBodyFn()
	return w
}

// writeBody is the goroutine of writeWithBody: it sends c.wBody, of c.wLen bytes, and
// reports to c.bodyW.
func (c *h1Conn) writeBody() {
	w, body := c.bodyW, c.wBody
	err := c.copyBody(w.body, c.wLen)
	if cerr := body.Close(); err == nil {
		err = cerr
	}
	// The connection keeps nothing of the request (a downstream body and what it holds)
	// until its next one.
	c.wBody, w.reqBody.rc = nil, nil
	w.finish(c, err)
}

func (c *h1Conn) copyBody(body io.Reader, n int64) error {
	const bufSize = 16 << 10
	buf := c.wbuf
	if cap(buf) < bufSize {
		buf = make([]byte, len(c.wbuf), bufSize)
		copy(buf, c.wbuf)
		c.wbuf = buf[:0]
	}
	left := n
	for {
		var rerr error
		for left > 0 && len(buf) < cap(buf) && rerr == nil {
			var k int
			k, rerr = body.Read(buf[len(buf):min(int64(cap(buf)), int64(len(buf))+left)])
			buf, left = buf[:len(buf)+k], left-int64(k)
		}
		if rerr != nil && rerr != io.EOF {
			return rerr
		}
		if left > 0 && rerr == io.EOF {
			return fmt.Errorf("http: ContentLength=%d with Body length %d", n, n-left)
		}
		if len(buf) > 0 {
			if _, err := c.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if left == 0 {
			break
		}
	}
	// What follows the declared length is not sent; it is an error, as with
	// http.Request.Write, which reads the body to its end to know.
	extra, err := io.Copy(io.Discard, body)
	if err != nil {
		return err
	}
	if extra > 0 {
		return fmt.Errorf("http: ContentLength=%d with Body length %d", n, n+extra)
	}
	return nil
}

// h1RequestBody records an error reading the request body, to tell it from an error
// writing to the upstream.
type h1RequestBody struct {
	rc  io.ReadCloser
	err error // written by the body writer goroutine only
}

func (b *h1RequestBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *h1RequestBody) Close() error { return b.rc.Close() }

// h1BodyWriter is the goroutine writing a request body. Its result is read by one
// goroutine at a time (the round trip, then whoever ends the response body).
type h1BodyWriter struct {
	ch         chan error
	body       *h1RequestBody
	reqBody    h1RequestBody // what body points to, for a connection's own writer
	connFailed bool          // the error was writing to the connection; set before ch is sent on
	got        bool
	err        error
}

// finish reports the writer's end. When it failed for another reason than the connection
// (the request body could not be read, or did not match its length), the upstream waits
// for the rest of a request that will not come: c is aborted, so that the round trip
// stops waiting for its answer.
func (w *h1BodyWriter) finish(c *h1Conn, err error) {
	w.connFailed = c.writeFailed
	if err != nil && !w.connFailed {
		c.abort()
	}
	w.ch <- err
}

// result returns the writer's error and true once it has finished, waiting at most wait
// (forever if wait < 0); false if it is still writing.
func (w *h1BodyWriter) result(wait time.Duration) (error, bool) {
	if w.got {
		return w.err, true
	}
	select {
	case w.err = <-w.ch:
		w.got = true
		return w.err, true
	default:
	}
	if wait == 0 {
		return nil, false
	}
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case w.err = <-w.ch:
		w.got = true
		return w.err, true
	case <-timeout:
		return nil, false
	}
}

// errBodyClosed is what reading a response body returns after Close.
var errBodyClosed = errors.New("http: read on closed response body")

// h1Body is the body of a response read from an h1Conn. At its end the connection goes
// back to the pool (or is closed if it cannot be reused); Close before the end closes the
// connection. Cancelling the request's context aborts a blocked Read. Close may be called
// concurrently with Read.
type h1Body struct {
	c    *h1Conn
	pr   *parsedResponse // what the response, its header map and b are part of; nil if none
	rc   io.ReadCloser   // http.ReadResponse's body, never closed: its Close would drain it
	req  *http.Request
	resp *http.Response
	w    *h1BodyWriter
	stop func() bool
	ctx  context.Context

	mu   sync.Mutex
	done bool  // the connection was released
	err  error // what Read returns once done

	// at is when the connection went back to the pool at the body's end (release), zero
	// if it did not (yet). Written by Read as it reaches the end (or by roundTrip for an
	// empty body), for the goroutine that reads the body: see releasedAt.
	at time.Time
}

func (b *h1Body) Read(p []byte) (int, error) {
	b.mu.Lock()
	if b.done {
		err := b.err
		b.mu.Unlock()
		return 0, err
	}
	b.mu.Unlock()
	n, err := b.rc.Read(p)
	if err == nil {
		return n, nil
	}
	b.mu.Lock()
	if b.done {
		// Closed while reading.
		err = b.err
		b.mu.Unlock()
		return n, err
	}
	b.done = true
	if err != io.EOF && b.ctx.Err() != nil {
		err = context.Cause(b.ctx)
	}
	b.err = err
	b.mu.Unlock()
	b.at = b.c.release(b.req, b.resp, b.w, b.stop, err == io.EOF)
	return n, err
}

func (b *h1Body) Close() error {
	b.mu.Lock()
	if b.done {
		b.mu.Unlock()
		return nil
	}
	b.done, b.err = true, errBodyClosed
	b.mu.Unlock()
	b.c.release(b.req, b.resp, b.w, b.stop, false)
	return nil
}

// recycle gives the parsedResponse of b's response (the response, its header map and b)
// to b's connection for a later response, once b is done (read to its end or closed).
// The caller must not use the response, its header map or its body after it, nor call it
// twice: the next response on the connection, which another goroutine may be reading
// already, can reuse them at once. The values of the header stay valid (they are not
// part of it), and so does a Trailer map (only http.ReadResponse's responses have one,
// and they are never recycled). recycle does nothing for a body that is not done or not
// part of a parsedResponse. It is called by the goroutine that read the response, and may
// run while the connection serves another round trip on another goroutine.
func (b *h1Body) recycle() {
	pr := b.pr
	if pr == nil {
		return
	}
	b.mu.Lock()
	done := b.done
	b.mu.Unlock()
	if !done {
		return
	}
	c := b.c
	pr.reset()
	// The atomic store orders the reset, and the caller's reads before it, before the
	// reuse by the round trip that takes pr (readResponse's Swap).
	c.spare.Store(pr)
}

// h1Upgraded is the body of a 101 Switching Protocols response: the connection itself,
// owned by the caller from then on (the reverse proxy copies both ways over it).
type h1Upgraded struct{ c *h1Conn }

var _ io.ReadWriteCloser = (*h1Upgraded)(nil)

func (u *h1Upgraded) Read(p []byte) (int, error)  { return u.c.br.Read(p) }
func (u *h1Upgraded) Write(p []byte) (int, error) { return u.c.conn.Write(p) }
func (u *h1Upgraded) Close() error {
	u.c.close()
	return nil
}
