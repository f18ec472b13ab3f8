// Package l7 proxies HTTP: HTTP/1.1 with keep-alive, HTTP/2 cleartext, gRPC (all streaming
// kinds, trailers) and WebSocket upgrades, on top of net/http's server, Ferry's own
// forwarder (forward.go, ReverseProxy's semantics without its per-request copies) and
// per-upstream pooled transports. Around the pick and the round
// trip sit the upstream's circuit breaker (sidecar/circuit) and an optional retry loop
// (retry.go) with per-try timeouts, backoff and a retry budget; every try's outcome, gRPC
// status included, is reported to the endpoint's health model through Endpoint.Done.
package l7

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/mtls"
	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/ratelimit"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"go.opentelemetry.io/otel/trace"
)

// Upstream is what a Handler sends requests to.
type Upstream interface {
	// Picker returns the upstream's current picker. It is called once per attempt and must
	// be cheap (an atomic load).
	Picker() balancer.Picker
}

// endpointLister is an Upstream that can also list the endpoints its current picker was
// built from. Retries use it to find an endpoint not tried yet when the picker keeps
// offering tried ones.
type endpointLister interface {
	Endpoints() []*balancer.Endpoint
}

// Options configures a Handler.
type Options struct {
	// Direction is telemetry.Inbound or telemetry.Outbound.
	Direction string
	// Name is the upstream's name in metrics and logs.
	Name string
	// Upstream supplies pickers: where requests go (with Routes, those no route takes).
	// It may be nil only with Routes: requests no route takes then get 404.
	Upstream Upstream
	// Transport holds the pooled connections to the upstream's endpoints.
	Transport *Transport
	// HashOn is the ring_hash/maglev key: "header:NAME", "cookie:NAME", "source_ip" or "".
	HashOn string
	// RequestTimeout bounds the wait for response headers; 0 disables it.
	RequestTimeout time.Duration
	// Metrics receives per-request metrics; required. With Routes, it counts the
	// requests no route takes (and those refused before routing); the routes' requests
	// go to Routing.Metrics.
	Metrics *telemetry.HTTPMetrics
	// AccessLog receives one record per request; nil disables it.
	AccessLog *telemetry.AccessLog
	// Logger receives proxy errors; nil discards them.
	Logger *slog.Logger
	// Retry, if not nil, retries failed requests on other endpoints.
	Retry *RetryPolicy
	// Breaker, if not nil, is the upstream's circuit breaker: the Handler admits requests
	// (max_requests) and retries (budget, max_retries) through it. Connection limits are
	// the Transport's.
	Breaker *circuit.Breaker
	// Tracing, if not nil, records a server span per request and, outbound, a client
	// span per attempt, and propagates the trace context to the upstream (outbound) or
	// the local application (inbound). nil is tracing off.
	Tracing *telemetry.Tracing
	// MTLS, inbound, is this proxy's certificate source: its identity is the By of the
	// X-Forwarded-Client-Cert header set for mTLS callers. Inbound handlers always remove
	// an X-Forwarded-Client-Cert the caller sent, with or without MTLS.
	MTLS mtls.Source
	// Policy, if not nil, is enforced on every request before it is proxied (inbound):
	// path normalization, request filtering, access rules on the caller's verified
	// identity and local rate limits (see policy.Policy). A refused request is answered
	// by Ferry and never forwarded. nil costs nothing.
	Policy *policy.Policy
	// Port is the listener's port, matched by access rules with ports; 0 if unknown.
	Port uint16
	// RateLimitService is asked about the Policy's global rate limits, after the local
	// ones; the sidecar sets it whenever the Policy has global limits (nil asks nothing).
	RateLimitService *ratelimit.Service
	// Routes, if not nil, routes each request by the listener's route table (see
	// Routing); requests no route takes go to Upstream, or get 404 when Upstream is nil.
	// nil sends every request to Upstream.
	Routes *Routing
}

