package l7

import (
	"context"
	"net/http"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"go.opentelemetry.io/otel/trace"
)

// startAttempt propagates the trace context on one try of req to endpoint (try n, from
// 1). Outbound it starts the try's client span, a child of the server span in ctx, and
// writes its context into req's headers for the upstream; it returns the span, which the
// caller ends with endAttempt or hands to deliver. Inbound it writes the server span's
// context for the local application and returns nil. server is the request's server span:
// when it is not recording (not sampled), no client span would be exported either, so
// none is started and the server span's context is sent as the parent. With tracing off
// it does nothing.
func (h *Handler) startAttempt(ctx context.Context, server trace.Span, req *http.Request, upstream, endpoint string, n int) trace.Span {
	t := h.o.Tracing
	if t == nil {
		return nil
	}
	if h.o.Direction != telemetry.Outbound || (server != nil && !server.IsRecording()) {
		t.InjectHeaders(ctx, req.Header)
		return nil
	}
	actx, span := t.StartClient(ctx, req, upstream, endpoint, n)
	t.InjectHeaders(actx, req.Header)
	return span
}

// endAttempt ends the client span of a try that got resp, or failed as lr. A nil span
// (no client span) is ignored.
func (h *Handler) endAttempt(span trace.Span, t *target, endpoint string, resp *http.Response, lr *LocalReply) {
	if span == nil {
		return
	}
	if resp != nil {
		h.o.Tracing.EndHTTP(span, attemptResult(endpoint, t.peerOf(endpoint), resp, nil))
		return
	}
	res := telemetry.HTTPResult{Endpoint: endpoint}
	if lr != nil {
		res.ProxyStatus, res.Err = lr.Type, lr
	}
	h.o.Tracing.EndHTTP(span, res)
}

// attemptResult is the outcome of a try that got resp and whose body ended with err; peer
// is the SPIFFE ID the endpoint proved in the mTLS handshake ("" without mesh TLS).
func attemptResult(endpoint, peer string, resp *http.Response, err error) telemetry.HTTPResult {
	return telemetry.HTTPResult{Status: resp.StatusCode, Endpoint: endpoint, PeerID: peer,
		GRPCStatus: telemetry.GRPCStatus(resp.Trailer, resp.Header), Err: err}
}

// peerOf returns the SPIFFE ID an endpoint of t must have presented for a response to
// come back from it over mesh mTLS (the handshake refuses any other), "" when t's
// transport does not speak mesh TLS.
func (t *target) peerOf(endpoint string) string {
	if t == nil || t.transport == nil {
		return ""
	}
	return t.transport.Options().TLS.PeerIdentity(endpoint)
}

// endServerSpan records how the request of st ended on its (recording) server span and
// ends it: status, Proxy-Status error type, the endpoint of the last try, the tries made,
// the caller's SPIFFE ID (inbound with mTLS), the route that took it, the policy decision
// in pn and, for gRPC, the grpc-status sent to the caller.
func (h *Handler) endServerSpan(st *state, pn *policyNote) {
	res := telemetry.HTTPResult{Status: st.status, Endpoint: st.endpoint, Attempts: st.attempts,
		GRPCStatus: telemetry.GRPCStatus(st.Header()), PeerID: st.peer,
		Policy: pn.outcome, PolicyRule: pn.rule, Route: st.routeName()}
	switch {
	case st.reply != nil:
		res.ProxyStatus = st.reply.Type
	case st.status == statusClientClosed:
		res.ProxyStatus = ErrConnectionTerminated
	}
	h.o.Tracing.EndHTTP(st.span, res)
}
