package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"regexp"
	"strings"
	"testing"
)

func TestSPIFFEPatterns(t *testing.T) {
	tests := []struct {
		pattern string
		match   []string
		noMatch []string
	}{
		{"spiffe://mesh.local/svc/web",
			[]string{"spiffe://mesh.local/svc/web"},
			[]string{"spiffe://mesh.local/svc/web2", "spiffe://mesh.local/svc/web/x", "spiffe://other/svc/web", "", "spiffe://mesh.local/svc/WEB"}},
		{"spiffe://mesh.local/svc/*",
			[]string{"spiffe://mesh.local/svc/web", "spiffe://mesh.local/svc/api"},
			[]string{"spiffe://mesh.local/svc", "spiffe://mesh.local/svc/", "spiffe://mesh.local/svc/a/b", "spiffe://other.local/svc/web", "spiffe://mesh.local/ns/web"}},
		{"spiffe://mesh.local/ns/*/sa/web",
			[]string{"spiffe://mesh.local/ns/prod/sa/web", "spiffe://mesh.local/ns/dev/sa/web"},
			[]string{"spiffe://mesh.local/ns/prod/sa/api", "spiffe://mesh.local/ns/a/b/sa/web", "spiffe://mesh.local/ns//sa/web"}},
		{"spiffe://*/svc/web",
			[]string{"spiffe://mesh.local/svc/web", "spiffe://other.org/svc/web"},
			[]string{"spiffe:///svc/web", "spiffe://mesh.local/svc/api"}},
		{"spiffe://mesh.local/**",
			[]string{"spiffe://mesh.local/svc/web", "spiffe://mesh.local/a", "spiffe://mesh.local/a/b/c"},
			[]string{"spiffe://mesh.local", "spiffe://mesh.local/", "spiffe://mesh.local/a/", "spiffe://other/a", "spiffe://mesh.localx/a"}},
		{"spiffe://mesh.local/svc/*/**",
			[]string{"spiffe://mesh.local/svc/a/b", "spiffe://mesh.local/svc/a/b/c"},
			[]string{"spiffe://mesh.local/svc/a"}},
		{"spiffe://mesh.local",
			[]string{"spiffe://mesh.local"},
			[]string{"spiffe://mesh.local/svc"}},
	}
	for _, tc := range tests {
		t.Run(tc.pattern, func(t *testing.T) {
			p, err := compileID(tc.pattern)
			if err != nil {
				t.Fatalf("compileID(%q) error = %v", tc.pattern, err)
			}
			for _, id := range tc.match {
				if !p.match(id) {
					t.Errorf("match(%q) = false, want true", id)
				}
			}
			for _, id := range tc.noMatch {
				if p.match(id) {
					t.Errorf("match(%q) = true, want false", id)
				}
			}
		})
	}
}

func TestSPIFFEPatternErrors(t *testing.T) {
	for _, s := range []string{"mesh.local/svc/web", "spiffe://Mesh.Local/svc", "spiffe://mesh.local/svc/we*", "spiffe://mesh.local/**/web",
		"spiffe://mesh.local//web", "spiffe://mesh.local/svc/../x", "spiffe://mesh.local/svc/", "spiffe://mesh local/x", "spiffe://*x/svc"} {
		t.Run(s, func(t *testing.T) {
			if _, err := compileID(s); err == nil {
				t.Errorf("compileID(%q) error = nil, want an error", s)
			}
		})
	}
}