// Handler proxies the requests it serves to an upstream: the one its Options name, or
// with routes the one the matching route names. It is immutable after NewHandler and safe
// for concurrent use; a config change builds a new Handler.
type Handler struct {
	o          Options
	buffers    *bufferPool // 32 KiB buffers for copying response bodies
	def        *target     // where requests no route takes go; nil: 404
	routes     []routed
	table      *route.Table
	logger     *slog.Logger
	setAttempt bool // outbound: send X-Ferry-Attempt
	// spanUpstream is the upstream named on server spans: the upstream outbound, "" inbound.
	spanUpstream string
	ids          requestIDs // X-Request-Id for requests without one
	states       sync.Pool  // *state of requests that ended; see releaseState
}

var _ http.Handler = (*Handler)(nil)

// target is an upstream requests are sent to, with the settings they are sent with.
type target struct {
	name      string
	up        Upstream
	transport *Transport
	hash      func(*http.Request) (uint64, bool)
	timeout   time.Duration
	retry     *RetryPolicy
	breaker   *circuit.Breaker
	lister    endpointLister // nil if up cannot list its endpoints
	metrics   *telemetry.HTTPMetrics
}

func newTarget(t Target, m *telemetry.HTTPMetrics) *target {
	tg := &target{name: t.Name, up: t.Upstream, transport: t.Transport, hash: hashFunc(t.HashOn),
		timeout: t.RequestTimeout, retry: t.Retry, breaker: t.Breaker, metrics: m}
	tg.lister, _ = t.Upstream.(endpointLister)
	return tg
}

// NewHandler returns a Handler for o.
func NewHandler(o Options) *Handler {
	h := &Handler{o: o, logger: o.Logger}
	if h.logger == nil {
		h.logger = slog.New(slog.DiscardHandler)
	}
	if o.Upstream != nil {
		h.def = newTarget(Target{Name: o.Name, Upstream: o.Upstream, Transport: o.Transport, HashOn: o.HashOn,
			RequestTimeout: o.RequestTimeout, Retry: o.Retry, Breaker: o.Breaker}, o.Metrics)
	}
	h.setAttempt = o.Direction == telemetry.Outbound
	if o.Direction == telemetry.Outbound {
		h.spanUpstream = o.Name
	}
	h.buffers = newBufferPool()
	if o.Routes != nil {
		h.buildRoutes(o.Routes)
	}
	return h
}

// state is the per-request record shared by ServeHTTP, the forwarder, the round trip and
// the error handler. It is also the ResponseWriter the forwarder writes the response
// through, the context of the upstream request (see Value) and the storage of the upstream
// request's URL and small header values, so that one allocation serves them all.
type state struct {
	http.ResponseWriter
	status      int
	written     int64
	endpoint    string
	requestID   string
	proxyStatus string
	reply       *LocalReply
	attempts    int        // tries made
	span        trace.Span // the request's server span (a no-op span with tracing off)
	peer        string     // inbound: the caller's SPIFFE ID from its mTLS certificate
	t           *target    // where the request goes (nil until routed when there is no default)
	m           *telemetry.HTTPMetrics
	route       *routed // the route that took the request; nil for none

	// down is the downstream request's context, which ctx only adds values to (the
	// server span, propagated trace context): see valueParent.
	down context.Context

	// The forwarder's (forward.go).
	ctx    context.Context // the downstream request's, with its server span
	mu     sync.Mutex      // orders got1xx against the end of the round trip
	rtDone bool            // the round trip returned: 1xx responses are ignored
	url    url.URL         // the upstream request's
	body   noCloseBody     // the upstream request's body
	rid    [1]string       // a generated X-Request-Id
	out    http.Request    // the upstream request
	xff    [1]string       // X-Forwarded-For
	xfp    [1]string       // X-Forwarded-Proto
	te     [1]string       // TE
	ua     [1]string       // the empty User-Agent
	// outHdr is the upstream request's header map, kept (cleared) across the requests a
	// reused state serves when the round trip does not keep it (see headerReusable).
	outHdr http.Header
	// xffJoined is the X-Forwarded-For made last of xffPrior (the one value the client
	// sent) and xffClient (its address), kept across requests for the next one that has
	// the same two (strings are immutable: nothing of a request is kept but them).
	xffPrior, xffClient, xffJoined string
	// done is the response body deliver hands over (delivered: in use).
	done      doneBody
	delivered bool
	// end, if not zero, is the clock as read when the upstream connection went back to
	// the pool with the response in hand and nothing written to the client since (set by
	// forward): ServeHTTP takes it for the request's end instead of reading the clock.
	end time.Time
}

