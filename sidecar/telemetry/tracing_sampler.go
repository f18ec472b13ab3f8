package telemetry

import (
	"encoding/binary"
	"fmt"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// errorSampler is parent-based sampling with a trace-ID ratio for new traces, which with
// sampleErrors records (RecordOnly) what it does not sample, so that the export
// processor can still export the spans that end in error:
//
//   - a sampled parent (remote or local): RecordAndSample, as ParentBased does;
//   - an unsampled remote parent: RecordOnly with sampleErrors, else Drop;
//   - an unsampled local parent: RecordOnly if that parent is recording (it was itself
//     recorded for sampleErrors, so a failing attempt under it can be exported), else Drop;
//   - no parent: the ratio decides; with sampleErrors a Drop becomes RecordOnly.
//
// A RecordOnly span keeps the unsampled flag in the context propagated downstream, so
// the rest of the trace follows the ratio decision; only Ferry's own failing spans are
// kept. It is immutable and safe for concurrent use.
type errorSampler struct {
	ratio        sdktrace.Sampler
	sampleErrors bool
	desc         string
	// all and bound are ratio's decision on a trace ID, for requestDecision: sample
	// every trace, or those whose trace ID's last 63 bits are below bound.
	all   bool
	bound uint64
}

var _ sdktrace.Sampler = errorSampler{}

func newErrorSampler(ratio float64, sampleErrors bool) errorSampler {
	s := errorSampler{
		ratio:        sdktrace.TraceIDRatioBased(ratio),
		sampleErrors: sampleErrors,
		desc:         fmt.Sprintf("FerryParentBased{ratio=%g,sample_errors=%t}", ratio, sampleErrors),
	}
	// As sdktrace.TraceIDRatioBased computes it (TestRequestDecision compares them).
	switch {
	case ratio >= 1:
		s.all = true
	case ratio > 0:
		s.bound = uint64(ratio * (1 << 63))
	}
	return s
}

// requestDecision is ShouldSample's decision for a span whose parent is psc, a remote
// span context or none (a request's server span), and whose trace ID is tid; the
// sampling result's tracestate is then psc's. It looks nothing up in a context.
func (s errorSampler) requestDecision(psc trace.SpanContext, tid trace.TraceID) sdktrace.SamplingDecision {
	switch {
	case psc.IsValid() && psc.IsSampled():
		return sdktrace.RecordAndSample
	case !psc.IsValid() && (s.all || binary.BigEndian.Uint64(tid[8:16])>>1 < s.bound):
		return sdktrace.RecordAndSample
	case s.sampleErrors:
		return sdktrace.RecordOnly
	}
	return sdktrace.Drop
}

func (s errorSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	if psc.IsValid() {
		res := sdktrace.SamplingResult{Decision: sdktrace.Drop, Tracestate: psc.TraceState()}
		switch {
		case psc.IsSampled():
			res.Decision = sdktrace.RecordAndSample
		case !s.sampleErrors:
		case psc.IsRemote() || trace.SpanFromContext(p.ParentContext).IsRecording():
			res.Decision = sdktrace.RecordOnly
		}
		return res
	}
	res := s.ratio.ShouldSample(p)
	if res.Decision == sdktrace.Drop && s.sampleErrors {
		res.Decision = sdktrace.RecordOnly
	}
	return res
}

func (s errorSampler) Description() string { return s.desc }
