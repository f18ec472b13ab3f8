package policy

import (
	"math/bits"
	"net/http"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ferrymesh/ferry/policy/normalize"
)

// DefaultRule is the Rule name of a decision no access rule matched.
const DefaultRule = "default"

// access is the compiled access rules.
type access struct {
	enabled     bool
	deny, allow ruleList // deny_first order
	firstMatch  bool     // first_match order: every rule in all, in order
	all         ruleList
	// the decision when no rule matches, with its counters
	dflt       rule
	dfltAllows bool
	dryRun     bool
}

// rule is a compiled Rule.
type rule struct {
	name    string
	from    sources
	paths   pathSet
	regexes []*regexp.Regexp // path_regex: any may match (with paths)
	methods MethodSet
	mbits   methodBits // methods as bits
	headers []HeaderMatcher
	ports   []uint16
	l7      bool // has request conditions (paths, methods, headers)
	anyPath bool // has neither paths nor path_regex: matchPath is true
	// pathPre is a prefix every path the rule's path patterns match starts with (the
	// longest common prefix of their literal parts; "" when the rule has path_regex or no
	// paths): a cheap first test of the path.
	pathPre string
	// pathB1 holds the bytes the path may have after its leading '/' (the byte at index 1),
	// all of them when a pattern's literal prefix does not fix it, or with path_regex.
	pathB1  [4]uint64
	denies  bool // first_match: the rule refuses (deny, or default when the default denies)
	counts  *counts
	allowed Decision
	refused Decision // denied, or dry-run: what the rule says when it denies
}

// Access sources and orders (Access.Source, Access.Order).
const (
	SourceFile   = "file"
	SourceConsul = "consul"

	OrderDenyFirst  = "deny_first"
	OrderFirstMatch = "first_match"
)

// PendingRule is the Rule name of the refusals of an access block with source consul
// before its first rule set has arrived (Options.Rules nil).
const PendingRule = "intentions:pending"

