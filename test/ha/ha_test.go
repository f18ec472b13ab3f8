package ha

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// httpConfig is a config with one HTTP outbound listener at out for upstream api over eps;
// extra holds more keys of the upstream, indented by four spaces.
func httpConfig(admin, out string, eps []string, extra string) string {
	return fmt.Sprintf("service: web\nadmin: {address: %s}\noutbound: [{upstream: api, address: %s}]\nupstreams:\n  - name: api\n    endpoints: [%s]\n%s",
		admin, out, strings.Join(eps, ", "), extra)
}

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func addrs(bs ...*backend) []string {
	var out []string
	for _, b := range bs {
		out = append(out, b.addr)
	}
	return out
}

// untilEjected sends GETs one at a time until /clusters shows addr ejected.
func untilEjected(t *testing.T, f *ferry, c *http.Client, url, addr string) endpoint {
	t.Helper()
	for i := 0; i < 500; i++ {
		get(c, url)
		if i%5 == 4 {
			if e := f.endpoint("api", addr); e.Outlier == "ejected" {
				return e
			}
		}
	}
	t.Fatalf("%s not ejected after 500 requests: %+v", addr, f.endpoint("api", addr))
	return endpoint{}
}

// TestConsecutive5xxEjection: of three backends one starts answering 500. Once the
// detector trips, at least 99.9 % of the next 1,000 requests succeed and /clusters names
// the ejected backend and why; it is back after its ejection time and takes traffic again;
// a second ejection lasts twice as long.
func TestConsecutive5xxEjection(t *testing.T) {
	ferrytest.CheckLeaks(t)
	bs := []*backend{startBackend(t, "b0"), startBackend(t, "b1"), startBackend(t, "b2")}
	bad := bs[1]
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	const base = 2 * time.Second
	f := startFerry(t, admin, httpConfig(admin, out, addrs(bs...), `
    outlier_detection: {consecutive_5xx: 5, interval: 5s, base_ejection_time: 2s, max_ejection_time: 30s, max_ejection_percent: 50}
`))
	c := newClient(t)
	url := "http://" + out + "/"
	if n, fails := load(c, url, 30, 3); n != 30 {
		t.Fatalf("warm-up: %d of 30 succeeded: %v", n, fails)
	}

	bad.status.Store(500)
	e := untilEjected(t, f, c, url, bad.addr)
	if e.Reason != "consecutive_5xx: 5 in a row" || e.Ejections != 1 || e.Status != "ejected" {
		t.Errorf("/clusters for the failing backend = %+v, want ejected for consecutive_5xx: 5 in a row", e)
	}
	if got := e.EjectedUntil.Sub(*e.EjectedAt); got != base {
		t.Errorf("first ejection lasts %v, want base_ejection_time %v", got, base)
	}
	hitsBefore := bad.hits.Load()
	okCount, fails := load(c, url, 1000, 8)
	if okCount < 999 {
		t.Errorf("after the ejection %d of 1000 requests succeeded, want at least 999: %v", okCount, fails)
	}
	if d := bad.hits.Load() - hitsBefore; d != 0 && time.Now().Before(*e.EjectedUntil) {
		t.Errorf("the ejected backend got %d requests during its ejection", d)
	}
	if got := f.MetricWith("ferry_outlier_ejections_total", `upstream="api"`, `detector="consecutive_5xx"`); got != 1 {
		t.Errorf("ferry_outlier_ejections_total = %v, want 1", got)
	}
	if lines := f.logLines(`msg="outlier ejected"`, "endpoint="+bad.addr); len(lines) != 1 {
		t.Errorf("ejection logged %d times, want once: %q", len(lines), lines)
	}

	// It recovers; it is back once its ejection time is over, and takes traffic again.
	bad.status.Store(0)
	eventually(t, "the end of the first ejection", func() bool { return f.endpoint("api", bad.addr).Outlier == "ok" })
	if now := time.Now(); now.Before(e.EjectedUntil.Add(-50*time.Millisecond)) || now.After(e.EjectedUntil.Add(time.Second)) {
		t.Errorf("un-ejected at %v, want at its ejected_until %v", now.Format(time.StampMilli), e.EjectedUntil.Local().Format(time.StampMilli))
	}
	hitsBefore = bad.hits.Load()
	if n, fails := load(c, url, 30, 1); n != 30 {
		t.Errorf("after the ejection: %d of 30 succeeded: %v", n, fails)
	}
	if bad.hits.Load() == hitsBefore {
		t.Errorf("the recovered backend got no traffic after its ejection")
	}
	if st := f.endpoint("api", bad.addr).Status; st != "available" {
		t.Errorf("status after recovery = %q, want available", st)
	}

	// It fails again at once: the second ejection lasts twice as long.
	bad.status.Store(500)
	e2 := untilEjected(t, f, c, url, bad.addr)
	if e2.Ejections != 2 || e2.EjectedUntil.Sub(*e2.EjectedAt) != 2*base {
		t.Errorf("second ejection: %d ejections, lasts %v; want 2, %v", e2.Ejections, e2.EjectedUntil.Sub(*e2.EjectedAt), 2*base)
	}
	eventually(t, "the end of the second ejection", func() bool { return f.endpoint("api", bad.addr).Outlier == "ok" })
	if now := time.Now(); now.Before(e2.EjectedUntil.Add(-50 * time.Millisecond)) {
		t.Errorf("second ejection ended at %v, before its ejected_until %v", now, e2.EjectedUntil)
	}
}

