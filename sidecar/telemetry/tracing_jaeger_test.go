package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/sidecar/telemetry/jaegertest"
)

// These tests export to a real Jaeger all-in-one on loopback (make deps-jaeger builds it).

// newTestTracing builds tracing for service exporting to endpoint over protocol, with a
// short batch timeout so spans reach Jaeger quickly. mod adjusts the config.
func newTestTracing(t *testing.T, endpoint, protocol, service string, mod func(*TracingConfig)) *Tracing {
	t.Helper()
	cfg := DefaultTracingConfig()
	cfg.OTLPEndpoint = endpoint
	cfg.Protocol = protocol
	cfg.BatchTimeout = 50 * time.Millisecond
	cfg.ExportTimeout = 5 * time.Second
	if mod != nil {
		mod(&cfg)
	}
	tr, err := NewTracing(context.Background(), cfg, service,
		map[string]string{"id": service + "-1", "version": "test"},
		slog.New(slog.NewTextHandler(t.Output(), nil)))
	if err != nil {
		t.Fatalf("NewTracing(%+v) error = %v", cfg, err)
	}
	return tr
}

// shutdown shuts tr down within 10s, failing t on error.
func shutdown(t *testing.T, tr *Tracing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown() = %v", err)
	}
}

func flush(t *testing.T, tr *Tracing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.ForceFlush(ctx); err != nil {
		t.Fatalf("ForceFlush() = %v", err)
	}
}

// noKeepAlive is an HTTP client whose connections do not outlive a request, so that no
// transport goroutine is left for goleak.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

func wantTag(t *testing.T, s jaegertest.Span, key, want string) {
	t.Helper()
	if got := s.TagString(key); got != want {
		t.Errorf("span %q tag %s = %q, want %q", s.OperationName, key, got, want)
	}
}

func sid(s trace.Span) string { return s.SpanContext().SpanID().String() }

