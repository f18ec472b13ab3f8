package telemetry

import (
	"context"
	"errors"
	"math"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.yaml.in/yaml/v3"
)

// validationKeys returns the keys of the *TracingConfigError values in err.
func validationKeys(err error) []string {
	var keys []string
	var walk func(error)
	walk = func(err error) {
		var ce *TracingConfigError
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		} else if errors.As(err, &ce) {
			keys = append(keys, ce.Key)
		}
	}
	if err != nil {
		walk(err)
	}
	return keys
}

func TestTracingConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*TracingConfig)
		want []string // keys in error, nil for valid
	}{
		{"defaults", func(*TracingConfig) {}, nil},
		{"disabled zero value", func(c *TracingConfig) { *c = TracingConfig{} }, nil},
		{"http with URL", func(c *TracingConfig) {
			c.Protocol, c.OTLPEndpoint = "http", "http://collector.example:4318/otlp/v1/traces"
		}, nil},
		{"http/protobuf spelling", func(c *TracingConfig) { c.Protocol = "http/protobuf" }, nil},
		{"https URL without port", func(c *TracingConfig) { c.OTLPEndpoint = "https://collector.example" }, nil},
		{"IPv6 host:port", func(c *TracingConfig) { c.OTLPEndpoint = "[::1]:4317" }, nil},
		{"ratio 0 and sample errors", func(c *TracingConfig) { c.SampleRatio, c.SampleErrors = 0, true }, nil},
		{"every propagation", func(c *TracingConfig) { c.Propagation = []string{"b3multi", "tracecontext", "b3", "baggage"} }, nil},
		{"bad protocol", func(c *TracingConfig) { c.Protocol = "udp" }, []string{"protocol"}},
		{"endpoint without port", func(c *TracingConfig) { c.OTLPEndpoint = "collector" }, []string{"otlp_endpoint"}},
		{"endpoint without host", func(c *TracingConfig) { c.OTLPEndpoint = ":4317" }, []string{"otlp_endpoint"}},
		{"endpoint port out of range", func(c *TracingConfig) { c.OTLPEndpoint = "127.0.0.1:70000" }, []string{"otlp_endpoint"}},
		{"endpoint other scheme", func(c *TracingConfig) { c.OTLPEndpoint = "ftp://collector:21" }, []string{"otlp_endpoint"}},
		{"URL without host", func(c *TracingConfig) { c.OTLPEndpoint = "http:///v1/traces" }, []string{"otlp_endpoint"}},
		{"negative ratio", func(c *TracingConfig) { c.SampleRatio = -0.1 }, []string{"sample_ratio"}},
		{"ratio above 1", func(c *TracingConfig) { c.SampleRatio = 1.5 }, []string{"sample_ratio"}},
		{"NaN ratio", func(c *TracingConfig) { c.SampleRatio = math.NaN() }, []string{"sample_ratio"}},
		{"unknown propagation", func(c *TracingConfig) { c.Propagation = []string{"tracecontext", "jaeger"} }, []string{"propagation"}},
		{"duplicate propagation", func(c *TracingConfig) { c.Propagation = []string{"b3", "b3"} }, []string{"propagation"}},
		{"empty propagation", func(c *TracingConfig) { c.Propagation = []string{} }, []string{"propagation"}},
		{"zero queue", func(c *TracingConfig) { c.QueueSize = 0; c.BatchSize = 1 }, []string{"queue_size", "batch_size"}},
		{"huge queue", func(c *TracingConfig) { c.QueueSize = 1 << 30 }, []string{"queue_size"}},
		{"batch above queue", func(c *TracingConfig) { c.QueueSize, c.BatchSize = 10, 11 }, []string{"batch_size"}},
		{"negative timeouts", func(c *TracingConfig) { c.BatchTimeout, c.ExportTimeout = -1, -time.Second }, []string{"batch_timeout", "export_timeout"}},
		{"everything wrong", func(c *TracingConfig) {
			*c = TracingConfig{OTLPEndpoint: "x", Protocol: "smtp", SampleRatio: 2, Propagation: []string{"x"},
				QueueSize: -1, BatchSize: -1, BatchTimeout: -1, ExportTimeout: -1}
		}, []string{"protocol", "otlp_endpoint", "sample_ratio", "propagation", "queue_size", "batch_size", "batch_timeout", "export_timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultTracingConfig()
			tc.mod(&c)
			err := c.Validate()
			if got := validationKeys(err); !slices.Equal(got, tc.want) {
				t.Errorf("Validate() = %v; error keys %v, want %v", err, got, tc.want)
			}
			if err != nil && !strings.Contains(err.Error(), "telemetry.tracing."+tc.want[0]+": ") {
				t.Errorf("Validate() = %q, want it to name telemetry.tracing.%s", err, tc.want[0])
			}
		})
	}
}

