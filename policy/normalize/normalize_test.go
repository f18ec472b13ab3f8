package normalize

import (
	"errors"
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestPath(t *testing.T) {
	ci := Options{CaseInsensitive: true}
	keep := Options{EscapedSlashes: Keep}
	unesc := Options{EscapedSlashes: Unescape}
	tests := []struct {
		name    string
		opts    Options
		in      string
		forward string
		match   string
		err     error
	}{
		{"plain", Options{}, "/admin", "/admin", "/admin", nil},
		{"root", Options{}, "/", "/", "/", nil},
		{"empty", Options{}, "", "/", "/", nil},
		{"asterisk", Options{}, "*", "*", "*", nil},
		{"relative", Options{}, "admin", "", "", ErrNotAbsolute},
		{"upper kept when case-sensitive", Options{}, "/ADMIN", "/ADMIN", "/ADMIN", nil},
		{"upper folded when case-insensitive", ci, "/ADMIN", "/ADMIN", "/admin", nil},
		{"mixed case encoding folded", ci, "/%41dMiN", "/AdMiN", "/admin", nil},
		{"encoded unreserved", Options{}, "/%61dmin", "/admin", "/admin", nil},
		{"encoded unreserved upper hex", Options{}, "/a%64min", "/admin", "/admin", nil},
		{"encoded tilde and dash", Options{}, "/%7e%2d", "/~-", "/~-", nil},
		{"encoded reserved stays, hex upper", Options{}, "/a%3fb%3a", "/a%3Fb%3A", "/a%3Fb%3A", nil},
		{"encoded space stays", Options{}, "/a%20b", "/a%20b", "/a%20b", nil},
		{"double slash", Options{}, "//admin", "/admin", "/admin", nil},
		{"many slashes", Options{}, "///a////b//", "/a/b/", "/a/b/", nil},
		{"dot dot", Options{}, "/x/../admin", "/admin", "/admin", nil},
		{"dot dot above root", Options{}, "/../../admin", "/admin", "/admin", nil},
		{"dot", Options{}, "/./admin/.", "/admin/", "/admin/", nil},
		{"trailing dot dot", Options{}, "/a/b/..", "/a/", "/a/", nil},
		{"encoded dots", Options{}, "/x/%2e%2E/admin", "/admin", "/admin", nil},
		{"dot-like segments kept", Options{}, "/.../a..b/.x", "/.../a..b/.x", "/.../a..b/.x", nil},
		{"params stripped for matching", Options{}, "/admin;x", "/admin;x", "/admin", nil},
		{"params in every segment", Options{}, "/a;b=c/d;e", "/a;b=c/d;e", "/a/d", nil},
		{"tomcat dot-dot-semicolon", Options{}, "/x/..;/admin", "/x/..;/admin", "/admin", nil},
		{"params stripped after dot segments of forward", Options{}, "/0/;/..", "/0/", "/0/", nil},
		{"encoded semicolon is not a param", Options{}, "/admin%3bx", "/admin%3Bx", "/admin%3Bx", nil},
		{"encoded slash rejected", Options{}, "/admin%2f", "", "", ErrEscapedSlash},
		{"encoded slash upper rejected", Options{}, "/a%2Fb", "", "", ErrEscapedSlash},
		{"encoded backslash rejected", Options{}, "/a%5cb", "", "", ErrEscapedSlash},
		{"raw backslash rejected", Options{}, `/a\b`, "", "", ErrEscapedSlash},
		{"encoded slash kept", keep, "/admin%2f", "/admin%2F", "/admin%2F", nil},
		{"encoded backslash kept", keep, `/a\b`, "/a%5Cb", "/a%5Cb", nil},
		{"encoded slash unescaped", unesc, "/admin%2f", "/admin/", "/admin/", nil},
		{"encoded slash dot dot unescaped", unesc, "/x%2f..%2fadmin", "/admin", "/admin", nil},
		{"backslash unescaped", unesc, `/x\..\admin`, "/admin", "/admin", nil},
		{"truncated encoding", Options{}, "/a%4", "", "", ErrInvalidEncoding},
		{"truncated encoding at end", Options{}, "/a%", "", "", ErrInvalidEncoding},
		{"bad hex", Options{}, "/a%zz", "", "", ErrInvalidEncoding},
		{"encoded NUL", Options{}, "/a%00", "", "", ErrInvalidChar},
		{"raw control", Options{}, "/a\x01", "", "", ErrInvalidChar},
		{"raw DEL", Options{}, "/a\x7f", "", "", ErrInvalidChar},
		{"raw non-ASCII encoded", Options{}, "/é", "/%C3%A9", "/%C3%A9", nil},
		{"raw space encoded", Options{}, "/a b", "/a%20b", "/a%20b", nil},
		{"encoded percent stays", Options{}, "/%2561dmin", "/%2561dmin", "/%2561dmin", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fwd, m, err := tc.opts.Path(tc.in)
			if !errors.Is(err, tc.err) {
				t.Fatalf("Path(%q) error = %v, want %v", tc.in, err, tc.err)
			}
			if fwd != tc.forward || m != tc.match {
				t.Errorf("Path(%q) = %q, %q, want %q, %q", tc.in, fwd, m, tc.forward, tc.match)
			}
		})
	}
}

