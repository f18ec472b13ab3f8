package policy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymesh/ferry/test/ferrytest"
)

// tenantRLS is a rate limit service speaking Envoy's protocol that allows each tenant
// (the x-tenant descriptor entry) perTenant requests and refuses the rest, and asks the
// proxy to tell the application how many are left.
type tenantRLS struct {
	rlsv3.UnimplementedRateLimitServiceServer
	perTenant int
	mu        sync.Mutex
	used      map[string]int
	domains   map[string]bool
}

func (s *tenantRLS) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.domains[req.GetDomain()] = true
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for _, d := range req.GetDescriptors() {
		tenant := ""
		for _, e := range d.GetEntries() {
			if e.GetKey() == "x-tenant" {
				tenant = e.GetValue()
			}
		}
		s.used[tenant]++
		left := max(s.perTenant-s.used[tenant], 0)
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: uint32(left),
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: uint32(s.perTenant), Unit: rlsv3.RateLimitResponse_RateLimit_MINUTE},
			DurationUntilReset: durationpb.New(30 * time.Second)}
		if s.used[tenant] > s.perTenant {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		resp.Statuses = append(resp.Statuses, st)
		resp.RequestHeadersToAdd = append(resp.RequestHeadersToAdd,
			&corev3.HeaderValue{Key: "x-tenant-remaining", Value: fmt.Sprint(left)})
	}
	return resp, nil
}

// startRLS serves rls on a loopback port until stop is called (or the test ends).
func startRLS(t *testing.T, rls *tenantRLS) (addr string, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, rls)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String(), srv.Stop
}

// TestGlobalRateLimit runs a sidecar whose inbound asks a real gRPC rate limit service
// (Envoy's protocol) about every /api request, per tenant: the service's verdicts are
// enforced (429 with Proxy-Status naming the limit, nothing reaches the application), the
// headers it adds reach the application, and when it goes away failure_mode decides.
func TestGlobalRateLimit(t *testing.T) {
	rls := &tenantRLS{perTenant: 3, used: map[string]int{}, domains: map[string]bool{}}
	rlsAddr, stopRLS := startRLS(t, rls)

	var mu sync.Mutex
	var remaining []string
	tagged := startObservedApp(t, func(r *http.Request) {
		mu.Lock()
		remaining = append(remaining, r.Header.Get("X-Tenant-Remaining"))
		mu.Unlock()
	})

	start := func(mode string) (*ferrytest.Process, string) {
		admin, in := ferrytest.FreeAddr(t), ferrytest.FreeAddr(t)
		p := startFerry(t, admin, fmt.Sprintf(`service: api
admin: {address: %s}
inbound: {address: %s, target: %s}
policy:
  rate_limits:
    - {name: tenants, paths: [/api/**], key: "header:x-tenant", global: true}
  rate_limit_service: {address: %s, domain: shop, timeout: 500ms, failure_mode: %s}
`, admin, in, tagged.addr, rlsAddr, mode))
		return p, in
	}
	open, openIn := start("open")
	_, closedIn := start("closed")
	c := &http.Client{Timeout: ioTimeout}
	do := func(in, path, tenant string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+in+path, nil)
		if tenant != "" {
			req.Header.Set("X-Tenant", tenant)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Proxy-Status")
	}

	for i := range 3 {
		if code, ps := do(openIn, "/api/orders", "acme"); code != http.StatusOK {
			t.Fatalf("request %d of tenant acme = %d (Proxy-Status %q), want 200", i+1, code, ps)
		}
	}
	code, ps := do(openIn, "/api/orders", "acme")
	if want := `ferry; error=http_request_denied; details="rate limit tenants"`; code != http.StatusTooManyRequests || ps != want {
		t.Errorf("4th request of tenant acme = %d, Proxy-Status %q, want 429 with %s", code, ps, want)
	}
	if code, ps := do(openIn, "/api/orders", "globex"); code != http.StatusOK {
		t.Errorf("first request of tenant globex = %d (Proxy-Status %q), want 200: tenants have separate limits", code, ps)
	}
	if code, _ := do(openIn, "/static/logo.png", "acme"); code != http.StatusOK {
		t.Errorf("a path no global limit covers = %d, want 200 without asking the service", code)
	}
	if got := tagged.count.Load(); got != 5 {
		t.Errorf("application served %d requests, want 5 (the refused one never reaches it)", got)
	}
	mu.Lock()
	gotRemaining := strings.Join(remaining, ",")
	mu.Unlock()
	if want := "2,1,0,2,"; gotRemaining != want {
		t.Errorf("X-Tenant-Remaining seen by the application = %q, want %q (headers the service adds to the request)", gotRemaining, want)
	}
	rls.mu.Lock()
	if !rls.domains["shop"] || len(rls.domains) != 1 {
		t.Errorf("service saw domains %v, want only shop", rls.domains)
	}
	if rls.used["acme"] != 4 || rls.used["globex"] != 1 || rls.used[""] != 0 {
		t.Errorf("service counted %v, want acme 4, globex 1 and nothing else", rls.used)
	}
	rls.mu.Unlock()
	if got := open.MetricWith("ferry_policy_decisions_total", "rule=tenants", "outcome=limited"); got != 1 {
		t.Errorf("ferry_policy_decisions_total{rule=tenants,outcome=limited} = %v, want 1", got)
	}

	// The service goes away: failure_mode open lets requests through and counts the
	// failures; closed refuses them with 500.
	stopRLS()
	if code, ps := do(openIn, "/api/orders", "initech"); code != http.StatusOK {
		t.Errorf("with the service down, failure_mode open = %d (Proxy-Status %q), want 200", code, ps)
	}
	if got := open.MetricWith("ferry_policy_decisions_total", "rule=rate_limit_service", "outcome=error"); got != 1 {
		t.Errorf("ferry_policy_decisions_total{rule=rate_limit_service,outcome=error} = %v, want 1", got)
	}
	before := tagged.count.Load()
	if code, ps := do(closedIn, "/api/orders", "initech"); code != http.StatusInternalServerError || !strings.Contains(ps, "rate limit service unavailable") {
		t.Errorf("with the service down, failure_mode closed = %d (Proxy-Status %q), want 500 rate limit service unavailable", code, ps)
	}
	if got := tagged.count.Load() - before; got != 0 {
		t.Errorf("failure_mode closed let %d requests reach the application, want 0", got)
	}
}

// observedApp is an application that calls observe with every request it serves and
// counts them.
type observedApp struct {
	addr  string
	count atomic.Int64
}

func startObservedApp(t *testing.T, observe func(*http.Request)) *observedApp {
	t.Helper()
	a := &observedApp{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: ioTimeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.count.Add(1)
		observe(r)
		_, _ = io.WriteString(w, "ok\n")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return a
}