func TestTracingConfigDefaults(t *testing.T) {
	c := DefaultTracingConfig()
	want := TracingConfig{
		OTLPEndpoint: "127.0.0.1:4317", Protocol: "grpc", SampleRatio: 1,
		Propagation: []string{"tracecontext", "baggage"}, QueueSize: 2048, BatchSize: 512,
		BatchTimeout: time.Second, ExportTimeout: 10 * time.Second,
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("DefaultTracingConfig() = %+v, want %+v", c, want)
	}
	if !c.Enabled() {
		t.Errorf("DefaultTracingConfig().Enabled() = false, want true")
	}
	h := TracingConfig{Protocol: "http", QueueSize: 100}
	h.SetDefaults()
	if h.OTLPEndpoint != "127.0.0.1:4318" || h.BatchSize != 100 || h.SampleRatio != 0 {
		t.Errorf("SetDefaults() on http with queue 100 = %+v, want endpoint 127.0.0.1:4318, batch 100, ratio left 0", h)
	}
	// The default propagation list is not shared between configs.
	a, b := DefaultTracingConfig(), DefaultTracingConfig()
	a.Propagation[0] = "b3"
	if b.Propagation[0] != "tracecontext" {
		t.Errorf("DefaultTracingConfig() shares its Propagation slice")
	}
}

// decodeTracing decodes doc strictly into a telemetry block, as the config package does.
func decodeTracing(doc string) (*TracingConfig, error) {
	var out struct {
		Telemetry struct {
			Tracing *TracingConfig `yaml:"tracing"`
		} `yaml:"telemetry"`
	}
	dec := yaml.NewDecoder(strings.NewReader(doc))
	dec.KnownFields(true)
	err := dec.Decode(&out)
	return out.Telemetry.Tracing, err
}