// idOracle translates an ID pattern into a regular expression.
func idOracle(pattern string) *regexp.Regexp {
	rest := strings.TrimPrefix(pattern, "spiffe://")
	td, p, hasPath := strings.Cut(rest, "/")
	var b strings.Builder
	b.WriteString("^spiffe://")
	if td == "*" {
		b.WriteString("[^/]+")
	} else {
		b.WriteString(regexp.QuoteMeta(td))
	}
	if hasPath {
		for _, s := range strings.Split(p, "/") {
			switch s {
			case "*":
				b.WriteString("/[^/]+")
			case "**":
				b.WriteString("(?:/[^/]+)+")
			default:
				b.WriteString("/" + regexp.QuoteMeta(s))
			}
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// FuzzSPIFFEPattern compares the SPIFFE ID pattern matcher with a regular-expression oracle.
func FuzzSPIFFEPattern(f *testing.F) {
	f.Add("spiffe://mesh.local/svc/*", "spiffe://mesh.local/svc/web")
	f.Add("spiffe://*/a/**", "spiffe://td/a/b/c")
	f.Add("spiffe://td/**", "spiffe://td/a/")
	f.Add("spiffe://td/*/b", "spiffe://td//b")
	f.Fuzz(func(t *testing.T, pattern, id string) {
		p, err := compileID(pattern)
		if err != nil {
			return
		}
		if got, want := p.match(id), idOracle(pattern).MatchString(id); got != want {
			t.Fatalf("compileID(%q).match(%q) = %v, want %v", pattern, id, got, want)
		}
	})
}

func TestIPSet(t *testing.T) {
	small := []string{"10.0.0.0/8", "192.168.1.1", "2001:db8::/32"}
	var large []string
	for i := 0; i < 50; i++ {
		large = append(large, fmt.Sprintf("172.16.%d.0/24", i))
	}
	large = append(large, small...)
	for _, tc := range []struct {
		name string
		list []string
	}{{"small", small}, {"large", large}} {
		t.Run(tc.name, func(t *testing.T) {
			var ps []netip.Prefix
			for _, s := range tc.list {
				p, err := parsePrefix(s)
				if err != nil {
					t.Fatalf("parsePrefix(%q) error = %v", s, err)
				}
				ps = append(ps, p)
			}
			set := newIPSet(ps)
			for _, c := range []struct {
				addr string
				want bool
			}{
				{"10.1.2.3", true}, {"::ffff:10.1.2.3", true}, {"11.0.0.1", false},
				{"192.168.1.1", true}, {"192.168.1.2", false},
				{"2001:db8:1::5", true}, {"2001:db9::1", false}, {"fe80::1%eth0", false},
			} {
				if got := set.contains(netip.MustParseAddr(c.addr)); got != c.want {
					t.Errorf("contains(%s) = %v, want %v", c.addr, got, c.want)
				}
			}
			if set.contains(netip.Addr{}) {
				t.Error("contains(invalid) = true, want false")
			}
			if tc.name == "large" {
				if !set.contains(netip.MustParseAddr("172.16.49.200")) || set.contains(netip.MustParseAddr("172.16.50.1")) {
					t.Error("large set: 172.16.49.200 in and 172.16.50.1 out, want so")
				}
			}
		})
	}
}

func TestParsePrefixErrors(t *testing.T) {
	for _, s := range []string{"10.0.0.1/8", "10.0.0.0/33", "bogus", "fe80::1%eth0", "10.0.0.0/"} {
		if _, err := parsePrefix(s); err == nil {
			t.Errorf("parsePrefix(%q) error = nil, want an error", s)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestHeaderMatch(t *testing.T) {
	req := &Request{Host: "api.local", Header: http.Header{
		"X-User":     {"alice"},
		"X-Multi":    {"one", "two"},
		"User-Agent": {"Mozilla/5.0 sqlmap/1.0"},
		"X-Empty":    {""},
	}}
	tests := []struct {
		m    HeaderMatch
		want bool
	}{
		{HeaderMatch{Name: "x-user", Exact: ptr("alice")}, true},
		{HeaderMatch{Name: "X-USER", Exact: ptr("Alice")}, false},
		{HeaderMatch{Name: "x-empty", Exact: ptr("")}, true},
		{HeaderMatch{Name: "x-user", Prefix: "al"}, true},
		{HeaderMatch{Name: "x-user", Suffix: "ce"}, true},
		{HeaderMatch{Name: "x-user", Contains: "lic"}, true},
		{HeaderMatch{Name: "x-user", Regex: "a.*e"}, true},
		{HeaderMatch{Name: "x-user", Regex: "lic"}, false}, // anchored
		{HeaderMatch{Name: "user-agent", Regex: ".*sqlmap.*"}, true},
		{HeaderMatch{Name: "x-multi", Exact: ptr("two")}, true},
		{HeaderMatch{Name: "x-user", Present: true}, true},
		{HeaderMatch{Name: "x-none", Present: true}, false},
		{HeaderMatch{Name: "x-none", Absent: true}, true},
		{HeaderMatch{Name: "x-user", Absent: true}, false},
		{HeaderMatch{Name: "x-user", Exact: ptr("alice"), Invert: true}, false},
		{HeaderMatch{Name: "x-none", Exact: ptr("x"), Invert: true}, true},
		{HeaderMatch{Name: "host", Exact: ptr("api.local")}, true},
		{HeaderMatch{Name: ":authority", Suffix: ".local"}, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%+v", tc.m), func(t *testing.T) {
			h, errs := CompileHeaderMatch(&tc.m)
			if len(errs) > 0 {
				t.Fatalf("CompileHeaderMatch error = %v", errs[0])
			}
			if got := h.Match(req); got != tc.want {
				t.Errorf("match() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestHeaderMatchErrors(t *testing.T) {
	tests := []struct {
		m        HeaderMatch
		wantPath string
	}{
		{HeaderMatch{Exact: ptr("x")}, "name"},
		{HeaderMatch{Name: "bad name", Exact: ptr("x")}, "name"},
		{HeaderMatch{Name: "x"}, ""},
		{HeaderMatch{Name: "x", Prefix: "a", Suffix: "b"}, ""},
		{HeaderMatch{Name: "x", Regex: "("}, "regex"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%+v", tc.m), func(t *testing.T) {
			_, errs := CompileHeaderMatch(&tc.m)
			if len(errs) == 0 {
				t.Fatal("CompileHeaderMatch error = nil, want one")
			}
			if got := PathString(errs[0].Path); got != tc.wantPath {
				t.Errorf("error path = %q, want %q (%v)", got, tc.wantPath, errs[0])
			}
		})
	}
}
