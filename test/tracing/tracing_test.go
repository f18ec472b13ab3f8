package tracing

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// headerLog records the trace headers the application received, by request path (HTTP)
// or method (gRPC).
type headerLog struct {
	mu   sync.Mutex
	seen map[string]http.Header
}

func (l *headerLog) record(key string, h http.Header) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string]http.Header{}
	}
	l.seen[key] = h.Clone()
}

func (l *headerLog) get(t *testing.T, key string) http.Header {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.seen[key]
	if !ok {
		t.Fatalf("the application received no request %q", key)
	}
	return h
}

// startHTTPApp starts the application behind ferry B: it answers 200 "hello" on every
// path but /missing (404) and records the headers of each request.
func startHTTPApp(t *testing.T) (addr string, log *headerLog) {
	t.Helper()
	log = &headerLog{}
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.record(r.URL.Path, r.Header)
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "hello\n")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), log
}

// startGRPCApp starts a gRPC application (the standard health service) that records the
// metadata of each call under its method name.
func startGRPCApp(t *testing.T) (addr string, log *headerLog) {
	t.Helper()
	log = &headerLog{}
	gs := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		hdr := http.Header{}
		for k, v := range md {
			hdr[http.CanonicalHeaderKey(k)] = v
		}
		if r, ok := req.(*healthpb.HealthCheckRequest); ok {
			log.record(r.GetService(), hdr)
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return ln.Addr().String(), log
}

// chain is client → ferry A (outbound listener for upstream b) → ferry B (inbound) → app.
type chain struct {
	a, b     *ferry
	outbound string // ferry A's outbound listener for upstream b
	inbound  string // ferry B's inbound listener
	dead     string // ferry A's outbound listener for upstream dead (nothing listens)
}

// tracingBlock is the telemetry.tracing config pointing at j with quick batches.
func tracingBlock(j *jaegertest.Jaeger, extra string) string {
	return fmt.Sprintf(`  tracing:
    otlp_endpoint: %s
    sample_ratio: 1.0
    propagation: [tracecontext, b3]
    batch_timeout: 100ms
%s`, j.OTLPGRPCAddr, extra)
}

// startChain starts ferry B in front of appAddr and ferry A calling B. tracingA and
// tracingB are the telemetry.tracing blocks ("" for tracing off).
func startChain(t *testing.T, appAddr, tracingA, tracingB string) *chain {
	t.Helper()
	return startChainWith(t, appAddr, tracingA, tracingB, "", "", "")
}

// startChainWith is startChain with endpoints listed before ferry B's inbound in upstream
// b (bFirst, e.g. "127.0.0.1:1, ") and more keys for upstreams b and dead (bExtra,
// deadExtra: YAML lines).
func startChainWith(t *testing.T, appAddr, tracingA, tracingB, bFirst, bExtra, deadExtra string) *chain {
	t.Helper()
	c := &chain{outbound: ferrytest.FreeAddr(t), inbound: ferrytest.FreeAddr(t), dead: ferrytest.FreeAddr(t)}
	adminB, deadEndpoint := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	c.b = startFerry(t, "svc-b", adminB, fmt.Sprintf(`service: svc-b
admin: {address: %s}
inbound: {address: %s, target: %s}
telemetry:
  access_log: stdout
%s`, adminB, c.inbound, appAddr, tracingB))
	adminA := ferrytest.FreeAddr(t)
	c.a = startFerry(t, "svc-a", adminA, fmt.Sprintf(`service: svc-a
admin: {address: %s}
outbound:
  - {upstream: b, address: %s}
  - {upstream: dead, address: %s}
upstreams:
  - name: b
    endpoints: [%s%s]
%s  - name: dead
    endpoints: [%s]
%stelemetry:
  access_log: stdout
%s`, adminA, c.outbound, c.dead, bFirst, c.inbound, bExtra, deadEndpoint, deadExtra, tracingA))
	return c
}

func get(t *testing.T, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	c := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

// traceparent splits a W3C traceparent into its trace ID and parent span ID.
func traceparent(t *testing.T, h http.Header) (traceID, parentID string) {
	t.Helper()
	v := h.Get("Traceparent")
	parts := strings.Split(v, "-")
	if len(parts) != 4 {
		t.Fatalf("traceparent = %q, want version-traceid-spanid-flags", v)
	}
	return parts[1], parts[2]
}

// hop is the three spans of one call across the chain.
type hop struct{ aServer, aClient, bServer jaegertest.Span }

// checkChain finds the spans of one call in tr and checks that they form the chain
// A server → A client → B server → (the application, whose parent is B's server span).
func checkChain(t *testing.T, tr jaegertest.Trace, appParent string) hop {
	t.Helper()
	one := func(service, kind string) jaegertest.Span {
		t.Helper()
		ss := tr.Find(func(s jaegertest.Span) bool {
			return s.Process.ServiceName == service && s.TagString("span.kind") == kind
		})
		if len(ss) != 1 {
			t.Fatalf("trace %s: %d %s spans of %s, want 1 (spans: %s)", tr.TraceID, len(ss), kind, service, describe(tr))
		}
		return ss[0]
	}
	h := hop{aServer: one("svc-a", "server"), aClient: one("svc-a", "client"), bServer: one("svc-b", "server")}
	if got := h.aClient.ParentSpanID(); got != h.aServer.SpanID {
		t.Errorf("A client span parent = %q, want A server span %q", got, h.aServer.SpanID)
	}
	if got := h.bServer.ParentSpanID(); got != h.aClient.SpanID {
		t.Errorf("B server span parent = %q, want A client span %q", got, h.aClient.SpanID)
	}
	if appParent != h.bServer.SpanID {
		t.Errorf("application's parent span = %q, want B server span %q", appParent, h.bServer.SpanID)
	}
	if len(tr.Spans) != 3 {
		t.Errorf("trace has %d spans, want 3: %s", len(tr.Spans), describe(tr))
	}
	return h
}

func describe(tr jaegertest.Trace) string {
	var parts []string
	for _, s := range tr.Spans {
		parts = append(parts, fmt.Sprintf("%s/%s %q id=%s parent=%s", s.Process.ServiceName, s.TagString("span.kind"), s.OperationName, s.SpanID, s.ParentSpanID()))
	}
	return strings.Join(parts, "; ")
}

func wantTags(t *testing.T, name string, s jaegertest.Span, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := s.TagString(k); got != v {
			t.Errorf("%s span tag %s = %q, want %q", name, k, got, v)
		}
	}
}

func TestHTTPTraceAcrossTwoSidecars(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, seen := startHTTPApp(t)
	c := startChain(t, appAddr, tracingBlock(j, ""), tracingBlock(j, ""))

	resp, body := get(t, "http://"+c.outbound+"/hello", nil)
	if resp.StatusCode != http.StatusOK || body != "hello\n" {
		t.Fatalf("GET /hello = %d %q, want 200 hello", resp.StatusCode, body)
	}
	traceID, appParent := traceparent(t, seen.get(t, "/hello"))
	tr := j.WaitTrace(t, traceID, 3, waitTimeout)
	h := checkChain(t, tr, appParent)
	if h.aServer.ParentSpanID() != "" {
		t.Errorf("A server span parent = %q, want a root span (the caller sent no context)", h.aServer.ParentSpanID())
	}
	wantTags(t, "A server", h.aServer, map[string]string{
		"http.request.method": "GET", "url.path": "/hello", "http.response.status_code": "200",
		"ferry.direction": "outbound", "ferry.upstream": "b", "ferry.endpoint": c.inbound,
		"ferry.retry_count": "0", "network.peer.address": "127.0.0.1",
	})
	wantTags(t, "A client", h.aClient, map[string]string{
		"http.request.method": "GET", "url.path": "/hello", "http.response.status_code": "200",
		"ferry.upstream": "b", "ferry.endpoint": c.inbound, "ferry.attempt": "1", "server.address": "127.0.0.1",
	})
	wantTags(t, "B server", h.bServer, map[string]string{
		"http.request.method": "GET", "url.path": "/hello", "http.response.status_code": "200",
		"ferry.direction": "inbound", "ferry.endpoint": appAddr, "network.peer.address": "127.0.0.1",
	})
	if got := h.aServer.Process.ServiceName; got != "svc-a" {
		t.Errorf("A process service.name = %q, want svc-a", got)
	}
	if h.aServer.Process.TagString("ferry.sidecar.id") == "" {
		t.Errorf("A process has no ferry.sidecar.id tag: %+v", h.aServer.Process.Tags)
	}
	// The trace ID is in both access logs.
	for name, f := range map[string]*ferry{"A": c.a, "B": c.b} {
		if !strings.Contains(f.Output(), `"trace_id":"`+traceID+`"`) {
			t.Errorf("ferry %s access log has no trace_id %s", name, traceID)
		}
	}

	// A request Ferry fails itself: the server span carries the Proxy-Status reason. The
	// caller sends a trace context so that the span is found by its trace, not among all
	// of svc-a's: test packages run in parallel, and another package's process may poll a
	// port of its own that the dead listener has since taken (seen in CI: six GET /ready
	// from elsewhere, each a trace with a server span of upstream dead).
	const failedTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	resp, _ = get(t, "http://"+c.dead+"/x", http.Header{"Traceparent": {"00-" + failedTrace + "-00f067aa0ba902b7-01"}})
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("GET via dead upstream = %d, want 503", resp.StatusCode)
	}
	failed := j.WaitTrace(t, failedTrace, 1, waitTimeout).Find(func(s jaegertest.Span) bool {
		return s.TagString("span.kind") == "server" && s.TagString("ferry.upstream") == "dead"
	})
	if len(failed) != 1 {
		t.Fatalf("%d server spans for upstream dead in trace %s, want 1", len(failed), failedTrace)
	}
	wantTags(t, "failed A server", failed[0], map[string]string{
		"http.response.status_code": "503", "ferry.proxy_status": "connection_refused",
		"error.type": "connection_refused", "otel.status_code": "ERROR",
	})
}

