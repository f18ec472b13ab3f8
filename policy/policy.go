// Package policy is what a Ferry sidecar enforces on requests before they reach the
// application: path normalization, request filtering (size limits, method allow-list,
// header deny list, IP allow/deny lists), access rules (RBAC on the caller's verified SPIFFE
// ID, its address and the request) and local rate limits.
//
// A Config (the `policy:` block of the config file) is compiled once into a Policy, which
// is immutable: the proxy keeps it in its handler tree and swaps it with the config, and
// any number of goroutines may evaluate it at once. Evaluation takes no lock and does not
// allocate, except for keyed rate limits, whose per-key buckets are keyed state (see package
// ratelimit) and allocate only for a key not seen before. Every decision counts itself in
// per-rule atomic counters (Policy.Stats), which a Policy compiled with the previous one as
// Options.Prev keeps counting in, as it keeps the previous rate-limit buckets of unchanged
// limits.
//
// The checks on an HTTP request, in order (Policy.Check runs the last three; Policy.Decide,
// the proxy's call, runs the same without copying decisions):
//
//  1. NormalizePath: 400 for a path that cannot be normalized; gives the match key.
//  2. Filter: IP deny/allow lists (403), URI length (414), header count and size (431),
//     method allow-list (405), header deny list (403), declared body size (413).
//  3. Access: access rules (403), or a dry-run decision. Rules are evaluated deny over
//     allow, or first match (Access.Order); with Access.Source "consul" they are Consul
//     intentions translated by the sidecar's watcher and passed as Options.Rules.
//  4. RateLimit: request rate limits (429 with Retry-After and RateLimit-* headers).
//
// Rate limits marked global are not counted locally: GlobalRateLimit asks a rate limit
// service speaking Envoy's protocol (see RateLimitService and package ratelimit), after
// RateLimit.
//
// On a TCP connection: AllowConn (connection rate limit) when it is accepted, CheckConn
// (IP lists and the identity/CIDR part of the access rules) once the peer is known.
package policy

import (
	"errors"
	"io"
	"math"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy/normalize"
	"github.com/ferrymesh/ferry/policy/ratelimit"
)

// Policy is a compiled, immutable Config. Its methods are safe to call concurrently. A nil
// *Policy normalizes paths with the defaults and allows everything.
type Policy struct {
	norm    normalize.Options
	filter  filter
	access  access
	limits  []rateRule // local
	global  []rateRule // asking the rate limit service
	service *service
	conn    *connLimit

	counts    map[statKey]*counts
	statOrder []statKey
}

// Options are Compile's optional inputs.
type Options struct {
	// Prev is the Policy being replaced, if any: rules and limits with the same name keep
	// its counters, and rate limits with the same name and settings keep its buckets.
	Prev *Policy
	// Now is the rate limiters' clock; nil means time.Now.
	Now func() time.Time
	// Rules, when Access.Source is "consul", are the access rules received from Consul
	// (translated intentions, highest precedence first), evaluated first match. nil means
	// none has arrived yet: every access check is then refused as rule PendingRule, so that
	// a sidecar that has not heard from Consul does not let everyone in.
	Rules *RuleSet
}

// RuleSet is a set of access rules from a source other than the config file (Consul
// intentions). It is immutable once published: safe to share between goroutines.
type RuleSet struct {
	// Version identifies the set in logs (the source's index).
	Version string
	// Rules are evaluated in order, first match (see Access.Order).
	Rules []Rule
}

// Compile validates c and compiles it. A nil c is the zero Config. On any problem it
// returns nil and an error wrapping every *FieldError (use Validate to get them as a list).
func Compile(c *Config, opts Options) (*Policy, error) {
	p, errs := compile(c, opts)
	if len(errs) > 0 {
		list := make([]error, len(errs))
		for i, e := range errs {
			list[i] = e
		}
		return nil, errors.Join(list...)
	}
	return p, nil
}

// Validate reports every problem in c, each with the path of the field at fault relative to
// the policy block; nil if c compiles. It only reads c: safe to call concurrently on a
// Config nobody modifies.
func (c *Config) Validate() []*FieldError {
	_, errs := compile(c, Options{})
	return errs
}

func compile(c *Config, opts Options) (*Policy, []*FieldError) {
	if c == nil {
		c = &Config{}
	}
	var (
		errs []*FieldError
		cs   counters
	)
	if opts.Prev != nil {
		cs.prev = opts.Prev.counts
	}
	p := &Policy{}

	es, err := normalize.ParseEscapedSlashes(c.Normalize.EscapedSlashes)
	if err != nil {
		errs = append(errs, fieldErr(path{"normalize", "escaped_slashes"}, "%v", err))
	}
	p.norm = normalize.Options{EscapedSlashes: es, CaseInsensitive: c.Normalize.CaseInsensitive}

	errs = append(errs, p.filter.compile(&c.Filter, &cs)...)
	errs = append(errs, p.access.compile(&c.Access, p.norm, &cs, opts.Rules)...)
	errs = append(errs, p.compileRateLimits(c, opts, &cs)...)
	if len(errs) > 0 {
		return nil, errs
	}
	p.counts, p.statOrder = cs.m, cs.order
	return p, nil
}

