package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// TracerName is the instrumentation scope of Ferry's spans.
const TracerName = "github.com/ferrymesh/ferry/sidecar/telemetry"

// SidecarAttrPrefix prefixes the resource attributes that identify a Ferry instance.
const SidecarAttrPrefix = "ferry.sidecar."

// Tracing is Ferry's OpenTelemetry tracing: an SDK tracer provider of its own (never the
// global one) exporting over OTLP through a bounded, non-blocking queue, the configured
// propagators, and the span helpers the proxy path calls (StartServer, StartClient,
// InjectHeaders, EndHTTP, StartTCP, EndTCP).
//
// A nil *Tracing, and one built from a disabled config, is tracing off: every method is
// then a no-op that returns its context unchanged and a no-op span, at the cost of a
// nil check. All methods are safe for concurrent use.
type Tracing struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	proc   *exportProcessor
	cfg    TracingConfig
	client *http.Client // OTLP/HTTP only: closed at Shutdown so no idle connection lingers
	attrs  sync.Pool    // of *attrBuf

	// The request path's fast lane (tracing_fast.go), set by start.
	sampler      errorSampler                  // the provider's sampler
	extractKeys  []string                      // headers the formats read, canonical
	tracecontext bool                          // tracecontext is configured: InjectHeaders writes it
	baggage      bool                          // baggage is configured: InjectHeaders writes it
	b3           propagation.TextMapPropagator // the b3 formats; nil if none
}

// TraceExportStats counts the spans the export pipeline handled since start. Spans that
// were not sampled (and not kept for sample_errors) are not counted anywhere.
type TraceExportStats struct {
	// Exported is the spans the collector accepted.
	Exported uint64
	// DroppedQueueFull is the spans dropped because the export queue was full (the
	// collector is slow or unreachable, or traffic outruns export).
	DroppedQueueFull uint64
	// DroppedExportFailed is the spans of exports that failed (collector unreachable,
	// export timeout, rejected request).
	DroppedExportFailed uint64
	// Queued is the spans waiting for export now.
	Queued int
}

// Dropped is every span dropped, whatever the reason.
func (s TraceExportStats) Dropped() uint64 { return s.DroppedQueueFull + s.DroppedExportFailed }

// NewTracing builds tracing from cfg (after cfg.SetDefaults and cfg.Validate). service is
// the service.name resource attribute; instance holds attributes that identify this
// sidecar, each recorded as ferry.sidecar.<key> (keys already prefixed are kept as they
// are): pass for example {"id": ..., "version": ...}. ferry.sidecar.id defaults to
// <hostname>-<pid> and is also service.instance.id; host.name and process.pid are always
// set. logger receives export outage messages (nil discards them).
//
// A disabled cfg (no otlp_endpoint) returns a Tracing that does nothing. Nothing is sent
// or dialled before the first export: an unreachable collector does not fail NewTracing.
// Call Shutdown to flush and stop the export goroutine.
func NewTracing(ctx context.Context, cfg TracingConfig, service string, instance map[string]string, logger *slog.Logger) (*Tracing, error) {
	if !cfg.Enabled() {
		return &Tracing{}, nil
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if service == "" {
		return nil, fmt.Errorf("tracing: empty service name")
	}
	t := &Tracing{cfg: cfg, prop: newPropagator(cfg.Propagation)}
	var client otlptrace.Client
	if cfg.normalizedProtocol() == ProtocolHTTP {
		t.client = &http.Client{Transport: newOTLPTransport(), Timeout: cfg.ExportTimeout}
		client = otlptracehttp.NewClient(httpExporterOptions(cfg, t.client)...)
	} else {
		client = otlptracegrpc.NewClient(grpcExporterOptions(cfg)...)
	}
	exp, err := otlptrace.New(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	t.start(exp, service, instance, logger.With("component", "tracing", "otlp_endpoint", cfg.OTLPEndpoint))
	return t, nil
}

// start builds the provider around exp; t.cfg is complete and valid.
func (t *Tracing) start(exp sdktrace.SpanExporter, service string, instance map[string]string, logger *slog.Logger) {
	t.proc = newExportProcessor(exp, t.cfg, logger)
	t.sampler = newErrorSampler(t.cfg.SampleRatio, t.cfg.SampleErrors)
	t.extractKeys = extractKeys(t.cfg.Propagation)
	t.tracecontext = slices.Contains(t.cfg.Propagation, PropagationTraceContext)
	t.baggage = slices.Contains(t.cfg.Propagation, PropagationBaggage)
	t.b3 = b3Propagator(t.cfg.Propagation)
	t.tp = sdktrace.NewTracerProvider(
		sdktrace.WithSampler(t.sampler),
		sdktrace.WithIDGenerator(idGenerator{}),
		sdktrace.WithSpanProcessor(t.proc),
		sdktrace.WithResource(newResource(service, instance)),
	)
	t.tracer = t.tp.Tracer(TracerName)
}

// Exporter retries of a failed export: quick, and bounded by the export timeout.
const (
	retryInitial = 250 * time.Millisecond
	retryMax     = 2 * time.Second
)

func grpcExporterOptions(cfg TracingConfig) []otlptracegrpc.Option {
	opts := []otlptracegrpc.Option{
		otlptracegrpc.WithTimeout(cfg.ExportTimeout),
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: retryInitial, MaxInterval: retryMax, MaxElapsedTime: cfg.ExportTimeout}),
	}
	if isURL(cfg.OTLPEndpoint) {
		return append(opts, otlptracegrpc.WithEndpointURL(cfg.OTLPEndpoint))
	}
	return append(opts, otlptracegrpc.WithEndpoint(cfg.OTLPEndpoint), otlptracegrpc.WithInsecure())
}

