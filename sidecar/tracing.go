package sidecar

import (
	"context"
	"reflect"
	"time"

	"github.com/ferrymesh/ferry/sidecar/config"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// tracingFlushTimeout bounds the final export of a tracing provider being shut down
// (on drain, or after a reload replaced it), so that an unreachable collector cannot
// hold up the exit.
const tracingFlushTimeout = 5 * time.Second

// tracingState is the sidecar's tracing provider and what it was built from. It is
// guarded by Sidecar.mu; handlers hold their own pointer to the provider they started
// with.
type tracingState struct {
	cur       *telemetry.Tracing // nil: tracing off
	cfg       *telemetry.TracingConfig
	service   string
	collector prometheus.Collector // the registered export collector of cur
}

// tracingFor returns the tracing provider cfg wants: the running one when the tracing
// config and the service name are unchanged, else a new one (nil when tracing is off).
// changed says whether it differs from the running one; nothing is swapped yet (see
// commitTracing).
func (s *Sidecar) tracingFor(cfg *config.Config) (t *telemetry.Tracing, changed bool, err error) {
	ts := &s.tracing
	want := cfg.Telemetry.Tracing
	if ts.collector != nil && ts.service == cfg.Service && reflect.DeepEqual(ts.cfg, want) {
		return ts.cur, false, nil
	}
	if want == nil || !want.Enabled() {
		return nil, ts.cur != nil || ts.collector == nil, nil
	}
	t, err = telemetry.NewTracing(context.Background(), *want, cfg.Service, s.instance, s.log)
	if err != nil {
		return nil, false, err
	}
	return t, true, nil
}

// commitTracing makes t (from tracingFor, built for cfg) the running provider: its
// export counters replace the old one's on /metrics, and the old provider is shut down
// (flushing its spans) once the listeners it served have drained.
func (s *Sidecar) commitTracing(cfg *config.Config, t *telemetry.Tracing, drain time.Duration) {
	ts := &s.tracing
	old := ts.cur
	if ts.collector != nil {
		s.metrics.Registry.Unregister(ts.collector)
	}
	ts.cur, ts.cfg, ts.service = t, cfg.Telemetry.Tracing, cfg.Service
	ts.collector = t.Collector()
	if err := s.metrics.Registry.Register(ts.collector); err != nil {
		s.log.Error("tracing metrics not registered", "error", err)
	}
	if t.Enabled() {
		c := t.Config()
		s.log.Info("tracing on", "otlp_endpoint", c.OTLPEndpoint, "protocol", c.Protocol,
			"sample_ratio", c.SampleRatio, "propagation", c.Propagation)
	}
	if old != nil && old != t {
		s.retire(drain, func(ctx context.Context) {
			<-ctx.Done()
			shutdownTracing(old, s)
		})
	}
}

// shutdownTracing flushes and stops t within tracingFlushTimeout.
func shutdownTracing(t *telemetry.Tracing, s *Sidecar) {
	ctx, cancel := context.WithTimeout(context.Background(), tracingFlushTimeout)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		s.log.Warn("tracing shutdown: spans not exported", "error", err, "dropped_total", t.SpansDropped())
	}
}

// Tracing returns the running tracing provider, nil when tracing is off. Safe for
// concurrent use.
func (s *Sidecar) Tracing() *telemetry.Tracing {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tracing.cur
}

// accessLogKey identifies the access log cfg wants (destination and format): a reload
// reopens the log only when it changes.
func accessLogKey(cfg *config.Config) string {
	return cfg.Telemetry.AccessLog + "\x00" + cfg.Telemetry.AccessLogFormat
}