// reset zeroes st for another request, but for the fields it keeps: storage its users
// clear themselves (a map kept across requests). A field opts into being kept by being
// named in the literal below (for instance "outHdr: st.outHdr"); every other field starts
// from its zero value.
func (st *state) reset() {
	*st = state{outHdr: st.outHdr, xffPrior: st.xffPrior, xffClient: st.xffClient, xffJoined: st.xffJoined}
}

// newState returns the state of a request w answers: one a previous request left (see
// releaseState) or a new one.
func (h *Handler) newState(w http.ResponseWriter) *state {
	st, _ := h.states.Get().(*state)
	if st == nil {
		st = new(state)
	}
	st.ResponseWriter, st.t, st.m = w, h.def, h.o.Metrics
	return st
}

// releaseState keeps st, the state of r, whose ServeHTTP is over, for a later request, when
// nothing can reach it any more. What could (audit of what a state is handed to):
//   - contexts derived from the upstream request's (st is that context: the timeout and
//     retry contexts of net/http's transports, a dial's), an httptrace.ClientTrace whose
//     got1xx a transport's goroutine calls, a transport's goroutine selecting on Done:
//     all of them ask for Done (or AfterFunc), which makes an H1Server request context
//     escape; the state is kept only for a request served by H1Server whose context did
//     not (Ferry's HTTP/1.1 pool registers with the connection, hookAbort, instead, and
//     is done with the request and its context once the response body is closed, which
//     forward does before returning, as is its 1xx callback and the attempt's span);
//   - the request body (st.body): a transport's goroutine writing it may outlive the
//     response (maxWriteWait): not kept when a body was forwarded;
//   - a 101 Switching Protocols: its copy goroutines read the response body in st.done:
//     not kept;
//   - a panicking ServeHTTP (an aborted response) does not get here.
//
// Requests served by net/http's server (HTTP/2) are not kept, nor, regardless of the
// context, one whose upstream request went out with another context than st (the
// httptrace forward adds for net/http's transports).
func (h *Handler) releaseState(st *state, r *http.Request) {
	rc, ok := r.Context().(*h1reqCtx)
	if !ok || rc.real.Load() != nil || st.body.rc != nil || st.status == http.StatusSwitchingProtocols ||
		st.ctx != nil && st.out.Context() != context.Context(st) {
		return
	}
	st.reset()
	h.states.Put(st)
}

// upstreamName is the upstream of st's request for metrics and logs: its target's, or
// def for a request that has none.
func (s *state) upstreamName(def string) string {
	if s.t != nil {
		return s.t.name
	}
	return def
}

// routeName is the name of the route that took st's request, "" for none.
func (s *state) routeName() string {
	if s.route == nil {
		return ""
	}
	return s.route.entry.Name()
}

type stateKey struct{}

func (s *state) WriteHeader(code int) {
	if s.status == 0 || (s.status >= 100 && s.status < 200 && code >= 200) {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *state) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.written += int64(n)
	return n, err
}

// valueParent returns the downstream request's context: a state, as a context, only adds
// values to it (see valueContext), and so does the context with the server span it
// forwards (Tracing.StartServer adds the span and the extracted trace context as values).
// Returning the request's own context lets H1Server recognise it without asking for its
// Done channel.
func (s *state) valueParent() context.Context {
	if s.down != nil {
		return s.down
	}
	return s.ctx
}

