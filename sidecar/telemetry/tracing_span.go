package telemetry

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Span attributes of Ferry's own (the rest are OpenTelemetry semantic conventions:
// http.request.method, url.path, http.response.status_code, server.address, server.port,
// network.peer.address, network.peer.port, network.protocol.version, rpc.system,
// rpc.service, rpc.method, rpc.grpc.status_code, error.type).
const (
	AttrDirection     = attribute.Key("ferry.direction")      // inbound | outbound
	AttrUpstream      = attribute.Key("ferry.upstream")       // upstream name
	AttrEndpoint      = attribute.Key("ferry.endpoint")       // endpoint host:port
	AttrPeerIdentity  = attribute.Key("ferry.peer_identity")  // peer SPIFFE ID
	AttrRoute         = attribute.Key("ferry.route")          // matched route
	AttrPolicy        = attribute.Key("ferry.policy")         // access policy decision
	AttrPolicyRule    = attribute.Key("ferry.policy_rule")    // rule that made it
	AttrProxyStatus   = attribute.Key("ferry.proxy_status")   // RFC 9209 error type
	AttrRetryCount    = attribute.Key("ferry.retry_count")    // retries made (server spans)
	AttrAttempt       = attribute.Key("ferry.attempt")        // attempt number (client spans)
	AttrBytesReceived = attribute.Key("ferry.bytes_received") // TCP: bytes from the downstream
	AttrBytesSent     = attribute.Key("ferry.bytes_sent")     // TCP: bytes to the downstream
)

// noopSpan is returned when tracing is off; converting it to trace.Span allocates nothing.
var noopSpan trace.Span = noop.Span{}

var noopProvider trace.TracerProvider = noop.NewTracerProvider()

// Span start options, shared so that starting a span allocates no option slice.
var (
	serverKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	clientKind = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient)}
)

// StartServer starts the server span for request r, which Ferry received from the
// application (direction Outbound, upstream the upstream it is for) or from a peer
// sidecar (direction Inbound, upstream ""). The trace context in r's headers, in the
// configured formats, is continued; without one a new trace starts (a span already in ctx
// is not taken as the parent: a request's trace comes from its headers). The returned context
// carries the span: pass it to StartClient, or to InjectHeaders for the request to the
// local application. End the span with EndHTTP.
//
// The span is named "<direction> <METHOD>" and records http.request.method, url.path,
// server.address/port (from Host), network.peer.address/port (from RemoteAddr),
// network.protocol.version, ferry.direction, ferry.upstream, and for gRPC rpc.system,
// rpc.service and rpc.method. With tracing off it returns ctx and a no-op span.
func (t *Tracing) StartServer(ctx context.Context, r *http.Request, direction, upstream string) (context.Context, trace.Span) {
	if t == nil || t.tracer == nil {
		return ctx, noopSpan
	}
	// Extracting (into ctx, where the injecting propagators find what they need, such as
	// baggage or B3's debug flag) is skipped when no header of the formats is there.
	var psc trace.SpanContext
	var bag baggage.Baggage
	if t.carriesContext(r.Header) {
		ctx = t.prop.Extract(ctx, headerCarrier(r.Header))
		if psc = trace.SpanContextFromContext(ctx); !psc.IsRemote() {
			psc = trace.SpanContext{} // none in the headers
		}
		if t.baggage {
			bag = baggage.FromContext(ctx)
		}
	}
	ctx, span := t.startServerSpan(ctx, psc, bag, spanName(direction, r.Method))
	if !span.IsRecording() {
		return ctx, span
	}
	buf := t.attrBuf()
	kv := append(buf[:0],
		methodAttr(r.Method),
		semconv.URLPath(r.URL.Path),
		AttrDirection.String(direction),
	)
	if host, port := splitHostPort(r.Host); host != "" {
		kv = append(kv, semconv.ServerAddress(host))
		if port > 0 {
			kv = append(kv, semconv.ServerPort(port))
		}
	}
	if host, port := splitHostPort(r.RemoteAddr); host != "" {
		kv = append(kv, semconv.NetworkPeerAddress(host))
		if port > 0 {
			kv = append(kv, semconv.NetworkPeerPort(port))
		}
	}
	kv = append(kv, protocolVersion(r))
	if upstream != "" {
		kv = append(kv, AttrUpstream.String(upstream))
	}
	kv = appendRPC(kv, r)
	span.SetAttributes(kv...)
	t.putAttrBuf(buf, len(kv))
	return ctx, span
}

