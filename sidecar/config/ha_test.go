package config

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// upstreamDoc is a config whose only upstream, api, has the given extra keys (YAML lines
// indented by four spaces).
func upstreamDoc(extra string) string {
	return `
service: web
outbound: [{upstream: api, address: 127.0.0.1:9191}]
upstreams:
  - name: api
    endpoints: [127.0.0.1:8081, 127.0.0.1:8082]
` + extra
}

func TestParseDesignHighAvailabilityKeys(t *testing.T) {
	// The upstream of DESIGN.md's example, as written there.
	c, err := parse(t, upstreamDoc(`
    retries: {attempts: 2, on: [connect-failure, reset, gateway-error], per_try_timeout: 2s, budget_percent: 20}
    circuit_breaker: {max_connections: 1024, max_pending: 1024, max_requests: 1024}
    outlier_detection: {consecutive_5xx: 5, consecutive_gateway_failure: 5, interval: 10s,
                        base_ejection_time: 30s, max_ejection_percent: 50}
    health_check: {http: /healthz, interval: 5s, timeout: 1s, unhealthy_threshold: 3, healthy_threshold: 2}
`))
	if err != nil {
		t.Fatalf("Parse() error = %v", err)
	}
	u := c.Upstreams[0]
	want := Upstream{
		Name: "api", Endpoints: []Endpoint{{"127.0.0.1:8081", 1}, {"127.0.0.1:8082", 1}},
		LB: "round_robin", Protocol: "auto", ConnectTimeout: Duration(time.Second), RequestTimeout: Duration(15 * time.Second),
		IdleTimeout: Duration(90 * time.Second), MaxIdleConnsPerEndpoint: 1024,
		Retries: &Retries{Attempts: 2, On: []string{"connect-failure", "reset", "gateway-error"}, RetriableStatusCodes: []int{},
			PerTryTimeout: Duration(2 * time.Second), Backoff: Backoff{Base: Duration(25 * time.Millisecond), Max: Duration(250 * time.Millisecond)},
			BudgetPercent: 20, MinRetryConcurrency: 3, BufferLimit: 65536},
		CircuitBreaker: CircuitBreaker{MaxConnections: 1024, MaxPending: 1024, MaxRequests: 1024},
		OutlierDetection: &OutlierDetection{Interval: Duration(10 * time.Second), BaseEjectionTime: Duration(30 * time.Second),
			MaxEjectionTime: Duration(300 * time.Second), MaxEjectionPercent: 50, Consecutive5xx: 5, ConsecutiveGatewayFailure: 5,
			SuccessRate: &SuccessRate{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1.9, Enforcing: 100}},
		HealthCheck: &HealthCheck{HTTP: "/healthz", ExpectedStatuses: []StatusRange{{200, 299}}, Interval: Duration(5 * time.Second),
			IntervalJitter: Duration(500 * time.Millisecond), Timeout: Duration(time.Second), UnhealthyThreshold: 3, HealthyThreshold: 2},
		HealthyPanicThreshold: 50, TLS: "none",
	}
	if !reflect.DeepEqual(u, want) {
		t.Errorf("Upstreams[0] =\n%+v\nwant\n%+v", u, want)
	}
}

