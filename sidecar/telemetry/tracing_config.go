package telemetry

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"time"

	"go.yaml.in/yaml/v3"
)

// Propagation formats accepted in TracingConfig.Propagation.
const (
	// PropagationTraceContext is W3C Trace Context (traceparent, tracestate).
	PropagationTraceContext = "tracecontext"
	// PropagationBaggage is W3C Baggage (baggage).
	PropagationBaggage = "baggage"
	// PropagationB3 is B3 with the single b3 header on injection.
	PropagationB3 = "b3"
	// PropagationB3Multi is B3 with the X-B3-* headers on injection.
	PropagationB3Multi = "b3multi"
)

// OTLP protocols accepted in TracingConfig.Protocol.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http" // OTLP/HTTP with protobuf bodies; "http/protobuf" is accepted too
)

// Tracing defaults, applied by DefaultTracingConfig, SetDefaults and YAML decoding.
const (
	DefaultOTLPGRPCEndpoint = "127.0.0.1:4317"
	DefaultOTLPHTTPEndpoint = "127.0.0.1:4318"
	DefaultTraceQueueSize   = 2048
	DefaultTraceBatchSize   = 512
	DefaultBatchTimeout     = time.Second
	DefaultExportTimeout    = 10 * time.Second
	maxTraceQueueSize       = 1 << 20
)

// TracingConfig is the telemetry.tracing block. The zero value means tracing is off
// (Enabled is false); a block decoded from YAML starts from DefaultTracingConfig, so any
// key left out takes its default and tracing is on. It is a plain value: copy it freely.
type TracingConfig struct {
	// OTLPEndpoint is the collector: host:port (plaintext), or an http:// or https://
	// URL (https uses TLS with the system roots; for protocol http a path in the URL
	// replaces /v1/traces). Default 127.0.0.1:4317 for grpc, 127.0.0.1:4318 for http.
	OTLPEndpoint string `yaml:"otlp_endpoint" json:"otlp_endpoint"`
	// Protocol is grpc (OTLP/gRPC, the default) or http (OTLP/HTTP protobuf).
	Protocol string `yaml:"protocol" json:"protocol"`
	// SampleRatio is the fraction of new traces sampled, 0 to 1 (default 1). Requests
	// that arrive with a trace context follow the caller's decision.
	SampleRatio float64 `yaml:"sample_ratio" json:"sample_ratio"`
	// SampleErrors also exports the spans of requests Ferry failed (5xx, a Proxy-Status
	// error, a TCP session error) that the ratio did not sample. Every span is then
	// recorded, which costs CPU on unsampled requests too. Default false.
	SampleErrors bool `yaml:"sample_errors" json:"sample_errors"`
	// Propagation lists the context formats read from requests and written to the
	// application and upstreams: tracecontext, baggage, b3 (single header), b3multi
	// (X-B3-* headers). Extraction of B3 accepts both B3 encodings. Default
	// [tracecontext, baggage].
	Propagation []string `yaml:"propagation" json:"propagation"`
	// QueueSize bounds the spans waiting for export (default 2048). When it is full,
	// new spans are dropped and counted; requests never wait for the collector.
	QueueSize int `yaml:"queue_size" json:"queue_size"`
	// BatchSize is the most spans sent in one export (default 512).
	BatchSize int `yaml:"batch_size" json:"batch_size"`
	// BatchTimeout is how long a span may wait for a batch to fill (default 1s).
	BatchTimeout time.Duration `yaml:"batch_timeout" json:"batch_timeout"`
	// ExportTimeout bounds one export including retries (default 10s); the spans of a
	// failed export are dropped and counted.
	ExportTimeout time.Duration `yaml:"export_timeout" json:"export_timeout"`
}

// DefaultTracingConfig is tracing on with every default: OTLP/gRPC to 127.0.0.1:4317,
// every trace sampled, W3C trace context and baggage.
func DefaultTracingConfig() TracingConfig {
	c := TracingConfig{SampleRatio: 1}
	c.SetDefaults()
	return c
}

// Enabled reports whether tracing is configured (an OTLP endpoint is set).
func (c *TracingConfig) Enabled() bool { return c != nil && c.OTLPEndpoint != "" }

// SetDefaults fills the keys left empty: protocol, the endpoint for the protocol,
// propagation, queue and batch sizes and timeouts. SampleRatio is left as it is (0 is a
// valid ratio); DefaultTracingConfig and YAML decoding default it to 1.
func (c *TracingConfig) SetDefaults() {
	if c.Protocol == "" {
		c.Protocol = ProtocolGRPC
	}
	if c.OTLPEndpoint == "" {
		if c.normalizedProtocol() == ProtocolHTTP {
			c.OTLPEndpoint = DefaultOTLPHTTPEndpoint
		} else {
			c.OTLPEndpoint = DefaultOTLPGRPCEndpoint
		}
	}
	if c.Propagation == nil {
		c.Propagation = []string{PropagationTraceContext, PropagationBaggage}
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultTraceQueueSize
	}
	if c.BatchSize == 0 {
		c.BatchSize = min(DefaultTraceBatchSize, c.QueueSize)
	}
	if c.BatchTimeout == 0 {
		c.BatchTimeout = DefaultBatchTimeout
	}
	if c.ExportTimeout == 0 {
		c.ExportTimeout = DefaultExportTimeout
	}
}