// Normalize returns the path normalization options, for other packages (routes) that
// match paths of the same requests.
func (p *Policy) Normalize() normalize.Options {
	if p == nil {
		return normalize.Options{}
	}
	return p.norm
}

// NormalizePath normalizes a request's escaped path (http.Request.URL.EscapedPath()) and
// returns the path to forward (put it in the outgoing request's URL, Path and RawPath) and
// the key to match (Request.Path). A path that cannot be normalized gets a refusing
// Decision: 400, Kind KindNormalize, Rule "path", Reply.Details naming the problem.
func (p *Policy) NormalizePath(escaped string) (forward, match string, d Decision) {
	var opts normalize.Options
	if p != nil {
		opts = p.norm
	}
	forward, match, err := opts.Path(escaped)
	if err != nil {
		var reply Reply
		switch {
		case errors.Is(err, normalize.ErrEscapedSlash):
			reply = newReply(http.StatusBadRequest, ErrRequestError, "escaped slash in path")
		case errors.Is(err, normalize.ErrInvalidEncoding):
			reply = newReply(http.StatusBadRequest, ErrRequestError, "invalid percent-encoding in path")
		case errors.Is(err, normalize.ErrInvalidChar):
			reply = newReply(http.StatusBadRequest, ErrRequestError, "invalid character in path")
		default:
			reply = newReply(http.StatusBadRequest, ErrRequestError, "invalid path")
		}
		return "", "", Decision{Kind: KindNormalize, Rule: "path", Reply: reply}
	}
	return forward, match, Decision{Allowed: true}
}

// NormalizeRequestPath is NormalizePath returning its refusal by pointer: nil when the
// path can be normalized, so that the common case copies no Decision. The refusal is
// the caller's to keep.
func (p *Policy) NormalizeRequestPath(escaped string) (forward, match string, refusal *Decision) {
	var opts normalize.Options
	if p != nil {
		opts = p.norm
	}
	if forward, match, err := opts.Path(escaped); err == nil {
		return forward, match, nil
	}
	_, _, d := p.NormalizePath(escaped)
	return "", "", &d
}

// NormalizeURLPath is NormalizeRequestPath(u.EscapedPath()), which it also returns as
// escaped, with the usual path (no RawPath, already canonical, nothing to escape) taken
// as it is in one pass over it.
func (p *Policy) NormalizeURLPath(u *url.URL) (escaped, forward, match string, refusal *Decision) {
	var opts normalize.Options
	if p != nil {
		opts = p.norm
	}
	if u.RawPath == "" && opts.PlainCanonical(u.Path) {
		return u.Path, u.Path, u.Path, nil
	}
	escaped = u.EscapedPath()
	forward, match, refusal = p.NormalizeRequestPath(escaped)
	return escaped, forward, match, refusal
}

// SetURLPath puts forward, a path NormalizePath returned, into u (the outgoing request's
// URL) as its Path (decoded) and RawPath (forward itself), so that u.EscapedPath() is
// forward. It allocates only when forward holds percent-encodings.
func SetURLPath(u *url.URL, forward string) {
	if strings.IndexByte(forward, '%') < 0 {
		u.Path, u.RawPath = forward, ""
		return
	}
	dec, err := url.PathUnescape(forward)
	if err != nil { // NormalizePath never returns such a path
		return
	}
	u.Path, u.RawPath = dec, forward
}

// Checks are the decisions of Policy.Check. A check that did not run because an earlier
// one refused the request is the zero Decision.
type Checks struct {
	Filter, Access, RateLimit Decision
}

// Refusal returns the decision that refuses the request, or nil if it may go on.
func (c *Checks) Refusal() *Decision {
	for _, d := range []*Decision{&c.Filter, &c.Access, &c.RateLimit} {
		if d.Kind != KindNone && !d.Allowed {
			return d
		}
	}
	return nil
}

// Check runs Filter, Access and RateLimit on r, in that order, stopping at the first
// refusal. r.Path must be a match key from NormalizePath.
func (p *Policy) Check(r *Request) Checks {
	var c Checks
	if c.Filter = p.Filter(r); !c.Filter.Allowed {
		return c
	}
	if p != nil && p.access.enabled {
		c.Access = *p.access.evaluate(r)
	} else {
		c.Access = Decision{Allowed: true}
	}
	if !c.Access.Allowed {
		return c
	}
	c.RateLimit = p.RateLimit(r)
	return c
}

