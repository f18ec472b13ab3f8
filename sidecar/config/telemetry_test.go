package config

import (
	"strings"
	"testing"
	"time"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

const telemetryBase = `service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams: [{name: api, endpoints: [127.0.0.1:8081]}]
`

func TestTelemetryTracing(t *testing.T) {
	c, err := Parse("ferry.yaml", []byte(telemetryBase+`telemetry:
  access_log: stdout
  access_log_format: text
  tracing:
    otlp_endpoint: 127.0.0.1:14317
    sample_ratio: 0.25
    sample_errors: true
    propagation: [tracecontext, b3]
    batch_timeout: 200ms
`))
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	tr := c.Telemetry.Tracing
	if tr == nil {
		t.Fatal("Telemetry.Tracing = nil, want a config")
	}
	want := telemetry.DefaultTracingConfig()
	want.OTLPEndpoint = "127.0.0.1:14317"
	want.SampleRatio = 0.25
	want.SampleErrors = true
	want.Propagation = []string{"tracecontext", "b3"}
	want.BatchTimeout = 200 * time.Millisecond
	if got := *tr; got.OTLPEndpoint != want.OTLPEndpoint || got.SampleRatio != want.SampleRatio ||
		!got.SampleErrors || strings.Join(got.Propagation, ",") != "tracecontext,b3" ||
		got.BatchTimeout != want.BatchTimeout || got.QueueSize != want.QueueSize || got.Protocol != "grpc" {
		t.Errorf("Telemetry.Tracing = %+v, want %+v", got, want)
	}
	if c.Telemetry.AccessLogFormat != AccessLogText {
		t.Errorf("AccessLogFormat = %q, want text", c.Telemetry.AccessLogFormat)
	}

	c, err = Parse("ferry.yaml", []byte(telemetryBase))
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	if c.Telemetry.Tracing != nil || c.Telemetry.AccessLogFormat != AccessLogJSON {
		t.Errorf("defaults: Tracing = %v, AccessLogFormat = %q, want nil, json", c.Telemetry.Tracing, c.Telemetry.AccessLogFormat)
	}
}

func TestTelemetryErrors(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{
			name: "bad values",
			doc: `telemetry:
  access_log_format: xml
  tracing:
    protocol: thrift
    sample_ratio: 2
    propagation: [tracecontext, jaeger]
`,
			want: []string{
				`ferry.yaml:5: telemetry.access_log_format: unknown format "xml" (want json or text)`,
				`ferry.yaml:7: telemetry.tracing.protocol: "thrift" is not grpc or http`,
				`ferry.yaml:8: telemetry.tracing.sample_ratio: 2 is not between 0 and 1`,
				`ferry.yaml:9: telemetry.tracing.propagation: unknown format "jaeger" (want tracecontext, baggage, b3 or b3multi)`,
			},
		},
		{
			name: "unknown key and wrong type",
			doc: `telemetry:
  tracing:
    endpoint: x:1
    queue_size: many
`,
			want: []string{
				`ferry.yaml:6: telemetry.tracing.endpoint: unknown key (known keys: otlp_endpoint, protocol, sample_ratio, sample_errors, propagation, queue_size, batch_size, batch_timeout, export_timeout)`,
				`ferry.yaml:7: telemetry.tracing.queue_size: want an integer, got "many"`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("ferry.yaml", []byte(telemetryBase+tc.doc))
			if err == nil {
				t.Fatal("Parse() error = nil, want errors")
			}
			if got := err.Error(); got != strings.Join(tc.want, "\n") {
				t.Errorf("Parse() error =\n%s\nwant\n%s", got, strings.Join(tc.want, "\n"))
			}
		})
	}
}
