package telemetry

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"go.uber.org/goleak"
)

// fakeExporter keeps what it is given. With block set, an export waits for block to be
// closed (or its context to end); with fail set, exports fail.
type fakeExporter struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
	block chan struct{}
	fail  atomic.Bool
}

func (f *fakeExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if f.fail.Load() {
		return errors.New("collector unreachable")
	}
	f.mu.Lock()
	f.spans = append(f.spans, spans...)
	f.mu.Unlock()
	return nil
}

func (f *fakeExporter) Shutdown(context.Context) error { return nil }

func (f *fakeExporter) exported() []sdktrace.ReadOnlySpan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.spans)
}

// newFakeTracing is tracing for service "svc" exporting to exp (a fakeExporter if nil).
func newFakeTracing(t testing.TB, exp sdktrace.SpanExporter, logger *slog.Logger, mod func(*TracingConfig)) *Tracing {
	t.Helper()
	cfg := DefaultTracingConfig()
	cfg.BatchTimeout = 10 * time.Millisecond
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	tr := &Tracing{cfg: cfg, prop: newPropagator(cfg.Propagation)}
	tr.start(exp, "svc", map[string]string{"id": "svc-7", "zone": "z1"}, logger)
	return tr
}

func newTestRequest(method, target string) *http.Request {
	r := httptest.NewRequest(method, "http://web.local:8080"+target, nil)
	r.RemoteAddr = "10.1.2.3:5555"
	return r
}

func attrMap(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, kv := range s.Attributes() {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

func stopTracing(t testing.TB, tr *Tracing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
}

// fakeSpan is a local parent span with a chosen recording state and context.
type fakeSpan struct {
	noop.Span
	sc        trace.SpanContext
	recording bool
}

func (s fakeSpan) SpanContext() trace.SpanContext { return s.sc }
func (s fakeSpan) IsRecording() bool              { return s.recording }

func TestErrorSampler(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	spid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	sc := func(sampled, remote bool) trace.SpanContext {
		var f trace.TraceFlags
		if sampled {
			f = trace.FlagsSampled
		}
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: spid, TraceFlags: f, Remote: remote})
	}
	bg := context.Background()
	parents := map[string]context.Context{
		"root":                     bg,
		"remote sampled":           trace.ContextWithRemoteSpanContext(bg, sc(true, true)),
		"remote unsampled":         trace.ContextWithRemoteSpanContext(bg, sc(false, true)),
		"local sampled":            trace.ContextWithSpan(bg, fakeSpan{sc: sc(true, false), recording: true}),
		"local recorded unsampled": trace.ContextWithSpan(bg, fakeSpan{sc: sc(false, false), recording: true}),
		"local dropped":            trace.ContextWithSpan(bg, fakeSpan{sc: sc(false, false)}),
	}
	const (
		drop   = sdktrace.Drop
		record = sdktrace.RecordOnly
		sample = sdktrace.RecordAndSample
	)
	for _, tc := range []struct {
		parent       string
		ratio        float64
		sampleErrors bool
		want         sdktrace.SamplingDecision
	}{
		{"root", 1, false, sample},
		{"root", 0, false, drop},
		{"root", 0, true, record},
		{"root", 1, true, sample},
		{"remote sampled", 0, false, sample},
		{"remote sampled", 0, true, sample},
		{"remote unsampled", 1, false, drop},
		{"remote unsampled", 1, true, record},
		{"local sampled", 0, false, sample},
		{"local recorded unsampled", 1, true, record},
		{"local recorded unsampled", 1, false, drop},
		{"local dropped", 1, true, drop},
	} {
		s := newErrorSampler(tc.ratio, tc.sampleErrors)
		res := s.ShouldSample(sdktrace.SamplingParameters{ParentContext: parents[tc.parent], TraceID: tid, Name: "x"})
		if res.Decision != tc.want {
			t.Errorf("ShouldSample(%s, ratio %v, sample_errors %t) = %v, want %v",
				tc.parent, tc.ratio, tc.sampleErrors, res.Decision, tc.want)
		}
	}
	if d := newErrorSampler(0.25, true).Description(); d != "FerryParentBased{ratio=0.25,sample_errors=true}" {
		t.Errorf("Description() = %q", d)
	}
}

