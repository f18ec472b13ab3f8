package policy

import (
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ferrymesh/ferry/policy/normalize"
)

// Vocabulary the fuzzer builds rules and requests from.
var (
	fuzzIDs = []string{"spiffe://mesh.local/svc/a", "spiffe://mesh.local/svc/b", "spiffe://other.org/svc/a",
		"spiffe://mesh.local/ns/x/sa/a", ""}
	fuzzFrom = []string{"spiffe://mesh.local/svc/a", "spiffe://mesh.local/svc/b", "spiffe://mesh.local/svc/*",
		"spiffe://*/svc/a", "spiffe://mesh.local/**", "10.0.0.0/8", "10.1.2.3", "any", "spiffe://other.org/svc/a"}
	fuzzIPs      = []string{"10.1.2.3", "10.9.9.9", "192.168.0.1"}
	fuzzPatterns = []string{"/a", "/a/*", "/a/*/c", "/**/c", "/b*", "/*", "/a/**"}
	fuzzPaths    = []string{"/a", "/a/b", "/a/b/c", "/b", "/bc/d", "/c", "/x/y/c", "/"}
	fuzzMethods  = []string{"GET", "POST", "PURGE"}
)

// refMatch is an independent, slow reference for one rule: regular expressions for paths
// and identities, plain loops for the rest.
func refMatch(rc *Rule, id string, ip netip.Addr, method, path string) bool {
	from := len(rc.From) == 0
	for _, f := range rc.From {
		switch {
		case f == "any":
			from = true
		case len(f) > 9 && f[:9] == "spiffe://":
			from = from || idOracle(f).MatchString(id)
		default:
			p, _ := parsePrefix(f)
			from = from || p.Contains(ip)
		}
	}
	if !from {
		return false
	}
	if len(rc.Methods) > 0 && !slices.Contains(rc.Methods, method) {
		return false
	}
	if len(rc.Paths) == 0 {
		return true
	}
	for _, p := range rc.Paths {
		_, norm, _ := normalize.Options{}.Path(p)
		if globOracle(norm).MatchString(path) {
			return true
		}
	}
	return false
}

// FuzzAccess builds a rule set and a request from the input and compares the evaluator
// (with its caller index, in deny-over-allow or first-match order) with the reference.
func FuzzAccess(f *testing.F) {
	f.Add([]byte{3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Add([]byte{8, 2, 2, 0, 1, 7, 3, 1, 4, 5, 0, 1, 6, 2, 3, 1, 0, 4, 5, 2, 2, 2, 1, 0, 3, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func(n int) int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b) % n
		}
		var rules []Rule
		for n := 1 + next(12); n > 0; n-- {
			var rc Rule
			for k := next(3); k > 0; k-- {
				rc.From = append(rc.From, fuzzFrom[next(len(fuzzFrom))])
			}
			for k := next(3); k > 0; k-- {
				rc.Paths = append(rc.Paths, fuzzPatterns[next(len(fuzzPatterns))])
			}
			if m := fuzzMethods[next(len(fuzzMethods))]; next(2) == 0 {
				rc.Methods = []string{m}
			}
			rc.Action = []string{"allow", "deny"}[next(2)]
			rules = append(rules, rc)
		}
		dflt := []string{"allow", "deny"}[next(2)]
		order := []string{OrderDenyFirst, OrderFirstMatch}[next(2)]
		if order == OrderFirstMatch && next(3) == 0 {
			rules[len(rules)-1].Action = "default"
		}
		p, err := Compile(&Config{Access: Access{Default: dflt, Order: order, Rules: rules}}, Options{})
		if err != nil {
			t.Fatalf("Compile() error = %v", err)
		}
		r := &Request{Method: fuzzMethods[next(len(fuzzMethods))], Path: fuzzPaths[next(len(fuzzPaths))],
			SourceID: fuzzIDs[next(len(fuzzIDs))], SourceIP: netip.MustParseAddr(fuzzIPs[next(len(fuzzIPs))]), Header: http.Header{}}

		want, wantAllowed := DefaultRule, dflt == "allow"
		found := false
		if order == OrderFirstMatch {
			for i := range rules {
				if refMatch(&rules[i], r.SourceID, r.SourceIP, r.Method, r.Path) {
					want, wantAllowed, found = "rules["+strconv.Itoa(i)+"]", rules[i].Action == "allow", true
					if rules[i].Action == "default" {
						wantAllowed = dflt == "allow"
					}
					break
				}
			}
		}
		for _, action := range []string{"deny", "allow"} {
			if found {
				break
			}
			for i := range rules {
				if rules[i].Action == action && refMatch(&rules[i], r.SourceID, r.SourceIP, r.Method, r.Path) {
					want, wantAllowed, found = "rules["+strconv.Itoa(i)+"]", action == "allow", true
					break
				}
			}
			if found {
				break
			}
		}
		d := p.Access(r)
		if d.Rule != want || d.Allowed != wantAllowed {
			t.Fatalf("Access(%+v) = %s allowed %v, want %s allowed %v; rules %+v", *r, d.Rule, d.Allowed, want, wantAllowed, rules)
		}
	})
}