// TestMaxEjectionPercent: with max_ejection_percent 50, of three backends two failing, only
// one is ejected; the other is reported once as not ejected.
func TestMaxEjectionPercent(t *testing.T) {
	ferrytest.CheckLeaks(t)
	bs := []*backend{startBackend(t, "b0"), startBackend(t, "b1"), startBackend(t, "b2")}
	bs[0].status.Store(500)
	bs[1].status.Store(500)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, httpConfig(admin, out, addrs(bs...), `
    outlier_detection: {consecutive_5xx: 5, base_ejection_time: 30s, max_ejection_percent: 50}
`))
	c := newClient(t)
	load(c, "http://"+out+"/", 300, 4)
	cl := f.cluster("api")
	var ejected, overflowed []string
	for _, e := range cl.Endpoints {
		if e.Outlier == "ejected" {
			ejected = append(ejected, e.Address)
		} else if e.Address != bs[2].addr {
			overflowed = append(overflowed, e.Address)
		}
	}
	if len(ejected) != 1 || len(overflowed) != 1 {
		t.Fatalf("ejected %v, want exactly one of the two failing backends: %+v", ejected, cl.Endpoints)
	}
	if e := f.endpoint("api", bs[2].addr); e.Outlier != "ok" {
		t.Errorf("the healthy backend: %+v, want not ejected", e)
	}
	if got := f.MetricWith("ferry_outlier_ejections_skipped_total", `upstream="api"`, `reason="overflow"`); got != 1 {
		t.Errorf("ferry_outlier_ejections_skipped_total{reason=overflow} = %v, want 1", got)
	}
	if lines := f.logLines("max_ejection_percent reached", "endpoint="+overflowed[0]); len(lines) != 1 {
		t.Errorf("the overflow was logged %d times, want once: %q", len(lines), lines)
	}
}