// TestSampleErrorsExport checks which unsampled spans are exported with sample_ratio 0:
// with sample_errors those Ferry failed, without it none.
func TestSampleErrorsExport(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, sampleErrors := range []bool{true, false} {
		exp := &fakeExporter{}
		tr := newFakeTracing(t, exp, nil, func(c *TracingConfig) { c.SampleRatio, c.SampleErrors = 0, sampleErrors })
		end := func(name string, res HTTPResult) {
			r := newTestRequest("GET", "/"+name)
			_, s := tr.StartServer(context.Background(), r, Outbound, "api")
			if s.IsRecording() != sampleErrors {
				t.Errorf("sample_errors %t: span recording = %t", sampleErrors, s.IsRecording())
			}
			tr.EndHTTP(s, res)
		}
		end("ok", HTTPResult{Status: 200})
		end("notfound", HTTPResult{Status: 404})
		end("grpc-notfound", HTTPResult{Status: 200, GRPCStatus: "5"})
		end("unavailable", HTTPResult{Status: 503, ProxyStatus: "destination_unavailable"})
		end("upstream500", HTTPResult{Status: 500})
		end("ratelimited", HTTPResult{Status: 429, ProxyStatus: "connection_limit_reached"})
		end("grpc-unavailable", HTTPResult{Status: 200, GRPCStatus: "14"})
		end("reset", HTTPResult{Err: errors.New("read: connection reset by peer")})
		_, tcp := tr.StartTCP(context.Background(), Outbound, "db", nil)
		tr.EndTCP(tcp, TCPResult{ProxyStatus: "connection_refused"})
		_, tcpOK := tr.StartTCP(context.Background(), Outbound, "db", nil)
		tr.EndTCP(tcpOK, TCPResult{BytesReceived: 1})
		stopTracing(t, tr)

		var got []string
		for _, s := range exp.exported() {
			got = append(got, attrMap(s)["url.path"]+s.Name()[len(s.Name())-3:])
		}
		var want []string
		if sampleErrors {
			want = []string{"/unavailableGET", "/upstream500GET", "/ratelimitedGET", "/grpc-unavailableGET", "/resetGET", "tcp"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("sample_errors %t: exported %q, want %q", sampleErrors, got, want)
		}
	}
}

// TestProcessorNeverBlocks holds the exporter so that the queue fills: ending spans
// must not wait, the overflow is counted, and every span is accounted for.
func TestProcessorNeverBlocks(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{block: make(chan struct{})}
	tr := newFakeTracing(t, exp, nil, func(c *TracingConfig) { c.QueueSize, c.BatchSize = 8, 4 })
	const n = 2000
	start := time.Now()
	for i := 0; i < n; i++ {
		_, s := tr.StartServer(context.Background(), newTestRequest("GET", "/"), Inbound, "")
		tr.EndHTTP(s, HTTPResult{Status: 200})
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("%d spans with the exporter stuck took %v", n, d)
	}
	s := tr.Stats()
	if s.DroppedQueueFull < n-8-4 || s.Exported != 0 {
		t.Errorf("Stats() with the exporter stuck = %+v, want at least %d dropped, none exported", s, n-12)
	}
	close(exp.block)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tr.ForceFlush(ctx); err != nil {
		t.Fatalf("ForceFlush() = %v", err)
	}
	s = tr.Stats()
	if s.Exported+s.DroppedQueueFull != n || s.Exported == 0 || s.Queued != 0 {
		t.Errorf("Stats() after release = %+v, want exported + dropped = %d", s, n)
	}
	if got := len(exp.exported()); uint64(got) != s.Exported {
		t.Errorf("exporter got %d spans, Stats().Exported = %d", got, s.Exported)
	}
	stopTracing(t, tr)
	if tr.SpansDropped() != s.DroppedQueueFull {
		t.Errorf("SpansDropped() = %d, want %d", tr.SpansDropped(), s.DroppedQueueFull)
	}
}

// syncBuffer is a bytes.Buffer safe for the processor's goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestProcessorExportFailures counts the spans of failed exports and logs an outage once
// and its end once.
func TestProcessorExportFailures(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{}
	exp.fail.Store(true)
	var logs syncBuffer
	tr := newFakeTracing(t, exp, slog.New(slog.NewTextHandler(&logs, nil)), func(c *TracingConfig) { c.BatchSize = 2 })
	spans := func(n int) {
		for i := 0; i < n; i++ {
			_, s := tr.StartServer(context.Background(), newTestRequest("GET", "/"), Inbound, "")
			tr.EndHTTP(s, HTTPResult{Status: 200})
		}
		if err := tr.ForceFlush(context.Background()); err != nil {
			t.Fatalf("ForceFlush() = %v", err)
		}
	}
	spans(5)
	spans(3)
	if s := tr.Stats(); s.DroppedExportFailed != 8 || s.Exported != 0 {
		t.Errorf("Stats() = %+v, want 8 dropped for failed exports", s)
	}
	exp.fail.Store(false)
	spans(2)
	if s := tr.Stats(); s.Exported != 2 || s.DroppedExportFailed != 8 {
		t.Errorf("Stats() after recovery = %+v, want 2 exported", s)
	}
	stopTracing(t, tr)
	out := logs.String()
	if c := strings.Count(out, "trace export failed"); c != 1 {
		t.Errorf("logged %d export failures, want 1:\n%s", c, out)
	}
	if c := strings.Count(out, "trace export recovered"); c != 1 {
		t.Errorf("logged %d recoveries, want 1:\n%s", c, out)
	}
}

func TestSpanAttributes(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{}
	tr := newFakeTracing(t, exp, nil, nil)

	// An outbound gRPC call over HTTP/2 that the upstream fails with UNAVAILABLE.
	r := newTestRequest("POST", "/helloworld.Greeter/SayHello")
	r.Header.Set("Content-Type", "application/grpc+proto")
	r.ProtoMajor, r.ProtoMinor = 2, 0
	ctx, server := tr.StartServer(context.Background(), r, Outbound, "greeter")
	_, client := tr.StartClient(ctx, r, "greeter", "[fd00::1]:50051", 1)
	tr.EndHTTP(client, HTTPResult{Status: 200, GRPCStatus: GRPCStatus(http.Header{"Grpc-Status": {"14"}}), PeerID: "spiffe://mesh.local/svc/greeter"})
	tr.EndHTTP(server, HTTPResult{Status: 200, GRPCStatus: "14", Endpoint: "[fd00::1]:50051", Attempts: 1, Route: "grpc"})

	// An inbound request with an unusual method that succeeds.
	_, odd := tr.StartServer(context.Background(), newTestRequest("PURGE", "/cache"), Inbound, "")
	tr.EndHTTP(odd, HTTPResult{Status: 204, Policy: "allow"})

	// A gRPC call that ends NOT_FOUND: not a Ferry failure.
	g := newTestRequest("POST", "/pkg.Svc/Get")
	g.Header.Set("Content-Type", "application/grpc")
	_, nf := tr.StartServer(context.Background(), g, Inbound, "")
	tr.EndHTTP(nf, HTTPResult{Status: 200, GRPCStatus: "5"})

	// TCP sessions both ways.
	down := &net.TCPAddr{IP: net.IPv4(10, 9, 8, 7), Port: 4000}
	_, tin := tr.StartTCP(context.Background(), Inbound, "", down)
	tr.EndTCP(tin, TCPResult{Endpoint: "127.0.0.1:5432", PeerID: "spiffe://mesh.local/svc/web", BytesReceived: 100, BytesSent: 2000})
	_, tout := tr.StartTCP(context.Background(), Outbound, "db", down)
	tr.EndTCP(tout, TCPResult{Err: errors.New("dial tcp 10.0.0.5:5432: connect: connection refused"), ProxyStatus: "connection_refused"})

	stopTracing(t, tr)
	spans := exp.exported()
	if len(spans) != 6 {
		t.Fatalf("exported %d spans, want 6", len(spans))
	}
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byName[s.Name()] = s
	}
	for _, tc := range []struct {
		name   string
		kind   trace.SpanKind
		status codes.Code
		attrs  map[string]string
		absent []string
	}{
		{"outbound POST", trace.SpanKindServer, codes.Error, map[string]string{
			"http.request.method": "POST", "url.path": "/helloworld.Greeter/SayHello",
			"server.address": "web.local", "server.port": "8080", "network.peer.address": "10.1.2.3",
			"network.peer.port": "5555", "network.protocol.version": "2", "ferry.direction": "outbound",
			"ferry.upstream": "greeter", "rpc.system": "grpc", "rpc.service": "helloworld.Greeter",
			"rpc.method": "SayHello", "rpc.grpc.status_code": "14", "http.response.status_code": "200",
			"ferry.endpoint": "[fd00::1]:50051", "ferry.retry_count": "0", "ferry.route": "grpc",
			"error.type": "grpc_14",
		}, []string{"ferry.proxy_status", "ferry.attempt"}},
		{"upstream POST", trace.SpanKindClient, codes.Error, map[string]string{
			"http.request.method": "POST", "ferry.upstream": "greeter", "ferry.attempt": "1",
			"ferry.endpoint": "[fd00::1]:50051", "server.address": "fd00::1", "server.port": "50051",
			"rpc.grpc.status_code": "14", "ferry.peer_identity": "spiffe://mesh.local/svc/greeter",
		}, []string{"ferry.retry_count", "network.peer.address"}},
		{"inbound HTTP", trace.SpanKindServer, codes.Unset, map[string]string{
			"http.request.method": "_OTHER", "ferry.direction": "inbound", "ferry.policy": "allow",
			"http.response.status_code": "204", "network.protocol.version": "1.1",
		}, []string{"ferry.upstream", "rpc.system", "error.type"}},
		{"inbound POST", trace.SpanKindServer, codes.Unset, map[string]string{
			"rpc.service": "pkg.Svc", "rpc.method": "Get", "rpc.grpc.status_code": "5",
		}, []string{"error.type"}},
		{"inbound tcp", trace.SpanKindServer, codes.Unset, map[string]string{
			"network.transport": "tcp", "network.peer.address": "10.9.8.7", "network.peer.port": "4000",
			"ferry.endpoint": "127.0.0.1:5432", "server.address": "127.0.0.1", "server.port": "5432",
			"ferry.bytes_received": "100", "ferry.bytes_sent": "2000", "ferry.peer_identity": "spiffe://mesh.local/svc/web",
			"ferry.direction": "inbound",
		}, []string{"ferry.upstream"}},
		{"outbound tcp", trace.SpanKindClient, codes.Error, map[string]string{
			"ferry.upstream": "db", "ferry.proxy_status": "connection_refused", "error.type": "connection_refused",
			"ferry.bytes_received": "0", "ferry.bytes_sent": "0",
		}, nil},
	} {
		s, ok := byName[tc.name]
		if !ok {
			t.Errorf("no span named %q", tc.name)
			continue
		}
		if s.SpanKind() != tc.kind {
			t.Errorf("%s: kind = %v, want %v", tc.name, s.SpanKind(), tc.kind)
		}
		if s.Status().Code != tc.status {
			t.Errorf("%s: status = %v, want %v", tc.name, s.Status(), tc.status)
		}
		got := attrMap(s)
		for k, v := range tc.attrs {
			if got[k] != v {
				t.Errorf("%s: attribute %s = %q, want %q", tc.name, k, got[k], v)
			}
		}
		for _, k := range tc.absent {
			if v, ok := got[k]; ok {
				t.Errorf("%s: attribute %s = %q, want none", tc.name, k, v)
			}
		}
	}
	if got := byName["outbound tcp"].Status().Description; !strings.Contains(got, "connection refused") {
		t.Errorf("outbound tcp status description = %q, want the error", got)
	}
	if p := byName["upstream POST"].Parent().SpanID(); p != byName["outbound POST"].SpanContext().SpanID() {
		t.Errorf("client span parent = %v, want the server span", p)
	}
	res := map[string]string{}
	for _, kv := range spans[0].Resource().Attributes() {
		res[string(kv.Key)] = kv.Value.String()
	}
	for k, v := range map[string]string{"service.name": "svc", "service.instance.id": "svc-7",
		"ferry.sidecar.id": "svc-7", "ferry.sidecar.zone": "z1"} {
		if res[k] != v {
			t.Errorf("resource %s = %q, want %q", k, res[k], v)
		}
	}
	for _, k := range []string{"host.name", "process.pid", "ferry.sidecar.hostname", "ferry.sidecar.pid"} {
		if res[k] == "" {
			t.Errorf("resource has no %s", k)
		}
	}
}

