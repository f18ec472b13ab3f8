// Package config is Ferry's configuration file: the YAML schema, its defaults, and
// validation that reports every problem with file:line. A *Config returned by Load or Parse
// is fully validated and defaulted; treat it as immutable.
package config

import (
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/route"

	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// Config is the whole file.
type Config struct {
	// Service is this service's name in the mesh.
	Service string `yaml:"service" json:"service"`
	// Admin is the admin listener.
	Admin Admin `yaml:"admin" json:"admin"`
	// Inbound is where peer sidecars reach the local application; optional.
	Inbound *Inbound `yaml:"inbound" json:"inbound,omitempty"`
	// Outbound lists the listeners the local application calls, one per upstream.
	Outbound []Outbound `yaml:"outbound" json:"outbound"`
	// Upstreams lists the services this one calls.
	Upstreams []Upstream `yaml:"upstreams" json:"upstreams"`
	// Ingress lists TLS listeners for traffic from outside the mesh (see Ingress); optional.
	Ingress []Ingress `yaml:"ingress,omitempty" json:"ingress,omitempty"`
	// DrainTimeout bounds how long in-flight requests and TCP sessions may take to finish on
	// SIGTERM/SIGINT and on listeners removed by a reload. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout"`
	// Telemetry configures access logs and tracing.
	Telemetry Telemetry `yaml:"telemetry" json:"telemetry"`
	// Discovery says how to reach discovery services (Consul); optional.
	Discovery *Discovery `yaml:"discovery" json:"discovery,omitempty"`
	// MTLS, if present, secures every hop between sidecars with mutual TLS (see MTLS).
	// Absent: plaintext on every hop, with a start-up warning.
	MTLS *MTLS `yaml:"mtls" json:"mtls,omitempty"`
	// Policy is what the inbound listener enforces on requests and connections before
	// they reach the local application: path normalization, request filtering, access
	// rules and rate limits (see policy.Config). The zero value allows everything.
	Policy policy.Config `yaml:"policy" json:"policy"`

	// File is the path the config was read from (not a YAML key).
	File string `yaml:"-" json:"file"`
	// Version is a content hash of the file (not a YAML key).
	Version string `yaml:"-" json:"version"`
	// Overlay, when a mesh-wide document (Consul KV) was merged into the file, says where
	// it came from and which keys it set (not a YAML key); nil for the file alone.
	Overlay *OverlayInfo `yaml:"-" json:"overlay,omitempty"`
}

// Telemetry is the telemetry block.
type Telemetry struct {
	// AccessLog is where access logs go: "" or "off" (none, the default), "stdout",
	// "stderr", or a file path.
	AccessLog string `yaml:"access_log" json:"access_log,omitempty"`
	// AccessLogFormat is the format of access-log lines: "json" (one JSON object per
	// line, the default) or "text" (logfmt-style key=value pairs).
	AccessLogFormat string `yaml:"access_log_format" json:"access_log_format,omitempty"`
	// Tracing configures OpenTelemetry tracing; nil (the key left out) is tracing off.
	// A block that is present turns it on with every key it leaves out at its default
	// (OTLP/gRPC to 127.0.0.1:4317, sample_ratio 1, tracecontext and baggage).
	Tracing *telemetry.TracingConfig `yaml:"tracing" json:"tracing,omitempty"`
}

// Admin is the admin HTTP listener.
type Admin struct {
	// Address defaults to 127.0.0.1:9901.
	Address string `yaml:"address" json:"address"`
}

// Listener holds the settings every proxy listener shares.
type Listener struct {
	// Address is host:port to listen on.
	Address string `yaml:"address" json:"address"`
	// Protocol is "http" (HTTP/1.1, h2c, gRPC, WebSocket) or "tcp". Default http.
	Protocol string `yaml:"protocol" json:"protocol"`
	// IdleTimeout closes a downstream connection idle this long (HTTP keep-alive idle, or a
	// TCP session with no bytes either way). Default 5m for http, 1h for tcp.
	IdleTimeout Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// ReadHeaderTimeout bounds the time to read a request's headers (slowloris). Default 10s.
	ReadHeaderTimeout Duration `yaml:"read_header_timeout" json:"read_header_timeout"`
	// MaxHeaderBytes bounds the size of a request's headers. Default 64 KiB.
	MaxHeaderBytes int `yaml:"max_header_bytes" json:"max_header_bytes"`
}

// Inbound is the listener peer sidecars reach; it forwards to the local application.
type Inbound struct {
	Listener `yaml:",inline" json:",inline"`
	// Target is host:port of the local application.
	Target string `yaml:"target" json:"target"`
	// TargetProtocol is how HTTP is spoken to Target: "auto" (the caller's protocol: an
	// HTTP/2 caller, such as a gRPC client's sidecar, reaches the application over h2c;
	// the default), "http1" (for an application that speaks only HTTP/1.1: HTTP/2
	// callers are served, and their requests forwarded as HTTP/1.1), or "http2" (h2c
	// with prior knowledge). HTTP listeners only.
	TargetProtocol string `yaml:"target_protocol" json:"target_protocol,omitempty"`
	// ConnectTimeout bounds dialing the application. Default 1s.
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// RequestTimeout bounds the time from sending a request to the application until its
	// response headers arrive; 0 disables. Default 0 (the caller's sidecar times out).
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
	// Routes (http only) route requests by path, method, headers and query: a route
	// forwards to the local application (Target) unless it names an upstream, or answers
	// with a redirect or a fixed response (see route.Route). Requests no route takes go to
	// Target. Paths are matched as the policy normalizes them.
	Routes []route.Route `yaml:"routes,omitempty" json:"routes,omitempty"`
}

// Outbound is a listener the local application calls to reach an upstream.
type Outbound struct {
	Listener `yaml:",inline" json:",inline"`
	// Upstream names an entry of Config.Upstreams: where requests go that no route takes.
	// It may be left out on an http listener with routes; requests no route takes then get
	// 404 (Proxy-Status destination_not_found).
	Upstream string `yaml:"upstream" json:"upstream"`
	// Routes (http only) route requests by path, method, headers and query to upstreams
	// (one, or a weighted split), or answer with a redirect or a fixed response (see
	// route.Route). The first route that matches takes the request.
	Routes []route.Route `yaml:"routes,omitempty" json:"routes,omitempty"`
}

// Upstream is a service this one calls and how to call it.
type Upstream struct {
	// Name is the upstream's name, referenced by Outbound.Upstream.
	Name string `yaml:"name" json:"name"`
	// Endpoints lists static endpoints: "host:port" or {address, weight}.
	Endpoints []Endpoint `yaml:"endpoints" json:"endpoints"`
	// Consul, instead of endpoints, takes the endpoints from a Consul service (see
	// ConsulUpstream and the top-level discovery.consul block).
	Consul *ConsulUpstream `yaml:"consul" json:"consul,omitempty"`
	// LB is the load-balancing policy: round_robin (default), least_request, random,
	// ring_hash, maglev.
	LB string `yaml:"lb" json:"lb"`
	// HashOn is the hash key for ring_hash and maglev: header:NAME, cookie:NAME or source_ip.
	HashOn string `yaml:"hash_on" json:"hash_on,omitempty"`
	// Protocol is how HTTP is spoken to the endpoints: "auto" (the downstream request's
	// protocol, the default), "http1", or "http2" (h2c with prior knowledge).
	Protocol string `yaml:"protocol" json:"protocol"`
	// ConnectTimeout bounds dialing an endpoint. Default 1s.
	ConnectTimeout Duration `yaml:"connect_timeout" json:"connect_timeout"`
	// RequestTimeout bounds the time from sending a request until the response headers
	// arrive; 0 disables (streaming calls are bounded by IdleTimeout). Default 15s.
	RequestTimeout Duration `yaml:"request_timeout" json:"request_timeout"`
	// IdleTimeout closes pooled upstream connections idle this long. Default 90s.
	IdleTimeout Duration `yaml:"idle_timeout" json:"idle_timeout"`
	// MaxIdleConnsPerEndpoint bounds the pool of idle HTTP/1.1 connections kept per
	// endpoint. Default 1024.
	MaxIdleConnsPerEndpoint int `yaml:"max_idle_connections_per_endpoint" json:"max_idle_connections_per_endpoint"`
	// Retries, if present, retries failed requests (HTTP) and connection attempts (TCP) on
	// another endpoint. Absent: no retries.
	Retries *Retries `yaml:"retries" json:"retries,omitempty"`
	// CircuitBreaker bounds what may be in flight to the upstream; always in force, with
	// Envoy's defaults.
	CircuitBreaker CircuitBreaker `yaml:"circuit_breaker" json:"circuit_breaker"`
	// OutlierDetection, if present, ejects endpoints that fail (passive health checking).
	OutlierDetection *OutlierDetection `yaml:"outlier_detection" json:"outlier_detection,omitempty"`
	// HealthCheck, if present, checks every endpoint actively.
	HealthCheck *HealthCheck `yaml:"health_check" json:"health_check,omitempty"`
	// HealthyPanicThreshold is Envoy's panic threshold, a percentage: when fewer endpoints
	// than this are available (neither ejected nor failing health checks), traffic is
	// balanced over all of them. 0 disables panic mode. Default 50.
	HealthyPanicThreshold int `yaml:"healthy_panic_threshold" json:"healthy_panic_threshold"`
	// TLS is how connections to the endpoints are secured: "mesh" (mutual TLS with the
	// peer sidecar, verifying Identity; the default when the file has an mtls block),
	// "none" (plaintext; the default without one, and the choice for a service outside
	// the mesh) or "simple" (ordinary server TLS, verified against the system roots or
	// TLSCAFile).
	TLS string `yaml:"tls" json:"tls"`
	// Identity is the SPIFFE ID the endpoints must present with tls: mesh. Default
	// spiffe://<trust_domain>/svc/<name>.
	Identity string `yaml:"identity" json:"identity,omitempty"`
	// TLSCAFile, with tls: simple, is a PEM file of the CAs that verify the endpoints'
	// certificates instead of the system roots.
	TLSCAFile string `yaml:"tls_ca_file" json:"tls_ca_file,omitempty"`
	// TLSServerName, with tls: simple, is the name verified in (and sent as SNI to) the
	// endpoints' certificates. Default: each endpoint's host.
	TLSServerName string `yaml:"tls_server_name" json:"tls_server_name,omitempty"`
}

// Retries is an upstream's retry policy.
type Retries struct {
	// Attempts is how many times a failed request may be retried (so up to Attempts+1
	// tries in all); for TCP, how many more endpoints a failed connect may try. Default 1.
	Attempts int `yaml:"attempts" json:"attempts"`
	// On lists the failures that are retried: connect-failure, refused-stream, reset,
	// gateway-error (502, 503, 504 and no response), 5xx (any 5xx and no response),
	// retriable-status-codes, and the gRPC statuses cancelled, deadline-exceeded, internal,
	// resource-exhausted, unavailable. Default [connect-failure, refused-stream, reset].
	On []string `yaml:"on" json:"on"`
	// RetriableStatusCodes are retried when On has retriable-status-codes.
	RetriableStatusCodes []int `yaml:"retriable_status_codes" json:"retriable_status_codes,omitempty"`
	// PerTryTimeout bounds the wait for response headers of each try; request_timeout still
	// bounds them all. 0 (the default): no limit per try.
	PerTryTimeout Duration `yaml:"per_try_timeout" json:"per_try_timeout"`
	// Backoff is the wait between tries: a random time up to base × 2^(retry-1), capped by
	// max (exponential backoff with full jitter).
	Backoff Backoff `yaml:"backoff" json:"backoff"`
	// BudgetPercent is the retry budget: the requests retrying at once may be at most this
	// percentage of the requests in flight to the upstream. Default 20.
	BudgetPercent float64 `yaml:"budget_percent" json:"budget_percent"`
	// MinRetryConcurrency is how many requests may always retry at once, whatever the
	// budget. Default 3.
	MinRetryConcurrency int `yaml:"min_retry_concurrency" json:"min_retry_concurrency"`
	// BufferLimit is the largest request body, in bytes, kept to be sent again; a request
	// whose body is larger is retried only after a connect failure. Default 65536.
	BufferLimit int `yaml:"buffer_limit" json:"buffer_limit"`
}

// Backoff is the wait between retries.
type Backoff struct {
	// Base is the first retry's longest wait. Default 25ms.
	Base Duration `yaml:"base" json:"base"`
	// Max caps the wait. Default 10 × base.
	Max Duration `yaml:"max" json:"max"`
}

// CircuitBreaker holds an upstream's limits. Over a limit, Ferry answers 503 at once with
// Proxy-Status connection_limit_reached. 0 is no limit.
type CircuitBreaker struct {
	// MaxConnections bounds the connections open to the upstream's endpoints. Default 1024.
	MaxConnections int `yaml:"max_connections" json:"max_connections"`
	// MaxPending bounds the connection attempts in progress (requests waiting for a new
	// connection). Default 1024.
	MaxPending int `yaml:"max_pending" json:"max_pending"`
	// MaxRequests bounds the HTTP requests in flight. Default 1024.
	MaxRequests int `yaml:"max_requests" json:"max_requests"`
	// MaxRetries bounds the requests retrying at once, on top of the retry budget.
	// Default 0: the budget alone decides.
	MaxRetries int `yaml:"max_retries" json:"max_retries"`
}

// OutlierDetection is Envoy's outlier detection for an upstream.
type OutlierDetection struct {
	// Interval is how often success rates and failure percentages are evaluated. Default 10s.
	Interval Duration `yaml:"interval" json:"interval"`
	// BaseEjectionTime is how long a first ejection lasts; the n-th lasts n times as long.
	// Default 30s.
	BaseEjectionTime Duration `yaml:"base_ejection_time" json:"base_ejection_time"`
	// MaxEjectionTime caps an ejection (at least base_ejection_time). Default 300s.
	MaxEjectionTime Duration `yaml:"max_ejection_time" json:"max_ejection_time"`
	// MaxEjectionPercent is the largest share of endpoints ejected at once. Default 10.
	MaxEjectionPercent int `yaml:"max_ejection_percent" json:"max_ejection_percent"`
	// Consecutive5xx ejects after this many failures in a row (5xx, connect failures,
	// resets, timeouts); 0 disables. Default 5.
	Consecutive5xx int `yaml:"consecutive_5xx" json:"consecutive_5xx"`
	// ConsecutiveGatewayFailure ejects after this many gateway failures in a row (502, 503,
	// 504, connect failures, resets, timeouts); 0 (the default) disables.
	ConsecutiveGatewayFailure int `yaml:"consecutive_gateway_failure" json:"consecutive_gateway_failure"`
	// SuccessRate is success-rate ejection; on by default, as in Envoy (enforcing: 0
	// turns it off).
	SuccessRate *SuccessRate `yaml:"success_rate" json:"success_rate,omitempty"`
	// FailurePercentage is failure-percentage ejection; off unless present.
	FailurePercentage *FailurePercentage `yaml:"failure_percentage" json:"failure_percentage,omitempty"`
}

// SuccessRate ejects an endpoint whose success rate is below the mean of its peers' by more
// than stdev_factor standard deviations.
type SuccessRate struct {
	// MinimumHosts endpoints must have request_volume calls in the interval. Default 5.
	MinimumHosts int `yaml:"minimum_hosts" json:"minimum_hosts"`
	// RequestVolume is the calls an endpoint needs in the interval to count. Default 100.
	RequestVolume int `yaml:"request_volume" json:"request_volume"`
	// StdevFactor multiplies the standard deviation (1.9 here is Envoy's 1900). Default 1.9.
	StdevFactor float64 `yaml:"stdev_factor" json:"stdev_factor"`
	// Enforcing is the chance, in percent, that a detected outlier is ejected. Default 100.
	Enforcing int `yaml:"enforcing" json:"enforcing"`
}

// FailurePercentage ejects an endpoint more than threshold percent of whose calls failed.
type FailurePercentage struct {
	// Threshold is a percentage. Default 85.
	Threshold int `yaml:"threshold" json:"threshold"`
	// MinimumHosts endpoints must have request_volume calls in the interval. Default 5.
	MinimumHosts int `yaml:"minimum_hosts" json:"minimum_hosts"`
	// RequestVolume is the calls an endpoint needs in the interval to count. Default 50.
	RequestVolume int `yaml:"request_volume" json:"request_volume"`
	// Enforcing is the chance, in percent, that a detected outlier is ejected. Default 100.
	Enforcing int `yaml:"enforcing" json:"enforcing"`
}

// HealthCheck is an upstream's active health check: exactly one of HTTP, TCP and GRPC.
type HealthCheck struct {
	// HTTP is the path of an HTTP GET check, e.g. /healthz.
	HTTP string `yaml:"http" json:"http,omitempty"`
	// TCP: a check that connects and closes.
	TCP bool `yaml:"tcp" json:"tcp,omitempty"`
	// GRPC, if set, is the service named in a grpc.health.v1 check ("" checks the whole
	// server).
	GRPC *string `yaml:"grpc" json:"grpc,omitempty"`
	// ExpectedStatuses are the statuses that pass an HTTP check: codes (200) or ranges
	// ("200-299"). Default ["200-299"].
	ExpectedStatuses []StatusRange `yaml:"expected_statuses" json:"expected_statuses,omitempty"`
	// Interval is the time between checks of an endpoint. Default 5s.
	Interval Duration `yaml:"interval" json:"interval"`
	// IntervalJitter is the largest random time added to each interval. Default 10 % of
	// interval.
	IntervalJitter Duration `yaml:"interval_jitter" json:"interval_jitter"`
	// Timeout bounds one check. Default 1s.
	Timeout Duration `yaml:"timeout" json:"timeout"`
	// UnhealthyThreshold is how many failed checks in a row mark an endpoint unhealthy.
	// Default 3.
	UnhealthyThreshold int `yaml:"unhealthy_threshold" json:"unhealthy_threshold"`
	// HealthyThreshold is how many passed checks in a row mark an unhealthy endpoint healthy
	// again. Default 2.
	HealthyThreshold int `yaml:"healthy_threshold" json:"healthy_threshold"`
}

// StatusRange is an inclusive range of HTTP status codes, written 200 or "200-299".
type StatusRange struct {
	Min, Max int
}

// Endpoint is one static endpoint. In YAML it is either a "host:port" string or a mapping
// {address: host:port, weight: N}.
type Endpoint struct {
	Address string `yaml:"address" json:"address"`
	// Weight defaults to 1.
	Weight uint32 `yaml:"weight" json:"weight"`
}

// Duration is a time.Duration written in the file as a Go duration string ("1.5s", "200ms").
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