func httpExporterOptions(cfg TracingConfig, hc *http.Client) []otlptracehttp.Option {
	opts := []otlptracehttp.Option{
		otlptracehttp.WithHTTPClient(hc),
		otlptracehttp.WithTimeout(cfg.ExportTimeout),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: true, InitialInterval: retryInitial, MaxInterval: retryMax, MaxElapsedTime: cfg.ExportTimeout}),
	}
	u, err := url.Parse(cfg.OTLPEndpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return append(opts, otlptracehttp.WithEndpoint(cfg.OTLPEndpoint), otlptracehttp.WithInsecure())
	}
	// Unlike WithEndpointURL, a URL without a path means the standard /v1/traces.
	opts = append(opts, otlptracehttp.WithEndpoint(u.Host))
	if u.Path != "" && u.Path != "/" {
		opts = append(opts, otlptracehttp.WithURLPath(u.Path))
	}
	if u.Scheme == "http" {
		opts = append(opts, otlptracehttp.WithInsecure())
	}
	return opts
}

// newOTLPTransport is a transport of Ferry's own for OTLP/HTTP, so Shutdown can close its
// idle connections (the exporter's default transport is shared by the whole process).
func newOTLPTransport() *http.Transport {
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   5 * time.Second,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
}

func isURL(ep string) bool {
	u, err := url.Parse(ep)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https")
}

// newResource is service.name, service.instance.id, host.name, process.pid and the
// ferry.sidecar.* attributes.
func newResource(service string, instance map[string]string) *resource.Resource {
	host, _ := os.Hostname()
	pid := os.Getpid()
	attrs := []attribute.KeyValue{
		semconv.ServiceName(service),
		semconv.HostName(host),
		semconv.ProcessPID(pid),
		attribute.String(SidecarAttrPrefix+"hostname", host),
		attribute.Int(SidecarAttrPrefix+"pid", pid),
	}
	id := host + "-" + strconv.Itoa(pid)
	for k, v := range instance {
		if !strings.HasPrefix(k, SidecarAttrPrefix) {
			k = SidecarAttrPrefix + k
		}
		if k == SidecarAttrPrefix+"id" {
			id = v
			continue
		}
		attrs = append(attrs, attribute.String(k, v))
	}
	attrs = append(attrs, attribute.String(SidecarAttrPrefix+"id", id), semconv.ServiceInstanceID(id))
	return resource.NewWithAttributes(semconv.SchemaURL, attrs...)
}

// newPropagator composes the formats in the order given (a later format's context wins
// when a request carries several). b3 and b3multi share one B3 propagator that injects
// the encodings listed and extracts either.
func newPropagator(names []string) propagation.TextMapPropagator {
	var props []propagation.TextMapPropagator
	var enc b3.Encoding
	b3At := -1
	for _, n := range names {
		switch n {
		case PropagationTraceContext:
			props = append(props, propagation.TraceContext{})
		case PropagationBaggage:
			props = append(props, propagation.Baggage{})
		case PropagationB3, PropagationB3Multi:
			if n == PropagationB3 {
				enc |= b3.B3SingleHeader
			} else {
				enc |= b3.B3MultipleHeader
			}
			if b3At < 0 {
				b3At = len(props)
				props = append(props, nil)
			}
		}
	}
	if b3At >= 0 {
		props[b3At] = b3.New(b3.WithInjectEncoding(enc))
	}
	if len(props) == 1 {
		return props[0]
	}
	return propagation.NewCompositeTextMapPropagator(props...)
}

// Enabled reports whether spans are being recorded and exported.
func (t *Tracing) Enabled() bool { return t != nil && t.tracer != nil }

// Config is the config tracing runs with, defaults applied (the zero value when off).
func (t *Tracing) Config() TracingConfig {
	if t == nil {
		return TracingConfig{}
	}
	c := t.cfg
	c.Propagation = slices.Clone(c.Propagation)
	return c
}

// TracerProvider is the SDK provider, for code that starts spans of its own (gRPC health
// checks, say). It is a no-op provider when tracing is off.
func (t *Tracing) TracerProvider() trace.TracerProvider {
	if !t.Enabled() {
		return noopProvider
	}
	return t.tp
}

// Propagator is the configured composite propagator (an empty one when tracing is off).
func (t *Tracing) Propagator() propagation.TextMapPropagator {
	if !t.Enabled() {
		return propagation.NewCompositeTextMapPropagator()
	}
	return t.prop
}

// Stats returns the export counters (zero when tracing is off).
func (t *Tracing) Stats() TraceExportStats {
	if !t.Enabled() {
		return TraceExportStats{}
	}
	return t.proc.stats()
}

// SpansDropped is Stats().Dropped(): every span dropped since start.
func (t *Tracing) SpansDropped() uint64 { return t.Stats().Dropped() }

// ForceFlush exports every span ended before the call, waiting until that is done or
// ctx ends.
func (t *Tracing) ForceFlush(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	return t.tp.ForceFlush(ctx)
}

// Shutdown ends spans' export: it exports what is queued within ctx, then stops the
// export goroutine and closes the exporter's connections. Spans ended afterwards are
// dropped. Bound ctx: with the collector down, the final export waits for it.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	err := t.tp.Shutdown(ctx)
	// The provider skips its processors when ctx has already ended: stop ours anyway
	// (a no-op if the provider did) so that its goroutine never outlives Shutdown.
	if e := t.proc.Shutdown(ctx); err == nil {
		err = e
	}
	if t.client != nil {
		t.client.CloseIdleConnections()
	}
	return err
}
