package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
)

// hundredRules is an access block of 100 rules in the shapes operators write: allow rules
// per caller and path family, a few deny rules, header and CIDR conditions.
func hundredRules() *Config {
	var rules []Rule
	for i := 0; i < 90; i++ {
		rules = append(rules, Rule{
			Name:    fmt.Sprintf("svc-%d", i),
			From:    []string{fmt.Sprintf("spiffe://mesh.local/svc/client-%d", i)},
			Paths:   []string{fmt.Sprintf("/api/v1/svc%d/*", i), fmt.Sprintf("/api/v2/svc%d/**/items", i)},
			Methods: []string{"GET", "POST"},
			Action:  "allow",
		})
	}
	for i := 0; i < 9; i++ {
		rules = append(rules, Rule{
			Name:    fmt.Sprintf("deny-%d", i),
			From:    []string{"spiffe://mesh.local/ns/*/sa/untrusted", fmt.Sprintf("10.%d.0.0/16", 100+i)},
			Paths:   []string{fmt.Sprintf("/internal/%d/*", i)},
			Headers: []HeaderMatch{{Name: "x-debug", Present: true}},
			Action:  "deny",
		})
	}
	rules = append(rules, Rule{Name: "last", From: []string{"spiffe://mesh.local/svc/*"}, Paths: []string{"/api/last/*"},
		Methods: []string{"GET"}, Headers: []HeaderMatch{{Name: "x-tenant", Prefix: "acme-"}}, Action: "allow"})
	return &Config{Access: Access{Default: "deny", Rules: rules}}
}

func benchRequest(path string) *Request {
	return &Request{Method: "GET", Path: path, SourceID: "spiffe://mesh.local/svc/web", SourceIP: netip.MustParseAddr("10.1.2.3"),
		Header: http.Header{"X-Tenant": {"acme-prod"}, "Accept": {"*/*"}, "User-Agent": {"bench"}}, DestPort: 21000, ContentLength: -1}
}

func TestEvaluateDoesNotAllocate(t *testing.T) {
	p := mustCompile(t, hundredRules())
	for _, path := range []string{"/api/last/x", "/nothing"} {
		r := benchRequest(path)
		if a := testing.AllocsPerRun(1000, func() { p.Access(r) }); a != 0 {
			t.Errorf("Access(%s) allocs = %v, want 0", path, a)
		}
	}
	if d := p.Access(benchRequest("/api/last/x")); !d.Allowed || d.Rule != "last" {
		t.Fatalf("Access() = %+v, want allowed by the last rule", d)
	}
}

func BenchmarkAccess100Rules(b *testing.B) {
	p := mustCompile(b, hundredRules())
	cases := []struct {
		name string
		r    *Request
		rule string
	}{
		{"hit-last-rule", benchRequest("/api/last/items"), "last"},
		{"hit-first-rule", func() *Request {
			r := benchRequest("/api/v1/svc0/items")
			r.SourceID = "spiffe://mesh.local/svc/client-0"
			return r
		}(), "svc-0"},
		{"deny-rule", func() *Request {
			r := benchRequest("/internal/8/x")
			r.SourceID = "spiffe://mesh.local/ns/prod/sa/untrusted"
			r.Header.Set("X-Debug", "1")
			return r
		}(), "deny-8"},
		{"default", benchRequest("/nothing"), "default"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			if d := p.Access(c.r); d.Rule != c.rule {
				b.Fatalf("Access() rule = %q, want %q", d.Rule, c.rule)
			}
			b.ReportAllocs()
			for b.Loop() {
				p.Access(c.r)
			}
		})
	}
	b.Run("hit-last-rule-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := benchRequest("/api/last/items")
			for pb.Next() {
				p.Access(r)
			}
		})
	})
}

// BenchmarkCheck20Rules is the proxy's per-request policy cost in the `make bench` setup:
// path normalization, filters, 20 access rules and a rate limit that never triggers.
func BenchmarkCheck20Rules(b *testing.B) {
	cfg := hundredRules()
	cfg.Access.Rules = cfg.Access.Rules[80:]
	cfg.Filter = Filter{MaxHeaderCount: 100, MaxURILength: 8192, MaxBodyBytes: 1 << 20}
	cfg.RateLimits = []RateLimit{{Name: "never", RequestsPerSecond: 1e9, Burst: 1e9, Key: "source"}}
	p := mustCompile(b, cfg)
	r := benchRequest("")
	r.URI = "/api/last/items"
	b.ReportAllocs()
	for b.Loop() {
		_, m, _ := p.NormalizePath("/api/last/items")
		r.Path = m
		c := p.Check(r)
		if c.Refusal() != nil {
			b.Fatal(c.Refusal().Rule)
		}
	}
}

func BenchmarkNormalizePath(b *testing.B) {
	p := mustCompile(b, &Config{})
	for _, path := range []string{"/api/v1/users/42", "/api/./v1//users/%34%32;x"} {
		b.Run(path, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				p.NormalizePath(path)
			}
		})
	}
}