// StartClient starts the client span of one attempt to send req to endpoint (host:port)
// of upstream; attempt counts from 1, and each retry is a new client span under the same
// parent. ctx must be the context StartServer returned. Call InjectHeaders with the
// returned context on req's headers before sending it, and EndHTTP when the attempt's
// response has ended (or failed).
//
// The span is named "upstream <METHOD>" and records http.request.method, url.path,
// server.address/port and ferry.endpoint (the endpoint), ferry.upstream, ferry.attempt,
// and for gRPC rpc.system, rpc.service and rpc.method. With tracing off it returns ctx
// and a no-op span.
func (t *Tracing) StartClient(ctx context.Context, req *http.Request, upstream, endpoint string, attempt int) (context.Context, trace.Span) {
	if t == nil || t.tracer == nil {
		return ctx, noopSpan
	}
	ctx, span := t.tracer.Start(ctx, spanName(upstreamDirection, req.Method), clientKind...)
	if !span.IsRecording() {
		return ctx, span
	}
	buf := t.attrBuf()
	kv := append(buf[:0],
		methodAttr(req.Method),
		semconv.URLPath(req.URL.Path),
		AttrUpstream.String(upstream),
		AttrAttempt.Int(attempt),
	)
	if endpoint != "" {
		kv = append(kv, AttrEndpoint.String(endpoint))
		if host, port := splitHostPort(endpoint); host != "" {
			kv = append(kv, semconv.ServerAddress(host))
			if port > 0 {
				kv = append(kv, semconv.ServerPort(port))
			}
		}
	}
	kv = appendRPC(kv, req)
	span.SetAttributes(kv...)
	t.putAttrBuf(buf, len(kv))
	return ctx, span
}

// InjectHeaders writes the trace context of ctx's span (and baggage, if configured) into
// h in the configured formats, replacing what the caller sent, so the application or
// upstream continues the trace under Ferry's span. With tracing off it does nothing and
// the caller's headers pass through unchanged.
func (t *Tracing) InjectHeaders(ctx context.Context, h http.Header) {
	if t == nil || t.tracer == nil {
		return
	}
	if us := unsampledFrom(ctx); us != nil {
		// A request's unsampled server span holds its traceparent and the baggage ctx
		// has: nothing to format or look up.
		if t.tracecontext {
			us.injectTraceContext(h)
		}
		if t.baggage {
			injectBaggage(us.bag, h)
		}
	} else {
		if t.tracecontext {
			sc := trace.SpanContextFromContext(ctx)
			injectTraceContext(&sc, h)
		}
		if t.baggage {
			injectBaggage(baggage.FromContext(ctx), h)
		}
	}
	if t.b3 != nil {
		t.b3.Inject(ctx, headerCarrier(h))
	}
}

// HTTPResult is how an HTTP request or attempt ended, for Tracing.EndHTTP. Zero fields are not
// recorded.
type HTTPResult struct {
	// Status is the response status code (http.response.status_code); 0 if there was
	// no response.
	Status int
	// ProxyStatus is the RFC 9209 error type of a response Ferry generated or of a
	// failed attempt (ferry.proxy_status and error.type), e.g. destination_unavailable.
	ProxyStatus string
	// Endpoint is the upstream endpoint host:port that served the request (ferry.endpoint).
	Endpoint string
	// PeerID is the peer sidecar's SPIFFE ID (ferry.peer_identity): the client's on
	// inbound, the server's on outbound.
	PeerID string
	// Route is the name of the route that matched (ferry.route).
	Route string
	// Policy is the access policy decision, e.g. allow or deny (ferry.policy).
	Policy string
	// PolicyRule names the policy rule that made the decision (ferry.policy_rule).
	PolicyRule string
	// Attempts is the tries made for the request; a server span records
	// ferry.retry_count = Attempts-1 when Attempts > 0. Leave 0 on client spans.
	Attempts int
	// GRPCStatus is the grpc-status of a gRPC response, from its trailers or, for a
	// trailers-only response, its headers (see GRPCStatus); "" if not gRPC.
	GRPCStatus string
	// Err is the transport error of a request with no (complete) response.
	Err error
}