func TestPropagators(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  []string
	}{
		{[]string{"tracecontext"}, []string{"traceparent", "tracestate"}},
		{[]string{"tracecontext", "baggage"}, []string{"traceparent", "tracestate", "baggage"}},
		{[]string{"b3"}, []string{"b3"}},
		{[]string{"b3multi"}, []string{"x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"}},
		{[]string{"b3", "tracecontext", "b3multi"}, []string{"b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags", "traceparent", "tracestate"}},
	} {
		got := newPropagator(tc.names).Fields()
		slices.Sort(got) // a composite propagator lists its fields in map order
		slices.Sort(tc.want)
		if !slices.Equal(got, tc.want) {
			t.Errorf("newPropagator(%v).Fields() = %v, want %v", tc.names, got, tc.want)
		}
	}
}

// TestBaggagePropagated checks that incoming baggage is passed on when configured.
func TestBaggagePropagated(t *testing.T) {
	defer goleak.VerifyNone(t)
	tr := newFakeTracing(t, &fakeExporter{}, nil, nil)
	defer stopTracing(t, tr)
	r := newTestRequest("GET", "/")
	r.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	r.Header.Set("baggage", "tenant=acme")
	ctx, s := tr.StartServer(context.Background(), r, Inbound, "")
	defer s.End()
	if got := TraceID(s); got != "0af7651916cd43dd8448eb211c80319c" {
		t.Errorf("TraceID() = %q, want the caller's", got)
	}
	if got := TraceID(noopSpan); got != "" {
		t.Errorf("TraceID(no-op span) = %q, want empty", got)
	}
	h := http.Header{}
	tr.InjectHeaders(ctx, h)
	if got := h.Get("Baggage"); got != "tenant=acme" {
		t.Errorf("injected baggage = %q, want tenant=acme", got)
	}
	if got := h.Get("Traceparent"); !strings.HasPrefix(got, "00-0af7651916cd43dd8448eb211c80319c-") || strings.Contains(got, "b7ad6b7169203331") {
		t.Errorf("injected traceparent = %q, want the caller's trace under Ferry's span", got)
	}
}

