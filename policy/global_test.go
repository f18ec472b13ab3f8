package policy

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrymesh/ferry/policy/ratelimit"
)

// countingRLS is a rate limit service allowing each descriptor once per test.
type countingRLS struct {
	rlsv3.UnimplementedRateLimitServiceServer
	mu   sync.Mutex
	seen map[string]int
	log  []string
}

func (s *countingRLS) ShouldRateLimit(_ context.Context, req *rlsv3.RateLimitRequest) (*rlsv3.RateLimitResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &rlsv3.RateLimitResponse{OverallCode: rlsv3.RateLimitResponse_OK}
	for _, d := range req.GetDescriptors() {
		var parts []string
		for _, e := range d.GetEntries() {
			parts = append(parts, e.GetKey()+"="+e.GetValue())
		}
		k := req.GetDomain() + ":" + strings.Join(parts, ",")
		s.log = append(s.log, k)
		s.seen[k]++
		st := &rlsv3.RateLimitResponse_DescriptorStatus{Code: rlsv3.RateLimitResponse_OK, LimitRemaining: 0,
			CurrentLimit:       &rlsv3.RateLimitResponse_RateLimit{RequestsPerUnit: 1, Unit: rlsv3.RateLimitResponse_RateLimit_SECOND},
			DurationUntilReset: durationpb.New(time.Second)}
		if s.seen[k] > 1 {
			st.Code = rlsv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlsv3.RateLimitResponse_OVER_LIMIT
		}
		resp.Statuses = append(resp.Statuses, st)
	}
	return resp, nil
}