// EndHTTP records res on span and ends it. The span's status is Error when Ferry failed
// the call: a ProxyStatus, a 5xx, a transport error, or a gRPC status that means a
// server-side failure (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
// DATA_LOSS). With sample_errors those spans are exported even when the ratio did not
// sample them. Cheap on an unsampled span: it only ends it. Call once per span.
func (t *Tracing) EndHTTP(span trace.Span, res HTTPResult) {
	if !span.IsRecording() {
		span.End()
		return
	}
	buf := t.attrBuf()
	kv := buf[:0]
	if res.Status > 0 {
		kv = append(kv, semconv.HTTPResponseStatusCode(res.Status))
	}
	if res.Endpoint != "" {
		kv = append(kv, AttrEndpoint.String(res.Endpoint))
	}
	if res.PeerID != "" {
		kv = append(kv, AttrPeerIdentity.String(res.PeerID))
	}
	if res.Route != "" {
		kv = append(kv, AttrRoute.String(res.Route))
	}
	if res.Policy != "" {
		kv = append(kv, AttrPolicy.String(res.Policy))
	}
	if res.PolicyRule != "" {
		kv = append(kv, AttrPolicyRule.String(res.PolicyRule))
	}
	if res.Attempts > 0 {
		kv = append(kv, AttrRetryCount.Int(res.Attempts-1))
	}
	grpcFailed := false
	if res.GRPCStatus != "" {
		if code, err := strconv.Atoi(res.GRPCStatus); err == nil {
			kv = append(kv, semconv.RPCGRPCStatusCodeKey.Int(code))
			grpcFailed = grpcServerError(code)
		}
	}
	if res.ProxyStatus != "" {
		kv = append(kv, AttrProxyStatus.String(res.ProxyStatus))
	}
	failed := res.ProxyStatus != "" || res.Status >= 500 || res.Err != nil || grpcFailed
	if failed {
		kv = append(kv, semconv.ErrorTypeKey.String(errorType(res.ProxyStatus, res.Status, res.GRPCStatus, res.Err)))
	}
	span.SetAttributes(kv...)
	t.putAttrBuf(buf, len(kv))
	if failed {
		desc := res.ProxyStatus
		if res.Err != nil {
			desc = res.Err.Error()
		}
		span.SetStatus(codes.Error, desc)
	}
	span.End()
}

// errorType is the error.type of a failed call: the Proxy-Status error type, else the
// HTTP status code, else the gRPC status code, else the transport error's kind.
func errorType(proxyStatus string, status int, grpcStatus string, err error) string {
	switch {
	case proxyStatus != "":
		return proxyStatus
	case status >= 500:
		return strconv.Itoa(status)
	case grpcStatus != "" && grpcStatus != "0":
		return "grpc_" + grpcStatus
	case err != nil:
		return errorKind(err)
	}
	return "_OTHER"
}

// errorKind is a low-cardinality name for a transport error.
func errorKind(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection_refused"
	case strings.Contains(err.Error(), "connection reset"):
		return "connection_reset"
	}
	return "_OTHER"
}