func (a *access) compile(c *Access, norm normalize.Options, cs *counters, ext *RuleSet) []*FieldError {
	var errs []*FieldError
	base := path{"access"}
	a.dryRun = c.DryRun

	rules, list := c.Rules, "rules"
	order := c.Order
	switch order {
	case "", OrderDenyFirst, OrderFirstMatch:
	default:
		errs = append(errs, fieldErr(base.with("order"), "invalid order %q (want %s or %s)", order, OrderDenyFirst, OrderFirstMatch))
	}
	dflt := c.Default
	switch c.Source {
	case "", SourceFile:
	case SourceConsul:
		if len(c.Rules) > 0 {
			errs = append(errs, fieldErr(base.with("rules"), "rules cannot be combined with source: consul "+
				"(the rules are the Consul intentions whose destination is this service); remove them or use source: file"))
		}
		if order == OrderDenyFirst {
			errs = append(errs, fieldErr(base.with("order"), "source: consul is evaluated first_match (intentions in precedence order)"))
		}
		order, list = OrderFirstMatch, "intentions"
		if dflt == "" {
			dflt = "allow" // Consul CE without ACLs: intentions default to allow
		}
		if ext != nil {
			rules = ext.Rules
		} else {
			rules = []Rule{{Name: PendingRule, Action: "deny"}}
		}
	default:
		errs = append(errs, fieldErr(base.with("source"), "invalid source %q (want %s or %s)", c.Source, SourceFile, SourceConsul))
	}
	a.enabled = dflt != "" || len(rules) > 0 || c.Source == SourceConsul
	a.firstMatch = order == OrderFirstMatch

	hasAllow := false
	for i := range rules {
		hasAllow = hasAllow || rules[i].Action == "allow"
	}
	switch dflt {
	case "allow":
		a.dfltAllows = true
	case "deny":
	case "":
		a.dfltAllows = !hasAllow
	default:
		errs = append(errs, fieldErr(base.with("default"), "invalid default %q (want allow or deny)", c.Default))
	}

	names := make(map[string]int)
	for i := range rules {
		rc := &rules[i]
		p := base.with(list, i)
		r := rule{name: rc.Name}
		if r.name == "" {
			r.name = list + "[" + strconv.Itoa(i) + "]"
		} else if !ValidName(r.name) {
			errs = append(errs, fieldErr(p.with("name"), "invalid name %q (%s)", r.name, NameRule))
		} else if r.name == DefaultRule {
			errs = append(errs, fieldErr(p.with("name"), "the name %q is reserved for the default decision", DefaultRule))
		}
		if j, dup := names[r.name]; dup {
			errs = append(errs, fieldErr(p.with("name"), "name %q already used by %s[%d]", r.name, list, j))
		} else {
			names[r.name] = i
		}

		var es []*FieldError
		r.from, es = compileSources(rc.From, p.with("from"))
		errs = append(errs, es...)
		for j, s := range rc.Paths {
			pp, err := CompilePath(s, norm)
			if err != nil {
				errs = append(errs, fieldErr(p.with("paths", j), "%v", err))
				continue
			}
			r.paths = append(r.paths, pp)
		}
		for j, s := range rc.PathRegex {
			re, err := regexp.Compile(`^(?:` + s + `)$`)
			if err != nil {
				errs = append(errs, fieldErr(p.with("path_regex", j), "invalid regular expression: %v", err))
				continue
			}
			r.regexes = append(r.regexes, re)
		}
		r.methods, es = compileMethods(rc.Methods, p.with("methods"))
		r.mbits = r.methods.bits()
		errs = append(errs, es...)
		for j := range rc.Headers {
			h, es := CompileHeaderMatch(&rc.Headers[j])
			errs = append(errs, under(p.with("headers", j), es)...)
			r.headers = append(r.headers, h)
		}
		for j, port := range rc.Ports {
			if port < 1 || port > 65535 {
				errs = append(errs, fieldErr(p.with("ports", j), "invalid port %d (want 1 to 65535)", port))
				continue
			}
			r.ports = append(r.ports, uint16(port))
		}
		r.pathB1 = [4]uint64{^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}
		if len(r.regexes) == 0 && len(r.paths) > 0 {
			r.pathPre = r.paths[0].lit
			r.pathB1 = [4]uint64{}
			for i := range r.paths {
				lit := r.paths[i].lit
				r.pathPre = commonPrefix(r.pathPre, lit)
				if len(lit) < 2 || lit[1] == 0 {
					r.pathB1 = [4]uint64{^uint64(0), ^uint64(0), ^uint64(0), ^uint64(0)}
					break
				}
				r.pathB1[lit[1]>>6] |= 1 << (lit[1] & 63)
			}
		}
		r.anyPath = len(r.paths) == 0 && len(r.regexes) == 0
		r.l7 = len(rc.Paths) > 0 || len(rc.PathRegex) > 0 || len(rc.Methods) > 0 || len(rc.Headers) > 0

		r.counts = cs.get(KindAccess, r.name)
		r.allowed = Decision{Allowed: true, Kind: KindAccess, Rule: r.name}
		r.refused = a.refusal(r.name)
		switch rc.Action {
		case "allow":
		case "deny":
			r.denies = true
		case "default":
			if !a.firstMatch {
				errs = append(errs, fieldErr(p.with("action"), "action default needs order: first_match"))
			}
			r.denies = !a.dfltAllows
		case "":
			errs = append(errs, fieldErr(p.with("action"), "missing action (allow or deny)"))
		default:
			errs = append(errs, fieldErr(p.with("action"), "invalid action %q (want allow or deny)", rc.Action))
		}
		switch {
		case a.firstMatch:
			a.all.rules = append(a.all.rules, r)
		case r.denies:
			a.deny.rules = append(a.deny.rules, r)
		default:
			a.allow.rules = append(a.allow.rules, r)
		}
	}

	a.deny.index()
	a.allow.index()
	a.all.index()

	a.dflt = rule{name: DefaultRule,
		allowed: Decision{Allowed: true, Kind: KindAccess, Rule: DefaultRule}, refused: a.refusal(DefaultRule)}
	if a.enabled {
		a.dflt.counts = cs.get(KindAccess, DefaultRule)
	}
	return errs
}

// refusal is the decision of a rule named name that denies: 403, or with dry_run allowed
// with the 403 it would have sent.
func (a *access) refusal(name string) Decision {
	d := Decision{Kind: KindAccess, Rule: name, Reply: newReply(http.StatusForbidden, ErrRequestDenied, "rule "+name)}
	if a.dryRun {
		d.Allowed, d.DryRun = true, true
	}
	return d
}