func TestSplitHostPort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
	}{
		{"127.0.0.1:80", "127.0.0.1", 80},
		{"example.com", "example.com", 0},
		{"example.com:http", "example.com", 0},
		{"[::1]:8443", "::1", 8443},
		{"[::1]", "::1", 0},
		{"::1", "::1", 0},
		{"", "", 0},
		{"[broken", "[broken", 0},
	} {
		if h, p := splitHostPort(tc.in); h != tc.host || p != tc.port {
			t.Errorf("splitHostPort(%q) = %q, %d; want %q, %d", tc.in, h, p, tc.host, tc.port)
		}
	}
}

func TestGRPCStatus(t *testing.T) {
	for _, tc := range []struct {
		headers []http.Header
		want    string
	}{
		{nil, ""},
		{[]http.Header{{"Grpc-Status": {"0"}}}, "0"},
		{[]http.Header{nil, {"Grpc-Status": {"14"}}}, "14"},
		{[]http.Header{{http.TrailerPrefix + "Grpc-Status": {"13"}}, {"Grpc-Status": {"0"}}}, "13"},
		{[]http.Header{{"Content-Type": {"application/grpc"}}}, ""},
	} {
		if got := GRPCStatus(tc.headers...); got != tc.want {
			t.Errorf("GRPCStatus(%v) = %q, want %q", tc.headers, got, tc.want)
		}
	}
}