// TestSuccessRateAndFailurePercentage: each detector trips on a backend with 30 % errors
// among healthy peers, and neither trips below minimum_hosts or request_volume.
func TestSuccessRateAndFailurePercentage(t *testing.T) {
	ferrytest.CheckLeaks(t)
	const interval = 500 * time.Millisecond
	tests := []struct {
		name       string
		detector   string // the outlier_detection keys under test
		wantReason string // "" for no ejection
		volume     int    // request_volume, checked to have been reached when nothing trips
	}{
		{"success rate trips with Envoy's defaults", "success_rate: {request_volume: 20}", "success_rate: ", 20},
		{"success rate below minimum_hosts", "success_rate: {request_volume: 20, minimum_hosts: 6}", "", 20},
		{"success rate below request_volume", "success_rate: {request_volume: 100000}", "", 0},
		{"failure percentage trips", "success_rate: {enforcing: 0}, failure_percentage: {threshold: 20, request_volume: 20}", "failure_percentage: ", 20},
		{"failure percentage below minimum_hosts", "success_rate: {enforcing: 0}, failure_percentage: {threshold: 20, request_volume: 20, minimum_hosts: 6}", "", 20},
		{"failure percentage below request_volume", "success_rate: {enforcing: 0}, failure_percentage: {threshold: 20, request_volume: 100000}", "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var bs []*backend
			for i := range 5 {
				bs = append(bs, startBackend(t, fmt.Sprint("b", i)))
			}
			bad := bs[3]
			bad.errorPercent.Store(30)
			admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
			f := startFerry(t, admin, httpConfig(admin, out, addrs(bs...), fmt.Sprintf(`
    outlier_detection: {consecutive_5xx: 0, interval: %v, base_ejection_time: 30s, max_ejection_percent: 50, %s}
`, interval, tc.detector)))
			c := newClient(t)
			url := "http://" + out + "/"
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
							get(c, url)
						}
					}
				})
			}
			defer func() { close(stop); wg.Wait() }()
			if tc.wantReason != "" {
				eventually(t, "the ejection", func() bool { return f.endpoint("api", bad.addr).Outlier == "ejected" })
				e := f.endpoint("api", bad.addr)
				if !strings.HasPrefix(e.Reason, tc.wantReason) {
					t.Errorf("reason = %q, want %s...", e.Reason, tc.wantReason)
				}
				for _, b := range bs {
					if b != bad && f.endpoint("api", b.addr).Outlier != "ok" {
						t.Errorf("healthy backend %s ejected", b.name)
					}
				}
				return
			}
			// Six intervals with the load on: nothing may trip.
			deadline := time.Now().Add(6 * interval)
			maxCalls := uint64(0)
			var bestSR *float64 // the success rate read in the interval with the most calls
			for time.Now().Before(deadline) {
				e := f.endpoint("api", bad.addr)
				if e.Outlier != "ok" {
					t.Fatalf("ejected: %+v", e)
				}
				if e.IntervalCalls >= maxCalls && e.SuccessRate != nil {
					bestSR = e.SuccessRate
				}
				maxCalls = max(maxCalls, e.IntervalCalls)
				time.Sleep(50 * time.Millisecond)
			}
			if maxCalls < uint64(tc.volume) || maxCalls == 0 {
				t.Errorf("the failing backend had at most %d calls an interval, want at least %d: the test did not load it enough", maxCalls, tc.volume)
			}
			// A single interval is a sample: a loaded machine can leave one thin, so judge the
			// fullest one, with a band that 30 % errors over that volume stays inside.
			if sr := bestSR; sr == nil || *sr > 0.85 || *sr < 0.55 {
				t.Errorf("success rate of the failing backend = %v, want about 0.7", deref(sr))
			}
		})
	}
}

// TestBackendKilledUnderLoad: a backend process killed (SIGKILL) or frozen (SIGSTOP) in the
// middle of a bounded load of idempotent requests costs no client request: connect-failure
// and reset retries, and per-try timeouts for the frozen one, take every request to another
// backend, and outlier detection ejects the dead one.
func TestBackendKilledUnderLoad(t *testing.T) {
	ferrytest.CheckLeaks(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{
		{"killed", syscall.SIGKILL},
		{"stopped", syscall.SIGSTOP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := []*procBackend{startProcBackend(t, "p0"), startProcBackend(t, "p1"), startProcBackend(t, "p2")}
			admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
			f := startFerry(t, admin, httpConfig(admin, out, []string{ps[0].addr, ps[1].addr, ps[2].addr}, `
    retries: {attempts: 2, on: [connect-failure, reset, gateway-error], per_try_timeout: 300ms, min_retry_concurrency: 16}
    outlier_detection: {consecutive_gateway_failure: 3, max_ejection_percent: 50}
`))
			c := newClient(t)
			url := "http://" + out + "/"
			const total, workers, failAt = 3000, 8, 600
			var done atomic.Int64
			var once sync.Once
			var mu sync.Mutex
			var failures []string
			next := make(chan struct{}, total)
			for range total {
				next <- struct{}{}
			}
			close(next)
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for range next {
						code, body, pst := get(c, url)
						if code != http.StatusOK {
							mu.Lock()
							failures = append(failures, fmt.Sprintf("%d %q %s", code, body, pst))
							mu.Unlock()
						}
						if done.Add(1) == failAt {
							once.Do(func() {
								if err := ps[1].cmd.Process.Signal(tc.sig); err != nil {
									t.Errorf("signal %v: %v", tc.sig, err)
								}
							})
						}
					}
				})
			}
			wg.Wait()
			if len(failures) > 0 {
				t.Errorf("%d of %d requests failed, want 0; first: %v", len(failures), total, failures[:min(5, len(failures))])
			}
			if got := f.MetricWith("ferry_retries_total", `upstream="api"`); got <= 0 {
				t.Errorf("ferry_retries_total = %v, want retries to have saved the requests", got)
			}
			if e := f.endpoint("api", ps[1].addr); e.Outlier != "ejected" {
				t.Errorf("the %s backend: %+v, want ejected", tc.name, e)
			}
		})
	}
}