// evaluate decides on an HTTP request: deny rules first, then allow rules, then the default;
// or, in first_match order, the first matching rule, then the default. The decision it
// returns is the deciding rule's, which nobody may modify (copy it).
func (a *access) evaluate(r *Request) *Decision {
	q := httpQuery{r: r, mb: methodBit(r.Method), src: r.SourceIP.Unmap().WithZone("")}
	if len(r.Path) >= 2 {
		q.b1 = r.Path[1]
	}
	if q.src.Is4() {
		q.src4, q.is4 = v4(q.src), true
	}
	if a.firstMatch {
		if ru := a.all.firstHTTP(&q); ru != nil {
			return a.decide(ru)
		}
		return a.fallback()
	}
	if ru := a.deny.firstHTTP(&q); ru != nil {
		return a.refuse(ru)
	}
	if ru := a.allow.firstHTTP(&q); ru != nil {
		ru.counts.allowed.Add(1)
		return &ru.allowed
	}
	return a.fallback()
}

// evaluateConn decides on a TCP connection, where only the caller and port are known.
// In first_match order the first rule whose caller and port conditions hold decides; one
// with request conditions, which a connection cannot be checked against, refuses it
// (failing closed) whatever its action.
func (a *access) evaluateConn(id string, src netip.Addr, port uint16) Decision {
	if a.firstMatch {
		if ru := a.all.first(id, func(ru *rule) bool { return ru.matchConn(id, src, port) }); ru != nil {
			if ru.l7 {
				return *a.refuse(ru)
			}
			return *a.decide(ru)
		}
		return *a.fallback()
	}
	if ru := a.deny.first(id, func(ru *rule) bool { return ru.matchConn(id, src, port) }); ru != nil {
		return *a.refuse(ru)
	}
	if ru := a.allow.first(id, func(ru *rule) bool { return !ru.l7 && ru.matchConn(id, src, port) }); ru != nil {
		ru.counts.allowed.Add(1)
		return ru.allowed
	}
	return *a.fallback()
}

// ruleList is rules in order, indexed by caller: most rules name their callers by SPIFFE
// IDs whose last segment is literal (spiffe://td/svc/NAME, .../dc/*/svc/NAME), so only the
// rules naming the last segment of the request's caller and those that can match callers
// otherwise (any, wildcard last segments, CIDRs) are tried. The index is built once and
// only read afterwards.
type ruleList struct {
	rules  []rule
	byLast map[string][]int32 // last ID segment → indexes of the rules whose IDs all end in a literal segment
	rest   []int32            // indexes of the other rules
	// restBy[i] is the rules of rest that can match a request whose method has bit 1<<i,
	// so that HTTP requests skip the others without looking at them.
	restBy [numMethodBits][]int32
	// restPre[i][b1Class[c]] is the rules of restBy[i] whose paths may have byte c after
	// their leading '/' (see rule.pathB1), each with its literal prefix next to its index,
	// so that the rules a request's path rules out are skipped without a call.
	restPre [numMethodBits][][]preRule
	b1Class [256]uint8
}

// preRule is a rule's index in its list with its literal path prefix, whose first 16
// bytes are also kept as two numbers (see head8) to compare without a call.
type preRule struct {
	pre8, mask8   uint64 // head8(pre), and the bits of it that pre fills
	pre16, mask16 uint64 // the same for pre's bytes 8 to 15
	pre           string
	k             int32
}

// newPreRule returns ru's preRule, for index k.
func newPreRule(ru *rule, k int32) preRule {
	pre := ru.pathPre
	f := preRule{pre: pre, k: k}
	f.pre8, f.mask8 = head8(pre), mask8(len(pre))
	if len(pre) > 8 {
		f.pre16, f.mask16 = head8(pre[8:]), mask8(len(pre)-8)
	}
	return f
}

// mask8 returns the bits of a head8 number that a string of n bytes fills.
func mask8(n int) uint64 {
	if n >= 8 {
		return ^uint64(0)
	}
	return uint64(1)<<(8*n) - 1
}

// prefixOf reports whether f's prefix is a prefix of path, whose first two head8 numbers
// are p8 and p16: it is strings.HasPrefix(path, f.pre) for a path with no NUL byte.
func (f *preRule) prefixOf(path string, p8, p16 uint64) bool {
	return p8&f.mask8 == f.pre8 && p16&f.mask16 == f.pre16 &&
		(len(f.pre) <= 16 || len(path) >= len(f.pre) && path[16:len(f.pre)] == f.pre[16:])
}

