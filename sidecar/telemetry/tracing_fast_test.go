package telemetry

import (
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/textproto"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"
)

// otelInject is what OpenTelemetry's propagators for formats write for ctx.
func otelInject(formats []string, ctx context.Context) http.Header {
	h := http.Header{}
	newPropagator(formats).Inject(ctx, propagation.HeaderCarrier(h))
	return h
}

func spanContext(tid, sid string, flags trace.TraceFlags, state string) trace.SpanContext {
	t, _ := trace.TraceIDFromHex(tid)
	s, _ := trace.SpanIDFromHex(sid)
	ts, err := trace.ParseTraceState(state)
	if err != nil {
		panic(err)
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: t, SpanID: s, TraceFlags: flags, TraceState: ts})
}

func TestInjectTraceContextMatchesOtel(t *testing.T) {
	const tid, sid = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	for _, tc := range []struct {
		name string
		sc   trace.SpanContext
	}{
		{"unsampled", spanContext(tid, sid, 0, "")},
		{"sampled", spanContext(tid, sid, trace.FlagsSampled, "")},
		{"random", spanContext(tid, sid, trace.FlagsRandom, "")},
		{"sampled random", spanContext(tid, sid, trace.FlagsSampled|trace.FlagsRandom, "")},
		{"unknown flags dropped", spanContext(tid, sid, 0xff, "")},
		{"tracestate", spanContext(tid, sid, trace.FlagsSampled, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")},
		{"all digits", spanContext("0123456789abcdeffedcba9876543210", "f0e1d2c3b4a59687", 1, "")},
		{"invalid", trace.SpanContext{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := http.Header{}
			injectTraceContext(&tc.sc, got)
			want := otelInject([]string{PropagationTraceContext}, trace.ContextWithSpanContext(context.Background(), tc.sc))
			if !maps.EqualFunc(got, want, slices.Equal) {
				t.Errorf("injectTraceContext() wrote %v, want %v", got, want)
			}
		})
	}
}

func FuzzInjectTraceContext(f *testing.F) {
	f.Add([]byte("0af7651916cd43dd"), []byte("b7ad6b71"), byte(1), "")
	f.Add([]byte{}, []byte{}, byte(0), "a=b")
	f.Add([]byte{0xff, 0, 0x10}, []byte{1}, byte(0xfe), "k=v,x@y=z")
	f.Fuzz(func(t *testing.T, tid, sid []byte, flags byte, state string) {
		var cfg trace.SpanContextConfig
		copy(cfg.TraceID[:], tid)
		copy(cfg.SpanID[:], sid)
		cfg.TraceFlags = trace.TraceFlags(flags)
		if ts, err := trace.ParseTraceState(state); err == nil {
			cfg.TraceState = ts
		}
		sc := trace.NewSpanContext(cfg)
		got := http.Header{}
		injectTraceContext(&sc, got)
		want := otelInject([]string{PropagationTraceContext}, trace.ContextWithSpanContext(context.Background(), sc))
		if !maps.EqualFunc(got, want, slices.Equal) {
			t.Errorf("injectTraceContext(%v) wrote %v, want %v", sc, got, want)
		}
	})
}

// allFormats are the propagation settings the fast paths must agree with OpenTelemetry on.
var allFormats = [][]string{
	{PropagationTraceContext},
	{PropagationTraceContext, PropagationBaggage},
	{PropagationB3},
	{PropagationB3Multi},
	{PropagationBaggage},
	{PropagationB3, PropagationTraceContext, PropagationB3Multi, PropagationBaggage},
}

// propagationHeaders are requests' headers: none, each format's, malformed ones, and
// headers of no format.
var propagationHeaders = map[string]http.Header{
	"none":                {},
	"other":               {"X-Request-Id": {"1"}, "Content-Type": {"text/plain"}},
	"traceparent":         {"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
	"traceparent 00":      {"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}},
	"traceparent random":  {"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02"}, "Tracestate": {"rojo=1"}},
	"traceparent bad":     {"Traceparent": {"00-zzz-b7ad6b7169203331-01"}},
	"tracestate only":     {"Tracestate": {"rojo=1"}},
	"baggage":             {"Baggage": {"tenant=acme;p=1"}},
	"baggage bad":         {"Baggage": {"=;;"}},
	"baggage+traceparent": {"Baggage": {"tenant=acme"}, "Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}},
	"b3 single":           {"B3": {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}},
	"b3 single deny":      {"B3": {"0"}},
	"b3 multi": {"X-B3-Traceid": {"80f198ee56343ba864fe8b2a57d3eff7"}, "X-B3-Spanid": {"e457b5a2e4d86bd1"},
		"X-B3-Sampled": {"0"}},
	"b3 sampled only": {"X-B3-Sampled": {"1"}},
	"b3 flags only":   {"X-B3-Flags": {"1"}},
	"b3 parent only":  {"X-B3-Parentspanid": {"e457b5a2e4d86bd1"}},
	"b3 span id only": {"X-B3-Spanid": {"e457b5a2e4d86bd1"}},
	"empty value":     {"Traceparent": {""}, "B3": {""}},
	"b3 single debug": {"B3": {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d"}},
	"b3 multi debug": {"X-B3-Traceid": {"80f198ee56343ba864fe8b2a57d3eff7"}, "X-B3-Spanid": {"e457b5a2e4d86bd1"},
		"X-B3-Flags": {"1"}},
	"b3 multi deferred":   {"X-B3-Traceid": {"80f198ee56343ba864fe8b2a57d3eff7"}, "X-B3-Spanid": {"e457b5a2e4d86bd1"}},
	"traceparent+b3 both": {"Traceparent": {"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "B3": {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"}},
}

// extractsNothing reports whether OpenTelemetry's propagators for formats extract nothing
// from h that changes what a span continues or what is injected for it.
func extractsNothing(formats []string, h http.Header) bool {
	bg := context.Background()
	prop := newPropagator(formats)
	ctx := prop.Extract(bg, headerCarrier(h))
	if trace.SpanContextFromContext(ctx).IsValid() || baggage.FromContext(ctx).Len() > 0 {
		return false
	}
	sc := spanContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", 0, "")
	return maps.EqualFunc(otelInject(formats, trace.ContextWithSpanContext(ctx, sc)),
		otelInject(formats, trace.ContextWithSpanContext(bg, sc)), slices.Equal)
}

// TestCarriesContext checks that a request carriesContext says has no propagation
// header extracts nothing with OpenTelemetry's propagators.
func TestCarriesContext(t *testing.T) {
	for _, formats := range allFormats {
		tr := &Tracing{extractKeys: extractKeys(formats)}
		for name, h := range propagationHeaders {
			t.Run(name, func(t *testing.T) {
				if !tr.carriesContext(h) && !extractsNothing(formats, h) {
					t.Errorf("formats %v: carriesContext(%v) = false, but the propagators extract from it", formats, h)
				}
			})
		}
	}
	tr := &Tracing{extractKeys: extractKeys([]string{PropagationTraceContext})}
	if !tr.carriesContext(propagationHeaders["traceparent"]) {
		t.Errorf("carriesContext(traceparent) = false, want true")
	}
}

// FuzzCarriesContext: a header that no configured format reads never makes the
// propagators extract anything.
func FuzzCarriesContext(f *testing.F) {
	for _, k := range []string{"traceparent", "b3", "x-b3-sampled", "baggage", "tracestate", "x-b3-flags", "x-other"} {
		f.Add(k, "1")
	}
	f.Add("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
	f.Fuzz(func(t *testing.T, key, value string) {
		h := http.Header{textproto.CanonicalMIMEHeaderKey(key): {value}}
		for _, formats := range allFormats {
			tr := &Tracing{extractKeys: extractKeys(formats)}
			if !tr.carriesContext(h) && !extractsNothing(formats, h) {
				t.Errorf("formats %v: carriesContext(%v) = false, but the propagators extract from it", formats, h)
			}
		}
	})
}

// TestRequestDecision compares the sampler's request fast path with its ShouldSample
// (and so with sdktrace.TraceIDRatioBased) on random trace IDs.
func TestRequestDecision(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	remote := func(flags trace.TraceFlags) trace.SpanContext {
		return spanContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", flags, "").WithRemote(true)
	}
	for _, ratio := range []float64{0, 1e-12, 0.01, 0.25, 0.5, 0.999999, 1, 2} {
		for _, sampleErrors := range []bool{false, true} {
			s := newErrorSampler(ratio, sampleErrors)
			for _, psc := range []trace.SpanContext{{}, remote(0), remote(trace.FlagsSampled), remote(trace.FlagsRandom)} {
				parent := context.Background()
				if psc.IsValid() {
					parent = trace.ContextWithRemoteSpanContext(parent, psc)
				}
				for range 2000 {
					var tid trace.TraceID
					binary.BigEndian.PutUint64(tid[:8], rng.Uint64())
					binary.BigEndian.PutUint64(tid[8:], rng.Uint64())
					if psc.IsValid() {
						tid = psc.TraceID()
					}
					want := s.ShouldSample(sdktrace.SamplingParameters{ParentContext: parent, TraceID: tid, Kind: trace.SpanKindServer})
					if got := s.requestDecision(psc, tid); got != want.Decision {
						t.Fatalf("ratio %v sample_errors %t parent %v: requestDecision(%v) = %v, want %v",
							ratio, sampleErrors, psc, tid, got, want.Decision)
					}
					if want.Tracestate.String() != psc.TraceState().String() {
						t.Fatalf("ShouldSample() tracestate = %v, want the parent's %v", want.Tracestate, psc.TraceState())
					}
				}
			}
		}
	}
}

// TestStartServerMatchesSDK starts a request's server span through Ferry's fast path and
// through OpenTelemetry's propagators and SDK tracer with the same sampler, and compares
// the spans (all but the span ID, which is random) and the headers injected for them.
func TestStartServerMatchesSDK(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, formats := range allFormats {
		for _, ratio := range []float64{0, 1} {
			for _, sampleErrors := range []bool{false, true} {
				tr := newFakeTracing(t, &fakeExporter{}, nil, func(c *TracingConfig) {
					c.Propagation, c.SampleRatio, c.SampleErrors = formats, ratio, sampleErrors
				})
				ref := sdktrace.NewTracerProvider(sdktrace.WithSampler(newErrorSampler(ratio, sampleErrors)))
				for name, h := range propagationHeaders {
					t.Run(name, func(t *testing.T) {
						r := newTestRequest("GET", "/x")
						r.Header = h.Clone()
						ctx, span := tr.StartServer(context.Background(), r, Inbound, "")
						defer span.End()
						ectx := newPropagator(formats).Extract(context.Background(), propagation.HeaderCarrier(h))
						rctx, rspan := ref.Tracer("ref").Start(ectx, "inbound GET", trace.WithSpanKind(trace.SpanKindServer))
						defer rspan.End()

						got, want := span.SpanContext(), rspan.SpanContext()
						if !got.IsValid() || got.IsRemote() || span.IsRecording() != rspan.IsRecording() ||
							got.TraceFlags() != want.TraceFlags() || got.TraceState().String() != want.TraceState().String() {
							t.Fatalf("formats %v ratio %v sample_errors %t: span %v recording %t, want %v recording %t",
								formats, ratio, sampleErrors, got, span.IsRecording(), want, rspan.IsRecording())
						}
						if psc := trace.SpanContextFromContext(ectx); psc.IsValid() && got.TraceID() != want.TraceID() {
							t.Fatalf("trace ID %v, want the parent's %v", got.TraceID(), want.TraceID())
						}
						if gb, wb := baggage.FromContext(ctx), baggage.FromContext(rctx); gb.String() != wb.String() {
							t.Fatalf("baggage in context %q, want %q", gb, wb)
						}

						// The headers injected for the span, compared with the reference
						// span given the same IDs.
						gh := http.Header{}
						tr.InjectHeaders(ctx, gh)
						same := trace.ContextWithSpanContext(rctx, want.WithTraceID(got.TraceID()).WithSpanID(got.SpanID()))
						wh := otelInject(formats, same)
						if !maps.EqualFunc(gh, wh, slices.Equal) {
							t.Fatalf("formats %v: InjectHeaders() wrote %v, want %v", formats, gh, wh)
						}
						if got.TraceState().Len() > 0 && gh.Get("Tracestate") == "" && slices.Contains(formats, PropagationTraceContext) {
							t.Fatalf("tracestate not injected: %v", gh)
						}
					})
				}
				stopTracing(t, tr)
				if err := ref.Shutdown(context.Background()); err != nil {
					t.Errorf("Shutdown() = %v", err)
				}
			}
		}
	}
}

// TestSampledShareFollowsRatio: a server span kept by Ferry's sampler is started by the
// SDK with the trace ID Ferry drew, so the SDK's own sampling (on that ID) agrees and the
// share of sampled requests is the ratio, not its square.
func TestSampledShareFollowsRatio(t *testing.T) {
	defer goleak.VerifyNone(t)
	tr := newFakeTracing(t, discardExporter{}, nil, func(c *TracingConfig) {
		c.SampleRatio = 0.5
		c.QueueSize = 1 << 14
	})
	defer stopTracing(t, tr)
	const n = 4000
	sampled := 0
	for range n {
		_, s := tr.StartServer(context.Background(), newTestRequest("GET", "/"), Outbound, "api")
		if s.IsRecording() {
			sampled++
			if !s.SpanContext().IsSampled() {
				t.Fatalf("recording span %v is not sampled", s.SpanContext())
			}
		}
		s.End()
	}
	// Binomial(4000, 0.5): the standard deviation is about 32; 0.25 would give ~1000.
	if sampled < n/2-300 || sampled > n/2+300 {
		t.Errorf("%d of %d requests sampled at ratio 0.5, want about %d", sampled, n, n/2)
	}
}

func TestIDGenerator(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	preset := &presetIDs{Context: context.Background(), tid: tid, sid: sid}
	var g idGenerator
	if gt, gs := g.NewIDs(preset); gt != tid || gs != sid {
		t.Errorf("NewIDs(preset) = %v, %v, want %v, %v", gt, gs, tid, sid)
	}
	if gs := g.NewSpanID(preset, tid); gs != sid {
		t.Errorf("NewSpanID(preset) = %v, want %v", gs, sid)
	}
	other := trace.TraceID{1}
	if gs := g.NewSpanID(preset, other); gs == sid || !gs.IsValid() {
		t.Errorf("NewSpanID(preset, other trace) = %v, want a new random ID", gs)
	}
	seen := map[trace.TraceID]bool{}
	for range 1000 {
		gt, gs := g.NewIDs(context.Background())
		if !gt.IsValid() || !gs.IsValid() || seen[gt] {
			t.Fatalf("NewIDs() = %v, %v: want valid, unique IDs", gt, gs)
		}
		seen[gt] = true
	}
}

// TestUnsampledBaggage: baggage reaches the upstream when the request is not sampled (the
// unsampled span carries it).
func TestUnsampledBaggage(t *testing.T) {
	defer goleak.VerifyNone(t)
	tr := newFakeTracing(t, &fakeExporter{}, nil, func(c *TracingConfig) { c.SampleRatio = 0 })
	defer stopTracing(t, tr)
	for _, tc := range []struct{ name, traceparent, want string }{
		{"new trace", "", "tenant=acme"},
		{"unsampled parent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "tenant=acme"},
		{"sampled parent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tenant=acme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRequest("GET", "/")
			if tc.traceparent != "" {
				r.Header.Set("traceparent", tc.traceparent)
			}
			r.Header.Set("baggage", "tenant=acme")
			ctx, s := tr.StartServer(context.Background(), r, Inbound, "")
			defer s.End()
			h := http.Header{}
			tr.InjectHeaders(ctx, h)
			if got := h.Get("Baggage"); got != tc.want {
				t.Errorf("injected baggage = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestUnsampledContext: the context StartServer returns for an unsampled request carries
// the span as trace.ContextWithSpan would (in the same allocation), and the caller's
// values, deadline and cancellation.
func TestUnsampledContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	if spanKey == nil {
		t.Fatal("spanKey = nil: OpenTelemetry's span key was not found")
	}
	tr := newFakeTracing(t, &fakeExporter{}, nil, func(c *TracingConfig) { c.SampleRatio = 0 })
	defer stopTracing(t, tr)
	type key struct{}
	parent, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	ctx, span := tr.StartServer(parent, newTestRequest("GET", "/"), Outbound, "api")
	if _, ok := ctx.(*unsampledCtx); !ok {
		t.Fatalf("StartServer() context is a %T, want *unsampledCtx", ctx)
	}
	if got := trace.SpanFromContext(ctx); got != span {
		t.Errorf("SpanFromContext() = %v, want the server span %v", got, span)
	}
	if got := trace.SpanContextFromContext(ctx); !got.Equal(span.SpanContext()) {
		t.Errorf("SpanContextFromContext() = %v, want %v", got, span.SpanContext())
	}
	if got := ctx.Value(key{}); got != "v" {
		t.Errorf("Value(key) = %v, want the parent's v", got)
	}
	// A child span (and a timeout) under it, as a retry's attempt would have.
	tctx, tcancel := context.WithTimeout(ctx, time.Minute)
	defer tcancel()
	_, child := tr.StartClient(tctx, newTestRequest("GET", "/"), "api", "10.0.0.1:80", 1)
	if child.SpanContext().TraceID() != span.SpanContext().TraceID() || child.IsRecording() {
		t.Errorf("client span %v (recording %t), want an unsampled child of %v", child.SpanContext(), child.IsRecording(), span.SpanContext())
	}
	child.End()
	cancel()
	select {
	case <-tctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the parent did not reach a context derived from StartServer's")
	}
	if !errors.Is(ctx.Err(), context.Canceled) {
		t.Errorf("Err() = %v, want context.Canceled", ctx.Err())
	}
}

// TestUnsampledRequestAllocations bounds what the proxy's tracing allocates for a request
// that is not sampled (a server span, its context injected, no client span): the span
// with its context, and the traceparent value.
func TestUnsampledRequestAllocations(t *testing.T) {
	defer goleak.VerifyNone(t)
	tr := newFakeTracing(t, &fakeExporter{}, nil, func(c *TracingConfig) { c.SampleRatio = 0 })
	defer stopTracing(t, tr)
	r := newTestRequest("GET", "/x")
	out := http.Header{}
	n := testing.AllocsPerRun(200, func() {
		ctx, s := tr.StartServer(r.Context(), r, Outbound, "api")
		tr.InjectHeaders(ctx, out)
		tr.EndHTTP(s, HTTPResult{Status: 200})
	})
	if n > 2 {
		t.Errorf("%v allocations per unsampled request, want at most 2", n)
	}
}
