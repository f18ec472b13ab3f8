package telemetry

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/http"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// The request path's fast lane. Most requests are not sampled at a low sample ratio, and
// for them the SDK's generic path (context walks for a parent that the request context
// never holds, an option slice, a span and a context it throws away, a strings.Builder
// per traceparent) costs more than the proxying it observes. So:
//
//   - the propagators are skipped when the request carries none of their headers (one
//     map lookup per header the configured formats read);
//   - the SDK looks the server span's parent up in a short context that holds only
//     what the headers carried, not in the request's long context chain;
//   - Ferry draws the span's IDs and asks its own sampler first: a span it drops is
//     built here as the SDK builds it (same IDs, flags and tracestate) without the
//     SDK; a span it keeps is started by the SDK, handed the same IDs through
//     idGenerator so that the SDK's sampler sees the same trace ID and decides the same;
//   - traceparent is written from the span context into one buffer.
//
// The tests compare each step with the OpenTelemetry propagators and SDK.

// extractKeys are the canonical header names the configured formats read: when a
// request has none of them, extracting would find nothing. tracestate alone is ignored
// without traceparent, so it is not listed.
func extractKeys(formats []string) []string {
	var keys []string
	add := func(ks ...string) {
		for _, k := range ks {
			if !containsString(keys, k) {
				keys = append(keys, k)
			}
		}
	}
	for _, f := range formats {
		switch f {
		case PropagationTraceContext:
			add("Traceparent")
		case PropagationBaggage:
			add("Baggage")
		case PropagationB3, PropagationB3Multi:
			// One B3 propagator extracts both encodings, whatever it injects.
			add("B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags")
		}
	}
	return keys
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// b3Propagator is the B3 propagator for the configured b3 formats, nil when there are
// none: InjectHeaders writes tracecontext and baggage itself.
func b3Propagator(formats []string) propagation.TextMapPropagator {
	var b3 []string
	for _, f := range formats {
		if f == PropagationB3 || f == PropagationB3Multi {
			b3 = append(b3, f)
		}
	}
	if len(b3) == 0 {
		return nil
	}
	return newPropagator(b3)
}

// carriesContext reports whether h has a header that one of the configured formats reads.
func (t *Tracing) carriesContext(h http.Header) bool {
	for _, k := range t.extractKeys {
		if len(h[k]) > 0 {
			return true
		}
	}
	return false
}

// startServerSpan starts a server span named name under psc, the remote span context the
// request's headers carried (invalid if none), and returns it with ctx carrying it; bag
// is the headers' baggage. The SDK, when it starts the span, looks its parent up in a
// short context of its own rather than in the request's long context chain.
func (t *Tracing) startServerSpan(ctx context.Context, psc trace.SpanContext, bag baggage.Baggage, name string) (context.Context, trace.Span) {
	var tid trace.TraceID
	if psc.TraceID().IsValid() {
		tid = psc.TraceID()
	} else {
		tid = newTraceID()
	}
	sid := newSpanID()
	if t.sampler.requestDecision(psc, tid) == sdktrace.Drop {
		// What the SDK's tracer builds for a dropped span (see its newSpan), in one
		// allocation with the context that carries it.
		c := &unsampledCtx{Context: ctx}
		c.span = unsampledSpan{tp: t.tp, bag: bag, sc: trace.NewSpanContext(trace.SpanContextConfig{
			TraceID: tid, SpanID: sid, TraceState: psc.TraceState(),
			TraceFlags: psc.TraceFlags() &^ trace.FlagsSampled,
		})}
		if t.tracecontext {
			c.span.traceparent[0] = traceparent(&c.span.sc)
		}
		if spanKey == nil {
			return trace.ContextWithSpan(ctx, &c.span), &c.span
		}
		return c, &c.span
	}
	parent := context.Background()
	if psc.IsValid() {
		parent = trace.ContextWithRemoteSpanContext(parent, psc)
	}
	_, span := t.tracer.Start(&presetIDs{Context: parent, tid: tid, sid: sid}, name, serverKind...)
	return trace.ContextWithSpan(ctx, span), span
}

// unsampledCtx is a request's context carrying its unsampled server span, as
// trace.ContextWithSpan(Context, &span) would, without allocating a second object.
type unsampledCtx struct {
	context.Context
	span unsampledSpan
}

var _ context.Context = (*unsampledCtx)(nil)

// Value returns the span for OpenTelemetry's span key, else the parent's value.
func (c *unsampledCtx) Value(key any) any {
	if key == spanKey {
		return &c.span
	}
	return c.Context.Value(key)
}

// unsampledFrom returns ctx's span if it is a request's unsampled server span, else nil.
// With spanKey known it looks the span up without the interface conversion that
// trace.SpanFromContext makes.
func unsampledFrom(ctx context.Context) *unsampledSpan {
	if spanKey != nil {
		s, _ := ctx.Value(spanKey).(*unsampledSpan)
		return s
	}
	s, _ := trace.SpanFromContext(ctx).(*unsampledSpan)
	return s
}

// spanKey is the key under which trace.ContextWithSpan stores a span, nil if it could not
// be found (then unsampledCtx is not used). It is found once, at start-up, and never
// changed.
var spanKey = findSpanKey()

// keyProbe is a context that records the keys it is asked for.
type keyProbe struct {
	context.Context
	keys []any
}

func (p *keyProbe) Value(key any) any {
	p.keys = append(p.keys, key)
	return nil
}

// findSpanKey asks trace.SpanFromContext for the span of a context that records the keys
// asked for, and checks that the one key it asked for is where trace.ContextWithSpan
// puts a span and where trace.SpanFromContext finds it.
func findSpanKey() any {
	p := &keyProbe{Context: context.Background()}
	trace.SpanFromContext(p)
	if len(p.keys) != 1 {
		return nil
	}
	key := p.keys[0]
	probe := &unsampledSpan{}
	if trace.ContextWithSpan(context.Background(), probe).Value(key) != probe {
		return nil
	}
	if trace.SpanFromContext(&oneValue{Context: context.Background(), key: key, val: probe}) != probe {
		return nil
	}
	return key
}

// oneValue is a context with one value of its own.
type oneValue struct {
	context.Context
	key, val any
}

func (c *oneValue) Value(key any) any {
	if key == c.key {
		return c.val
	}
	return c.Context.Value(key)
}

// unsampledSpan is a span that is neither recorded nor exported (the SDK's
// nonRecordingSpan): it carries its context for propagation and ignores everything else.
// It is immutable and safe for concurrent use.
type unsampledSpan struct {
	noop.Span
	sc  trace.SpanContext
	tp  trace.TracerProvider
	bag baggage.Baggage // the request's, also in the context StartServer returns
	// traceparent is sc's traceparent header value when tracecontext is propagated,
	// shared (never changed) by the header maps it is injected into.
	traceparent [1]string
}

var _ trace.Span = (*unsampledSpan)(nil)

// SpanContext is the span's context, propagated to the upstream or application.
func (s *unsampledSpan) SpanContext() trace.SpanContext { return s.sc }

// TracerProvider is the provider whose tracer would have started the span.
func (s *unsampledSpan) TracerProvider() trace.TracerProvider { return s.tp }

// presetIDs is a span's parent context with the IDs Ferry drew for the span, for
// idGenerator to hand to the SDK.
type presetIDs struct {
	context.Context
	tid trace.TraceID
	sid trace.SpanID
}

// idGenerator is the SDK's random ID generator (math/rand/v2's per-thread ChaCha8, no
// lock), except that a span started under a presetIDs context gets the IDs drawn there.
// It is stateless and safe for concurrent use.
type idGenerator struct{}

var _ sdktrace.IDGenerator = idGenerator{}

// NewIDs returns the preset IDs of ctx, or a new random trace and span ID.
func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := ctx.(*presetIDs); ok {
		return p.tid, p.sid
	}
	return newTraceID(), newSpanID()
}