func TestParseHighAvailabilityDefaults(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		check func(t *testing.T, u *Upstream)
	}{
		{
			name:  "no blocks: no retries, detection or checks; Envoy's circuit breaker",
			extra: "",
			check: func(t *testing.T, u *Upstream) {
				if u.Retries != nil || u.OutlierDetection != nil || u.HealthCheck != nil {
					t.Errorf("Retries, OutlierDetection, HealthCheck = %v, %v, %v; want nil", u.Retries, u.OutlierDetection, u.HealthCheck)
				}
				if want := (CircuitBreaker{1024, 1024, 1024, 0}); u.CircuitBreaker != want {
					t.Errorf("CircuitBreaker = %+v, want %+v", u.CircuitBreaker, want)
				}
			},
		},
		{
			name:  "empty retries block",
			extra: "    retries: {}\n",
			check: func(t *testing.T, u *Upstream) {
				r := u.Retries
				if r.Attempts != 1 || !reflect.DeepEqual(r.On, []string{"connect-failure", "refused-stream", "reset"}) ||
					r.PerTryTimeout != 0 || r.Backoff != (Backoff{Duration(25 * time.Millisecond), Duration(250 * time.Millisecond)}) ||
					r.BudgetPercent != 20 || r.MinRetryConcurrency != 3 || r.BufferLimit != 65536 {
					t.Errorf("Retries = %+v", r)
				}
			},
		},
		{
			name:  "explicit zeros stay, backoff max follows base",
			extra: "    retries: {budget_percent: 0, min_retry_concurrency: 0, buffer_limit: 0, backoff: {base: 1s}, on: [retriable-status-codes, unavailable], retriable_status_codes: [409]}\n    healthy_panic_threshold: 0\n    circuit_breaker: {max_requests: 0, max_retries: 7}\n",
			check: func(t *testing.T, u *Upstream) {
				r := u.Retries
				if r.BudgetPercent != 0 || r.MinRetryConcurrency != 0 || r.BufferLimit != 0 || r.Backoff.Max != Duration(10*time.Second) {
					t.Errorf("Retries = %+v, want explicit zeros and backoff.max 10s", r)
				}
				if u.HealthyPanicThreshold != 0 || u.CircuitBreaker != (CircuitBreaker{1024, 1024, 0, 7}) {
					t.Errorf("HealthyPanicThreshold, CircuitBreaker = %d, %+v", u.HealthyPanicThreshold, u.CircuitBreaker)
				}
			},
		},
		{
			name:  "empty outlier_detection block: Envoy's defaults, success rate on",
			extra: "    outlier_detection: {}\n",
			check: func(t *testing.T, u *Upstream) {
				want := &OutlierDetection{Interval: Duration(10 * time.Second), BaseEjectionTime: Duration(30 * time.Second),
					MaxEjectionTime: Duration(300 * time.Second), MaxEjectionPercent: 10, Consecutive5xx: 5,
					SuccessRate: &SuccessRate{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1.9, Enforcing: 100}}
				if !reflect.DeepEqual(u.OutlierDetection, want) {
					t.Errorf("OutlierDetection = %+v, want %+v", u.OutlierDetection, want)
				}
			},
		},
		{
			name:  "failure_percentage present, consecutive_5xx off, success rate not enforced",
			extra: "    outlier_detection: {consecutive_5xx: 0, failure_percentage: {threshold: 20}, success_rate: {enforcing: 0}}\n",
			check: func(t *testing.T, u *Upstream) {
				od := u.OutlierDetection
				if od.Consecutive5xx != 0 || od.SuccessRate.Enforcing != 0 || od.SuccessRate.MinimumHosts != 5 ||
					!reflect.DeepEqual(od.FailurePercentage, &FailurePercentage{Threshold: 20, MinimumHosts: 5, RequestVolume: 50, Enforcing: 100}) {
					t.Errorf("OutlierDetection = %+v / %+v / %+v", od, od.SuccessRate, od.FailurePercentage)
				}
			},
		},
		{
			name:  "tcp check",
			extra: "    health_check: {tcp: true, interval: 2s}\n",
			check: func(t *testing.T, u *Upstream) {
				hc := u.HealthCheck
				if !hc.TCP || hc.GRPC != nil || len(hc.ExpectedStatuses) != 0 || hc.IntervalJitter != Duration(200*time.Millisecond) ||
					hc.Timeout != Duration(time.Second) || hc.UnhealthyThreshold != 3 || hc.HealthyThreshold != 2 {
					t.Errorf("HealthCheck = %+v", hc)
				}
			},
		},
		{
			name:  "grpc check of the whole server, no jitter",
			extra: "    health_check: {grpc: \"\", interval_jitter: 0s}\n",
			check: func(t *testing.T, u *Upstream) {
				hc := u.HealthCheck
				if hc.GRPC == nil || *hc.GRPC != "" || hc.IntervalJitter != 0 || hc.Interval != Duration(5*time.Second) {
					t.Errorf("HealthCheck = %+v", hc)
				}
			},
		},
		{
			name:  "grpc check of a service, expected statuses of an http check",
			extra: "    health_check: {grpc: api.v1.Users}\n  - name: b\n    endpoints: [127.0.0.1:8083]\n    health_check: {http: /ready, expected_statuses: [200, \"300-308\"]}\n",
			check: func(t *testing.T, u *Upstream) {
				if hc := u.HealthCheck; hc.GRPC == nil || *hc.GRPC != "api.v1.Users" {
					t.Errorf("HealthCheck = %+v", hc)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parse(t, upstreamDoc(tc.extra))
			if err != nil {
				t.Fatalf("Parse() error = %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() of a parsed config = %v", err)
			}
			tc.check(t, c.Upstream("api"))
		})
	}
}

func TestStatusRangeForms(t *testing.T) {
	c, err := parse(t, upstreamDoc("    health_check: {http: /h, expected_statuses: [204, \"200-299\", \" 301 - 302 \"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Upstreams[0].HealthCheck.ExpectedStatuses
	if want := []StatusRange{{204, 204}, {200, 299}, {301, 302}}; !reflect.DeepEqual(got, want) {
		t.Errorf("ExpectedStatuses = %v, want %v", got, want)
	}
	b, err := json.Marshal(got)
	if err != nil || string(b) != `["204","200-299","301-302"]` {
		t.Errorf("json.Marshal = %s, %v", b, err)
	}
	var back []StatusRange
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, got) {
		t.Errorf("json round trip = %v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`["2xx"]`), &back); err == nil || !strings.Contains(err.Error(), "2xx") {
		t.Errorf("json.Unmarshal of a bad range: error = %v", err)
	}
}