// Decide runs the checks of Check on r, in the same order and counting the same, but
// returns pointers where Check copies decisions: refusal is the decision that refuses r
// (nil when r may go on), and allowed the decision to record for an allowed r, the access
// rules' or, with no access rules, the rate limits' (nil when neither applied). They point
// into p, which nobody may modify, or into *buf, which Decide overwrites.
//
// With access rules, an allowed request's rate limits take their tokens without working
// out the tokens left (the access decision is the one recorded): one pass through each
// bucket's lock instead of two. A rate-limit refusal always carries its bucket's state
// (RateLimit) for the 429's headers. r.Path must be a match key from NormalizePath.
func (p *Policy) Decide(r *Request, buf *Decision) (refusal, allowed *Decision) {
	if p == nil {
		return nil, nil
	}
	if d := p.filter.refusal(r); d != nil {
		return d, nil
	}
	if !p.access.enabled {
		*buf = p.RateLimit(r)
		switch {
		case !buf.Allowed:
			return buf, nil
		case buf.Kind == KindNone:
			return nil, nil
		}
		return nil, buf
	}
	a := p.access.evaluate(r)
	if !a.Allowed {
		return a, nil
	}
	if d := p.takeTokens(r, buf); d != nil {
		return d, nil
	}
	return nil, a
}

// Filter applies the request filters to r. It reads r.Header only when header limits or
// the header deny list are configured.
func (p *Policy) Filter(r *Request) Decision {
	if p == nil {
		return Decision{Allowed: true}
	}
	return p.filter.check(r)
}

// Access evaluates the access rules on r. With no access rules configured it allows
// without counting (Kind KindNone).
func (p *Policy) Access(r *Request) Decision {
	if p == nil || !p.access.enabled {
		return Decision{Allowed: true}
	}
	return *p.access.evaluate(r)
}

// CheckConn checks a TCP connection from src whose peer has SPIFFE ID id ("" if it did not
// authenticate) arriving on port: the IP deny and allow lists, then the access rules'
// caller part (see Rule). Close the connection when it refuses; Reply then says why for
// logs.
func (p *Policy) CheckConn(src netip.Addr, id string, port uint16) Decision {
	if p == nil {
		return Decision{Allowed: true}
	}
	if d, refused := p.filter.checkIP(src); refused {
		return d
	}
	if !p.access.enabled {
		return Decision{Allowed: true}
	}
	return p.access.evaluateConn(id, src, port)
}

// MaxBodyBytes returns filter.max_body_bytes, 0 for no limit. Filter refuses a request
// declaring a larger Content-Length; for a body of unknown length (chunked, HTTP/2 without
// content-length) the proxy reads it with ReadBody before forwarding anything, and on
// ErrBodyTooLarge replies with RefuseBody's decision.
func (p *Policy) MaxBodyBytes() int64 {
	if p == nil {
		return 0
	}
	return p.filter.maxBody
}

// RefuseBody counts and returns the 413 decision for a body found larger than
// MaxBodyBytes while reading it.
func (p *Policy) RefuseBody() Decision {
	if p == nil {
		return Decision{Kind: KindFilter, Rule: "max_body_bytes",
			Reply: newReply(http.StatusRequestEntityTooLarge, ErrRequestError, "filter max_body_bytes")}
	}
	return p.filter.refuse(&p.filter.body)
}

// ErrBodyTooLarge is returned by ReadBody for a body longer than its limit.
var ErrBodyTooLarge = errors.New("request body larger than max_body_bytes")

// ReadBody reads body whole if it holds at most max bytes, so that a request whose body is
// too large is refused before any of it is forwarded; it returns ErrBodyTooLarge (having
// read max+1 bytes) otherwise. Memory use is bounded by max per request.
func ReadBody(body io.Reader, max int64) ([]byte, error) {
	if max < 0 || max == math.MaxInt64 {
		return io.ReadAll(body)
	}
	b, err := io.ReadAll(io.LimitReader(body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, ErrBodyTooLarge
	}
	return b, nil
}

// Stats returns a snapshot of every rule's counters, in config order (filters, access
// rules with "default" after them, rate limits, the connection rate limit). It allocates;
// call it when metrics are scraped.
func (p *Policy) Stats() []RuleStats {
	if p == nil {
		return nil
	}
	out := make([]RuleStats, 0, len(p.statOrder))
	for _, k := range p.statOrder {
		c := p.counts[k]
		out = append(out, RuleStats{Kind: k.kind, Rule: k.name, Allowed: c.allowed.Load(), Denied: c.denied.Load(),
			DryRunDenied: c.dryRun.Load(), Limited: c.limited.Load(), Errors: c.errors.Load()})
	}
	return out
}

// ValidName reports whether s may name a rule or route: letters, digits and . _ - : / [ ] > *,
// at most 128 bytes, so that it can be put in a Proxy-Status string and a metrics label as
// is. NameRule says so in words, for error messages.
func ValidName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._-:/[]>*", c) >= 0) {
			return false
		}
	}
	return true
}

// NameRule describes valid names (see ValidName) for error messages.
const NameRule = "letters, digits and . _ - : / [ ] > * only, at most 128 bytes"

// limitFor returns a ratelimit.Limit for rate r and burst b (0: r rounded up, at least 1).
func limitFor(r float64, b int) ratelimit.Limit {
	if b == 0 {
		b = max(1, int(math.Ceil(r)))
	}
	return ratelimit.Limit{Rate: r, Burst: b}
}