// TestRetryBudget: with every backend failing, retries stay within the budget: the
// backends receive far fewer tries than attempts would allow.
func TestRetryBudget(t *testing.T) {
	ferrytest.CheckLeaks(t)
	bs := []*backend{startBackend(t, "b0"), startBackend(t, "b1"), startBackend(t, "b2")}
	for _, b := range bs {
		b.status.Store(503)
		b.delay.Store(int64(300 * time.Millisecond))
	}
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, httpConfig(admin, out, addrs(bs...), `
    retries: {attempts: 3, on: [gateway-error], budget_percent: 20, min_retry_concurrency: 2, backoff: {base: 1ms, max: 2ms}}
`))
	c := newClient(t)
	const clients = 40
	var wg sync.WaitGroup
	var statuses sync.Map
	for i := range clients {
		wg.Go(func() {
			code, _, _ := get(c, "http://"+out+"/")
			statuses.Store(i, code)
		})
	}
	wg.Wait()
	statuses.Range(func(k, v any) bool {
		if v.(int) != 503 {
			t.Errorf("client %v: status %v, want the backends' 503", k, v)
		}
		return true
	})
	received := bs[0].hits.Load() + bs[1].hits.Load() + bs[2].hits.Load()
	// 40 first tries fail together: 20 % of the 40 requests in flight may retry. By the time
	// those fail again the other requests are gone and the budget has shrunk to its
	// minimum, 2, for each of the later rounds.
	const budget = clients * 20 / 100
	const most = clients + budget + 2*2
	if received > most || received <= clients {
		t.Errorf("backends received %d tries for %d requests, want some retries but at most %d (without a budget: %d)",
			received, clients, most, clients*4)
	}
	if got := f.MetricWith("ferry_circuit_breaker_rejections_total", `upstream="api"`, `limit="retry_budget"`); got < clients-budget-2 {
		t.Errorf("retry_budget rejections = %v, want at least %d", got, clients-budget-2)
	}
}

// TestCircuitBreakerMaxRequests: with max_requests 2 and a slow backend, a third request
// gets an immediate 503 with Proxy-Status.
func TestCircuitBreakerMaxRequests(t *testing.T) {
	ferrytest.CheckLeaks(t)
	slow := startBackend(t, "slow")
	slow.delay.Store(int64(3 * time.Second))
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, httpConfig(admin, out, []string{slow.addr}, `
    circuit_breaker: {max_requests: 2}
`))
	c := newClient(t)
	url := "http://" + out + "/"
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if code, body, _ := get(c, url); code != 200 {
				t.Errorf("a request within the limit: %d %q, want 200", code, body)
			}
		})
	}
	eventually(t, "two requests at the slow backend", func() bool { return slow.hits.Load() == 2 })
	for range 3 {
		start := time.Now()
		code, body, ps := get(c, url)
		if el := time.Since(start); code != 503 || ps != `ferry; error=connection_limit_reached; details="max_requests (2) reached"` || el > 500*time.Millisecond {
			t.Errorf("over the limit: %d %q Proxy-Status %q after %v; want an immediate 503 with connection_limit_reached", code, body, ps, el)
		}
	}
	if got := f.MetricWith("ferry_circuit_breaker_rejections_total", `upstream="api"`, `limit="max_requests"`); got != 3 {
		t.Errorf("ferry_circuit_breaker_rejections_total{limit=max_requests} = %v, want 3", got)
	}
	if lines := f.logLines("circuit breaker open", "limit=max_requests"); len(lines) != 1 {
		t.Errorf("rejections logged %d times, want once for the burst: %q", len(lines), lines)
	}
	wg.Wait()
	if slow.hits.Load() != 2 {
		t.Errorf("the backend received %d requests, want only the 2 admitted", slow.hits.Load())
	}
}