// NewSpanID returns the preset span ID of ctx for tid, or a new random span ID.
func (idGenerator) NewSpanID(ctx context.Context, tid trace.TraceID) trace.SpanID {
	if p, ok := ctx.(*presetIDs); ok && p.tid == tid {
		return p.sid
	}
	return newSpanID()
}

func newTraceID() (tid trace.TraceID) {
	for !tid.IsValid() {
		binary.NativeEndian.PutUint64(tid[:8], rand.Uint64())
		binary.NativeEndian.PutUint64(tid[8:], rand.Uint64())
	}
	return tid
}

func newSpanID() (sid trace.SpanID) {
	for !sid.IsValid() {
		binary.NativeEndian.PutUint64(sid[:], rand.Uint64())
	}
	return sid
}

// injectTraceContext writes sc into h as the W3C tracecontext propagator does: tracestate
// when there is one, and traceparent with the sampled and random flags only. An invalid
// sc writes nothing.
func injectTraceContext(sc *trace.SpanContext, h http.Header) {
	if !sc.IsValid() {
		return
	}
	if ts := sc.TraceState().String(); ts != "" {
		h["Tracestate"] = []string{ts}
	}
	h["Traceparent"] = []string{traceparent(sc)}
}

// injectTraceContext writes s's context into h as injectTraceContext does, with the
// traceparent value made when s was.
func (s *unsampledSpan) injectTraceContext(h http.Header) {
	if ts := s.sc.TraceState().String(); ts != "" {
		h["Tracestate"] = []string{ts}
	}
	h["Traceparent"] = s.traceparent[:]
}

// injectBaggage writes bag into h as the W3C baggage propagator does (nothing when it is
// empty).
func injectBaggage(bag baggage.Baggage, h http.Header) {
	if s := bag.String(); s != "" {
		h["Baggage"] = []string{s}
	}
}

const hexDigits = "0123456789abcdef"

// hexPairs[b] is b's two lower-case hex digits. It is built once and never changed.
var hexPairs = func() (t [256][2]byte) {
	for i := range t {
		t[i] = [2]byte{hexDigits[i>>4], hexDigits[i&0xf]}
	}
	return t
}()

// traceparent is sc's traceparent header value, 00-<trace id>-<span id>-<flags>, with the
// sampled and random flags only.
func traceparent(sc *trace.SpanContext) string {
	var b [55]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	b[0], b[1], b[2], b[35], b[52] = '0', '0', '-', '-', '-'
	t := (*[32]byte)(b[3:35])
	for i, c := range tid {
		*(*[2]byte)(t[2*i:]) = hexPairs[c]
	}
	s := (*[16]byte)(b[36:52])
	for i, c := range sid {
		*(*[2]byte)(s[2*i:]) = hexPairs[c]
	}
	*(*[2]byte)(b[53:]) = hexPairs[sc.TraceFlags()&(trace.FlagsSampled|trace.FlagsRandom)]
	return string(b[:])
}
