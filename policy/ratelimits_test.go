package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

func compileAt(t *testing.T, c *Config, prev *Policy, clk *clock) *Policy {
	t.Helper()
	p, err := Compile(c, Options{Prev: prev, Now: clk.Now})
	if err != nil {
		t.Fatalf("Compile() error = %v", err)
	}
	return p
}

func TestRateLimitKeys(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	tests := []struct {
		name string
		key  string
		// two requests with the same key share a bucket; different keys do not
		same, diff func(r *Request, i int)
	}{
		{"none", "", func(r *Request, i int) {}, nil},
		{"source", "source", func(r *Request, i int) { r.SourceID = frontend }, func(r *Request, i int) { r.SourceID = fmt.Sprint(frontend, i) }},
		{"client_ip", "client_ip", func(r *Request, i int) { r.SourceIP = netip.MustParseAddr("10.0.0.1") },
			func(r *Request, i int) { r.SourceIP = netip.AddrFrom4([4]byte{10, 0, 1, byte(i)}) }},
		{"header", "header:x-tenant", func(r *Request, i int) { r.Header.Set("X-Tenant", "acme") },
			func(r *Request, i int) { r.Header.Set("X-Tenant", fmt.Sprint("t", i)) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := compileAt(t, &Config{RateLimits: []RateLimit{{Name: "api", PathPrefix: "/api/", RequestsPerSecond: 1, Burst: 2, Key: tc.key}}}, nil, clk)
			mk := func(f func(*Request, int), i int) *Request {
				r := &Request{Method: "GET", Path: "/api/x", Header: http.Header{}}
				f(r, i)
				return r
			}
			got := []bool{}
			for i := 0; i < 3; i++ {
				got = append(got, p.RateLimit(mk(tc.same, i)).Allowed)
			}
			if fmt.Sprint(got) != "[true true false]" {
				t.Errorf("same key: allowed = %v, want [true true false]", got)
			}
			if tc.diff != nil {
				for i := 1; i < 5; i++ {
					if d := p.RateLimit(mk(tc.diff, i)); !d.Allowed {
						t.Errorf("key %d: refused, want its own bucket", i)
					}
				}
			}
			if d := p.RateLimit(&Request{Method: "GET", Path: "/other", Header: http.Header{}}); !d.Allowed || d.Kind != KindNone {
				t.Errorf("RateLimit(/other) = %+v, want allowed with no limit applied", d)
			}
		})
	}
}

func TestRateLimitDecision(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	p := compileAt(t, &Config{RateLimits: []RateLimit{
		{Name: "global", RequestsPerSecond: 100, Burst: 100},
		{Name: "writes", Methods: []string{"POST"}, Paths: []string{"/api/**"}, RequestsPerSecond: 0.5, Burst: 1, Key: "source"},
	}}, nil, clk)
	r := &Request{Method: "POST", Path: "/api/jobs", SourceID: frontend}
	d := p.RateLimit(r)
	if !d.Allowed || d.Rule != "writes" || d.RateLimit.Remaining != 0 {
		t.Fatalf("first POST = %+v, want allowed, reporting writes (fewest tokens left)", d)
	}
	d = p.RateLimit(r)
	if d.Allowed || d.Rule != "writes" || d.Kind != KindRateLimit || d.Outcome() != "limited" {
		t.Fatalf("second POST = %+v, want limited by writes", d)
	}
	want := `ferry; error=http_request_denied; details="rate limit writes"`
	if d.Reply.Status != 429 || d.Reply.ProxyStatus != want || d.Reply.GRPCCode != 8 {
		t.Errorf("Reply = %+v, want 429 %q", d.Reply, want)
	}
	h := http.Header{}
	d.RateLimit.SetHeaders(h)
	if h.Get("Retry-After") != "2" || h.Get("RateLimit-Limit") != "1" || h.Get("RateLimit-Remaining") != "0" || h.Get("X-RateLimit-Reset") != "2" {
		t.Errorf("headers = %v, want Retry-After 2, RateLimit-Limit 1, Remaining 0, Reset 2", h)
	}
	if d := p.RateLimit(&Request{Method: "GET", Path: "/api/jobs"}); !d.Allowed || d.Rule != "global" {
		t.Errorf("GET = %+v, want allowed by global only", d)
	}
	s := statsByRule(p)
	if s["rate_limit/writes"].Allowed != 1 || s["rate_limit/writes"].Limited != 1 || s["rate_limit/global"].Allowed != 3 {
		t.Errorf("stats = %+v, want writes 1 allowed 1 limited, global 3 allowed", s)
	}
}

