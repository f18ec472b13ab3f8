package telemetry

import "github.com/prometheus/client_golang/prometheus"

// traceCollector exports the span export counters of a Tracing.
type traceCollector struct {
	t                          *Tracing
	dropped, exported, pending *prometheus.Desc
}

var _ prometheus.Collector = (*traceCollector)(nil)

// Collector returns a Prometheus collector of the export counters, to register in the
// metrics registry: ferry_trace_spans_dropped_total{reason="queue_full"|"export_failed"},
// ferry_trace_spans_exported_total and ferry_trace_spans_queued. It reads the counters
// when scraped, so it costs nothing per span; with tracing off (even a nil *Tracing) it
// reports zeros. Register one per Tracing: two would collide.
func (t *Tracing) Collector() prometheus.Collector {
	return &traceCollector{
		t: t,
		dropped: prometheus.NewDesc("ferry_trace_spans_dropped_total",
			"Spans dropped instead of exported: the export queue was full (queue_full) or the export failed (export_failed).",
			[]string{"reason"}, nil),
		exported: prometheus.NewDesc("ferry_trace_spans_exported_total",
			"Spans the OTLP collector accepted.", nil, nil),
		pending: prometheus.NewDesc("ferry_trace_spans_queued",
			"Spans waiting in the export queue.", nil, nil),
	}
}

func (c *traceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dropped
	ch <- c.exported
	ch <- c.pending
}

func (c *traceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.t.Stats()
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.DroppedQueueFull), "queue_full")
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(s.DroppedExportFailed), "export_failed")
	ch <- prometheus.MustNewConstMetric(c.exported, prometheus.CounterValue, float64(s.Exported))
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Queued))
}
