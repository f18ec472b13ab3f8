package l7

import (
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// Target is an upstream a route forwards to, with the settings of the requests the route
// sends there (the upstream's, with the route's timeout and retries in their place).
type Target struct {
	// Name is the upstream's name in metrics, logs and spans.
	Name string
	// Upstream supplies pickers.
	Upstream Upstream
	// Transport holds the pooled connections to the upstream's endpoints.
	Transport *Transport
	// HashOn is the ring_hash/maglev key, as Options.HashOn.
	HashOn string
	// RequestTimeout bounds the wait for response headers; 0 disables it.
	RequestTimeout time.Duration
	// Retry, if not nil, retries failed requests on other endpoints.
	Retry *RetryPolicy
	// Breaker, if not nil, is the upstream's circuit breaker.
	Breaker *circuit.Breaker
}

// Routing is a Handler's route table and what its routes forward to. NewHandler resolves
// every route's upstreams into Targets and metrics once, so that a request only matches
// the table, picks among resolved targets and follows pointers.
type Routing struct {
	// Table is the compiled routes. Their paths must have been compiled with the
	// normalization of Options.Policy (policy.Policy.Normalize(); the defaults without a
	// Policy): requests are matched on that match key, so that a route cannot be
	// bypassed by another spelling of its path.
	Table *route.Table
	// Target returns what upstream, one of e.Upstreams(), stands for, with e's timeout
	// and retries applied. NewHandler calls it once per route and upstream.
	Target func(e *route.Entry, upstream string) Target
	// Metrics returns the metrics of the requests route takes to upstream (for a route
	// that answers itself, upstream is Options.Name). NewHandler calls it once per route
	// and upstream.
	Metrics func(upstream, route string) *telemetry.HTTPMetrics
}

// routed is one route with what it forwards to resolved.
type routed struct {
	entry   *route.Entry
	targets []*target              // in the order of entry.Upstreams(); none for local answers
	metrics *telemetry.HTTPMetrics // for the route's own answers (redirect, fixed response)
}

// buildRoutes resolves rt's routes.
func (h *Handler) buildRoutes(rt *Routing) {
	h.table = rt.Table
	h.routes = make([]routed, rt.Table.Len())
	for i := range h.routes {
		e := rt.Table.Entry(i)
		r := &h.routes[i]
		r.entry = e
		r.metrics = rt.Metrics(h.o.Name, e.Name())
		for _, up := range e.Upstreams() {
			t := rt.Target(e, up)
			r.targets = append(r.targets, newTarget(t, rt.Metrics(t.Name, e.Name())))
		}
	}
}

// route matches r against the route table, on the path's match key (normalizing it first
// when no policy did), and acts on the route that takes it: a forwarding route sets the
// request's target, metrics and forwarded path (prefix_rewrite); a redirect or a fixed
// response is answered here. A request no route takes goes to the default target, or
// gets 404 when there is none. route reports whether r is to be forwarded.
func (h *Handler) route(st *state, r *http.Request, pn *policyNote) bool {
	if !pn.normalized {
		fwd, match, d := h.o.Policy.NormalizePath(r.URL.EscapedPath())
		if !d.Allowed {
			h.refuse(st, r, pn, &d)
			return false
		}
		if fwd != r.URL.EscapedPath() {
			pn.forward = fwd
		}
		pn.match, pn.normalized = match, true
	}
	req := policy.Request{Method: r.Method, Path: pn.match, RawQuery: r.URL.RawQuery, URI: r.RequestURI,
		Host: r.Host, Header: r.Header, ContentLength: r.ContentLength, SourceID: st.peer}
	i := h.table.MatchIndex(&req)
	if i < 0 {
		if st.t == nil {
			h.localReply(st, r, &LocalReply{Status: http.StatusNotFound, Type: ErrDestinationNotFound,
				Details: "no route", GRPCCode: grpcUnimplemented})
			return false
		}
		return true
	}
	rt := &h.routes[i]
	st.route = rt
	e := rt.entry
	forward := pn.forward
	if forward == "" {
		forward = r.URL.EscapedPath()
	}
	switch e.Action() {
	case route.RedirectAction:
		useMetrics(st, rt.metrics)
		st.t = nil
		code, loc := e.RedirectLocation(requestScheme(r), r.Host, forward, pn.match, r.URL.RawQuery)
		if r.Host == "" {
			// No host to redirect to: a relative reference keeps the request's.
			loc = strings.TrimPrefix(loc, requestScheme(r)+"://")
		}
		hdr := st.Header()
		hdr.Set("Location", loc)
		e.ApplyResponseHeaders(hdr)
		st.WriteHeader(code)
		return false
	case route.Respond:
		useMetrics(st, rt.metrics)
		st.t = nil
		e.WriteResponse(st)
		return false
	}
	t := rt.targets[0]
	if len(rt.targets) > 1 {
		t = rt.targets[e.Pick(rand.Uint64())]
	}
	useMetrics(st, t.metrics)
	if t.name != h.spanUpstream && t.name != h.o.Name && st.span.IsRecording() {
		st.span.SetAttributes(telemetry.AttrUpstream.String(t.name))
	}
	st.t = t
	if fwd := e.RewritePath(forward, pn.match); fwd != forward {
		pn.forward = fwd
	}
	return true
}

// useMetrics makes m the metrics of st's request, moving its count of active requests.
func useMetrics(st *state, m *telemetry.HTTPMetrics) {
	if m == st.m {
		return
	}
	st.m.Active.Dec()
	m.Active.Inc()
	st.m = m
}

// requestScheme is the scheme r came with: X-Forwarded-Proto when it says http or https,
// else https on TLS, else http.
func requestScheme(r *http.Request) string {
	if p := r.Header.Get("X-Forwarded-Proto"); p == "http" || p == "https" {
		return p
	}
	if r.TLS != nil {
		return "https"
	}
	return "http"
}