func TestB3CallerIsContinued(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, seen := startHTTPApp(t)
	c := startChain(t, appAddr, tracingBlock(j, ""), tracingBlock(j, ""))

	const traceID, callerSpan = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
	resp, _ := get(t, "http://"+c.outbound+"/b3", http.Header{"B3": {traceID + "-" + callerSpan + "-1"}})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /b3 = %d, want 200", resp.StatusCode)
	}
	appHdr := seen.get(t, "/b3")
	gotTrace, appParent := traceparent(t, appHdr)
	if gotTrace != traceID {
		t.Fatalf("application's trace ID = %s, want the caller's %s", gotTrace, traceID)
	}
	if b3 := appHdr.Get("B3"); !strings.HasPrefix(b3, traceID+"-"+appParent) {
		t.Errorf("application's b3 header = %q, want %s-%s-...", b3, traceID, appParent)
	}
	tr := j.WaitTrace(t, traceID, 3, waitTimeout)
	h := checkChain(t, tr, appParent)
	if got := h.aServer.ParentSpanID(); got != callerSpan {
		t.Errorf("A server span parent = %q, want the caller's span %q", got, callerSpan)
	}
}

func TestGRPCTraceAcrossTwoSidecars(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, seen := startGRPCApp(t)
	c := startChain(t, appAddr, tracingBlock(j, ""), tracingBlock(j, ""))

	conn, err := grpc.NewClient(c.outbound, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	for _, tc := range []struct {
		service string
		code    codes.Code
	}{
		{"", codes.OK},
		{"no.such.Service", codes.NotFound},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
			defer cancel()
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: tc.service})
			if got := status.Code(err); got != tc.code {
				t.Fatalf("Check(%q) code = %v (%v), want %v", tc.service, got, err, tc.code)
			}
			traceID, appParent := traceparent(t, seen.get(t, tc.service))
			tr := j.WaitTrace(t, traceID, 3, waitTimeout)
			h := checkChain(t, tr, appParent)
			code := fmt.Sprint(int(tc.code))
			common := map[string]string{
				"rpc.system": "grpc", "rpc.service": "grpc.health.v1.Health", "rpc.method": "Check",
				"rpc.grpc.status_code": code, "http.response.status_code": "200",
			}
			wantTags(t, "A server", h.aServer, common)
			wantTags(t, "A client", h.aClient, common)
			wantTags(t, "B server", h.bServer, common)
		})
	}
}