func TestHeaderCarrier(t *testing.T) {
	h := http.Header{}
	c := headerCarrier(h)
	c.Set("traceparent", "a")
	c.Set("x-b3-traceid", "b")
	c.Set("x-custom", "c")
	if h.Get("Traceparent") != "a" || h.Get("X-B3-TraceId") != "b" || h.Get("X-Custom") != "c" {
		t.Errorf("Set wrote %v, want canonical keys", h)
	}
	if c.Get("traceparent") != "a" || c.Get("x-b3-traceid") != "b" || c.Get("x-custom") != "c" || c.Get("b3") != "" {
		t.Errorf("Get did not read the canonical keys back")
	}
	keys := c.Keys()
	slices.Sort(keys)
	if want := []string{"Traceparent", "X-B3-Traceid", "X-Custom"}; !slices.Equal(keys, want) {
		t.Errorf("Keys() = %v, want %v", keys, want)
	}
}

func TestSpanNames(t *testing.T) {
	for _, tc := range []struct{ dir, method, want string }{
		{Inbound, "GET", "inbound GET"},
		{Outbound, "DELETE", "outbound DELETE"},
		{upstreamDirection, "PATCH", "upstream PATCH"},
		{Outbound, "BREW", "outbound HTTP"},
		{Ingress, "POST", "ingress POST"},
		{Ingress, "BREW", "ingress HTTP"},
	} {
		if got := spanName(tc.dir, tc.method); got != tc.want {
			t.Errorf("spanName(%q, %q) = %q, want %q", tc.dir, tc.method, got, tc.want)
		}
	}
}