// Unwrap lets http.ResponseController reach Flush and Hijack (streaming, WebSocket).
func (s *state) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ServeHTTP proxies r to the upstream.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := requestStart(r)
	g := guardFrom(r.Context())
	if g != nil {
		defer g.requestDone()
	}
	st := h.newState(w)
	var pn policyNote // kept out of state, so that requests without a policy pay nothing
	aborted := false  // the response was cut short after its header: abort the handler
	// The header map is indexed directly (Get and Set canonicalize the name every time).
	if v := r.Header["X-Request-Id"]; len(v) > 0 && v[0] != "" {
		st.requestID = v[0]
	} else {
		st.requestID = h.ids.next()
		st.rid[0] = st.requestID
		r.Header["X-Request-Id"] = st.rid[:1:1]
	}
	h.o.Metrics.Active.Inc()
	st.down = r.Context()
	ctx, span := h.o.Tracing.StartServer(st.down, r, h.o.Direction, h.spanUpstream)
	st.span = span
	if h.o.Direction == telemetry.Inbound {
		h.acceptPeer(st, r)
	}
	if g != nil && g.takeConflict() {
		h.localReply(st, r, &LocalReply{Status: http.StatusBadRequest, Type: ErrHTTPRequestError,
			Details: "ambiguous message framing (Transfer-Encoding with Content-Length, or on HTTP/1.0)"})
		w.Header().Set("Connection", "close")
	} else if h.o.Policy != nil && !h.enforce(st, r, &pn) {
		// refused: enforce replied
	} else if h.table != nil && !h.route(st, r, &pn) {
		// answered by the route (redirect, fixed response) or for want of one
	} else if err := admit(st.t); err != nil {
		h.localReply(st, r, classify(r.Context(), err))
	} else {
		aborted = h.forward(ctx, st, r, pn.forward)
		release(st.t)
	}
	st.m.Active.Dec()
	if st.status == 0 {
		st.status = http.StatusOK
	}
	st.m.Request(st.status)
	end := st.end
	if end.IsZero() {
		end = time.Now()
	}
	requestEnd(r, end) // the response's Date
	d := end.Sub(start)
	st.m.Duration.Observe(d.Seconds())
	if span.IsRecording() {
		h.endServerSpan(st, &pn)
	} else {
		span.End()
	}
	if h.o.AccessLog != nil {
		// Inbound: the caller's identity. Outbound: the identity the endpoint that
		// answered proved in its mTLS handshake.
		peer := st.peer
		if peer == "" && h.o.Direction == telemetry.Outbound && st.reply == nil && st.endpoint != "" {
			peer = st.t.peerOf(st.endpoint)
		}
		h.o.AccessLog.HTTP(&telemetry.HTTPRecord{
			Start: start, Direction: h.o.Direction, Upstream: st.upstreamName(h.o.Name), Endpoint: st.endpoint,
			Method: r.Method, Authority: r.Host, Path: r.URL.RequestURI(), Protocol: r.Proto,
			Status: st.status, ProxyStatus: st.proxyStatus, BytesIn: max(r.ContentLength, 0),
			BytesOut: st.written, Duration: d, RequestID: st.requestID, Downstream: r.RemoteAddr,
			Attempts: st.attempts, TraceID: telemetry.TraceID(span), PeerID: peer,
			Policy: pn.outcome, PolicyRule: pn.rule, Route: st.routeName(),
		})
	}
	if aborted {
		// The client must see a reset, not a complete-looking truncated response.
		panic(http.ErrAbortHandler)
	}
	h.releaseState(st, r)
}

// admit asks t's circuit breaker to let one more request in.
func admit(t *target) error {
	if t.breaker == nil {
		return nil
	}
	return t.breaker.StartRequest()
}

// release gives back what admit took.
func release(t *target) {
	if b := t.breaker; b != nil {
		b.EndRequest()
	}
}

type roundTripper struct{ h *Handler }