func TestRateLimitReload(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	cfg := func(rps float64) *Config {
		return &Config{RateLimits: []RateLimit{{Name: "api", RequestsPerSecond: rps, Burst: 1, Key: "source"}}}
	}
	r := &Request{Method: "GET", Path: "/", SourceID: frontend}
	p1 := compileAt(t, cfg(1), nil, clk)
	p1.RateLimit(r)
	p2 := compileAt(t, cfg(1), p1, clk)
	if d := p2.RateLimit(r); d.Allowed {
		t.Error("after a reload with the same limit: allowed, want the emptied bucket kept")
	}
	p3 := compileAt(t, cfg(2), p2, clk)
	if d := p3.RateLimit(r); !d.Allowed {
		t.Error("after a reload with a new rate: refused, want a fresh bucket")
	}
	if s := statsByRule(p3)["rate_limit/api"]; s.Allowed != 2 || s.Limited != 1 {
		t.Errorf("stats across reloads = %+v, want 2 allowed, 1 limited", s)
	}
}

func TestConnectionRateLimit(t *testing.T) {
	clk := &clock{t: time.Unix(1e9, 0)}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	for _, key := range []string{"", "client_ip"} {
		t.Run("key="+key, func(t *testing.T) {
			p := compileAt(t, &Config{ConnectionRateLimit: &ConnectionRateLimit{ConnectionsPerSecond: 10, Burst: 2, Key: key}}, nil, clk)
			got := fmt.Sprint(p.AllowConn(a).Allowed, p.AllowConn(a).Allowed, p.AllowConn(a).Allowed, p.AllowConn(b).Allowed)
			want := "true true false " + fmt.Sprint(key != "")
			if got != want {
				t.Errorf("AllowConn a,a,a,b = %s, want %s", got, want)
			}
			d := p.AllowConn(a)
			if d.Allowed || d.Kind != KindConnectionRateLimit || d.Rule != ConnectionRateLimitRule || d.RateLimit.RetryAfter != 100*time.Millisecond {
				t.Errorf("AllowConn() = %+v, want limited with RetryAfter 100ms", d)
			}
			clk.t = clk.t.Add(time.Second)
		})
	}
	if d := mustCompile(t, &Config{}).AllowConn(a); !d.Allowed || d.Kind != KindNone {
		t.Errorf("AllowConn without a limit = %+v, want allowed, KindNone", d)
	}
}

// TestRateLimitAccuracy drives a per-source limit at 3× its rate for 3 s of fake time.
func TestRateLimitAccuracy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rps, burst = 50.0, 25
		p := mustCompile(t, &Config{RateLimits: []RateLimit{{RequestsPerSecond: rps, Burst: burst, Key: "source"}}})
		ids := []string{frontend, batch}
		allowed := map[string]int{}
		start := time.Now()
		for time.Since(start) < 3*time.Second {
			for _, id := range ids {
				if p.RateLimit(&Request{Method: "GET", Path: "/", SourceID: id}).Allowed {
					allowed[id]++
				}
			}
			time.Sleep(time.Second / (3 * rps))
		}
		want := rps*3 + burst
		for _, id := range ids {
			if got := float64(allowed[id]); got < want*0.9 || got > want*1.1 {
				t.Errorf("%s: allowed %v, want %v ±10%%", id, got, want)
			}
		}
	})
}
