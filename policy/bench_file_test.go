package policy

import (
	"net/http"
	"net/netip"
	"os"
	"testing"

	"go.yaml.in/yaml/v3"
)

// loadBenchPolicy compiles the policy block of bench/policy-20-rules.yaml, the policy of
// the policy-cost benchmark (issue 6).
func loadBenchPolicy(tb testing.TB) *Policy {
	tb.Helper()
	b, err := os.ReadFile("../bench/policy-20-rules.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	var f struct {
		Policy Config `yaml:"policy"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		tb.Fatalf("decoding bench/policy-20-rules.yaml: %v", err)
	}
	return mustCompile(tb, &f.Policy)
}

// benchFileRequest is the benchmark's request: GET /api/v1/orders/42 with x-tenant:
// acme-corp from 127.0.0.1, as h2load sends it through Ferry's inbound.
func benchFileRequest() *Request {
	return &Request{Method: "GET", URI: "/api/v1/orders/42", Host: "127.0.0.1:19602",
		Header:        http.Header{"X-Tenant": {"acme-corp"}, "Accept": {"*/*"}, "User-Agent": {"h2load nghttp2/1.52.0"}},
		ContentLength: 0, SourceIP: netip.MustParseAddr("127.0.0.1")}
}

func TestBenchPolicyFile(t *testing.T) {
	p := loadBenchPolicy(t)
	cases := []struct {
		name, method, path, rule string
		hdr                      http.Header
		src                      string
		allowed                  bool
	}{
		{"benchmark request", "GET", "/api/v1/orders/42", "allow-orders-read", nil, "127.0.0.1", true},
		{"no tenant", "GET", "/api/v1/orders/42", DefaultRule, http.Header{}, "127.0.0.1", false},
		{"bad tenant", "GET", "/api/v1/orders/42", DefaultRule, http.Header{"X-Tenant": {"Acme"}}, "127.0.0.1", false},
		{"admin", "GET", "/admin/x", "deny-admin", nil, "127.0.0.1", false},
		{"git", "GET", "/a/b/.git/config", "deny-debug", nil, "127.0.0.1", false},
		{"internal", "GET", "/api/v1/internal/x", "deny-internal", nil, "127.0.0.1", false},
		{"trace", "TRACE", "/api/v1/orders/42", "deny-trace", nil, "127.0.0.1", false},
		{"override", "GET", "/api/v1/orders/42", "deny-override", http.Header{"X-Tenant": {"acme"}, "X-Http-Method-Override": {""}}, "127.0.0.1", false},
		{"blocked net", "GET", "/healthz", "deny-blocked-nets", nil, "203.0.113.9", false},
		{"health", "HEAD", "/healthz", "allow-health", nil, "203.0.114.9", true},
		{"items", "GET", "/api/v1/orders/42/items", "allow-orders-read", nil, "10.1.1.1", true},
		{"orders admin", "DELETE", "/api/v1/orders/42/items", "allow-orders-admin", nil, "10.9.1.1", true},
		{"reports", "GET", "/api/v1/reports/2026/q1/pdf", "allow-reports", nil, "10.2.3.4", true},
		{"static", "GET", "/favicon.ico", "allow-static", nil, "8.8.8.8", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := benchFileRequest()
			r.Method, r.SourceIP = c.method, netip.MustParseAddr(c.src)
			_, r.Path, _ = p.NormalizePath(c.path)
			if c.hdr != nil {
				r.Header = c.hdr
			}
			if d := p.Access(r); d.Rule != c.rule || d.Allowed != c.allowed {
				t.Errorf("Access(%s %s) = %s allowed %v, want %s allowed %v", c.method, c.path, d.Rule, d.Allowed, c.rule, c.allowed)
			}
		})
	}
	r := benchFileRequest()
	_, r.Path, _ = p.NormalizePath("/api/v1/orders/42")
	if a := testing.AllocsPerRun(1000, func() { p.Check(r) }); a != 0 {
		t.Errorf("Check() allocs = %v, want 0", a)
	}
}

// BenchmarkCheckBenchFile is Check on bench/policy-20-rules.yaml and the request of
// bench/instructions.sh, which only the last rule allows.
func BenchmarkCheckBenchFile(b *testing.B) {
	p := loadBenchPolicy(b)
	r := benchFileRequest()
	_, r.Path, _ = p.NormalizePath("/api/v1/orders/42")
	if c := p.Check(r); c.Refusal() != nil || c.Access.Rule != "allow-orders-read" {
		b.Fatalf("Check() = %+v, want allowed by allow-orders-read", c)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Check(r)
	}
}