func TestTracingConfigYAML(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want func(*TracingConfig)
	}{
		{"empty block", "telemetry:\n  tracing: {}\n", func(*TracingConfig) {}},
		{"design example", "telemetry:\n  tracing: {otlp_endpoint: 127.0.0.1:4317, protocol: grpc, sample_ratio: 1.0, propagation: [tracecontext, b3]}\n",
			func(c *TracingConfig) { c.Propagation = []string{"tracecontext", "b3"} }},
		{"http default endpoint", "telemetry:\n  tracing: {protocol: http}\n",
			func(c *TracingConfig) { c.Protocol, c.OTLPEndpoint = "http", "127.0.0.1:4318" }},
		{"every key", `telemetry:
  tracing:
    otlp_endpoint: http://jaeger:4318
    protocol: http
    sample_ratio: 0
    sample_errors: true
    propagation: [b3multi]
    queue_size: 100
    batch_size: 10
    batch_timeout: 250ms
    export_timeout: 3s
`, func(c *TracingConfig) {
			*c = TracingConfig{OTLPEndpoint: "http://jaeger:4318", Protocol: "http", SampleRatio: 0, SampleErrors: true,
				Propagation: []string{"b3multi"}, QueueSize: 100, BatchSize: 10, BatchTimeout: 250 * time.Millisecond,
				ExportTimeout: 3 * time.Second}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeTracing(tc.doc)
			if err != nil {
				t.Fatalf("decode error = %v", err)
			}
			want := DefaultTracingConfig()
			tc.want(&want)
			if got == nil || !reflect.DeepEqual(*got, want) {
				t.Errorf("decoded %+v, want %+v", got, want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate() = %v", err)
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		_, err := decodeTracing("telemetry:\n  tracing:\n    sample_rate: 0.5\n    batch_timeout: 5\n    protocol: grpc\n    queue_size: many\n")
		if err == nil {
			t.Fatalf("decode error = nil, want errors")
		}
		for _, want := range []string{"line 3: col 5: field sample_rate not found", "line 4", "line 6"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("decode error = %q, want it to contain %q", err, want)
			}
		}
		var te *yaml.TypeError
		if !errors.As(err, &te) || len(te.Errors) != 3 {
			t.Errorf("decode error = %#v, want a *yaml.TypeError with 3 problems", err)
		}
		if _, err := decodeTracing("telemetry:\n  tracing: [a]\n"); err == nil || !strings.Contains(err.Error(), "must be a mapping") {
			t.Errorf("decode of a sequence error = %v, want must be a mapping", err)
		}
	})
}

func TestNewTracingDisabled(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, tr := range []*Tracing{nil, mustTracing(t, TracingConfig{})} {
		if tr.Enabled() {
			t.Errorf("Enabled() = true, want false")
		}
		ctx := context.Background()
		r := newTestRequest("GET", "/x")
		got, span := tr.StartServer(ctx, r, Inbound, "")
		if got != ctx || span.IsRecording() || span.SpanContext().IsValid() {
			t.Errorf("StartServer() changed the context or returned a live span")
		}
		h := r.Header.Clone()
		tr.InjectHeaders(got, r.Header)
		if !reflect.DeepEqual(h, r.Header) {
			t.Errorf("InjectHeaders() changed headers with tracing off: %v", r.Header)
		}
		tr.EndHTTP(span, HTTPResult{Status: 500})
		if _, s := tr.StartTCP(ctx, Outbound, "db", nil); s.IsRecording() {
			t.Errorf("StartTCP() returned a recording span")
		}
		if s := tr.Stats(); s != (TraceExportStats{}) {
			t.Errorf("Stats() = %+v, want zero", s)
		}
		if err := tr.ForceFlush(ctx); err != nil {
			t.Errorf("ForceFlush() = %v", err)
		}
		if err := tr.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown() = %v", err)
		}
		if tr.TracerProvider() == nil || tr.Propagator() == nil {
			t.Errorf("TracerProvider() or Propagator() is nil")
		}
	}
}

func mustTracing(t *testing.T, cfg TracingConfig) *Tracing {
	t.Helper()
	tr, err := NewTracing(context.Background(), cfg, "svc", nil, nil)
	if err != nil {
		t.Fatalf("NewTracing() = %v", err)
	}
	return tr
}

func TestNewTracingErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	bad := DefaultTracingConfig()
	bad.SampleRatio = 3
	if _, err := NewTracing(context.Background(), bad, "svc", nil, nil); validationKeys(err) == nil {
		t.Errorf("NewTracing(ratio 3) error = %v, want a validation error", err)
	}
	if _, err := NewTracing(context.Background(), DefaultTracingConfig(), "", nil, nil); err == nil {
		t.Errorf("NewTracing(no service) error = nil, want one")
	}
}

// TestNewTracingUnreachable starts tracing towards a port nothing listens on, for both
// protocols: start-up does not wait or fail, spans are taken, and shutdown is bounded.
func TestNewTracingUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	for _, proto := range []string{"grpc", "http"} {
		cfg := DefaultTracingConfig()
		cfg.Protocol, cfg.OTLPEndpoint, cfg.ExportTimeout = proto, addr, 200*time.Millisecond
		start := time.Now()
		tr := mustTracing(t, cfg)
		_, span := tr.StartServer(context.Background(), newTestRequest("GET", "/"), Inbound, "")
		tr.EndHTTP(span, HTTPResult{Status: 200})
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = tr.Shutdown(ctx)
		cancel()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: start, one span and shutdown took %v, want well under 3s", proto, d)
		}
		if s := tr.Stats(); s.DroppedExportFailed != 1 {
			t.Errorf("%s: Stats() = %+v, want the span dropped for a failed export", proto, s)
		}
	}
}