// RoundTrip picks an endpoint and sends the request to it, retrying on other endpoints when
// a retry policy is set.
func (rt roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	h := rt.h
	st, _ := req.Context().Value(stateKey{}).(*state)
	if st == nil {
		st = &state{t: h.def, m: h.o.Metrics}
	}
	t := st.t
	var info balancer.PickInfo
	info.Hash, info.HasHash = t.hash(req)
	if t.retry != nil {
		return h.roundTripRetrying(req, st, info)
	}
	ep, err := t.up.Picker().Pick(info)
	if err != nil {
		return nil, classify(req.Context(), err)
	}
	down := req.Context()
	h.prepare(req, st, ep, 1)
	span := h.startAttempt(down, st.span, req, t.name, ep.Address, 1)
	ep.Begin()
	var resp *http.Response
	if to := t.requestTimeout(req); to > 0 && t.transport.http1(req) {
		// Ferry's HTTP/1.1 pool enforces the timeout with a timer of the connection's,
		// without a context and a timer per request.
		now := time.Now()
		resp, err = t.transport.h1.roundTripUntil(req, now, now.Add(to), errResponseTimeout)
	} else {
		var timer *time.Timer
		if to > 0 {
			ctx, cancel := context.WithCancelCause(down)
			timer = time.AfterFunc(to, func() { cancel(errResponseTimeout) })
			req = req.WithContext(ctx)
		}
		resp, err = t.transport.RoundTrip(req)
		if timer != nil {
			timer.Stop()
		}
	}
	if err != nil {
		ep.Done(failure(err, down))
		lr := classify(req.Context(), err)
		h.endAttempt(span, t, ep.Address, nil, lr)
		return nil, lr
	}
	return h.deliver(resp, t, ep, down, span), nil
}

