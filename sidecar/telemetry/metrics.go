// Package telemetry holds Ferry's metrics (a Prometheus registry of its own, never the
// global default) and its access log.
package telemetry

import (
	"strconv"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Direction labels.
const (
	Inbound  = "inbound"
	Outbound = "outbound"
	// Ingress is traffic from outside the mesh, through a TLS ingress listener.
	Ingress = "ingress"
)

// Metrics is every metric the proxy exports. Create it once per process with NewMetrics;
// it is safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	requests        *prometheus.CounterVec
	duration        *prometheus.HistogramVec
	activeRequests  *prometheus.GaugeVec
	proxyErrors     *prometheus.CounterVec
	connsActive     *prometheus.GaugeVec
	connsTotal      *prometheus.CounterVec
	tcpSessions     *prometheus.CounterVec
	tcpActive       *prometheus.GaugeVec
	tcpBytes        *prometheus.CounterVec
	endpoints       *prometheus.GaugeVec
	available       *prometheus.GaugeVec
	ejected         *prometheus.GaugeVec
	panicMode       *prometheus.GaugeVec
	retries         *prometheus.CounterVec
	rejections      *prometheus.CounterVec
	ejections       *prometheus.CounterVec
	notEjected      *prometheus.CounterVec
	healthChanges   *prometheus.CounterVec
	ConfigReloads   *prometheus.CounterVec
	ConfigInfo      *prometheus.GaugeVec
	ConfigTimestamp prometheus.Gauge
}

