package sidecar

import (
	"fmt"
	"testing"
)

func TestTracingRebuiltOnlyWhenItsConfigChanges(t *testing.T) {
	app := backend(t, "app")
	s := New(Options{})
	drained(t, s)
	base := fmt.Sprintf("service: web\ndrain_timeout: 50ms\ninbound: {address: %s, target: %s}\n", freeAddr(t), app)
	tracing := func(ratio string) string {
		// Nothing listens on port 1: nothing is exported, nothing needs to be.
		return base + "telemetry:\n  tracing: {otlp_endpoint: 127.0.0.1:1, sample_ratio: " + ratio + "}\n"
	}
	apply := func(doc string) {
		t.Helper()
		if err := s.Apply(parse(t, doc)); err != nil {
			t.Fatalf("Apply() error = %v", err)
		}
	}

	apply(base)
	if got := s.Tracing(); got != nil {
		t.Fatalf("Tracing() without telemetry.tracing = %p, want nil", got)
	}
	apply(tracing("0.5"))
	t1 := s.Tracing()
	if !t1.Enabled() || t1.Config().SampleRatio != 0.5 {
		t.Fatalf("Tracing() = %+v, want enabled with sample_ratio 0.5", t1.Config())
	}
	apply(tracing("0.5") + "  access_log: stderr\n")
	if got := s.Tracing(); got != t1 {
		t.Errorf("Tracing() after a reload that left tracing alone = %p, want the running one %p", got, t1)
	}
	apply(tracing("0.25"))
	t2 := s.Tracing()
	if t2 == t1 || t2.Config().SampleRatio != 0.25 {
		t.Errorf("Tracing() after sample_ratio changed = %p (ratio %v), want a new provider with 0.25", t2, t2.Config().SampleRatio)
	}
	// One set of export counters on /metrics, whichever provider runs.
	mfs, err := s.metrics.Registry.Gather()
	if err != nil {
		t.Fatalf("Gather() error = %v", err)
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "ferry_trace_spans_dropped_total" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("ferry_trace_spans_dropped_total families = %d, want 1", n)
	}
	apply(base)
	if got := s.Tracing(); got != nil {
		t.Errorf("Tracing() after telemetry.tracing was removed = %p, want nil", got)
	}
}
