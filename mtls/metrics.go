package mtls

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports certificate state as Prometheus metrics, computed at scrape time so
// that seconds-to-expiry is always current:
//
//	ferry_mtls_certificate_expiry_seconds{source,role,spiffe_id,serial}  seconds until not-after (negative once expired)
//	ferry_mtls_certificate_loaded{source}                                 1 while a certificate is loaded
//	ferry_mtls_certificate_updates_total{source}                          certificates published
//	ferry_mtls_certificate_update_failures_total{source}                  refreshes that failed (the previous certificate stayed)
//
// Register it on the proxy's own registry. Safe for concurrent use.
type Collector struct {
	sources  []Source
	now      func() time.Time
	expiry   *prometheus.Desc
	loaded   *prometheus.Desc
	updates  *prometheus.Desc
	failures *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for the given sources.
func NewCollector(sources ...Source) *Collector {
	return &Collector{
		sources: sources,
		now:     time.Now,
		expiry: prometheus.NewDesc("ferry_mtls_certificate_expiry_seconds",
			"Seconds until the certificate expires (negative once expired).",
			[]string{"source", "role", "spiffe_id", "serial"}, nil),
		loaded: prometheus.NewDesc("ferry_mtls_certificate_loaded",
			"1 while the source has a certificate loaded, 0 otherwise.",
			[]string{"source"}, nil),
		updates: prometheus.NewDesc("ferry_mtls_certificate_updates_total",
			"Certificates published by the source (initial load and rotations).",
			[]string{"source"}, nil),
		failures: prometheus.NewDesc("ferry_mtls_certificate_update_failures_total",
			"Certificate refreshes that failed; the previous certificate stayed in force.",
			[]string{"source"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.expiry
	ch <- c.loaded
	ch <- c.updates
	ch <- c.failures
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for _, src := range c.sources {
		st := src.Status()
		loaded := 0.0
		if m, err := src.Current(); err == nil {
			loaded = 1
			for _, ci := range m.Info(now) {
				ch <- prometheus.MustNewConstMetric(c.expiry, prometheus.GaugeValue, ci.SecondsToExpiry,
					st.Source, ci.Role, ci.SPIFFEID, ci.Serial)
			}
		}
		ch <- prometheus.MustNewConstMetric(c.loaded, prometheus.GaugeValue, loaded, st.Source)
		ch <- prometheus.MustNewConstMetric(c.updates, prometheus.CounterValue, float64(st.Updates), st.Source)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(st.Failures), st.Source)
	}
}