// roundTripRetrying is RoundTrip with a retry policy: it tries endpoints until a try
// succeeds, fails in a way the policy does not retry, may not be repeated safely, runs out
// of attempts or of retry budget, or request_timeout (which spans all tries) expires.
func (h *Handler) roundTripRetrying(req *http.Request, st *state, info balancer.PickInfo) (*http.Response, error) {
	t := st.t
	pol := t.retry
	down := req.Context()
	// request_timeout spans all tries: each try gets one timer, for whichever of its
	// per-try timeout and the time left comes first.
	// now is the clock read for the try about to start, when a timeout needs it (zero
	// otherwise): the first try's is the deadline's base too; each later one reads it
	// again.
	var now, deadline time.Time
	to := t.requestTimeout(req)
	if to > 0 || pol.PerTryTimeout > 0 {
		now = time.Now()
	}
	if to > 0 {
		deadline = now.Add(to)
	}
	var rb *replayBody
	if req.Body != nil && req.Body != http.NoBody {
		rb = newReplayBody(req.Body, pol.BufferLimit, req.ContentLength)
	}
	// The request holds a retry slot of the circuit breaker from its first retry until its
	// last try is answered.
	retrying := false
	defer func() {
		if retrying {
			t.breaker.EndRetry()
		}
	}()
	var triedBuf [4]string
	tried := triedBuf[:0]
	for n := 1; ; n++ {
		if n > 1 && !now.IsZero() {
			now = time.Now()
		}
		limit, cause := pol.PerTryTimeout, errPerTryTimeout
		if !deadline.IsZero() {
			left := deadline.Sub(now)
			if left <= 0 {
				return nil, classify(down, timeoutCause{})
			}
			if limit == 0 || left <= limit {
				limit, cause = left, errResponseTimeout
			}
		}
		var candidates []*balancer.Endpoint
		if n > 1 && t.lister != nil {
			candidates = t.lister.Endpoints()
		}
		ep, err := balancer.PickAvoiding(t.up.Picker(), candidates, info, tried)
		if err != nil {
			return nil, classify(down, err)
		}
		tried = append(tried, ep.Address)
		treq, tctx := req, down
		var cancelTry context.CancelCauseFunc
		var timer *time.Timer
		// Ferry's HTTP/1.1 pool enforces the try's limit with a timer of the connection's.
		h1 := limit > 0 && t.transport.http1(req)
		if limit > 0 && !h1 {
			// The timer's closure captures a copy: capturing cancelTry, which is assigned
			// again below, would move it to the heap on every try.
			var cancel context.CancelCauseFunc
			tctx, cancel = context.WithCancelCause(down)
			cancelTry = cancel
			timer = time.AfterFunc(limit, func() { cancel(cause) })
			treq = req.WithContext(tctx)
		}
		var body *attemptBody
		if rb != nil {
			if treq == req {
				treq = req.WithContext(tctx)
			}
			body = rb.attempt()
			treq.Body = body
		}
		h.prepare(treq, st, ep, n)
		span := h.startAttempt(down, st.span, treq, t.name, ep.Address, n)
		ep.Begin()
		var resp *http.Response
		if h1 {
			resp, err = t.transport.h1.roundTripUntil(treq, now, now.Add(limit), cause)
			if err == cause {
				// Timed out: the try's context is what it would have been with a timer
				// of its own, for the conditions and the classification below.
				tctx, cancelTry = context.WithCancelCause(down)
				cancelTry(cause)
			}
		} else {
			resp, err = t.transport.RoundTrip(treq)
		}
		if timer != nil {
			timer.Stop()
		}

		var cond RetryOn
		nothingSent := false
		if err != nil {
			cond, nothingSent = failureConditions(err, tctx)
		} else {
			cond = pol.responseConditions(resp)
		}
		cond &= pol.On
		retry := cond != 0 && n <= pol.Retries && down.Err() == nil &&
			!errors.Is(context.Cause(tctx), errResponseTimeout) && safeToRepeat(req.Method, rb, nothingSent)
		if retry && t.breaker != nil {
			if t.breaker.StartRetry(retrying) != nil {
				retry = false
			} else {
				retrying = true
			}
		}
		if !retry {
			if err != nil {
				ep.Done(failure(err, down))
				if cancelTry != nil {
					cancelTry(nil)
				}
				lr := classify(tctx, err)
				h.endAttempt(span, t, ep.Address, nil, lr)
				return nil, lr
			}
			// tctx stays alive: the body streams under it.
			return h.deliver(resp, t, ep, down, span), nil
		}

		// Abandon this try and go on with the next.
		if body != nil {
			body.abandon()
		}
		if err != nil {
			ep.Done(balancer.DoneInfo{Err: err})
			h.endAttempt(span, t, ep.Address, nil, classify(tctx, err))
		} else {
			_, _ = io.CopyN(io.Discard, resp.Body, 4<<10) // a short body keeps its connection
			resp.Body.Close()
			ep.Done(balancer.DoneInfo{Status: outcomeStatus(resp)})
			h.endAttempt(span, t, ep.Address, resp, nil)
		}
		if cancelTry != nil {
			cancelTry(nil)
		}
		st.m.Retry(cond.name())
		h.logger.Debug("retrying upstream request", "direction", h.o.Direction, "upstream", t.name,
			"endpoint", ep.Address, "attempt", n, "condition", cond.name(), "request_id", st.requestID)
		if d := pol.backoff(n); d > 0 {
			if !deadline.IsZero() && time.Until(deadline) <= d {
				return nil, classify(down, timeoutCause{})
			}
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-down.Done():
				t.Stop()
				return nil, classify(down, down.Err())
			}
		}
	}
}

// timeoutCause is the error of a request whose request_timeout ran out between tries.
type timeoutCause struct{}

func (timeoutCause) Error() string        { return errResponseTimeout.Error() }
func (timeoutCause) Is(target error) bool { return target == errResponseTimeout }

// safeToRepeat reports whether a request may be sent again: its body (if any) can be sent
// again, and either nothing reached the upstream or the method is idempotent or the body
// was buffered whole.
func safeToRepeat(method string, rb *replayBody, nothingSent bool) bool {
	switch {
	case rb == nil:
		return nothingSent || idempotent(method)
	case rb.complete.Load():
		return true
	default:
		return nothingSent && rb.untouched()
	}
}