func TestJaegerDownNeverFailsRequests(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, _ := startHTTPApp(t)
	quick := "    export_timeout: 500ms\n    queue_size: 64\n    batch_size: 16\n"
	c := startChain(t, appAddr, tracingBlock(j, quick), tracingBlock(j, quick))

	// Tracing works before the outage.
	resp, _ := get(t, "http://"+c.outbound+"/before", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /before = %d, want 200", resp.StatusCode)
	}
	j.WaitTraces(t, "svc-a", 1, waitTimeout)
	j.Stop()

	// A bounded load with the collector gone: every request succeeds.
	const requests, workers = 400, 8
	var failures atomic.Int64
	var firstErr atomic.Value
	client := &http.Client{Timeout: ioTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer client.CloseIdleConnections()
	start := time.Now()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= requests {
				resp, err := client.Get("http://" + c.outbound + "/load")
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	if n := failures.Load(); n != 0 {
		t.Fatalf("%d of %d requests failed with Jaeger down (first: %v)", n, requests, firstErr.Load())
	}
	t.Logf("%d requests with Jaeger down in %v", requests, took)

	// The spans that could not be exported are counted on /metrics.
	for name, f := range map[string]*ferry{"A": c.a, "B": c.b} {
		jaegertest.WaitFor(t, waitTimeout, func() error {
			dropped, ok := sum(f.Metrics(), "ferry_trace_spans_dropped_total", nil)
			if !ok || dropped == 0 {
				return fmt.Errorf("ferry %s: ferry_trace_spans_dropped_total = %v (present %v), want > 0", name, dropped, ok)
			}
			return nil
		})
	}
	// Shutdown flushes with a bounded timeout even though the collector is gone.
	if d := c.a.stop(); d > 15*time.Second {
		t.Errorf("ferry A took %v to exit with Jaeger down, want a bounded flush", d)
	}
}

func TestMetricsCountWhatWasSent(t *testing.T) {
	appAddr, _ := startHTTPApp(t)
	// Upstream dead's one endpoint fails its health check and panic mode is off: once the
	// check has run, Ferry has no endpoint for it and answers 503 itself.
	c := startChainWith(t, appAddr, "", "", "", "",
		"    health_check: {tcp: true, interval: 50ms, unhealthy_threshold: 1}\n    healthy_panic_threshold: 0\n")
	jaegertest.WaitFor(t, waitTimeout, func() error {
		var clusters struct {
			Upstreams []struct {
				Name      string `json:"name"`
				Available int    `json:"available_endpoints"`
			} `json:"upstreams"`
		}
		resp, err := http.Get(c.a.AdminURL("/clusters"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(&clusters); err != nil {
			return err
		}
		for _, cl := range clusters.Upstreams {
			if cl.Name == "dead" && cl.Available == 0 {
				return nil
			}
		}
		return fmt.Errorf("upstream dead still has available endpoints: %+v", clusters)
	})

	const ok, notFound, unavailable = 5, 2, 3
	send := func(url string, n, want int) {
		for range n {
			if resp, _ := get(t, url, nil); resp.StatusCode != want {
				t.Fatalf("GET %s = %d, want %d", url, resp.StatusCode, want)
			}
		}
	}
	send("http://"+c.outbound+"/hello", ok, 200)
	send("http://"+c.outbound+"/missing", notFound, 404)
	send("http://"+c.dead+"/x", unavailable, 503)

	want := func(f *ferry, name string, labels map[string]string, v float64) {
		t.Helper()
		got, found := sum(f.Metrics(), name, labels)
		if got != v || (!found && v != 0) { // a counter never incremented may be absent
			t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, found, v)
		}
	}
	out := func(up, code string) map[string]string {
		return map[string]string{"direction": "outbound", "upstream": up, "code": code}
	}
	want(c.a, "ferry_requests_total", out("b", "200"), ok)
	want(c.a, "ferry_requests_total", out("b", "404"), notFound)
	want(c.a, "ferry_requests_total", out("dead", "503"), unavailable)
	want(c.a, "ferry_proxy_errors_total", map[string]string{"direction": "outbound", "upstream": "dead", "error": "destination_unavailable"}, unavailable)
	want(c.a, "ferry_request_duration_seconds_count", map[string]string{"direction": "outbound", "upstream": "b"}, ok+notFound)
	want(c.a, "ferry_request_duration_seconds_count", map[string]string{"direction": "outbound", "upstream": "dead"}, unavailable)
	want(c.a, "ferry_retries_total", nil, 0)
	want(c.a, "ferry_active_requests", map[string]string{"direction": "outbound", "upstream": "b"}, 0)
	want(c.a, "ferry_config_reloads_total", map[string]string{"result": "ok"}, 1)
	if _, found := sum(c.a.Metrics(), "ferry_trace_spans_dropped_total", nil); !found {
		t.Error("ferry_trace_spans_dropped_total missing with tracing off, want it present at 0")
	}
	in := map[string]string{"direction": "inbound", "upstream": "svc-b"}
	want(c.b, "ferry_requests_total", map[string]string{"direction": "inbound", "upstream": "svc-b", "code": "200"}, ok)
	want(c.b, "ferry_requests_total", map[string]string{"direction": "inbound", "upstream": "svc-b", "code": "404"}, notFound)
	want(c.b, "ferry_request_duration_seconds_count", in, ok+notFound)
	want(c.b, "ferry_proxy_errors_total", nil, 0)
}

func TestRetriesAreSeparateClientSpans(t *testing.T) {
	j := jaegertest.Start(t)
	appAddr, _ := startHTTPApp(t)
	refused := ferrytest.FreeAddr(t) // nothing listens: every try there is a connect failure
	c := startChainWith(t, appAddr, tracingBlock(j, ""), tracingBlock(j, ""), refused+", ",
		"    lb: round_robin\n    retries: {attempts: 2, on: [connect-failure]}\n", "")

	// Round robin over two endpoints: of two requests, at least one tries the refused
	// endpoint first and is retried on B.
	for range 2 {
		if resp, _ := get(t, "http://"+c.outbound+"/retry", nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /retry = %d, want 200 (retried)", resp.StatusCode)
		}
	}
	var retried jaegertest.Trace
	jaegertest.WaitFor(t, waitTimeout, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		trs, err := j.Traces(ctx, "svc-a")
		if err != nil {
			return err
		}
		for _, tr := range trs {
			clients := tr.Find(func(s jaegertest.Span) bool { return s.TagString("span.kind") == "client" })
			if len(clients) == 2 && len(tr.Spans) == 4 {
				retried = tr
				return nil
			}
		}
		return fmt.Errorf("no trace of svc-a with 2 client spans and 4 spans yet (%d traces)", len(trs))
	})
	server := retried.Find(func(s jaegertest.Span) bool {
		return s.Process.ServiceName == "svc-a" && s.TagString("span.kind") == "server"
	})
	if len(server) != 1 {
		t.Fatalf("%d A server spans, want 1: %s", len(server), describe(retried))
	}
	wantTags(t, "A server", server[0], map[string]string{"ferry.retry_count": "1", "http.response.status_code": "200", "ferry.endpoint": c.inbound})
	for _, cl := range retried.Find(func(s jaegertest.Span) bool { return s.TagString("span.kind") == "client" }) {
		if cl.ParentSpanID() != server[0].SpanID {
			t.Errorf("client span %s parent = %q, want the server span %q", cl.SpanID, cl.ParentSpanID(), server[0].SpanID)
		}
		switch cl.TagString("ferry.attempt") {
		case "1":
			wantTags(t, "attempt 1", cl, map[string]string{"ferry.endpoint": refused, "ferry.proxy_status": "connection_refused", "otel.status_code": "ERROR"})
		case "2":
			wantTags(t, "attempt 2", cl, map[string]string{"ferry.endpoint": c.inbound, "http.response.status_code": "200"})
		default:
			t.Errorf("client span ferry.attempt = %q, want 1 or 2", cl.TagString("ferry.attempt"))
		}
	}
	b := retried.Find(func(s jaegertest.Span) bool { return s.Process.ServiceName == "svc-b" })
	if len(b) != 1 {
		t.Fatalf("%d B spans, want 1: %s", len(b), describe(retried))
	}
	if p, _ := retried.Span(b[0].ParentSpanID()); p.TagString("ferry.attempt") != "2" {
		t.Errorf("B server span's parent is attempt %q, want 2", p.TagString("ferry.attempt"))
	}
}

func TestTCPSessionSpan(t *testing.T) {
	j := jaegertest.Start(t)
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	admin, listen := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	startFerry(t, "svc-tcp", admin, fmt.Sprintf(`service: svc-tcp
admin: {address: %s}
outbound:
  - {upstream: echo, address: %s, protocol: tcp}
upstreams:
  - name: echo
    endpoints: [%s]
telemetry:
%s`, admin, listen, echo.Addr(), tracingBlock(j, "")))

	c, err := net.DialTimeout("tcp", listen, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo = %q, %v; want ping", buf, err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_, _ = io.Copy(io.Discard, c)
	c.Close()

	trs := j.WaitTraces(t, "svc-tcp", 1, waitTimeout)
	if len(trs) != 1 || len(trs[0].Spans) != 1 {
		t.Fatalf("svc-tcp traces = %d (first with %d spans), want one trace of one span", len(trs), len(trs[0].Spans))
	}
	wantTags(t, "TCP", trs[0].Spans[0], map[string]string{
		"ferry.direction": "outbound", "ferry.upstream": "echo", "ferry.endpoint": echo.Addr().String(),
		"ferry.bytes_received": "5", "ferry.bytes_sent": "5", "network.transport": "tcp",
	})
}