// NewMetrics creates the metrics in a new registry, with the Go and process collectors.
func NewMetrics() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_requests_total", Help: "HTTP requests proxied, by direction, upstream, route (\"\" when no route matched) and response status code.",
		}, []string{"direction", "upstream", "route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ferry_request_duration_seconds", Help: "Time from receiving a request to the end of its response, by direction, upstream and route (\"\" when no route matched).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"direction", "upstream", "route"}),
		activeRequests: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_active_requests", Help: "HTTP requests in flight.",
		}, []string{"direction", "upstream"}),
		proxyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_proxy_errors_total", Help: "Responses Ferry generated itself, by RFC 9209 Proxy-Status error type.",
		}, []string{"direction", "upstream", "error"}),
		connsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_downstream_connections_active", Help: "Open downstream connections per listener.",
		}, []string{"listener"}),
		connsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_downstream_connections_total", Help: "Accepted downstream connections per listener.",
		}, []string{"listener"}),
		tcpSessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_tcp_sessions_total", Help: "TCP sessions proxied, by result (ok or error).",
		}, []string{"direction", "upstream", "result"}),
		tcpActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_tcp_sessions_active", Help: "TCP sessions open.",
		}, []string{"direction", "upstream"}),
		tcpBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_tcp_bytes_total", Help: "Bytes proxied on TCP sessions; flow=received is from the downstream client, sent is to it.",
		}, []string{"direction", "upstream", "flow"}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_upstream_endpoints", Help: "Endpoints known per upstream.",
		}, []string{"upstream"}),
		available: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_upstream_available_endpoints", Help: "Endpoints per upstream that take traffic: neither ejected nor failing active health checks.",
		}, []string{"upstream"}),
		ejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_outlier_ejected_endpoints", Help: "Endpoints per upstream currently ejected by outlier detection.",
		}, []string{"upstream"}),
		panicMode: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_upstream_panic", Help: "1 while an upstream is in panic mode (too few available endpoints: traffic goes to all of them).",
		}, []string{"upstream"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_retries_total", Help: "Requests retried, by the retry condition that matched.",
		}, []string{"direction", "upstream", "condition"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_circuit_breaker_rejections_total", Help: "Requests, connections and retries refused by an upstream's circuit breaker, by limit.",
		}, []string{"upstream", "limit"}),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_outlier_ejections_total", Help: "Endpoints ejected by outlier detection, by detector.",
		}, []string{"upstream", "detector"}),
		notEjected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_outlier_ejections_skipped_total", Help: "Outliers detected but not ejected, by detector and why (overflow: max_ejection_percent; unenforced: enforcing percentage).",
		}, []string{"upstream", "detector", "reason"}),
		healthChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_health_check_transitions_total", Help: "Changes of endpoint health by active health checks, by new state.",
		}, []string{"upstream", "to"}),
		ConfigReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ferry_config_reloads_total", Help: "Config loads, by result (ok or error).",
		}, []string{"result"}),
		ConfigInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "ferry_config_info", Help: "1 for the version of the config in use.",
		}, []string{"version"}),
		ConfigTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ferry_config_last_reload_success_timestamp_seconds", Help: "When the config in use was applied.",
		}),
	}
	r.MustRegister(m.requests, m.duration, m.activeRequests, m.proxyErrors, m.connsActive, m.connsTotal,
		m.tcpSessions, m.tcpActive, m.tcpBytes, m.endpoints, m.available, m.ejected, m.panicMode, m.retries,
		m.rejections, m.ejections, m.notEjected, m.healthChanges, m.ConfigReloads, m.ConfigInfo, m.ConfigTimestamp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetEndpoints records how many endpoints an upstream has.
func (m *Metrics) SetEndpoints(upstream string, n int) {
	m.endpoints.WithLabelValues(upstream).Set(float64(n))
}

// SetUpstreamHealth records how many of an upstream's endpoints take traffic, how many are
// ejected, and whether it is in panic mode.
func (m *Metrics) SetUpstreamHealth(upstream string, available, ejected int, panic bool) {
	m.available.WithLabelValues(upstream).Set(float64(available))
	m.ejected.WithLabelValues(upstream).Set(float64(ejected))
	p := 0.0
	if panic {
		p = 1
	}
	m.panicMode.WithLabelValues(upstream).Set(p)
}

// CircuitRejection counts something an upstream's circuit breaker refused, by limit
// (max_requests, max_pending, max_connections, max_retries, retry_budget).
func (m *Metrics) CircuitRejection(upstream, limit string) {
	m.rejections.WithLabelValues(upstream, limit).Inc()
}

// OutlierEjection counts an ejection by a detector.
func (m *Metrics) OutlierEjection(upstream, detector string) {
	m.ejections.WithLabelValues(upstream, detector).Inc()
}

// OutlierNotEjected counts an outlier that was not ejected, and why ("overflow" or
// "unenforced").
func (m *Metrics) OutlierNotEjected(upstream, detector, reason string) {
	m.notEjected.WithLabelValues(upstream, detector, reason).Inc()
}

// HealthTransition counts a change of an endpoint's health to state to.
func (m *Metrics) HealthTransition(upstream, to string) {
	m.healthChanges.WithLabelValues(upstream, to).Inc()
}

// ForgetUpstream removes an upstream's gauges when it leaves the config.
func (m *Metrics) ForgetUpstream(upstream string) {
	m.endpoints.DeleteLabelValues(upstream)
	m.available.DeleteLabelValues(upstream)
	m.ejected.DeleteLabelValues(upstream)
	m.panicMode.DeleteLabelValues(upstream)
}

// Listener returns the connection metrics of one listener address.
func (m *Metrics) Listener(address string) ListenerMetrics {
	return ListenerMetrics{
		Active: m.connsActive.WithLabelValues(address),
		Total:  m.connsTotal.WithLabelValues(address),
	}
}

// ListenerMetrics counts downstream connections of one listener.
type ListenerMetrics struct {
	Active prometheus.Gauge
	Total  prometheus.Counter
}

// HTTP returns the request metrics of one (direction, upstream) pair for requests no route
// took (route label ""), with label lookups resolved ahead of the request path.
func (m *Metrics) HTTP(direction, upstream string) *HTTPMetrics {
	return m.HTTPRoute(direction, upstream, "")
}

// HTTPRoute returns the request metrics of requests that route (a route name from the
// config, which bounds the label's values) took and sent to upstream (for a route that
// answers itself, with a redirect or a fixed response, the listener's upstream). Safe for concurrent use; call it
// when building handlers, not per request.
func (m *Metrics) HTTPRoute(direction, upstream, route string) *HTTPMetrics {
	return &HTTPMetrics{
		m: m, direction: direction, upstream: upstream, route: route,
		Duration: m.duration.WithLabelValues(direction, upstream, route),
		Active:   m.activeRequests.WithLabelValues(direction, upstream),
	}
}

// HTTPMetrics are the request metrics of one (direction, upstream, route). Safe for
// concurrent use; the per-status-code counters are resolved once and then read without
// locks. Active, Retry and ProxyError are per (direction, upstream), shared by its routes.
type HTTPMetrics struct {
	m                          *Metrics
	direction, upstream, route string
	Duration                   prometheus.Observer
	Active                     prometheus.Gauge
	codes                      [600]atomic.Pointer[prometheus.Counter]
}

// Request counts one finished request with its status code.
func (h *HTTPMetrics) Request(code int) {
	if code < 0 || code >= len(h.codes) {
		code = 0
	}
	if c := h.codes[code].Load(); c != nil {
		(*c).Inc()
		return
	}
	c := h.m.requests.WithLabelValues(h.direction, h.upstream, h.route, strconv.Itoa(code))
	h.codes[code].Store(&c)
	c.Inc()
}

// Retry counts a retry, by the condition that matched (connect-failure, 5xx, ...).
func (h *HTTPMetrics) Retry(condition string) {
	h.m.retries.WithLabelValues(h.direction, h.upstream, condition).Inc()
}

// ProxyError counts a response Ferry generated itself, by Proxy-Status error type.
func (h *HTTPMetrics) ProxyError(errType string) {
	h.m.proxyErrors.WithLabelValues(h.direction, h.upstream, errType).Inc()
}

// TCP returns the session metrics of one (direction, upstream) pair.
func (m *Metrics) TCP(direction, upstream string) *TCPMetrics {
	return &TCPMetrics{
		OK:       m.tcpSessions.WithLabelValues(direction, upstream, "ok"),
		Failed:   m.tcpSessions.WithLabelValues(direction, upstream, "error"),
		Active:   m.tcpActive.WithLabelValues(direction, upstream),
		Received: m.tcpBytes.WithLabelValues(direction, upstream, "received"),
		Sent:     m.tcpBytes.WithLabelValues(direction, upstream, "sent"),
	}
}

// TCPMetrics are the session metrics of one (direction, upstream) pair. Safe for
// concurrent use.
type TCPMetrics struct {
	OK, Failed     prometheus.Counter
	Active         prometheus.Gauge
	Received, Sent prometheus.Counter
}
