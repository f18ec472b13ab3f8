package policy

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/textproto"
	"regexp"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Request is what the evaluators look at. The proxy fills one per request (on the stack:
// evaluators take a pointer and keep nothing) from the http.Request and the connection.
// Fields an evaluator does not need may be left zero.
type Request struct {
	// Method is the request method, e.g. "GET".
	Method string
	// Path is the match key from NormalizePath (normalize.Options.Path), never the raw or
	// decoded URL path.
	Path string
	// RawQuery is the query string without '?', as sent (URL.RawQuery).
	RawQuery string
	// URI is the request target as sent (http.Request.RequestURI); only its length is
	// used, by max_uri_length.
	URI string
	// Host is the Host header or :authority (http.Request.Host); header conditions on
	// "host" or ":authority" see it.
	Host string
	// Header is the request's header with canonical keys, as net/http provides it.
	Header http.Header
	// ContentLength is the declared body length, -1 when unknown.
	ContentLength int64
	// SourceID is the caller's verified SPIFFE ID (from its client certificate), "" when
	// the caller is not authenticated.
	SourceID string
	// SourceIP is the address the connection comes from (not X-Forwarded-For).
	SourceIP netip.Addr
	// DestPort is the port the request arrived on (the listener's), 0 if unknown.
	DestPort uint16
}

// HeaderMatch is one condition on a request header. Exactly one of Exact, Prefix, Suffix,
// Contains, Regex, Present and Absent is set. A header sent several times matches when any
// of its values does (Absent: when it is not sent at all). Values compare case-sensitively.
type HeaderMatch struct {
	// Name is the header name (case-insensitive); "host" and ":authority" mean the
	// request's authority.
	Name string `yaml:"name" json:"name"`
	// Exact matches a value equal to this string (which may be empty).
	Exact *string `yaml:"exact" json:"exact,omitempty"`
	// Prefix matches a value starting with this string.
	Prefix string `yaml:"prefix" json:"prefix,omitempty"`
	// Suffix matches a value ending with this string.
	Suffix string `yaml:"suffix" json:"suffix,omitempty"`
	// Contains matches a value holding this string.
	Contains string `yaml:"contains" json:"contains,omitempty"`
	// Regex matches a value the RE2 expression matches in whole (it is anchored).
	Regex string `yaml:"regex" json:"regex,omitempty"`
	// Present matches when the header is sent, with any value.
	Present bool `yaml:"present" json:"present,omitempty"`
	// Absent matches when the header is not sent.
	Absent bool `yaml:"absent" json:"absent,omitempty"`
	// Invert negates the condition.
	Invert bool `yaml:"invert" json:"invert,omitempty"`
}

type headerOp uint8

const (
	hdrExact headerOp = iota
	hdrPrefix
	hdrSuffix
	hdrContains
	hdrRegex
	hdrPresent
	hdrAbsent
)

// HeaderMatcher is a compiled HeaderMatch. It is immutable: safe for concurrent use.
type HeaderMatcher struct {
	key    string // canonical header key; "" for the authority
	op     headerOp
	value  string
	re     *regexp.Regexp
	simple *simpleRegex // decides re without the regexp engine when re is simple enough
	invert bool
}

// CompileHeaderMatch compiles m; errors name the field at fault, relative to m (prefix
// them with where m is).
func CompileHeaderMatch(m *HeaderMatch) (HeaderMatcher, []*FieldError) {
	var errs []*FieldError
	h := HeaderMatcher{invert: m.Invert}
	switch name := strings.ToLower(m.Name); {
	case name == "":
		errs = append(errs, fieldErr(path{"name"}, "missing header name"))
	case name == "host" || name == ":authority":
	case !validToken(name):
		errs = append(errs, fieldErr(path{"name"}, "invalid header name %q", m.Name))
	default:
		h.key = textproto.CanonicalMIMEHeaderKey(name)
	}
	n := 0
	set := func(op headerOp, v string) {
		n++
		h.op, h.value = op, v
	}
	if m.Exact != nil {
		set(hdrExact, *m.Exact)
	}
	if m.Prefix != "" {
		set(hdrPrefix, m.Prefix)
	}
	if m.Suffix != "" {
		set(hdrSuffix, m.Suffix)
	}
	if m.Contains != "" {
		set(hdrContains, m.Contains)
	}
	if m.Regex != "" {
		set(hdrRegex, m.Regex)
		re, err := regexp.Compile(`^(?:` + m.Regex + `)$`)
		if err != nil {
			errs = append(errs, fieldErr(path{"regex"}, "invalid regular expression: %v", err))
		}
		h.re = re
		if err == nil {
			h.simple, _ = compileSimpleRegex(m.Regex)
		}
	}
	if m.Present {
		set(hdrPresent, "")
	}
	if m.Absent {
		set(hdrAbsent, "")
	}
	if n != 1 {
		errs = append(errs, fieldErr(nil, "want exactly one of exact, prefix, suffix, contains, regex, present, absent; got %d", n))
	}
	return h, errs
}

// Match reports whether r satisfies h. It reads r.Header and r.Host and does not allocate.
func (h *HeaderMatcher) Match(r *Request) bool {
	var vals []string
	var one [1]string
	if h.key == "" {
		if r.Host != "" {
			one[0] = r.Host
			vals = one[:]
		}
	} else {
		vals = r.Header[h.key]
	}
	ok := false
	switch h.op {
	case hdrPresent:
		ok = len(vals) > 0
	case hdrAbsent:
		ok = len(vals) == 0
	default:
		for _, v := range vals {
			if h.matchValue(v) {
				ok = true
				break
			}
		}
	}
	return ok != h.invert
}

func (h *HeaderMatcher) matchValue(v string) bool {
	switch h.op {
	case hdrExact:
		return v == h.value
	case hdrPrefix:
		return strings.HasPrefix(v, h.value)
	case hdrSuffix:
		return strings.HasSuffix(v, h.value)
	case hdrContains:
		return strings.Contains(v, h.value)
	case hdrRegex:
		if h.simple != nil {
			return h.simple.match(v)
		}
		return h.re.MatchString(v)
	}
	return false
}

// matchAllHeaders reports whether r satisfies every matcher of hs.
func matchAllHeaders(hs []HeaderMatcher, r *Request) bool {
	for i := range hs {
		if !hs[i].Match(r) {
			return false
		}
	}
	return true
}

// validToken reports whether s is an RFC 9110 token (method and header names).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// MethodSet is a list of methods, any of which may match; empty matches every method.
type MethodSet []string

// CompileMethods checks a list of methods (tokens; the standard methods in upper case, no
// repeats); errors have the list index as their path.
func CompileMethods(methods []string) (MethodSet, []*FieldError) {
	return compileMethods(methods, nil)
}

// methodBits are the standard methods as bits, so that a rule tests a request's method with
// one AND; bitOther stands for every other method, which is then compared by name.
type methodBits uint16

const (
	bitGet methodBits = 1 << iota
	bitHead
	bitPost
	bitPut
	bitPatch
	bitDelete
	bitConnect
	bitOptions
	bitTrace
	bitOther
	numMethodBits = iota
)

// methodBit returns m's bit.
func methodBit(m string) methodBits {
	switch m {
	case http.MethodGet:
		return bitGet
	case http.MethodHead:
		return bitHead
	case http.MethodPost:
		return bitPost
	case http.MethodPut:
		return bitPut
	case http.MethodPatch:
		return bitPatch
	case http.MethodDelete:
		return bitDelete
	case http.MethodConnect:
		return bitConnect
	case http.MethodOptions:
		return bitOptions
	case http.MethodTrace:
		return bitTrace
	}
	return bitOther
}

// bits returns the set's methods as bits; every bit when the set is empty.
func (ms MethodSet) bits() methodBits {
	if len(ms) == 0 {
		return ^methodBits(0)
	}
	var b methodBits
	for _, m := range ms {
		b |= methodBit(m)
	}
	return b
}

// compileMethods checks methods (tokens, compared case-sensitively as RFC 9110 says; the
// standard ones must be written in upper case).
func compileMethods(methods []string, p path) (MethodSet, []*FieldError) {
	var errs []*FieldError
	out := make(MethodSet, 0, len(methods))
	for i, m := range methods {
		switch {
		case !validToken(m):
			errs = append(errs, fieldErr(p.with(i), "invalid method %q", m))
		case isStandardMethod(strings.ToUpper(m)) && m != strings.ToUpper(m):
			errs = append(errs, fieldErr(p.with(i), "method %q must be upper case (methods are case-sensitive)", m))
		case slices.Contains(out, m):
			errs = append(errs, fieldErr(p.with(i), "method %s listed twice", m))
		default:
			out = append(out, m)
		}
	}
	return out, errs
}

func isStandardMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// Match reports whether m is in ms, or ms is empty.
func (ms MethodSet) Match(m string) bool {
	if len(ms) == 0 {
		return true
	}
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// idPattern is a compiled SPIFFE ID pattern: spiffe://TRUST-DOMAIN/SEG/..., where the trust
// domain or any segment may be "*" (exactly one segment, any value) and the last segment
// may be "**" (one or more segments).
type idPattern struct {
	exact    string   // set when the pattern has no wildcard
	td       string   // trust domain; "*" for any
	segs     []string // path segments; "*" and a final "**" are wildcards
	pre, suf string   // literal text every match starts and ends with: a cheap first test
}

// compileID parses a SPIFFE ID pattern.
func compileID(s string) (idPattern, error) {
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return idPattern{}, fmt.Errorf("%q is not a SPIFFE ID (spiffe://...), a CIDR or \"any\"", s)
	}
	td, p, _ := strings.Cut(rest, "/")
	pat := idPattern{td: td}
	check := []string{"x"}
	if td != "*" {
		check[0] = td
	}
	if p != "" || strings.HasSuffix(rest, "/") {
		pat.segs = strings.Split(p, "/")
		for i, seg := range pat.segs {
			switch {
			case seg == "**" && i != len(pat.segs)-1:
				return idPattern{}, fmt.Errorf("SPIFFE ID pattern %q: ** may only be the last segment", s)
			case seg == "*" || seg == "**":
				check = append(check, "x")
			case strings.Contains(seg, "*"):
				return idPattern{}, fmt.Errorf("SPIFFE ID pattern %q: * must be a whole segment", s)
			default:
				check = append(check, seg)
			}
		}
	}
	// Validate the literal parts with go-spiffe, wildcards replaced by a valid segment.
	if _, err := spiffeid.FromString("spiffe://" + strings.Join(check, "/")); err != nil {
		return idPattern{}, fmt.Errorf("invalid SPIFFE ID pattern %q: %v", s, err)
	}
	if i := strings.IndexByte(s, '*'); i < 0 {
		pat.exact = s
	} else {
		pat.pre, pat.suf = s[:i], s[strings.LastIndexByte(s, '*')+1:]
	}
	return pat, nil
}

// match reports whether the SPIFFE ID id matches p. An empty id (an unauthenticated caller)
// matches nothing.
func (p *idPattern) match(id string) bool {
	if p.exact != "" {
		return id == p.exact
	}
	if !strings.HasPrefix(id, p.pre) || !strings.HasSuffix(id, p.suf) || len(id) < len(p.pre)+len(p.suf) {
		return false
	}
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return false
	}
	td := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		td, rest = rest[:i], rest[i:]
	} else {
		rest = ""
	}
	if td == "" || p.td != "*" && td != p.td {
		return false
	}
	for _, s := range p.segs {
		if len(rest) < 2 || rest[0] != '/' {
			return false
		}
		if s == "**" {
			return !strings.Contains(rest, "//") && rest[len(rest)-1] != '/'
		}
		seg := rest[1:]
		if j := strings.IndexByte(seg, '/'); j >= 0 {
			seg, rest = seg[:j], seg[j:]
		} else {
			rest = ""
		}
		if seg == "" || s != "*" && seg != s {
			return false
		}
	}
	return rest == ""
}