// grpcServerError reports whether a gRPC status code is a server-side failure, as the
// OpenTelemetry conventions for gRPC server spans define it.
func grpcServerError(code int) bool {
	switch code {
	case 2, 4, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

// GRPCStatus returns the grpc-status value from the first of the given header maps
// (trailers first, then headers for a trailers-only response) that has one, looking at
// both a declared trailer and one sent as http.TrailerPrefix+"Grpc-Status"; "" if none.
func GRPCStatus(headers ...http.Header) string {
	for _, h := range headers {
		if v := h["Grpc-Status"]; len(v) > 0 {
			return v[0]
		}
		if v := h[http.TrailerPrefix+"Grpc-Status"]; len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// TraceID is the trace ID of span as 32 hex digits (for access logs), or "" when span
// has no valid context (tracing off).
func TraceID(span trace.Span) string {
	sc := span.SpanContext()
	if !sc.TraceID().IsValid() {
		return ""
	}
	return sc.TraceID().String()
}

// StartTCP starts the one span of a TCP session Ferry accepted from downstream, for
// upstream (direction Inbound: the session from a peer sidecar to the local application;
// Outbound: from the application to upstream). TCP carries no trace context, so each
// session starts a trace. End it with EndTCP. With tracing off it returns ctx and a
// no-op span.
//
// The span is named "<direction> tcp", of kind server for inbound and client for
// outbound, and records network.transport, network.peer.address/port, ferry.direction
// and ferry.upstream.
func (t *Tracing) StartTCP(ctx context.Context, direction, upstream string, downstream net.Addr) (context.Context, trace.Span) {
	if t == nil || t.tracer == nil {
		return ctx, noopSpan
	}
	opts, name := clientKind, "outbound tcp"
	if direction == Inbound {
		opts, name = serverKind, "inbound tcp"
	}
	if direction == Ingress {
		opts, name = serverKind, "ingress tcp"
	}
	ctx, span := t.tracer.Start(ctx, name, opts...)
	if !span.IsRecording() {
		return ctx, span
	}
	buf := t.attrBuf()
	kv := append(buf[:0], semconv.NetworkTransportTCP, AttrDirection.String(direction))
	if upstream != "" {
		kv = append(kv, AttrUpstream.String(upstream))
	}
	if downstream != nil {
		if host, port := splitHostPort(downstream.String()); host != "" {
			kv = append(kv, semconv.NetworkPeerAddress(host))
			if port > 0 {
				kv = append(kv, semconv.NetworkPeerPort(port))
			}
		}
	}
	span.SetAttributes(kv...)
	t.putAttrBuf(buf, len(kv))
	return ctx, span
}

// TCPResult is how a TCP session ended, for Tracing.EndTCP. Zero fields are not recorded.
type TCPResult struct {
	// Endpoint is the upstream endpoint host:port the session went to (ferry.endpoint,
	// server.address, server.port).
	Endpoint string
	// PeerID is the peer sidecar's SPIFFE ID (ferry.peer_identity).
	PeerID string
	// BytesReceived are the bytes read from the downstream (ferry.bytes_received);
	// BytesSent the bytes written to it (ferry.bytes_sent). Both are always recorded.
	BytesReceived, BytesSent int64
	// ProxyStatus is the RFC 9209 error type when Ferry failed the session (no endpoint,
	// connect failure...).
	ProxyStatus string
	// Err is the error that ended the session abnormally, if any.
	Err error
}

// EndTCP records res on span and ends it; the status is Error when res has a
// ProxyStatus or an Err. Call once per span.
func (t *Tracing) EndTCP(span trace.Span, res TCPResult) {
	if !span.IsRecording() {
		span.End()
		return
	}
	buf := t.attrBuf()
	kv := append(buf[:0], AttrBytesReceived.Int64(res.BytesReceived), AttrBytesSent.Int64(res.BytesSent))
	if res.Endpoint != "" {
		kv = append(kv, AttrEndpoint.String(res.Endpoint))
		if host, port := splitHostPort(res.Endpoint); host != "" {
			kv = append(kv, semconv.ServerAddress(host))
			if port > 0 {
				kv = append(kv, semconv.ServerPort(port))
			}
		}
	}
	if res.PeerID != "" {
		kv = append(kv, AttrPeerIdentity.String(res.PeerID))
	}
	if res.ProxyStatus != "" {
		kv = append(kv, AttrProxyStatus.String(res.ProxyStatus))
	}
	failed := res.ProxyStatus != "" || res.Err != nil
	if failed {
		kv = append(kv, semconv.ErrorTypeKey.String(errorType(res.ProxyStatus, 0, "", res.Err)))
	}
	span.SetAttributes(kv...)
	t.putAttrBuf(buf, len(kv))
	if failed {
		desc := res.ProxyStatus
		if res.Err != nil {
			desc = res.Err.Error()
		}
		span.SetStatus(codes.Error, desc)
	}
	span.End()
}

// attrBuf holds a span's attributes while they are handed to the SDK, which copies them.
// Recycled through Tracing.attrs: built on the stack, they would escape through the
// trace.Span interface and cost an allocation per call.
type attrBuf [16]attribute.KeyValue

func (t *Tracing) attrBuf() *attrBuf {
	if t != nil {
		if b, ok := t.attrs.Get().(*attrBuf); ok {
			return b
		}
	}
	return new(attrBuf)
}

// putAttrBuf recycles b after clearing its first n entries (they hold request strings).
func (t *Tracing) putAttrBuf(b *attrBuf, n int) {
	if t == nil {
		return
	}
	clear(b[:n])
	t.attrs.Put(b)
}

// upstreamDirection names client spans ("upstream GET").
const upstreamDirection = "upstream"

// knownMethods are the methods semantic conventions name; others are recorded as _OTHER.
var knownMethods = [...]string{
	http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete,
	http.MethodConnect, http.MethodOptions, http.MethodTrace, http.MethodPatch,
}

// spanNames[d][m] is "<direction> <method>" for the directions inbound, outbound,
// upstream, ingress and knownMethods, plus "<direction> HTTP" for other methods at index
// len(knownMethods). It is built once and never changed, so that naming a span does not
// allocate.
var spanNames = func() (names [4][len(knownMethods) + 1]string) {
	for d, dir := range [4]string{Inbound, Outbound, upstreamDirection, Ingress} {
		for m, meth := range knownMethods {
			names[d][m] = dir + " " + meth
		}
		names[d][len(knownMethods)] = dir + " HTTP"
	}
	return names
}()

func methodIndex(method string) int {
	for i, m := range knownMethods {
		if m == method {
			return i
		}
	}
	return len(knownMethods)
}

func spanName(direction, method string) string {
	d := 2
	switch direction {
	case Inbound:
		d = 0
	case Outbound:
		d = 1
	case Ingress:
		d = 3
	}
	return spanNames[d][methodIndex(method)]
}

// methodAttr is http.request.method: the method if it is a known one, else _OTHER (the
// original then is not recorded, to bound cardinality).
func methodAttr(method string) attribute.KeyValue {
	if i := methodIndex(method); i < len(knownMethods) {
		return semconv.HTTPRequestMethodKey.String(knownMethods[i])
	}
	return semconv.HTTPRequestMethodOther
}

func protocolVersion(r *http.Request) attribute.KeyValue {
	switch {
	case r.ProtoMajor == 2:
		return semconv.NetworkProtocolVersion("2")
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return semconv.NetworkProtocolVersion("1.0")
	case r.ProtoMajor == 3:
		return semconv.NetworkProtocolVersion("3")
	}
	return semconv.NetworkProtocolVersion("1.1")
}

// appendRPC adds rpc.system, rpc.service and rpc.method for a gRPC request (content type
// application/grpc, path /package.Service/Method).
func appendRPC(kv []attribute.KeyValue, r *http.Request) []attribute.KeyValue {
	ct := r.Header["Content-Type"]
	if len(ct) == 0 || !strings.HasPrefix(ct[0], "application/grpc") {
		return kv
	}
	kv = append(kv, semconv.RPCSystemGRPC)
	p := strings.TrimPrefix(r.URL.Path, "/")
	if i := strings.LastIndexByte(p, '/'); i > 0 && i < len(p)-1 {
		kv = append(kv, semconv.RPCService(p[:i]), semconv.RPCMethod(p[i+1:]))
	}
	return kv
}

// splitHostPort splits host:port, [v6]:port, or a bare host without allocating; port is
// 0 when absent or not a number.
func splitHostPort(s string) (host string, port int) {
	if s == "" {
		return "", 0
	}
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return s, 0
		}
		host = s[1:end]
		if rest := s[end+1:]; len(rest) > 1 && rest[0] == ':' {
			port, _ = strconv.Atoi(rest[1:])
		}
		return host, port
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 || strings.IndexByte(s[:i], ':') >= 0 { // no port, or a bare IPv6 address
		return s, 0
	}
	port, _ = strconv.Atoi(s[i+1:])
	return s[:i], port
}

// headerCarrier adapts http.Header to the propagators without the allocation that
// http.Header.Get makes to canonicalize their lower-case keys: the keys of the formats
// Ferry supports map to constants.
type headerCarrier http.Header

func canonicalKey(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "baggage":
		return "Baggage"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	}
	return textproto.CanonicalMIMEHeaderKey(k)
}

func (h headerCarrier) Get(key string) string {
	if v := h[canonicalKey(key)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (h headerCarrier) Set(key, value string) { h[canonicalKey(key)] = []string{value} }

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}