// TestJaegerTraceChain sends one call through two simulated sidecars, web (OTLP over the
// protocol under test) and api (over the other protocol), with a real HTTP hop between
// them: web's server span has two client spans (a failed attempt to a closed port and a
// retry), the context travels in injected headers, and api's server span continues the
// trace under the second attempt. Jaeger must hold the whole chain with its attributes.
func TestJaegerTraceChain(t *testing.T) {
	for _, tc := range []struct {
		web, api string
		urls     bool // otlp_endpoint as http:// URLs (the OTLP/HTTP one without a path)
	}{{ProtocolGRPC, ProtocolHTTP, false}, {ProtocolHTTP, ProtocolGRPC, true}} {
		t.Run("web-"+tc.web, func(t *testing.T) {
			j := jaegertest.Start(t)
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			endpoint := map[string]string{ProtocolGRPC: j.OTLPGRPCAddr, ProtocolHTTP: j.OTLPHTTPAddr}
			if tc.urls {
				endpoint = map[string]string{ProtocolGRPC: "http://" + j.OTLPGRPCAddr, ProtocolHTTP: "http://" + j.OTLPHTTPAddr}
			}
			web := newTestTracing(t, endpoint[tc.web], tc.web, "web", nil)
			defer shutdown(t, web)
			api := newTestTracing(t, endpoint[tc.api], tc.api, "api", nil)
			defer shutdown(t, api)

			// The second hop: api's inbound sidecar.
			traceparents := make(chan string, 1)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				traceparents <- r.Header.Get("Traceparent")
				_, span := api.StartServer(r.Context(), r, Inbound, "")
				w.WriteHeader(http.StatusOK)
				api.EndHTTP(span, HTTPResult{Status: http.StatusOK, PeerID: "spiffe://mesh.local/svc/web",
					Route: "items", Policy: "allow"})
			}))
			defer srv.Close()
			apiAddr := srv.Listener.Addr().String()
			closed := closedAddr(t)

			// The first hop: the application calls web's outbound listener.
			in := httptest.NewRequest(http.MethodGet, "http://api.local:9191/v1/items?x=1", nil)
			in.RemoteAddr = "127.0.0.1:40000"
			ctx, server := web.StartServer(context.Background(), in, Outbound, "api")

			// Attempt 1 fails to connect; attempt 2 reaches api.
			out := in.Clone(ctx)
			out.RequestURI = ""
			out.URL.Scheme, out.URL.Host = "http", closed
			actx, attempt1 := web.StartClient(ctx, out, "api", closed, 1)
			web.InjectHeaders(actx, out.Header)
			_, err := noKeepAlive.Do(out)
			if err == nil {
				t.Fatalf("request to closed port %s succeeded", closed)
			}
			web.EndHTTP(attempt1, HTTPResult{ProxyStatus: "connection_refused", Err: err})

			out = in.Clone(ctx)
			out.RequestURI = ""
			out.URL.Scheme, out.URL.Host = "http", apiAddr
			actx, attempt2 := web.StartClient(ctx, out, "api", apiAddr, 2)
			web.InjectHeaders(actx, out.Header)
			resp, err := noKeepAlive.Do(out)
			if err != nil {
				t.Fatalf("request to api: %v", err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			web.EndHTTP(attempt2, HTTPResult{Status: resp.StatusCode, PeerID: "spiffe://mesh.local/svc/api"})
			web.EndHTTP(server, HTTPResult{Status: resp.StatusCode, Endpoint: apiAddr, Route: "api-default",
				Policy: "allow", Attempts: 2})

			if want := "00-" + server.SpanContext().TraceID().String() + "-" + sid(attempt2) + "-01"; <-traceparents != want {
				t.Errorf("api got another traceparent than %q", want)
			}
			flush(t, web)
			flush(t, api)

			traceID := server.SpanContext().TraceID().String()
			tr := j.WaitTrace(t, traceID, 4, 20*time.Second)
			if len(tr.Spans) != 4 {
				t.Fatalf("trace %s has %d spans, want 4", traceID, len(tr.Spans))
			}
			ws, _ := tr.Span(sid(server))
			a1, _ := tr.Span(sid(attempt1))
			a2, _ := tr.Span(sid(attempt2))
			apiSpans := tr.Find(func(s jaegertest.Span) bool { return s.Process.ServiceName == "api" })
			if len(apiSpans) != 1 {
				t.Fatalf("trace has %d api spans, want 1", len(apiSpans))
			}
			as := apiSpans[0]

			// The chain: web server → two web client attempts → api server under the second.
			for _, c := range []struct {
				name       string
				span       jaegertest.Span
				op, kind   string
				service    string
				wantParent string
			}{
				{"web server", ws, "outbound GET", "server", "web", ""},
				{"attempt 1", a1, "upstream GET", "client", "web", sid(server)},
				{"attempt 2", a2, "upstream GET", "client", "web", sid(server)},
				{"api server", as, "inbound GET", "server", "api", sid(attempt2)},
			} {
				if c.span.SpanID == "" {
					t.Errorf("%s: span missing from trace", c.name)
					continue
				}
				if c.span.OperationName != c.op {
					t.Errorf("%s: operation = %q, want %q", c.name, c.span.OperationName, c.op)
				}
				wantTag(t, c.span, "span.kind", c.kind)
				if c.span.Process.ServiceName != c.service {
					t.Errorf("%s: service = %q, want %q", c.name, c.span.Process.ServiceName, c.service)
				}
				if got := c.span.ParentSpanID(); got != c.wantParent {
					t.Errorf("%s: parent = %q, want %q", c.name, got, c.wantParent)
				}
				wantTag(t, c.span, "http.request.method", "GET")
				wantTag(t, c.span, "url.path", "/v1/items")
			}

			wantTag(t, ws, "http.response.status_code", "200")
			wantTag(t, ws, "server.address", "api.local")
			wantTag(t, ws, "server.port", "9191")
			wantTag(t, ws, "network.peer.address", "127.0.0.1")
			wantTag(t, ws, "ferry.direction", "outbound")
			wantTag(t, ws, "ferry.upstream", "api")
			wantTag(t, ws, "ferry.endpoint", apiAddr)
			wantTag(t, ws, "ferry.route", "api-default")
			wantTag(t, ws, "ferry.policy", "allow")
			wantTag(t, ws, "ferry.retry_count", "1")
			if _, ok := ws.Tag("error"); ok {
				t.Errorf("web server span is marked error, want not")
			}

			wantTag(t, a1, "ferry.attempt", "1")
			wantTag(t, a1, "ferry.proxy_status", "connection_refused")
			wantTag(t, a1, "error.type", "connection_refused")
			wantTag(t, a1, "otel.status_code", "ERROR")
			wantTag(t, a1, "error", "true")

			wantTag(t, a2, "ferry.attempt", "2")
			wantTag(t, a2, "ferry.endpoint", apiAddr)
			wantTag(t, a2, "server.address", "127.0.0.1")
			wantTag(t, a2, "http.response.status_code", "200")
			wantTag(t, a2, "ferry.peer_identity", "spiffe://mesh.local/svc/api")

			wantTag(t, as, "ferry.direction", "inbound")
			wantTag(t, as, "ferry.peer_identity", "spiffe://mesh.local/svc/web")
			wantTag(t, as, "ferry.route", "items")
			wantTag(t, as, "network.peer.address", "127.0.0.1")
			wantTag(t, as, "http.response.status_code", "200")

			// The resource identifies the instance.
			for _, s := range []jaegertest.Span{ws, as} {
				svc := s.Process.ServiceName
				if got := s.Process.TagString("ferry.sidecar.id"); got != svc+"-1" {
					t.Errorf("%s: ferry.sidecar.id = %q, want %q", svc, got, svc+"-1")
				}
				if got := s.Process.TagString("ferry.sidecar.version"); got != "test" {
					t.Errorf("%s: ferry.sidecar.version = %q, want test", svc, got)
				}
				if got := s.Process.TagString("service.instance.id"); got != svc+"-1" {
					t.Errorf("%s: service.instance.id = %q, want %q", svc, got, svc+"-1")
				}
			}
			if s := web.Stats(); s.Exported != 3 || s.Dropped() != 0 {
				t.Errorf("web Stats() = %+v, want 3 exported, none dropped", s)
			}
		})
	}
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestJaegerB3Continued checks that a request carrying B3 context, single or multiple
// header, is continued: Ferry's server span joins the caller's trace under the caller's
// span, in Jaeger too, and the context is passed on in the configured B3 encoding.
func TestJaegerB3Continued(t *testing.T) {
	j := jaegertest.Start(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	const (
		traceID   = "463ac35c9f6413ad48485a3953bb6124"
		traceID64 = "a3ce929d0e0e4736"
		parentID  = "0020000000000001"
	)
	for _, tc := range []struct {
		name        string
		propagation []string
		headers     map[string]string
		wantTrace   string
	}{
		{"single", []string{PropagationTraceContext, PropagationB3},
			map[string]string{"b3": traceID + "-" + parentID + "-1"}, traceID},
		{"single-64bit", []string{PropagationB3},
			map[string]string{"b3": traceID64 + "-" + parentID + "-1"}, "0000000000000000" + traceID64},
		{"multi", []string{PropagationTraceContext, PropagationB3Multi},
			map[string]string{"X-B3-TraceId": traceID, "X-B3-SpanId": parentID, "X-B3-Sampled": "1"}, traceID},
		{"multi-with-b3-config", []string{PropagationB3},
			map[string]string{"X-B3-TraceId": traceID, "X-B3-SpanId": parentID, "X-B3-Sampled": "1"}, traceID},
	} {
		t.Run(tc.name, func(t *testing.T) {
			service := "b3-" + tc.name
			tr := newTestTracing(t, j.OTLPGRPCAddr, ProtocolGRPC, service, func(c *TracingConfig) {
				c.Propagation = tc.propagation
				c.SampleRatio = 0 // the caller's sampled flag decides
			})
			defer shutdown(t, tr)
			in := httptest.NewRequest(http.MethodPost, "http://web/orders", nil)
			for k, v := range tc.headers {
				in.Header.Set(k, v)
			}
			ctx, span := tr.StartServer(context.Background(), in, Inbound, "")
			sc := span.SpanContext()
			if got := sc.TraceID().String(); got != tc.wantTrace {
				t.Errorf("server span trace ID = %s, want %s", got, tc.wantTrace)
			}
			if !sc.IsSampled() {
				t.Errorf("server span not sampled, want sampled (caller said 1)")
			}
			out := http.Header{}
			tr.InjectHeaders(ctx, out)
			wantB3 := tc.wantTrace + "-" + sid(span) + "-1"
			if contains(tc.propagation, PropagationB3) {
				if got := out.Get("b3"); got != wantB3 {
					t.Errorf("injected b3 = %q, want %q", got, wantB3)
				}
			}
			if contains(tc.propagation, PropagationB3Multi) {
				if got := out.Get("X-B3-Traceid") + "-" + out.Get("X-B3-Spanid") + "-" + out.Get("X-B3-Sampled"); got != wantB3 {
					t.Errorf("injected X-B3-* = %q, want %q", got, wantB3)
				}
			}
			if contains(tc.propagation, PropagationTraceContext) {
				if got, want := out.Get("traceparent"), "00-"+tc.wantTrace+"-"+sid(span)+"-01"; got != want {
					t.Errorf("injected traceparent = %q, want %q", got, want)
				}
			}
			tr.EndHTTP(span, HTTPResult{Status: http.StatusCreated})
			flush(t, tr)

			got := j.WaitTrace(t, tc.wantTrace, 1, 20*time.Second)
			s, ok := got.Span(sid(span))
			if !ok {
				t.Fatalf("trace %s has no span %s", tc.wantTrace, sid(span))
			}
			if p := s.ParentSpanID(); p != parentID {
				t.Errorf("Jaeger span parent = %q, want the caller's %q", p, parentID)
			}
			if s.Process.ServiceName != service {
				t.Errorf("service = %q, want %q", s.Process.ServiceName, service)
			}
			wantTag(t, s, "http.request.method", "POST")
			wantTag(t, s, "http.response.status_code", "201")
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestJaegerSampleErrors runs with sample_ratio 0 and sample_errors: only the spans of
// requests Ferry failed reach Jaeger, successes do not, and the propagated context keeps
// the unsampled flag.
func TestJaegerSampleErrors(t *testing.T) {
	j := jaegertest.Start(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tr := newTestTracing(t, "http://"+j.OTLPHTTPAddr+"/v1/traces", ProtocolHTTP, "sampling", func(c *TracingConfig) {
		c.SampleRatio = 0
		c.SampleErrors = true
	})
	defer shutdown(t, tr)

	req := func(headers ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "http://api/v1/thing", nil)
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Set(headers[i], headers[i+1])
		}
		return r
	}
	// A success: recorded (for the chance of an error) but not exported.
	ctx, ok := tr.StartServer(context.Background(), req(), Outbound, "api")
	if ok.SpanContext().IsSampled() || !ok.IsRecording() {
		t.Errorf("success span: sampled %t recording %t, want unsampled and recording",
			ok.SpanContext().IsSampled(), ok.IsRecording())
	}
	h := http.Header{}
	tr.InjectHeaders(ctx, h)
	if got := h.Get("traceparent"); !strings.HasSuffix(got, "-00") {
		t.Errorf("injected traceparent = %q, want the unsampled flag 00", got)
	}
	tr.EndHTTP(ok, HTTPResult{Status: http.StatusOK})

	// Ferry answered 503 itself: exported.
	_, noEndpoint := tr.StartServer(context.Background(), req(), Outbound, "api")
	tr.EndHTTP(noEndpoint, HTTPResult{Status: http.StatusServiceUnavailable, ProxyStatus: "destination_unavailable"})

	// The upstream answered 502 on the one attempt: server and client span exported,
	// still linked.
	ctx, gw := tr.StartServer(context.Background(), req(), Outbound, "api")
	_, attempt := tr.StartClient(ctx, req(), "api", "10.0.0.1:8080", 1)
	tr.EndHTTP(attempt, HTTPResult{Status: http.StatusBadGateway})
	tr.EndHTTP(gw, HTTPResult{Status: http.StatusBadGateway, Attempts: 1})

	// The caller decided not to sample (traceparent flag 00), Ferry failed: exported.
	const callerTrace = "0af7651916cd43dd8448eb211c80319c"
	_, remote := tr.StartServer(context.Background(),
		req("traceparent", "00-"+callerTrace+"-b7ad6b7169203331-00"), Inbound, "")
	tr.EndHTTP(remote, HTTPResult{Status: http.StatusForbidden, ProxyStatus: "http_request_denied", Policy: "deny"})

	// A success under an unsampled remote parent: not exported.
	_, remoteOK := tr.StartServer(context.Background(),
		req("traceparent", "00-"+callerTrace+"-b7ad6b7169203332-00"), Inbound, "")
	tr.EndHTTP(remoteOK, HTTPResult{Status: http.StatusOK})

	flush(t, tr)
	if s := tr.Stats(); s.Exported != 4 || s.Dropped() != 0 {
		t.Errorf("Stats() = %+v, want 4 exported, none dropped", s)
	}

	got := j.WaitTrace(t, noEndpoint.SpanContext().TraceID().String(), 1, 20*time.Second)
	s := got.Spans[0]
	wantTag(t, s, "ferry.proxy_status", "destination_unavailable")
	wantTag(t, s, "http.response.status_code", "503")
	wantTag(t, s, "otel.status_code", "ERROR")

	chain := j.WaitTrace(t, gw.SpanContext().TraceID().String(), 2, 20*time.Second)
	a, _ := chain.Span(sid(attempt))
	if a.ParentSpanID() != sid(gw) {
		t.Errorf("502 attempt parent = %q, want %q", a.ParentSpanID(), sid(gw))
	}
	wantTag(t, a, "http.response.status_code", "502")

	denied := j.WaitTrace(t, callerTrace, 1, 20*time.Second)
	if len(denied.Spans) != 1 || denied.Spans[0].SpanID != sid(remote) {
		t.Errorf("caller's trace holds %d spans, want just the denied one %s", len(denied.Spans), sid(remote))
	}
	wantTag(t, denied.Spans[0], "ferry.policy", "deny")

	// Everything was exported in one flush: the success is not coming.
	if _, err := j.Trace(context.Background(), ok.SpanContext().TraceID().String()); !errors.Is(err, jaegertest.ErrTraceNotFound) {
		t.Errorf("success trace lookup error = %v, want not found", err)
	}
	if trs, err := j.Traces(context.Background(), "sampling"); err != nil || len(trs) != 3 {
		t.Errorf("Traces(sampling) = %d traces, %v; want 3", len(trs), err)
	}
}

// TestJaegerCollectorDown stops Jaeger and then creates spans in a bounded loop: no
// iteration waits for the collector, every span made during the outage is dropped and
// counted (also in the Prometheus collector), and once Jaeger is back on the same ports
// export resumes. Shutdown with the collector down returns within its deadline.
func TestJaegerCollectorDown(t *testing.T) {
	const exportTimeout = 5 * time.Second
	for _, protocol := range []string{ProtocolGRPC, ProtocolHTTP} {
		t.Run(protocol, func(t *testing.T) {
			j := jaegertest.Start(t)
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			endpoint := map[string]string{ProtocolGRPC: j.OTLPGRPCAddr, ProtocolHTTP: j.OTLPHTTPAddr}[protocol]
			service := "down-" + protocol
			tr := newTestTracing(t, endpoint, protocol, service, func(c *TracingConfig) {
				c.QueueSize = 256
				c.BatchSize = 256
				c.BatchTimeout = 20 * time.Millisecond
				c.ExportTimeout = exportTimeout
			})
			defer func() { // a no-op after the Shutdown at the end, unless the test stopped early
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				_ = tr.Shutdown(ctx)
			}()
			reg := prometheus.NewRegistry()
			reg.MustRegister(tr.Collector())

			burst := func(n int) (maxIter, total time.Duration, last trace.Span) {
				start := time.Now()
				for i := 0; i < n; i++ {
					it := time.Now()
					r := httptest.NewRequest(http.MethodGet, "http://api/x", nil)
					ctx, s := tr.StartServer(context.Background(), r, Outbound, "api")
					cctx, c := tr.StartClient(ctx, r, "api", "127.0.0.1:1", 1)
					tr.InjectHeaders(cctx, r.Header)
					tr.EndHTTP(c, HTTPResult{Status: http.StatusOK})
					tr.EndHTTP(s, HTTPResult{Status: http.StatusOK, Attempts: 1})
					maxIter = max(maxIter, time.Since(it))
					last = s
				}
				return maxIter, time.Since(start), last
			}

			_, _, s := burst(5)
			flush(t, tr)
			j.WaitTrace(t, s.SpanContext().TraceID().String(), 2, 20*time.Second)
			if st := tr.Stats(); st.Exported != 10 || st.Dropped() != 0 {
				t.Fatalf("before the outage Stats() = %+v, want 10 exported", st)
			}

			ports := j.Ports
			j.Stop()
			const n = 10000
			maxIter, total, _ := burst(n)
			t.Logf("%d requests (2 spans each) with the collector down: %v, slowest %v", n, total, maxIter)
			// A span pipeline that waited for the collector would stall for an export
			// (over OTLP/gRPC, retried until the 5s export timeout) each time the queue
			// fills: hundreds of times in this loop.
			if maxIter >= exportTimeout-time.Second || total > 60*time.Second {
				t.Errorf("with the collector down: slowest iteration %v, total %v; want < %v and < 60s",
					maxIter, total, exportTimeout-time.Second)
			}
			// Every span of the outage is dropped and counted, once the queue has drained.
			const made = 10 + 2*n
			jaegertest.WaitFor(t, 30*time.Second, func() error {
				if st := tr.Stats(); st.Exported+st.Dropped() != made {
					return fmt.Errorf("Stats() = %+v accounts for %d spans, want %d", st, st.Exported+st.Dropped(), made)
				}
				return nil
			})
			st := tr.Stats()
			if st.Exported != 10 || st.DroppedExportFailed == 0 {
				t.Errorf("Stats() = %+v, want still 10 exported and failed exports counted", st)
			}
			if protocol == ProtocolGRPC && st.DroppedQueueFull == 0 {
				// OTLP/gRPC retries an unreachable collector until the export timeout, so
				// the queue overflows; OTLP/HTTP fails at once and may keep up.
				t.Errorf("Stats() = %+v, want spans dropped for a full queue", st)
			}
			metrics := gatherCounters(t, reg)
			for name, want := range map[string]uint64{
				`ferry_trace_spans_dropped_total{reason="queue_full"}`:    st.DroppedQueueFull,
				`ferry_trace_spans_dropped_total{reason="export_failed"}`: st.DroppedExportFailed,
				"ferry_trace_spans_exported_total":                        10,
				"ferry_trace_spans_queued":                                0,
			} {
				if got := metrics[name]; got != float64(want) {
					t.Errorf("%s = %v, want %d", name, got, want)
				}
			}

			// The collector comes back where it was: export resumes.
			j2 := jaegertest.StartOn(t, ports)
			var back trace.Span
			jaegertest.WaitFor(t, 60*time.Second, func() error {
				_, _, back = burst(1)
				flush(t, tr)
				if _, err := j2.Trace(context.Background(), back.SpanContext().TraceID().String()); err != nil {
					return err
				}
				return nil
			})

			// Shutdown with the collector gone again, spans queued: bounded by its context.
			j2.Stop()
			burst(100)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			_ = tr.Shutdown(ctx)
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("Shutdown with the collector down took %v, want about its 500ms deadline", d)
			}
		})
	}
}

// gatherCounters returns the counter and gauge values in reg by name{labels}.
func gatherCounters(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather() = %v", err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			if len(m.GetLabel()) > 0 {
				var parts []string
				for _, l := range m.GetLabel() {
					parts = append(parts, l.GetName()+`="`+l.GetValue()+`"`)
				}
				name += "{" + strings.Join(parts, ",") + "}"
			}
			switch {
			case m.GetCounter() != nil:
				out[name] = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				out[name] = m.GetGauge().GetValue()
			}
		}
	}
	return out
}