// ipSet is a set of CIDR prefixes. Small sets are scanned; larger ones are looked up by
// masking the address to each prefix length present, so the cost grows with the number of
// distinct lengths, not of prefixes.
type ipSet struct {
	list []netip.Prefix        // small sets
	v4   []v4Prefix            // the IPv4 prefixes of list, as numbers
	v6   []netip.Prefix        // the IPv6 prefixes of list
	lens []int                 // distinct lengths, IPv4 (as 0..32) and IPv6 (as 1000+len)
	m    map[netip.Prefix]bool // masked prefixes, large sets
}

const ipSetScanMax = 8

// parsePrefix parses "10.0.0.0/8" or a single address ("10.1.2.3", "::1").
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("CIDR %q has host bits set (did you mean %s?)", s, p.Masked())
		}
		if p.Addr().Is4In6() {
			a := p.Addr().Unmap()
			if bits := p.Bits() - 96; bits >= 0 {
				return netip.PrefixFrom(a, bits), nil
			}
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("invalid IP address or CIDR %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// v4Prefix is an IPv4 prefix as numbers: an address a is in it when a&mask == addr.
type v4Prefix struct{ addr, mask uint32 }

// v4 returns the IPv4 address a as a number.
func v4(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func newIPSet(ps []netip.Prefix) ipSet {
	if len(ps) <= ipSetScanMax {
		s := ipSet{list: ps}
		for _, p := range ps {
			if !p.Addr().Is4() {
				s.v6 = append(s.v6, p)
				continue
			}
			var mask uint32
			if p.Bits() > 0 {
				mask = ^uint32(0) << (32 - p.Bits())
			}
			s.v4 = append(s.v4, v4Prefix{addr: v4(p.Addr()) & mask, mask: mask})
		}
		return s
	}
	s := ipSet{m: make(map[netip.Prefix]bool, len(ps))}
	for _, p := range ps {
		s.m[p] = true
		l := p.Bits()
		if p.Addr().Is6() {
			l += 1000
		}
		if !slices.Contains(s.lens, l) {
			s.lens = append(s.lens, l)
		}
	}
	slices.Sort(s.lens)
	return s
}

func (s *ipSet) empty() bool { return len(s.list) == 0 && len(s.m) == 0 }

// contains reports whether a lies in one of s's prefixes.
func (s *ipSet) contains(a netip.Addr) bool {
	if s.m == nil && len(s.list) == 0 || !a.IsValid() {
		return false
	}
	a = a.Unmap().WithZone("")
	var a4 uint32
	if a.Is4() {
		a4 = v4(a)
	}
	return s.containsNorm(a, a4)
}

// containsNorm is contains for a valid address a without zone and not IPv4-mapped, whose
// value as a number is a4 when it is IPv4.
func (s *ipSet) containsNorm(a netip.Addr, a4 uint32) bool {
	if s.m == nil {
		if a.Is4() {
			for _, p := range s.v4 {
				if a4&p.mask == p.addr {
					return true
				}
			}
			return false
		}
		for _, p := range s.v6 {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	v6 := a.Is6()
	for _, l := range s.lens {
		if l >= 1000 != v6 {
			continue
		}
		if v6 {
			l -= 1000
		}
		if p, err := a.Prefix(l); err == nil && s.m[p] {
			return true
		}
	}
	return false
}

// sources is a compiled `from` list: SPIFFE ID patterns and CIDRs, any of which may match.
type sources struct {
	any bool
	// v4only: the sources are only IPv4 prefixes, few enough to scan (ips.v4); no SPIFFE
	// ID matches them, nor any other address.
	v4only bool
	ids    []idPattern
	ips    ipSet
}

// compileSources compiles a `from` list; empty or "any" matches every caller.
func compileSources(from []string, p path) (sources, []*FieldError) {
	var (
		s    sources
		errs []*FieldError
		ps   []netip.Prefix
	)
	s.any = len(from) == 0
	for i, f := range from {
		switch {
		case f == "any":
			s.any = true
		case strings.HasPrefix(f, "spiffe://"):
			id, err := compileID(f)
			if err != nil {
				errs = append(errs, fieldErr(p.with(i), "%v", err))
				continue
			}
			s.ids = append(s.ids, id)
		default:
			pr, err := parsePrefix(f)
			if err != nil {
				errs = append(errs, fieldErr(p.with(i), "%v (want a SPIFFE ID, a CIDR or \"any\")", err))
				continue
			}
			ps = append(ps, pr)
		}
	}
	s.ips = newIPSet(ps)
	s.v4only = !s.any && len(s.ids) == 0 && s.ips.m == nil && len(s.ips.v6) == 0 && len(s.ips.v4) > 0
	return s, errs
}

// match reports whether a caller with SPIFFE ID id (may be "") from address ip matches.
func (s *sources) match(id string, ip netip.Addr) bool {
	if s.any {
		return true
	}
	if id != "" {
		for i := range s.ids {
			if s.ids[i].match(id) {
				return true
			}
		}
	}
	return s.ips.contains(ip)
}

// matchNorm is match for an address ip that is valid or zero, without zone, not
// IPv4-mapped, and whose value as a number is ip4 when it is IPv4.
func (s *sources) matchNorm(id string, ip netip.Addr, ip4 uint32) bool {
	if s.any {
		return true
	}
	if id != "" {
		for i := range s.ids {
			if s.ids[i].match(id) {
				return true
			}
		}
	}
	if s.ips.m == nil && len(s.ips.list) == 0 || !ip.IsValid() {
		return false
	}
	return s.ips.containsNorm(ip, ip4)
}