// TestHTTPHealthCheck: an endpoint failing its HTTP checks is marked unhealthy after
// exactly unhealthy_threshold failed checks and is not picked; after healthy_threshold
// passed checks it is healthy and picked again.
func TestHTTPHealthCheck(t *testing.T) {
	ferrytest.CheckLeaks(t)
	good, sick := startBackend(t, "good"), startBackend(t, "sick")
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, httpConfig(admin, out, addrs(good, sick), `
    health_check: {http: /healthz, interval: 100ms, interval_jitter: 0s, timeout: 500ms, unhealthy_threshold: 3, healthy_threshold: 2}
`))
	c := newClient(t)
	url := "http://" + out + "/"
	eventually(t, "a first passed check", func() bool { return f.endpoint("api", sick.addr).Health == "healthy" })

	t0 := time.Now()
	sick.health.Store(503)
	eventually(t, "unhealthy", func() bool { return f.endpoint("api", sick.addr).Health == "unhealthy" })
	e := f.endpoint("api", sick.addr)
	if n := sick.checksUpTo(t0, *e.HealthSince, false); n != 3 {
		t.Errorf("marked unhealthy after %d failed checks, want unhealthy_threshold 3", n)
	}
	if e.HealthDetail != "3 failed check(s) in a row: status 503" || e.Status != "unhealthy" {
		t.Errorf("endpoint = %+v", e)
	}
	before := sick.hits.Load()
	if n, fails := load(c, url, 20, 1); n != 20 {
		t.Errorf("%d of 20 succeeded: %v", n, fails)
	}
	if sick.hits.Load() != before {
		t.Errorf("the unhealthy endpoint was picked")
	}
	if got := f.MetricWith("ferry_health_check_transitions_total", `upstream="api"`, `to="unhealthy"`); got != 1 {
		t.Errorf("ferry_health_check_transitions_total{to=unhealthy} = %v, want 1", got)
	}

	t1 := time.Now()
	sick.health.Store(0)
	eventually(t, "healthy again", func() bool { return f.endpoint("api", sick.addr).Health == "healthy" })
	e = f.endpoint("api", sick.addr)
	if n := sick.checksUpTo(t1, *e.HealthSince, true); n != 2 {
		t.Errorf("marked healthy after %d passed checks, want healthy_threshold 2", n)
	}
	before = sick.hits.Load()
	load(c, url, 20, 1)
	if sick.hits.Load() == before {
		t.Errorf("the recovered endpoint is not picked")
	}
	if lines := f.logLines("health check state changed", "endpoint="+sick.addr, "to=unhealthy"); len(lines) != 1 {
		t.Errorf("the transition was logged %d times, want once: %q", len(lines), lines)
	}
}

// TestTCPHealthCheck: a TCP upstream whose endpoint stops listening is marked unhealthy
// after three failed connects, is not picked, and is healthy again after two.
func TestTCPHealthCheck(t *testing.T) {
	ferrytest.CheckLeaks(t)
	live, flappy := startEcho(t), startEcho(t)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	const interval = 100 * time.Millisecond
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: db, address: %s, protocol: tcp}]
upstreams:
  - name: db
    endpoints: [%s, %s]
    health_check: {tcp: true, interval: 100ms, interval_jitter: 0s, unhealthy_threshold: 3, healthy_threshold: 2}