// normalizedProtocol maps the accepted spellings to ProtocolGRPC or ProtocolHTTP.
func (c *TracingConfig) normalizedProtocol() string {
	switch c.Protocol {
	case "", ProtocolGRPC:
		return ProtocolGRPC
	case ProtocolHTTP, "http/protobuf":
		return ProtocolHTTP
	}
	return c.Protocol
}

// TracingConfigError is one problem Validate found. Key is the YAML key under
// telemetry.tracing (for example "sample_ratio"), so a caller holding the YAML node can
// point at its line.
type TracingConfigError struct {
	Key string
	Msg string
}

func (e *TracingConfigError) Error() string { return "telemetry.tracing." + e.Key + ": " + e.Msg }

// Validate checks an enabled config after SetDefaults (a disabled one, the zero value,
// is valid). It reports every problem, each a *TracingConfigError, joined with
// errors.Join.
func (c *TracingConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &TracingConfigError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	proto := c.normalizedProtocol()
	if proto != ProtocolGRPC && proto != ProtocolHTTP {
		bad("protocol", "%q is not grpc or http", c.Protocol)
	}
	if err := checkEndpoint(c.OTLPEndpoint); err != nil {
		bad("otlp_endpoint", "%v", err)
	}
	if math.IsNaN(c.SampleRatio) || c.SampleRatio < 0 || c.SampleRatio > 1 {
		bad("sample_ratio", "%v is not between 0 and 1", c.SampleRatio)
	}
	if len(c.Propagation) == 0 {
		bad("propagation", "must name at least one of tracecontext, baggage, b3, b3multi")
	}
	seen := make(map[string]bool, len(c.Propagation))
	for _, p := range c.Propagation {
		switch p {
		case PropagationTraceContext, PropagationBaggage, PropagationB3, PropagationB3Multi:
		default:
			bad("propagation", "unknown format %q (want tracecontext, baggage, b3 or b3multi)", p)
			continue
		}
		if seen[p] {
			bad("propagation", "%q is listed twice", p)
		}
		seen[p] = true
	}
	if c.QueueSize < 1 || c.QueueSize > maxTraceQueueSize {
		bad("queue_size", "%d is not between 1 and %d", c.QueueSize, maxTraceQueueSize)
	}
	if c.BatchSize < 1 || c.BatchSize > c.QueueSize {
		bad("batch_size", "%d is not between 1 and queue_size (%d)", c.BatchSize, c.QueueSize)
	}
	if c.BatchTimeout <= 0 {
		bad("batch_timeout", "%v must be positive", c.BatchTimeout)
	}
	if c.ExportTimeout <= 0 {
		bad("export_timeout", "%v must be positive", c.ExportTimeout)
	}
	return errors.Join(errs...)
}

// checkEndpoint accepts host:port with a numeric port, or an http(s) URL with a host.
func checkEndpoint(ep string) error {
	if u, err := url.Parse(ep); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		if u.Host == "" {
			return fmt.Errorf("%q has no host", ep)
		}
		if p := u.Port(); p != "" {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("%q has a bad port", ep)
			}
		}
		return nil
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return fmt.Errorf("%q is not host:port or an http(s) URL", ep)
	}
	if host == "" {
		return fmt.Errorf("%q has no host", ep)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%q has a bad port", ep)
	}
	return nil
}

// tracingKeys are the YAML keys of TracingConfig.
var tracingKeys = map[string]bool{
	"otlp_endpoint": true, "protocol": true, "sample_ratio": true, "sample_errors": true,
	"propagation": true, "queue_size": true, "batch_size": true, "batch_timeout": true,
	"export_timeout": true,
}

// UnmarshalYAML decodes a telemetry.tracing mapping on top of DefaultTracingConfig, then
// applies SetDefaults (so the endpoint default follows the protocol). Unknown keys are
// errors even though yaml.v3 does not pass strict decoding on to custom unmarshalers.
// Problems are reported as a *yaml.TypeError with line numbers, so the decoder goes on
// and reports every problem in the file.
func (c *TracingConfig) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: col %d: telemetry.tracing must be a mapping", n.Line, n.Column)}}
	}
	var problems []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if !tracingKeys[k.Value] {
			problems = append(problems, fmt.Sprintf("line %d: col %d: field %s not found in type telemetry.TracingConfig", k.Line, k.Column, k.Value))
		}
	}
	type plain TracingConfig // no UnmarshalYAML method: decodes field by field
	p := plain(DefaultTracingConfig())
	p.OTLPEndpoint = "" // chosen after decoding, from the protocol
	if err := n.Decode(&p); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return err
		}
		problems = append(problems, te.Errors...)
	}
	*c = TracingConfig(p)
	c.SetDefaults()
	if len(problems) > 0 {
		return &yaml.TypeError{Errors: problems}
	}
	return nil
}
