package policy

import (
	"regexp"
	"testing"
)

func TestCompileSimpleRegex(t *testing.T) {
	cases := []struct {
		expr   string
		simple bool
		yes    []string
		no     []string
	}{
		{`[a-z][a-z0-9-]{1,31}`, true, []string{"acme-corp", "a1", "a" + "bcdefghijklmnopqrstuvwxyz01234"}, []string{"", "a", "1a", "Acme", "acme_corp", "acme-corpé", "a234567890123456789012345678901234"}},
		{`v[0-9]+`, true, []string{"v1", "v42"}, []string{"v", "1", "v1a"}},
		{`abc`, true, []string{"abc"}, []string{"ab", "abcd", ""}},
		{`x?y+z{2}`, true, []string{"yzz", "xyyzz"}, []string{"xzz", "zz", "yzzz"}},
		{`[0-9a-f]{8}-[0-9a-f]{4}`, true, []string{"deadbeef-0123"}, []string{"deadbeef0123", "deadbee-0123"}},
		{``, true, []string{""}, []string{"a"}},
		{`a|b`, true, []string{"a", "b"}, []string{"ab"}},
		{`[a-z]+[a-z0-9]`, false, nil, nil}, // overlapping classes: greedy would be wrong
		{`[a-z]*[0-9]?`, false, nil, nil},   // the next element is optional
		{`(?i)acme`, false, nil, nil},
		{`.*`, false, nil, nil},
		{`foo|barbaz`, false, nil, nil},
		{`é+`, false, nil, nil},
		{`^a$`, false, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.expr, func(t *testing.T) {
			s, ok := compileSimpleRegex(c.expr)
			if ok != c.simple {
				t.Fatalf("compileSimpleRegex(%q) ok = %v, want %v", c.expr, ok, c.simple)
			}
			re := regexp.MustCompile(`^(?:` + c.expr + `)$`)
			for _, v := range c.yes {
				if !re.MatchString(v) {
					t.Fatalf("test case wrong: regexp does not match %q", v)
				}
				if ok && !s.match(v) {
					t.Errorf("match(%q) = false, want true", v)
				}
			}
			for _, v := range c.no {
				if re.MatchString(v) {
					t.Fatalf("test case wrong: regexp matches %q", v)
				}
				if ok && s.match(v) {
					t.Errorf("match(%q) = true, want false", v)
				}
			}
		})
	}
}

// FuzzSimpleRegex checks that a simpleRegex decides every value as regexp does.
func FuzzSimpleRegex(f *testing.F) {
	for _, e := range []string{`[a-z][a-z0-9-]{1,31}`, `v[0-9]+`, `x?y+z{2}`, `x?y*z`, `[0-9a-f]{8}-[0-9a-f]{4}`, `a|b`,
		`[^a-z]{2,}x`, `\d+\.\d+`, `[[:alpha:]]\w{0,3}`, `(a)(b+)`, `a{0}b`, `\s*x`, `[\x00-\x7f]+`} {
		for _, v := range []string{"", "acme-corp", "v12", "yyzz", "deadbeef-0123", "a", "AB x", "1.25", "abcd", "é", "\xff", "\n"} {
			f.Add(e, v)
		}
	}
	f.Fuzz(func(t *testing.T, expr, v string) {
		re, err := regexp.Compile(`^(?:` + expr + `)$`)
		s, ok := compileSimpleRegex(expr)
		if err != nil {
			if ok {
				t.Fatalf("compileSimpleRegex(%q) ok, but regexp: %v", expr, err)
			}
			return
		}
		if !ok {
			return
		}
		if got, want := s.match(v), re.MatchString(v); got != want {
			t.Fatalf("compileSimpleRegex(%q).match(%q) = %v, want %v (regexp)", expr, v, got, want)
		}
	})
}
