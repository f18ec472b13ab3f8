package policy

import (
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"testing"
	"time"
)

// TestDecideMatchesCheck runs the same requests through Check and Decide on two Policies
// compiled from the same config (so with separate buckets and counters) and compares what
// they decide and count.
func TestDecideMatchesCheck(t *testing.T) {
	get, post := "GET", "POST"
	rules := []Rule{
		{Name: "no-admin", Paths: []string{"/admin", "/admin/*"}, Action: "deny"},
		{Name: "blocked", From: []string{"203.0.113.0/24"}, Action: "deny"},
		{Name: "api", From: []string{"10.0.0.0/8"}, Paths: []string{"/api/**"}, Methods: []string{get, post}, Action: "allow"},
	}
	limit := []RateLimit{{Name: "api-ip", PathPrefix: "/api/", RequestsPerSecond: 1, Burst: 2, Key: "client_ip"}}
	configs := []struct {
		name string
		c    Config
	}{
		{"access and rate limit", Config{Access: Access{Default: "deny", Rules: rules}, RateLimits: limit}},
		{"dry run", Config{Access: Access{Default: "deny", DryRun: true, Rules: rules}, RateLimits: limit}},
		{"first match", Config{Access: Access{Default: "allow", Order: OrderFirstMatch, Rules: rules}, RateLimits: limit}},
		{"rate limit only", Config{RateLimits: append(limit, RateLimit{Name: "all", RequestsPerSecond: 1, Burst: 3})}},
		{"filter", Config{Filter: Filter{Methods: []string{get}}, Access: Access{Default: "allow"}}},
		{"nothing", Config{}},
	}
	reqs := []struct{ method, path, src string }{
		{get, "/api/v1/x", "10.1.2.3"}, {get, "/api/v1/x", "10.1.2.3"}, {post, "/api/v1/y", "10.1.2.3"},
		{get, "/api/v1/x", "10.1.2.4"}, {get, "/admin/x", "10.1.2.3"}, {get, "/other", "203.0.113.7"},
		{"DELETE", "/api/v1/x", "10.1.2.3"}, {get, "/api/v1/x", "10.1.2.3"}, {get, "/other", "192.0.2.1"},
	}
	for _, tc := range configs {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1e9, 0)}
			pc, pd := compileAt(t, &tc.c, nil, clk), compileAt(t, &tc.c, nil, clk)
			for i, q := range reqs {
				clk.t = clk.t.Add(100 * time.Millisecond)
				r := &Request{Method: q.method, Path: q.path, Header: http.Header{}, SourceIP: netip.MustParseAddr(q.src)}
				c := pc.Check(r)
				var buf Decision
				refusal, allowed := pd.Decide(r, &buf)
				want := c.Refusal()
				if (refusal == nil) != (want == nil) || refusal != nil && !reflect.DeepEqual(*refusal, *want) {
					t.Fatalf("request %d %+v: Decide() refusal = %+v, want %+v", i, q, refusal, want)
				}
				if refusal != nil {
					if allowed != nil {
						t.Fatalf("request %d: Decide() = refusal and allowed %+v, want allowed nil", i, allowed)
					}
					continue
				}
				var wantAllowed *Decision
				switch {
				case c.Access.Kind != KindNone:
					wantAllowed = &c.Access
				case c.RateLimit.Kind != KindNone:
					wantAllowed = &c.RateLimit
				}
				switch {
				case (allowed == nil) != (wantAllowed == nil):
					t.Fatalf("request %d %+v: Decide() allowed = %+v, want %+v", i, q, allowed, wantAllowed)
				case allowed != nil && !reflect.DeepEqual(*allowed, *wantAllowed):
					t.Fatalf("request %d %+v: Decide() allowed = %+v, want %+v", i, q, *allowed, *wantAllowed)
				}
			}
			if got, want := pd.Stats(), pc.Stats(); !reflect.DeepEqual(got, want) {
				t.Errorf("Stats() after Decide = %+v, want (after Check) %+v", got, want)
			}
		})
	}
}

// BenchmarkDecideBenchFile is Decide, the proxy's call, on bench/policy-20-rules.yaml and
// the request of bench/instructions.sh.
func BenchmarkDecideBenchFile(b *testing.B) {
	p := loadBenchPolicy(b)
	r := benchFileRequest()
	_, r.Path, _ = p.NormalizePath("/api/v1/orders/42")
	var buf Decision
	if refusal, allowed := p.Decide(r, &buf); refusal != nil || allowed == nil || allowed.Rule != "allow-orders-read" {
		b.Fatalf("Decide() = %+v, %+v; want allowed by allow-orders-read", refusal, allowed)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Decide(r, &buf)
	}
}

// FuzzNormalizeURLPath compares NormalizeURLPath with EscapedPath and NormalizeRequestPath,
// on URLs as url.ParseRequestURI makes them and with only Path set.
func FuzzNormalizeURLPath(f *testing.F) {
	for _, s := range []string{"/api/v1/orders/42", "/a b", "/a%2Fb", "/a?b", "*", "", "/é", "/a;b=c,d", "/(x)!*'",
		"/~a@b:c$&+", "/A/b", "//a/../b", "/a%41"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, ci bool) {
		p := mustCompile(t, &Config{Normalize: Normalize{CaseInsensitive: ci}})
		us := []*url.URL{{Path: s}}
		if u, err := url.ParseRequestURI(s); err == nil {
			us = append(us, u)
		}
		for _, u := range us {
			esc, fwd, m, ref := p.NormalizeURLPath(u)
			wantEsc := u.EscapedPath()
			wantFwd, wantM, wantRef := p.NormalizeRequestPath(wantEsc)
			if esc != wantEsc || fwd != wantFwd || m != wantM || (ref == nil) != (wantRef == nil) ||
				ref != nil && !reflect.DeepEqual(*ref, *wantRef) {
				t.Fatalf("NormalizeURLPath(%#v) = %q, %q, %q, %v; want %q, %q, %q, %v", u, esc, fwd, m, ref, wantEsc, wantFwd, wantM, wantRef)
			}
		}
	})
}