// prepare points req at ep and records the try.
func (h *Handler) prepare(req *http.Request, st *state, ep *balancer.Endpoint, n int) {
	req.URL.Host = ep.Address
	st.endpoint = ep.Address
	st.attempts = n
	if h.setAttempt {
		req.Header["X-Ferry-Attempt"] = attemptValue(n)
	}
}

// failure is the outcome of a try that failed with err, for outlier detection: a failure
// of the endpoint, unless the client went away or a local limit stopped it.
func failure(err error, down context.Context) balancer.DoneInfo {
	var oe *circuit.OverflowError
	if down.Err() != nil || errors.As(err, &oe) {
		return balancer.DoneInfo{Err: err, Dropped: true}
	}
	return balancer.DoneInfo{Err: err}
}

// deliver hands resp to the forwarder with a body that reports the end of the call. The
// body lives in the request's state when down carries one.
func (h *Handler) deliver(resp *http.Response, t *target, ep *balancer.Endpoint, down context.Context, span trace.Span) *http.Response {
	var d *doneBody
	if st, _ := down.Value(stateKey{}).(*state); st != nil && !st.delivered {
		st.delivered = true
		d = &st.done
	} else {
		d = new(doneBody)
	}
	d.ReadCloser, d.ep, d.resp, d.ctx = resp.Body, ep, resp, down
	if span != nil {
		d.span, d.tracing, d.peer = span, h.o.Tracing, t.peerOf(ep.Address)
	}
	if ct := resp.Header["Content-Type"]; len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") {
		d.grpc = true
	}
	if rwc, ok := resp.Body.(io.ReadWriteCloser); ok && resp.StatusCode == http.StatusSwitchingProtocols {
		resp.Body = &doneRWBody{doneBody: d, w: rwc}
	} else {
		resp.Body = d
	}
	return resp
}

// requestTimeout is the wait allowed for response headers: request_timeout (or the
// route's timeout), or for a gRPC call carrying a shorter grpc-timeout, that deadline.
func (t *target) requestTimeout(req *http.Request) time.Duration {
	to := t.timeout
	if v := req.Header["Grpc-Timeout"]; len(v) > 0 && v[0] != "" {
		gt := v[0]
		if d, ok := parseGRPCTimeout(gt); ok && (to == 0 || d < to) {
			to = d
		}
	}
	return to
}

