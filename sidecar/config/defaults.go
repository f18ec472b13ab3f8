package config

import (
	"time"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// Protocol names used by Listener.Protocol and Upstream.Protocol.
const (
	// ProtocolHTTP is a listener speaking HTTP/1.1, h2c, gRPC and WebSocket.
	ProtocolHTTP = "http"
	// ProtocolTCP is a listener copying bytes without inspecting them.
	ProtocolTCP = "tcp"
	// ProtocolAuto speaks to an upstream in the downstream request's HTTP version.
	ProtocolAuto = "auto"
	// ProtocolHTTP1 speaks HTTP/1.1 to an upstream.
	ProtocolHTTP1 = "http1"
	// ProtocolHTTP2 speaks h2c with prior knowledge to an upstream.
	ProtocolHTTP2 = "http2"
)

// Defaults applied by Load and Parse to keys the file leaves out.
const (
	DefaultAdminAddress            = "127.0.0.1:9901"
	DefaultListenerProtocol        = ProtocolHTTP
	DefaultHTTPIdleTimeout         = 5 * time.Minute
	DefaultTCPIdleTimeout          = time.Hour
	DefaultReadHeaderTimeout       = 10 * time.Second
	DefaultMaxHeaderBytes          = 64 << 10
	DefaultConnectTimeout          = time.Second
	DefaultLB                      = balancer.RoundRobin
	DefaultUpstreamProtocol        = ProtocolAuto
	DefaultRequestTimeout          = 15 * time.Second
	DefaultUpstreamIdleTimeout     = 90 * time.Second
	DefaultMaxIdleConnsPerEndpoint = 1024
	DefaultDrainTimeout            = 30 * time.Second
	DefaultWeight                  = 1
	DefaultHealthyPanicThreshold   = 50

	DefaultRetryAttempts            = 1
	DefaultRetryBackoffBase         = 25 * time.Millisecond
	DefaultRetryBudgetPercent       = 20.0
	DefaultRetryMinRetryConcurrency = 3
	DefaultRetryBufferLimit         = 64 << 10

	DefaultMaxConnections = 1024
	DefaultMaxPending     = 1024
	DefaultMaxRequests    = 1024

	DefaultOutlierInterval           = 10 * time.Second
	DefaultBaseEjectionTime          = 30 * time.Second
	DefaultMaxEjectionTime           = 300 * time.Second
	DefaultMaxEjectionPercent        = 10
	DefaultConsecutive5xx            = 5
	DefaultSuccessRateMinimumHosts   = 5
	DefaultSuccessRateRequestVolume  = 100
	DefaultSuccessRateStdevFactor    = 1.9
	DefaultFailurePercentThreshold   = 85
	DefaultFailurePercentMinimumHost = 5
	DefaultFailurePercentVolume      = 50
	DefaultEnforcing                 = 100

	DefaultHealthInterval           = 5 * time.Second
	DefaultHealthTimeout            = time.Second
	DefaultHealthUnhealthyThreshold = 3
	DefaultHealthHealthyThreshold   = 2
)

// Retry conditions, the values of retries.on.
const (
	RetryConnectFailure       = "connect-failure"
	RetryRefusedStream        = "refused-stream"
	RetryReset                = "reset"
	RetryGatewayError         = "gateway-error"
	Retry5xx                  = "5xx"
	RetryRetriableStatusCodes = "retriable-status-codes"
	RetryCancelled            = "cancelled"
	RetryDeadlineExceeded     = "deadline-exceeded"
	RetryInternal             = "internal"
	RetryResourceExhausted    = "resource-exhausted"
	RetryUnavailable          = "unavailable"
)

// RetryConditions lists every value retries.on accepts.
var RetryConditions = []string{RetryConnectFailure, RetryRefusedStream, RetryReset, RetryGatewayError, Retry5xx,
	RetryRetriableStatusCodes, RetryCancelled, RetryDeadlineExceeded, RetryInternal, RetryResourceExhausted, RetryUnavailable}

// DefaultRetryOn is retries.on when the file leaves it out: failures where the upstream
// cannot have acted on the request, or did not answer.
func DefaultRetryOn() []string {
	return []string{RetryConnectFailure, RetryRefusedStream, RetryReset}
}

// DefaultExpectedStatuses is health_check.expected_statuses of an HTTP check when the file
// leaves it out.
func DefaultExpectedStatuses() []StatusRange { return []StatusRange{{200, 299}} }

// MaxWeight is the largest endpoint weight.
const MaxWeight = 1_000_000

// MaxRetryAttempts is the largest retries.attempts.
const MaxRetryAttempts = 10

// applyDefaults fills in what the file leaves out.
//
// An empty string has no meaning of its own in the schema, so empty strings take their
// default. Numbers and durations are different: "request_timeout: 0s" means "disabled" and
// must stay 0, and "weight: 0" must be refused rather than silently become 1. So numbers
// and durations take their default only when their key is absent from the file (or null),
// which l.has answers from the YAML node tree that Parse decodes alongside the struct. This
// keeps the schema's plain value types (no pointers, no hidden "was set" fields) for the
// packages that read a Config.
func applyDefaults(c *Config, l *locator) {
	dur := func(d *Duration, p path, def time.Duration) {
		if !l.has(p) {
			*d = Duration(def)
		}
	}
	num := func(n *int, p path, def int) {
		if !l.has(p) {
			*n = def
		}
	}
	float := func(f *float64, p path, def float64) {
		if !l.has(p) {
			*f = def
		}
	}
	listener := func(ln *Listener, p path) {
		if ln.Protocol == "" {
			ln.Protocol = DefaultListenerProtocol
		}
		idle := DefaultHTTPIdleTimeout
		if ln.Protocol == ProtocolTCP {
			idle = DefaultTCPIdleTimeout
		}
		dur(&ln.IdleTimeout, p.with("idle_timeout"), idle)
		dur(&ln.ReadHeaderTimeout, p.with("read_header_timeout"), DefaultReadHeaderTimeout)
		num(&ln.MaxHeaderBytes, p.with("max_header_bytes"), DefaultMaxHeaderBytes)
	}

	if c.Admin.Address == "" {
		c.Admin.Address = DefaultAdminAddress
	}
	// Lists are never nil, so that a config reads the same however it was written and
	// /config_dump shows [] rather than null.
	if c.Outbound == nil {
		c.Outbound = []Outbound{}
	}
	if c.Upstreams == nil {
		c.Upstreams = []Upstream{}
	}
	if in := c.Inbound; in != nil {
		p := path{"inbound"}
		listener(&in.Listener, p)
		dur(&in.ConnectTimeout, p.with("connect_timeout"), DefaultConnectTimeout)
		routeDefaults(&in.Routes)
		if in.TargetProtocol == "" && in.Protocol != ProtocolTCP {
			in.TargetProtocol = ProtocolAuto
		}
	}
	for i := range c.Outbound {
		listener(&c.Outbound[i].Listener, l.outbound(i))
		routeDefaults(&c.Outbound[i].Routes)
	}
	for i := range c.Upstreams {
		u := &c.Upstreams[i]
		p := l.upstream(i)
		if u.LB == "" {
			u.LB = DefaultLB
		}
		if u.Protocol == "" {
			u.Protocol = DefaultUpstreamProtocol
		}
		dur(&u.ConnectTimeout, p.with("connect_timeout"), DefaultConnectTimeout)
		dur(&u.RequestTimeout, p.with("request_timeout"), DefaultRequestTimeout)
		dur(&u.IdleTimeout, p.with("idle_timeout"), DefaultUpstreamIdleTimeout)
		num(&u.MaxIdleConnsPerEndpoint, p.with("max_idle_connections_per_endpoint"), DefaultMaxIdleConnsPerEndpoint)
		for j := range u.Endpoints {
			if !l.has(l.endpoint(i, j).with("weight")) {
				u.Endpoints[j].Weight = DefaultWeight
			}
		}
		num(&u.HealthyPanicThreshold, p.with("healthy_panic_threshold"), DefaultHealthyPanicThreshold)
		if r := u.Retries; r != nil {
			rp := p.with("retries")
			num(&r.Attempts, rp.with("attempts"), DefaultRetryAttempts)
			if !l.has(rp.with("on")) {
				r.On = DefaultRetryOn()
			}
			if r.RetriableStatusCodes == nil {
				r.RetriableStatusCodes = []int{}
			}
			dur(&r.Backoff.Base, rp.with("backoff", "base"), DefaultRetryBackoffBase)
			dur(&r.Backoff.Max, rp.with("backoff", "max"), 10*r.Backoff.Base.D())
			float(&r.BudgetPercent, rp.with("budget_percent"), DefaultRetryBudgetPercent)
			num(&r.MinRetryConcurrency, rp.with("min_retry_concurrency"), DefaultRetryMinRetryConcurrency)
			num(&r.BufferLimit, rp.with("buffer_limit"), DefaultRetryBufferLimit)
		}
		cb, cp := &u.CircuitBreaker, p.with("circuit_breaker")
		num(&cb.MaxConnections, cp.with("max_connections"), DefaultMaxConnections)
		num(&cb.MaxPending, cp.with("max_pending"), DefaultMaxPending)
		num(&cb.MaxRequests, cp.with("max_requests"), DefaultMaxRequests)
		if od := u.OutlierDetection; od != nil {
			op := p.with("outlier_detection")
			dur(&od.Interval, op.with("interval"), DefaultOutlierInterval)
			dur(&od.BaseEjectionTime, op.with("base_ejection_time"), DefaultBaseEjectionTime)
			dur(&od.MaxEjectionTime, op.with("max_ejection_time"), DefaultMaxEjectionTime)
			num(&od.MaxEjectionPercent, op.with("max_ejection_percent"), DefaultMaxEjectionPercent)
			num(&od.Consecutive5xx, op.with("consecutive_5xx"), DefaultConsecutive5xx)
			// success_rate is on unless turned off, as in Envoy; failure_percentage is off
			// unless present.
			if od.SuccessRate == nil {
				od.SuccessRate = &SuccessRate{}
			}
			sr, sp := od.SuccessRate, op.with("success_rate")
			num(&sr.MinimumHosts, sp.with("minimum_hosts"), DefaultSuccessRateMinimumHosts)
			num(&sr.RequestVolume, sp.with("request_volume"), DefaultSuccessRateRequestVolume)
			float(&sr.StdevFactor, sp.with("stdev_factor"), DefaultSuccessRateStdevFactor)
			num(&sr.Enforcing, sp.with("enforcing"), DefaultEnforcing)
			if fp := od.FailurePercentage; fp != nil {
				fpp := op.with("failure_percentage")
				num(&fp.Threshold, fpp.with("threshold"), DefaultFailurePercentThreshold)
				num(&fp.MinimumHosts, fpp.with("minimum_hosts"), DefaultFailurePercentMinimumHost)
				num(&fp.RequestVolume, fpp.with("request_volume"), DefaultFailurePercentVolume)
				num(&fp.Enforcing, fpp.with("enforcing"), DefaultEnforcing)
			}
		}
		if hc := u.HealthCheck; hc != nil {
			hp := p.with("health_check")
			if hc.HTTP != "" && !l.has(hp.with("expected_statuses")) {
				hc.ExpectedStatuses = DefaultExpectedStatuses()
			}
			if hc.ExpectedStatuses == nil {
				hc.ExpectedStatuses = []StatusRange{}
			}
			dur(&hc.Interval, hp.with("interval"), DefaultHealthInterval)
			dur(&hc.IntervalJitter, hp.with("interval_jitter"), hc.Interval.D()/10)
			dur(&hc.Timeout, hp.with("timeout"), DefaultHealthTimeout)
			num(&hc.UnhealthyThreshold, hp.with("unhealthy_threshold"), DefaultHealthUnhealthyThreshold)
			num(&hc.HealthyThreshold, hp.with("healthy_threshold"), DefaultHealthHealthyThreshold)
		}
	}
	ingressDefaults(c, l, listener, dur)
	dur(&c.DrainTimeout, path{"drain_timeout"}, DefaultDrainTimeout)
	applyConsulDefaults(c, l)
	mtlsDefaults(c)
	policyDefaults(&c.Policy)
	if c.Telemetry.AccessLogFormat == "" {
		c.Telemetry.AccessLogFormat = AccessLogJSON
	}
}