// FuzzPrefixOf compares preRule.prefixOf, the rule loop's prefix test, with
// strings.HasPrefix on paths without NUL (normalization refuses NUL).
func FuzzPrefixOf(f *testing.F) {
	for _, s := range [][2]string{{"/api/v1/orders/", "/api/v1/orders/42"}, {"/api/v1/", "/api/v1"},
		{"/api/v1/users", "/api/v1/orders/42"}, {"", "/x"}, {"/", "/"}, {"/admin", "/adm"},
		{"/12345678", "/1234567"}, {"/1234567", "/12345678"}, {"/a", ""},
		{"/api/v1/reports/", "/api/v1/reports/x/pdf"}, {"/api/v1/reports/x", "/api/v1/reports/"},
		{"/0123456789abcdefgh", "/0123456789abcdefgh/i"}, {"/0123456789abcdefgh", "/0123456789abcdefgx"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pre, path string) {
		if strings.IndexByte(pre, 0) >= 0 || strings.IndexByte(path, 0) >= 0 {
			return
		}
		pr := newPreRule(&rule{pathPre: pre}, 0)
		p16 := uint64(0)
		if len(path) > 8 {
			p16 = head8(path[8:])
		}
		if got, want := pr.prefixOf(path, head8(path), p16), strings.HasPrefix(path, pre); got != want {
			t.Fatalf("prefixOf(%q) with prefix %q = %v, want %v", path, pre, got, want)
		}
	})
}

// FuzzAccessHeaders checks the access rules' header conditions, several per rule and
// several rules on one header, against HeaderMatcher.Match on each condition.
func FuzzAccessHeaders(f *testing.F) {
	f.Add([]byte{4, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20})
	f.Add([]byte{9, 1, 2, 0, 3, 1, 4, 2, 2, 0, 1, 1, 3, 0, 2, 2, 1, 1, 0, 3, 2, 1, 0, 2})
	names := []string{"x-a", "x-b", "host", "x-c", "X-A"}
	vals := []string{"", "v", "vw", "w"}
	f.Fuzz(func(t *testing.T, data []byte) {
		next := func(n int) int {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return int(b) % n
		}
		var rules []Rule
		for n := 1 + next(10); n > 0; n-- {
			var rc Rule
			for k := next(3); k > 0; k-- {
				m := HeaderMatch{Name: names[next(len(names))], Invert: next(4) == 0}
				switch v := vals[next(len(vals))]; next(4) {
				case 0:
					m.Exact = &v
				case 1:
					m.Prefix = "v"
				case 2:
					m.Present = true
				default:
					m.Absent = true
				}
				rc.Headers = append(rc.Headers, m)
			}
			rc.Action = []string{"allow", "deny"}[next(2)]
			rules = append(rules, rc)
		}
		order := []string{OrderDenyFirst, OrderFirstMatch}[next(2)]
		p, err := Compile(&Config{Access: Access{Default: "deny", Order: order, Rules: rules}}, Options{})
		if err != nil {
			t.Fatalf("Compile() error = %v", err)
		}
		r := &Request{Method: "GET", Path: "/", Header: http.Header{}, SourceIP: netip.MustParseAddr("10.1.2.3")}
		for _, k := range []string{"X-A", "X-B", "X-C"} {
			for n := next(3); n > 0; n-- {
				r.Header[k] = append(r.Header[k], vals[next(len(vals))])
			}
		}
		if next(2) == 0 {
			r.Host = "v.example"
		}
		match := func(rc *Rule) bool {
			for i := range rc.Headers {
				h, errs := CompileHeaderMatch(&rc.Headers[i])
				if len(errs) > 0 {
					t.Fatalf("CompileHeaderMatch(%+v) = %v", rc.Headers[i], errs[0])
				}
				if !h.Match(r) {
					return false
				}
			}
			return true
		}
		want := DefaultRule
		actions := []string{"deny", "allow"}
		if order == OrderFirstMatch {
			actions = []string{""}
		}
	search:
		for _, action := range actions {
			for i := range rules {
				if (action == "" || rules[i].Action == action) && match(&rules[i]) {
					want = "rules[" + strconv.Itoa(i) + "]"
					break search
				}
			}
		}
		if d := p.Access(r); d.Rule != want {
			t.Fatalf("Access(%+v) = %s, want %s; rules %+v", *r, d.Rule, want, rules)
		}
	})
}