func TestGlobalRateLimit(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rls := &countingRLS{seen: map[string]int{}}
	srv := grpc.NewServer()
	rlsv3.RegisterRateLimitServiceServer(srv, rls)
	go srv.Serve(ln)
	defer srv.Stop()

	cfg := func(mode string) *Config {
		return &Config{
			RateLimitService: &RateLimitService{Address: ln.Addr().String(), Domain: "shop", Timeout: Duration(time.Second), FailureMode: mode},
			RateLimits: []RateLimit{
				{Name: "local", RequestsPerSecond: 1000},
				{Name: "tenants", Paths: []string{"/api/**"}, Key: "header:x-tenant", Global: true},
				{Name: "ip-writes", Methods: []string{"POST"}, Key: "client_ip", Global: true},
			},
		}
	}
	p := mustCompile(t, cfg(""))
	addr, opts := p.RateLimitService()
	if addr != ln.Addr().String() || opts.Domain != "shop" || opts.Timeout != time.Second || opts.FailClosed {
		t.Fatalf("RateLimitService() = %q, %+v", addr, opts)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	svc := ratelimit.NewService(conn, opts)
	ctx := context.Background()
	mk := func(method, path, tenant string) *Request {
		h := http.Header{}
		if tenant != "" {
			h.Set("X-Tenant", tenant)
		}
		return &Request{Method: method, Path: path, Header: h, SourceIP: netip.MustParseAddr("::ffff:10.0.0.7")}
	}

	if d := p.RateLimit(mk("GET", "/api/x", "acme")); !d.Allowed || d.Rule != "local" {
		t.Errorf("local RateLimit() = %+v, want allowed by local only (global limits not counted here)", d)
	}
	if d := p.GlobalRateLimit(ctx, svc, mk("GET", "/api/x", "acme")); !d.Allowed || d.Rule != "tenants" || d.RateLimit.Limit != 1 {
		t.Errorf("first = %+v, want allowed by tenants", d)
	}
	d := p.GlobalRateLimit(ctx, svc, mk("GET", "/api/y", "acme"))
	if d.Allowed || d.Rule != "tenants" || d.Reply.Status != 429 || d.Reply.ProxyStatus != `ferry; error=http_request_denied; details="rate limit tenants"` {
		t.Errorf("second = %+v, want 429 by tenants", d)
	}
	h := http.Header{}
	d.RateLimit.SetHeaders(h)
	if h.Get("Retry-After") != "1" || h.Get("RateLimit-Limit") != "1" {
		t.Errorf("429 headers = %v", h)
	}
	if d := p.GlobalRateLimit(ctx, svc, mk("GET", "/api/y", "")); !d.Allowed {
		t.Errorf("no tenant = %+v, want allowed (descriptor without the key entry)", d)
	}
	if d := p.GlobalRateLimit(ctx, svc, mk("POST", "/api/z", "other")); !d.Allowed {
		t.Errorf("POST = %+v, want allowed", d)
	}
	if d := p.GlobalRateLimit(ctx, svc, mk("POST", "/upload", "")); d.Allowed || d.Rule != "ip-writes" {
		t.Errorf("second POST from the same IP = %+v, want limited by ip-writes", d)
	}
	if d := p.GlobalRateLimit(ctx, svc, mk("GET", "/other", "")); !d.Allowed || d.Kind != KindNone {
		t.Errorf("unmatched = %+v, want allowed without asking", d)
	}
	rls.mu.Lock()
	log := strings.Join(rls.log, " | ")
	rls.mu.Unlock()
	want := "shop:generic_key=tenants,x-tenant=acme | shop:generic_key=tenants,x-tenant=acme | shop:generic_key=tenants | " +
		"shop:generic_key=tenants,x-tenant=other | shop:generic_key=ip-writes,remote_address=10.0.0.7 | shop:generic_key=ip-writes,remote_address=10.0.0.7"
	if log != want {
		t.Errorf("service saw\n%s\nwant\n%s", log, want)
	}

	// The service goes away: open allows, closed refuses with 500.
	srv.Stop()
	for _, mode := range []string{"open", "closed"} {
		p := mustCompile(t, cfg(mode))
		_, opts := p.RateLimitService()
		opts.Timeout = 100 * time.Millisecond
		svc := ratelimit.NewService(conn, opts)
		d := p.GlobalRateLimit(ctx, svc, mk("GET", "/api/x", "acme"))
		if mode == "open" && (!d.Allowed || d.Rule != ServiceRule) {
			t.Errorf("open: %+v, want allowed by rate_limit_service", d)
		}
		if mode == "closed" && (d.Allowed || d.Reply.Status != 500 || !strings.Contains(d.Reply.ProxyStatus, "proxy_internal_error")) {
			t.Errorf("closed: %+v, want 500 proxy_internal_error", d)
		}
		if s := statsByRule(p)["rate_limit/"+ServiceRule]; s.Errors != 1 {
			t.Errorf("%s: service stats = %+v, want 1 error", mode, s)
		}
	}
}

func TestGlobalRateLimitValidation(t *testing.T) {
	svc := &RateLimitService{Address: "127.0.0.1:8081"}
	tests := []struct {
		name string
		cfg  Config
		path string
	}{
		{"no service", Config{RateLimits: []RateLimit{{Global: true}}}, "rate_limits[0].global"},
		{"rate set", Config{RateLimitService: svc, RateLimits: []RateLimit{{Global: true, RequestsPerSecond: 1}}}, "rate_limits[0].global"},
		{"bad address", Config{RateLimitService: &RateLimitService{Address: "nohost"}}, "rate_limit_service.address"},
		{"bad mode", Config{RateLimitService: &RateLimitService{Address: "a:1", FailureMode: "shut"}}, "rate_limit_service.failure_mode"},
		{"bad timeout", Config{RateLimitService: &RateLimitService{Address: "a:1", Timeout: -1}}, "rate_limit_service.timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.cfg.Validate()
			if len(errs) != 1 || PathString(errs[0].Path) != tc.path {
				t.Errorf("Validate() = %v, want one error at %s", errs, tc.path)
			}
		})
	}
	p := mustCompile(t, &Config{RateLimitService: svc, RateLimits: []RateLimit{{Global: true, Key: "source"}}})
	if !p.HasGlobalRateLimits() {
		t.Error("HasGlobalRateLimits() = false")
	}
	if _, opts := p.RateLimitService(); opts.Domain != "ferry" || opts.Timeout != ratelimit.DefaultServiceTimeout || opts.FailClosed {
		t.Errorf("defaults = %+v", opts)
	}
}