// parseGRPCTimeout parses the grpc-timeout header ("100m", "5S").
func parseGRPCTimeout(s string) (time.Duration, bool) {
	if len(s) < 2 || len(s) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[s[len(s)-1]]
	if unit == 0 {
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// doneBody reports the end of the call to the endpoint once the response body is finished,
// so least_request sees streams as active for as long as they last, and outlier detection
// sees a gRPC call's status, which comes in the trailers.
type doneBody struct {
	io.ReadCloser
	ep   *balancer.Endpoint
	resp *http.Response
	ctx  context.Context // the downstream request's
	grpc bool
	done atomic.Bool
	// span is the attempt's client span, ended with the body (nil without one).
	span    trace.Span
	tracing *telemetry.Tracing
	peer    string // the endpoint's verified SPIFFE ID, for the span
}

func (b *doneBody) finish(err error) {
	if !b.done.CompareAndSwap(false, true) {
		return
	}
	info := balancer.DoneInfo{Err: err, Status: b.resp.StatusCode}
	switch {
	case b.ctx.Err() != nil:
		info.Dropped = true // the client went away: says nothing about the endpoint
	case b.grpc && err == nil:
		info.Status = outcomeStatus(b.resp)
	}
	b.ep.Done(info)
	if b.span != nil {
		b.tracing.EndHTTP(b.span, attemptResult(b.ep.Address, b.peer, b.resp, err))
	}
}

// outcomeStatus is the status of a response for outlier detection: for gRPC, the
// grpc-status (trailers, or headers of a trailers-only response) mapped to HTTP as Envoy
// does; otherwise the HTTP status.
func outcomeStatus(resp *http.Response) int {
	gs := resp.Trailer["Grpc-Status"]
	if len(gs) == 0 {
		gs = resp.Header["Grpc-Status"]
	}
	if len(gs) == 0 || resp.StatusCode != http.StatusOK {
		return resp.StatusCode
	}
	return grpcToHTTP(gs[0])
}

// grpcToHTTP maps a gRPC status code to an HTTP status as Envoy's
// Grpc::Utility::grpcToHttpStatus does.
func grpcToHTTP(code string) int {
	switch code {
	case "0":
		return 200
	case "1":
		return 499
	case "3", "9", "11":
		return 400
	case "4":
		return 504
	case "5":
		return 404
	case "6", "10":
		return 409
	case "7":
		return 403
	case "8":
		return 429
	case "12":
		return 501
	case "14":
		return 503
	case "16":
		return 401
	}
	return 500 // unknown (2), internal (13), data loss (15), anything else
}

func (b *doneBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.finish(nil)
	} else if err != nil {
		b.finish(err)
	}
	return n, err
}

func (b *doneBody) Close() error {
	b.finish(nil)
	return b.ReadCloser.Close()
}

// doneRWBody is the body of a 101 Switching Protocols response: the forwarder writes to
// it as the upgraded connection.
type doneRWBody struct {
	*doneBody
	w io.Writer
}

func (b *doneRWBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// errorHandler answers for a failed round trip.
func (h *Handler) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	st, _ := w.(*state)
	if st == nil {
		st = &state{ResponseWriter: w, t: h.def, m: h.o.Metrics}
	}
	if r.Context().Err() != nil {
		// The client went away (the response timeout cancels only the upstream request's
		// context, never this one): nobody is left to answer.
		st.status = statusClientClosed
		st.proxyStatus = ProxyName + "; error=" + ErrConnectionTerminated + `; details="client closed the request"`
		return
	}
	lr := classify(r.Context(), err)
	// Debug, not Warn: every failed request is already in the access log, the span and
	// ferry_proxy_errors_total, and a per-request log line during an outage (thousands of
	// 503s a second) would be synchronous I/O on the request path. What changed state
	// (ejections, health, Consul outages) is logged once where it happens.
	// Checked first: building the arguments costs allocations even when Debug is off.
	if h.logger.Enabled(r.Context(), slog.LevelDebug) {
		h.logger.Debug("upstream request failed", "direction", h.o.Direction, "upstream", st.upstreamName(h.o.Name),
			"endpoint", st.endpoint, "error", err, "proxy_status", lr.Type, "request_id", st.requestID)
	}
	h.localReply(st, r, lr)
}

// localReply writes a response made by Ferry: the HTTP status, Proxy-Status, and for gRPC
// callers a trailers-only gRPC status.
func (h *Handler) localReply(st *state, r *http.Request, lr *LocalReply) {
	st.reply = lr
	st.proxyStatus = lr.ProxyStatus()
	st.m.ProxyError(lr.Type)
	hdr := st.Header()
	hdr.Set("Proxy-Status", st.proxyStatus)
	hdr.Set("X-Request-Id", st.requestID)
	if lr.GRPCCode != 0 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		hdr.Set("Content-Type", "application/grpc")
		hdr.Set("Grpc-Status", strconv.Itoa(lr.GRPCCode))
		hdr.Set("Grpc-Message", lr.Type+": "+lr.Details)
		st.WriteHeader(http.StatusOK)
		return
	}
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("X-Content-Type-Options", "nosniff")
	st.WriteHeader(lr.Status)
	_, _ = io.WriteString(st, lr.Type+": "+lr.Details+"\n")
}

// bufferPool lends the forwarder its 32 KiB copy buffers (as *[]byte, so that lending
// allocates nothing).
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

// slogWriter adapts a log.Logger (the http.Server's error log) to slog.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(p)), "component", "http")
	return len(p), nil
}