// requestSpans is what the proxy does per outbound request: a server span, one client
// attempt with injected headers, and both ended.
func requestSpans(tr *Tracing, r *http.Request, out http.Header) {
	ctx, s := tr.StartServer(context.Background(), r, Outbound, "api")
	cctx, c := tr.StartClient(ctx, r, "api", "10.0.0.1:8080", 1)
	tr.InjectHeaders(cctx, out)
	tr.EndHTTP(c, HTTPResult{Status: 200})
	tr.EndHTTP(s, HTTPResult{Status: 200, Attempts: 1, Endpoint: "10.0.0.1:8080"})
}

func TestTracingOffAllocatesNothing(t *testing.T) {
	r := newTestRequest("GET", "/x")
	out := http.Header{}
	for name, tr := range map[string]*Tracing{"nil": nil, "disabled": {}} {
		if n := testing.AllocsPerRun(200, func() { requestSpans(tr, r, out) }); n != 0 {
			t.Errorf("%s: %v allocations per request with tracing off, want 0", name, n)
		}
	}
}

// TestUnsampledAllocations bounds what tracing costs a request that is not sampled: the
// two span contexts and the injected traceparent.
func TestUnsampledAllocations(t *testing.T) {
	defer goleak.VerifyNone(t)
	tr := newFakeTracing(t, &fakeExporter{}, nil, func(c *TracingConfig) { c.SampleRatio = 0 })
	defer stopTracing(t, tr)
	r := newTestRequest("GET", "/x")
	r.Header.Set("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
	out := http.Header{}
	n := testing.AllocsPerRun(200, func() { requestSpans(tr, r, out) })
	t.Logf("%v allocations per unsampled request", n)
	if n > 12 {
		t.Errorf("%v allocations per unsampled request, want at most 12", n)
	}
}

func BenchmarkRequestSpans(b *testing.B) {
	for _, tc := range []struct {
		name         string
		ratio        float64
		sampleErrors bool
		off          bool
	}{
		{name: "off", off: true},
		{name: "ratio=0", ratio: 0},
		{name: "ratio=0.01", ratio: 0.01},
		{name: "ratio=0.01+sample_errors", ratio: 0.01, sampleErrors: true},
		{name: "ratio=1", ratio: 1},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var tr *Tracing
			if !tc.off {
				tr = newFakeTracing(b, discardExporter{}, nil, func(c *TracingConfig) {
					c.SampleRatio, c.SampleErrors = tc.ratio, tc.sampleErrors
					c.QueueSize = 1 << 16
				})
				defer stopTracing(b, tr)
			}
			r := newTestRequest("GET", "/x")
			out := http.Header{}
			b.ReportAllocs()
			for b.Loop() {
				requestSpans(tr, r, out)
			}
		})
	}
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// TestShutdownExpiredContext shuts down with a context that has already ended while an
// export is stuck in the exporter: Shutdown cancels it, stops the export goroutine
// (goleak) and returns at once.
func TestShutdownExpiredContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	exp := &fakeExporter{block: make(chan struct{})}
	defer close(exp.block)
	tr := newFakeTracing(t, exp, nil, func(c *TracingConfig) { c.ExportTimeout, c.BatchSize = time.Minute, 1 })
	for i := 0; i < 10; i++ {
		_, s := tr.StartServer(context.Background(), newTestRequest("GET", "/"), Inbound, "")
		tr.EndHTTP(s, HTTPResult{Status: 200})
	}
	time.Sleep(50 * time.Millisecond) // the first span's export is now stuck
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if err := tr.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown(ended context) = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown(ended context) took %v", d)
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Errorf("second Shutdown() = %v, want nil", err)
	}
	if s := tr.Stats(); s.Exported != 0 || s.Dropped() != 10 {
		t.Errorf("Stats() = %+v, want all 10 spans dropped", s)
	}
}