// head8 returns the first 8 bytes of s (fewer when s is shorter, the rest zero) as a
// little-endian number. A path prefix holds no NUL (normalization refuses it), so a path
// shorter than a prefix never agrees with it on the bytes the prefix fills.
func head8(s string) uint64 {
	if len(s) >= 8 {
		return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
			uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
	}
	var v uint64
	for i := len(s) - 1; i >= 0; i-- {
		v = v<<8 | uint64(s[i])
	}
	return v
}

// lastSegment is what follows the last '/' of a SPIFFE ID or pattern.
func lastSegment(id string) string { return id[strings.LastIndexByte(id, '/')+1:] }

// literalLast returns the last segment every ID p matches ends with, if p fixes it.
func (p *idPattern) literalLast() (string, bool) {
	if p.exact != "" {
		return lastSegment(p.exact), true
	}
	if n := len(p.segs); n > 0 && p.segs[n-1] != "*" && p.segs[n-1] != "**" {
		return p.segs[n-1], true
	}
	return "", false
}

func (l *ruleList) index() {
	for i := range l.rules {
		f := &l.rules[i].from
		indexable := !f.any && f.ips.empty() && len(f.ids) > 0
		for j := range f.ids {
			_, ok := f.ids[j].literalLast()
			indexable = indexable && ok
		}
		if !indexable {
			l.rest = append(l.rest, int32(i))
			continue
		}
		if l.byLast == nil {
			l.byLast = make(map[string][]int32)
		}
		for j := range f.ids {
			key, _ := f.ids[j].literalLast()
			if ids := l.byLast[key]; len(ids) == 0 || ids[len(ids)-1] != int32(i) {
				l.byLast[key] = append(ids, int32(i))
			}
		}
	}
	for b := range l.restBy {
		for _, k := range l.rest {
			if l.rules[k].mbits&(1<<b) != 0 {
				l.restBy[b] = append(l.restBy[b], k)
			}
		}
	}
	// Bytes after the leading '/' that the same rules of rest allow share a class (at most
	// 256 classes, one per byte).
	var classes [][]int32
	seen := make(map[string]uint8)
	for c := 0; c < 256; c++ {
		var ks []int32
		key := make([]byte, 0, 4*len(l.rest))
		for _, k := range l.rest {
			if l.rules[k].pathB1[c>>6]&(1<<(c&63)) != 0 {
				ks = append(ks, k)
				key = append(key, byte(k), byte(k>>8), byte(k>>16), byte(k>>24))
			}
		}
		cl, ok := seen[string(key)]
		if !ok {
			cl = uint8(len(classes))
			seen[string(key)] = cl
			classes = append(classes, ks)
		}
		l.b1Class[c] = cl
	}
	for b := range l.restPre {
		l.restPre[b] = make([][]preRule, len(classes))
		for cl, ks := range classes {
			for _, k := range ks {
				if ru := &l.rules[k]; ru.mbits&(1<<b) != 0 {
					l.restPre[b][cl] = append(l.restPre[b][cl], newPreRule(ru, k))
				}
			}
		}
	}
}

// first returns the first rule, in order, that may apply to caller id and for which match
// holds, or nil. match does not escape, so the closures callers pass cost no allocation.
func (l *ruleList) first(id string, match func(*rule) bool) *rule {
	var named []int32
	if id != "" && l.byLast != nil {
		named = l.byLast[lastSegment(id)]
	}
	rest := l.rest
	for len(named) > 0 || len(rest) > 0 {
		var k int32
		if len(rest) == 0 || len(named) > 0 && named[0] < rest[0] {
			k, named = named[0], named[1:]
		} else {
			k, rest = rest[0], rest[1:]
		}
		if ru := &l.rules[k]; match(ru) {
			return ru
		}
	}
	return nil
}

