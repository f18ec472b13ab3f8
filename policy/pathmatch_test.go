package policy

import (
	"regexp"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/policy/normalize"
)

func TestPathPattern(t *testing.T) {
	tests := []struct {
		pattern string
		opts    normalize.Options
		match   []string
		noMatch []string
	}{
		{"/healthz", normalize.Options{}, []string{"/healthz"}, []string{"/healthz/", "/healthzx", "/HEALTHZ", "/"}},
		{"/api/*", normalize.Options{}, []string{"/api/", "/api/v1", "/api/v1/users/42"}, []string{"/api", "/apix", "/x/api/"}},
		{"/api*", normalize.Options{}, []string{"/api", "/apiary/x", "/api/"}, []string{"/ap", "/x/api"}},
		{"/*", normalize.Options{}, []string{"/", "/a", "/a/b/c"}, nil},
		{"/api/*/users", normalize.Options{}, []string{"/api/v1/users", "/api/x/users"}, []string{"/api/v1/x/users", "/api/users", "/api/v1/users/1"}},
		{"/api/v*/users", normalize.Options{}, []string{"/api/v1/users", "/api/v/users", "/api/v22/users"}, []string{"/api/x1/users", "/api/v1/x/users"}},
		{"/api/**/users", normalize.Options{}, []string{"/api/users", "/api/a/users", "/api/a/b/c/users"}, []string{"/api/a/users/x", "/apix/users"}},
		{"/**/secret", normalize.Options{}, []string{"/secret", "/a/secret", "/a/b/secret"}, []string{"/secretx", "/a/secret/"}},
		{"/api/**", normalize.Options{}, []string{"/api", "/api/", "/api/a/b"}, []string{"/apix", "/"}},
		{"/a/*/b/*", normalize.Options{}, []string{"/a/x/b/", "/a/x/b/c/d"}, []string{"/a/x/c/d", "/a/b/"}},
		{"/*.json", normalize.Options{}, []string{"/x.json", "/.json"}, []string{"/a/b.json", "/x.jsonp", "/x.js"}},
		{"/*/x.json", normalize.Options{}, []string{"/a/x.json"}, []string{"/a/b/x.json", "/x.json"}},
		{"/f*o*o/*", normalize.Options{}, []string{"/foo/", "/fxoxo/a", "/fooo/a/b"}, []string{"/fo/a", "/foo"}},
		{"/Admin", normalize.Options{CaseInsensitive: true}, []string{"/admin"}, []string{"/Admin"}},
		{"/x/../admin", normalize.Options{}, []string{"/admin"}, []string{"/x/../admin"}},
		{"/%61dmin/*", normalize.Options{}, []string{"/admin/x"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.pattern, func(t *testing.T) {
			p, err := CompilePath(tc.pattern, tc.opts)
			if err != nil {
				t.Fatalf("CompilePath(%q) error = %v", tc.pattern, err)
			}
			for _, s := range tc.match {
				if !p.Match(s) {
					t.Errorf("Match(%q) = false, want true", s)
				}
			}
			for _, s := range tc.noMatch {
				if p.Match(s) {
					t.Errorf("Match(%q) = true, want false", s)
				}
			}
		})
	}
}

func TestCompilePathErrors(t *testing.T) {
	for _, s := range []string{"", "api", "/a;b", "/a/***", "/a/x**/b", "/a**", "/a/b**/*", "/a%zz", "/a%2fb", "/" + strings.Repeat("a", maxPatternLen)} {
		t.Run(s, func(t *testing.T) {
			if _, err := CompilePath(s, normalize.Options{}); err == nil {
				t.Errorf("CompilePath(%q) error = nil, want an error", s)
			}
		})
	}
}

func TestPathMatchDoesNotAllocate(t *testing.T) {
	p := MustCompilePath("/api/**/v*/users/*", normalize.Options{})
	if a := testing.AllocsPerRun(100, func() { p.Match("/api/a/b/v2/users/42/x") }); a != 0 {
		t.Errorf("Match allocs = %v, want 0", a)
	}
}

// globOracle translates a normalized pattern into an equivalent regular expression.
func globOracle(norm string) *regexp.Regexp {
	star := strings.IndexByte(norm, '*')
	switch {
	case star < 0:
		return regexp.MustCompile("^" + regexp.QuoteMeta(norm) + "$")
	case star == len(norm)-1:
		return regexp.MustCompile("^" + regexp.QuoteMeta(norm[:star]) + "(?s:.*)$")
	}
	segs := strings.Split(norm[1:], "/")
	var b strings.Builder
	b.WriteString("^")
	for i, s := range segs {
		if s == "**" {
			b.WriteString("(?:/[^/]*)*")
			continue
		}
		b.WriteString("/")
		parts := strings.Split(s, "*")
		for j, part := range parts {
			if j > 0 {
				b.WriteString("[^/]*")
			}
			b.WriteString(regexp.QuoteMeta(part))
		}
		if i == len(segs)-1 && strings.HasSuffix(s, "*") {
			b.WriteString("(?s:.*)")
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// FuzzPathPattern compares the glob matcher with a regular-expression oracle.
func FuzzPathPattern(f *testing.F) {
	seeds := [][2]string{{"/api/*", "/api/v1"}, {"/a/**/b", "/a/x/y/b"}, {"/**/a*", "/b/ab/c"}, {"/a/*/b/*", "/a/x/b/"},
		{"/*a*b*", "/xaybz/q"}, {"/**", "/"}, {"/a/**/**/b", "/a/b"}, {"/a*b*c", "/aXbYc"}}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, path string) {
		if len(pattern) > 64 || len(path) > 256 || !strings.HasPrefix(path, "/") {
			return
		}
		p, err := CompilePath(pattern, normalize.Options{})
		if err != nil {
			return
		}
		_, norm, _ := normalize.Options{}.Path(pattern)
		_, key, err := normalize.Options{}.Path(path)
		if err != nil {
			return
		}
		want := globOracle(norm).MatchString(key)
		if got := p.Match(key); got != want {
			t.Fatalf("CompilePath(%q).Match(%q) = %v, want %v (normalized pattern %q)", pattern, key, got, want, norm)
		}
	})
}