`, admin, out, live.addr, flappy.addr))
	endpointOf := func() endpoint {
		for _, e := range f.cluster("db").Endpoints {
			if e.Address == flappy.addr {
				return e
			}
		}
		t.Fatal("no endpoint")
		return endpoint{}
	}
	eventually(t, "a first passed check", func() bool { return endpointOf().Health == "healthy" })

	t0 := time.Now()
	flappy.down()
	eventually(t, "unhealthy", func() bool { return endpointOf().Health == "unhealthy" })
	e := endpointOf()
	// The first failed connect comes within an interval of t0; the third, two intervals
	// after it.
	if took := e.HealthSince.Sub(t0); took < 2*interval-10*time.Millisecond {
		t.Errorf("marked unhealthy %v after the endpoint went away, want at least two intervals (3 failed checks)", took)
	}
	if !strings.Contains(e.HealthDetail, "3 failed check(s) in a row") || !strings.Contains(e.HealthDetail, "connection refused") {
		t.Errorf("detail = %q", e.HealthDetail)
	}
	// Without retries, every session still reaches the live endpoint.
	for i := range 10 {
		conn, err := net.DialTimeout("tcp", out, ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		msg := fmt.Sprintf("hello %d\n", i)
		_, _ = io.WriteString(conn, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Errorf("session %d: %q, %v; want the echo (the unhealthy endpoint must not be picked)", i, buf, err)
		}
		conn.Close()
	}

	t1 := time.Now()
	flappy.up(t)
	eventually(t, "healthy again", func() bool { return endpointOf().Health == "healthy" })
	// The first passed connect comes within an interval of t1; the second, an interval
	// after it.
	e = endpointOf()
	if took := e.HealthSince.Sub(t1); took < interval-10*time.Millisecond || e.HealthDetail != "2 passed check(s) in a row" {
		t.Errorf("marked healthy %v after the endpoint came back (%q), want at least an interval and 2 passed checks", took, e.HealthDetail)
	}
	if n := flappy.acceptedSince(t1); n < 2 {
		t.Errorf("the endpoint accepted %d connections since it came back, want at least the 2 checks", n)
	}
}

// TestGRPCHealthCheck: the grpc.health.v1 check marks an endpoint down after three
// NOT_SERVING answers and up after two SERVING ones.
func TestGRPCHealthCheck(t *testing.T) {
	ferrytest.CheckLeaks(t)
	g := startGRPCHealth(t)
	other := startGRPCHealth(t)
	const service = "users.v1.Users"
	g.status.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	other.status.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: users, address: %s}]
upstreams:
  - name: users
    endpoints: [%s, %s]
    protocol: http2
    health_check: {grpc: %s, interval: 100ms, interval_jitter: 0s, unhealthy_threshold: 3, healthy_threshold: 2}
`, admin, out, g.addr, other.addr, service))
	endpointOf := func() endpoint {
		for _, e := range f.cluster("users").Endpoints {
			if e.Address == g.addr {
				return e
			}
		}
		t.Fatal("no endpoint")
		return endpoint{}
	}
	eventually(t, "a first passed check", func() bool { return endpointOf().Health == "healthy" })

	t0 := time.Now()
	g.status.SetServingStatus(service, healthpb.HealthCheckResponse_NOT_SERVING)
	eventually(t, "unhealthy", func() bool { return endpointOf().Health == "unhealthy" })
	e := endpointOf()
	if n := g.checksUpTo(t0, *e.HealthSince, false); n != 3 {
		t.Errorf("marked unhealthy after %d NOT_SERVING answers, want 3", n)
	}
	if e.HealthDetail != "3 failed check(s) in a row: status NOT_SERVING" {
		t.Errorf("detail = %q", e.HealthDetail)
	}
	if c := f.cluster("users"); c.Available != 1 {
		t.Errorf("available endpoints = %d, want 1", c.Available)
	}

	t1 := time.Now()
	g.status.SetServingStatus(service, healthpb.HealthCheckResponse_SERVING)
	eventually(t, "healthy again", func() bool { return endpointOf().Health == "healthy" })
	if n := g.checksUpTo(t1, *endpointOf().HealthSince, true); n != 2 {
		t.Errorf("marked healthy after %d SERVING answers, want 2", n)
	}
}

// TestTCPConnectFailures: a TCP upstream with a dead endpoint: connect retries take every
// session to a live one, and outlier detection ejects the dead one.
func TestTCPConnectFailures(t *testing.T) {
	ferrytest.CheckLeaks(t)
	a, b := startEcho(t), startEcho(t)
	dead := ferrytest.FreeAddr(t)
	admin, out := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
	f := startFerry(t, admin, fmt.Sprintf(`service: web
admin: {address: %s}
outbound: [{upstream: db, address: %s, protocol: tcp}]
upstreams:
  - name: db
    endpoints: [%s, %s, %s]
    retries: {attempts: 2}
    outlier_detection: {consecutive_5xx: 3, max_ejection_percent: 50}
`, admin, out, a.addr, dead, b.addr))
	for i := range 30 {
		conn, err := net.DialTimeout("tcp", out, ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		_ = conn.SetDeadline(time.Now().Add(ioTimeout))
		msg := fmt.Sprintf("query %d\n", i)
		_, _ = io.WriteString(conn, msg)
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Errorf("session %d: %q, %v; want the echo", i, buf, err)
		}
		conn.Close()
	}
	var de endpoint
	for _, e := range f.cluster("db").Endpoints {
		if e.Address == dead {
			de = e
		}
	}
	// The detector acts on a signal sent when the run reaches 3; sessions finishing
	// before it looks (a loaded machine) lengthen the run its reason reports.
	var run int
	if _, err := fmt.Sscanf(de.Reason, "consecutive_5xx: %d in a row", &run); de.Outlier != "ejected" || err != nil || run < 3 {
		t.Errorf("the dead endpoint: %+v, want ejected for consecutive_5xx: N (≥ 3) in a row", de)
	}
}