// firstHTTP is first for an HTTP request, with the match inlined (no call through a func
// value per rule).
func (l *ruleList) firstHTTP(q *httpQuery) *rule {
	id := q.r.SourceID
	var named []int32
	if id != "" && l.byLast != nil {
		named = l.byLast[lastSegment(id)]
	}
	mi := bits.TrailingZeros16(uint16(q.mb))
	if len(named) == 0 {
		path, rules := q.r.Path, l.rules
		p8, p16 := head8(path), uint64(0)
		if len(path) > 8 {
			p16 = head8(path[8:])
		}
		pres := l.restPre[mi][l.b1Class[q.b1]]
		for i := range pres {
			f := &pres[i]
			if !f.prefixOf(path, p8, p16) {
				continue // matchHTTP would say so too
			}
			// f's rule matches q's method and the path's byte after '/' (restPre is by
			// both), and its literal prefix just did.
			if ru := &rules[f.k]; ru.matchRest(q) {
				return ru
			}
		}
		return nil
	}
	rest := l.restBy[mi]
	for len(named) > 0 || len(rest) > 0 {
		var k int32
		if len(rest) == 0 || len(named) > 0 && named[0] < rest[0] {
			k, named = named[0], named[1:]
		} else {
			k, rest = rest[0], rest[1:]
		}
		if ru := &l.rules[k]; ru.matchHTTP(q) {
			return ru
		}
	}
	return nil
}

func (a *access) fallback() *Decision {
	if a.dfltAllows {
		a.dflt.counts.allowed.Add(1)
		return &a.dflt.allowed
	}
	return a.refuse(&a.dflt)
}

// decide counts and returns the decision of ru, a first_match rule that matched.
func (a *access) decide(ru *rule) *Decision {
	if ru.denies {
		return a.refuse(ru)
	}
	ru.counts.allowed.Add(1)
	return &ru.allowed
}

func (a *access) refuse(ru *rule) *Decision {
	if a.dryRun {
		ru.counts.dryRun.Add(1)
	} else {
		ru.counts.denied.Add(1)
	}
	return &ru.refused
}

// httpQuery is an HTTP request as the rules test it, with what every rule would otherwise
// work out again computed once: the method's bit and the source address, unmapped and
// without zone (and as a number when it is IPv4).
type httpQuery struct {
	r    *Request
	mb   methodBits
	src  netip.Addr
	src4 uint32
	is4  bool // src is IPv4 (src4 is then its value)
	b1   byte // the path's byte at index 1, 0 when it is shorter (no pattern's prefix has 0 there)
}

// matchHTTP reports whether every condition of ru holds for q. The conditions have no side
// effects, so they are tested cheapest first: method bits, port, the path's literal prefix,
// the caller, the path patterns, the headers.
func (ru *rule) matchHTTP(q *httpQuery) bool {
	return ru.mbits&q.mb != 0 &&
		ru.pathB1[q.b1>>6]&(1<<(q.b1&63)) != 0 &&
		strings.HasPrefix(q.r.Path, ru.pathPre) &&
		ru.matchRest(q)
}

// matchRest is matchHTTP after its tests of the method's bit and the path's prefix.
func (ru *rule) matchRest(q *httpQuery) bool {
	r := q.r
	return (q.mb != bitOther || ru.methods.Match(r.Method)) &&
		(len(ru.ports) == 0 || slices.Contains(ru.ports, r.DestPort)) &&
		(ru.from.any || ru.fromOK(q)) &&
		(ru.anyPath || ru.matchPath(r.Path)) &&
		matchAllHeaders(ru.headers, r)
}

// commonPrefix returns the longest common prefix of a and b.
func commonPrefix(a, b string) string {
	n := min(len(a), len(b))
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return a[:i]
		}
	}
	return a[:n]
}

// fromOK reports whether q's caller is one of ru's sources. Sources that are only IPv4
// prefixes, a short list, are scanned here without a call.
func (ru *rule) fromOK(q *httpQuery) bool {
	f := &ru.from
	switch {
	case f.any:
		return true
	case f.v4only:
		if q.is4 {
			for _, p := range f.ips.v4 {
				if q.src4&p.mask == p.addr {
					return true
				}
			}
		}
		return false
	}
	return f.matchNorm(q.r.SourceID, q.src, q.src4)
}

// matchPath reports whether path matches one of ru's patterns or regular expressions, or
// ru has neither.
func (ru *rule) matchPath(p string) bool {
	if len(ru.regexes) == 0 {
		return ru.paths.match(p)
	}
	if len(ru.paths) > 0 && ru.paths.match(p) {
		return true
	}
	for _, re := range ru.regexes {
		if re.MatchString(p) {
			return true
		}
	}
	return false
}

// matchConn reports whether the caller and port conditions of ru hold.
func (ru *rule) matchConn(id string, src netip.Addr, port uint16) bool {
	return ru.matchPort(port) && ru.from.match(id, src)
}

func (ru *rule) matchPort(port uint16) bool {
	return len(ru.ports) == 0 || slices.Contains(ru.ports, port)
}