// TestBypassAttempts checks the list: every spelling either matches /admin or is
// refused; none slips past a rule on /admin as some other path.
func TestBypassAttempts(t *testing.T) {
	tests := []struct {
		in     string
		opts   Options
		reject bool
	}{
		{"/admin", Options{}, false},
		{"/ADMIN", Options{CaseInsensitive: true}, false},
		{"/%61dmin", Options{}, false},
		{"/a%64min", Options{}, false},
		{"//admin", Options{}, false},
		{"/x/../admin", Options{}, false},
		{"/admin;x", Options{}, false},
		{"/./admin", Options{}, false},
		{"/x/..;/admin", Options{}, false},
		{"/%2e%2e/admin", Options{}, false},
		{"/admin%2f", Options{}, true},
		{"/admin%2f", Options{EscapedSlashes: Unescape}, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, m, err := tc.opts.Path(tc.in)
			if tc.reject {
				if err == nil {
					t.Fatalf("Path(%q) = %q, want an error", tc.in, m)
				}
				return
			}
			if err != nil {
				t.Fatalf("Path(%q) error = %v", tc.in, err)
			}
			if m != "/admin" && m != "/admin/" {
				t.Errorf("Path(%q) match = %q, want /admin", tc.in, m)
			}
		})
	}
}

func TestCanonicalDoesNotAllocate(t *testing.T) {
	o := Options{CaseInsensitive: true}
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := o.Path("/api/v1/users/42"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Path(canonical) allocs = %v, want 0", allocs)
	}
}

func TestParseEscapedSlashes(t *testing.T) {
	for _, s := range []string{"", "reject", "keep", "unescape"} {
		e, err := ParseEscapedSlashes(s)
		if err != nil {
			t.Fatalf("ParseEscapedSlashes(%q) error = %v", s, err)
		}
		if s != "" && e.String() != s {
			t.Errorf("ParseEscapedSlashes(%q).String() = %q", s, e)
		}
	}
	if _, err := ParseEscapedSlashes("drop"); err == nil {
		t.Error("ParseEscapedSlashes(drop) error = nil, want an error")
	}
}

// FuzzPath checks the normalizer's invariants on arbitrary input and compares it with a
// reference built from net/url and path.Clean.
func FuzzPath(f *testing.F) {
	for _, s := range []string{"/admin", "/%61dmin", "//admin", "/x/../admin", "/admin;x", "/admin%2f",
		"/a/./b/../c/", "/x/..;/admin", `/a\b`, "/%2e%2e", "/a%3bb", "/é", "/A/B", "/a%zz", "/..//../"} {
		f.Add(s, uint8(0), false)
		f.Add(s, uint8(2), true)
	}
	f.Fuzz(func(t *testing.T, in string, mode uint8, ci bool) {
		o := Options{EscapedSlashes: EscapedSlashes(mode % 3), CaseInsensitive: ci}
		fwd, m, err := o.Path(in)
		if err != nil {
			return
		}
		if in == "*" || in == "" {
			return
		}
		for _, s := range []string{fwd, m} {
			if !strings.HasPrefix(s, "/") || strings.Contains(s, "//") {
				t.Fatalf("Path(%q) = %q, %q: not absolute or has //", in, fwd, m)
			}
			for _, seg := range strings.Split(s, "/") {
				if seg == "." || seg == ".." {
					t.Fatalf("Path(%q) = %q, %q: dot segment left", in, fwd, m)
				}
			}
			if _, err := url.PathUnescape(s); err != nil {
				t.Fatalf("Path(%q) = %q: invalid escaping: %v", in, s, err)
			}
		}
		if strings.Contains(m, ";") {
			t.Fatalf("Path(%q) match = %q has a param", in, m)
		}
		if ci && lower(m) != m {
			t.Fatalf("Path(%q) match = %q not lower case", in, m)
		}
		// The key is what a back end that strips params sees in the forwarded path.
		if want := resolve(fwd, true); m != want && !(ci && m == lower(want)) {
			t.Fatalf("Path(%q) = %q, %q; want the key %q derived from the forwarded path", in, fwd, m, want)
		}
		// Idempotent: the forward form normalizes to itself, and to the same key.
		fwd2, m2, err := o.Path(fwd)
		if err != nil || fwd2 != fwd || m2 != m {
			t.Fatalf("Path(Path(%q)) = %q, %q, %v; want %q, %q", in, fwd2, m2, err, fwd, m)
		}
		if m3, _, err := o.Path(m); err != nil || m3 != m {
			t.Fatalf("Path(match %q) = %q, %v; want it unchanged", m, m3, err)
		}
		// Reference: without params, escaped slashes or encoded '%', decoding the match key
		// gives what path.Clean gives on the decoded input (trailing slash aside).
		lower := strings.ToLower(in)
		if o.EscapedSlashes == Keep || strings.ContainsAny(in, ";\\") || strings.Contains(lower, "%3b") || strings.Contains(lower, "%25") {
			return
		}
		want, err := url.PathUnescape(in)
		if err != nil {
			t.Fatalf("Path(%q) accepted what url.PathUnescape refuses: %v", in, err)
		}
		got, _ := url.PathUnescape(m)
		if ci {
			want = strings.ToLower(want)
			got = strings.ToLower(got)
		}
		if path.Clean(got) != path.Clean(want) {
			t.Fatalf("Path(%q) match = %q (decoded %q), want path.Clean of decoded input %q", in, m, got, path.Clean(want))
		}
	})
}

// canonicalRef is the plain form of canonical: it reports whether p (starting with '/') is already both forward and match form.
func (o Options) canonicalRef(p string) bool {
	prevSlash := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		cl := class[c]
		if cl&clsPlain == 0 || c == ';' || o.CaseInsensitive && cl&clsUpper != 0 {
			return false
		}
		if c == '/' {
			if prevSlash {
				return false
			}
			prevSlash = true
			continue
		}
		if prevSlash && c == '.' {
			// "." or ".." segment?
			j := i + 1
			if j < len(p) && p[j] == '.' {
				j++
			}
			if j == len(p) || p[j] == '/' {
				return false
			}
		}
		prevSlash = false
	}
	return true
}

// FuzzCanonical compares canonical's table-driven loop with canonicalRef.
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{"/api/v1/orders/42", "//a", "/a/./b", "/a/../b", "/.", "/..", "/a.", "/.a", "/..a",
		"/a;b", "/A", "/a%41", "/a b", "/é", "/a/", "/", "/a\\b"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, p string, ci bool) {
		if p == "" || p[0] != '/' {
			return
		}
		o := Options{CaseInsensitive: ci}
		if got, want := o.canonical(p), o.canonicalRef(p); got != want {
			t.Fatalf("canonical(%q) (case-insensitive %v) = %v, want %v", p, ci, got, want)
		}
	})
}

// FuzzPlainCanonical checks that a path PlainCanonical accepts is its own escaped form in a
// url.URL and normalizes to itself, and that it accepts the usual canonical paths.
func FuzzPlainCanonical(f *testing.F) {
	for _, s := range []string{"/api/v1/orders/42", "/a(b)", "/a!b", "/a*b", "/a'b", "/a;b", "/a b", "/A", "/a/./b",
		"//a", "/a%41", "/~a@b:c$&+,=", "/", "", "a"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, p string, ci bool) {
		o := Options{CaseInsensitive: ci}
		if !o.PlainCanonical(p) {
			if strings.ContainsAny(p, "!'()*") {
				return
			}
			u := &url.URL{Path: p}
			if fwd, m, err := o.Path(p); err == nil && fwd == p && m == p && p != "" && p != "*" && u.EscapedPath() == p {
				t.Fatalf("PlainCanonical(%q) (case-insensitive %v) = false for a canonical path EscapedPath keeps", p, ci)
			}
			return
		}
		if got := (&url.URL{Path: p}).EscapedPath(); got != p {
			t.Fatalf("PlainCanonical(%q) = true, but EscapedPath() = %q", p, got)
		}
		if fwd, m, err := o.Path(p); err != nil || fwd != p || m != p {
			t.Fatalf("PlainCanonical(%q) = true, but Path() = %q, %q, %v", p, fwd, m, err)
		}
	})
}
