package policy

import (
	"context"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy/ratelimit"
)

// maxRate bounds requests_per_second and connections_per_second.
const maxRate = 1e9

// keyKind is what a rate limit is keyed by.
type keyKind uint8

const (
	keyNone keyKind = iota
	keySource
	keyClientIP
	keyHeader
)

// limiterSpec is what makes two limits' buckets interchangeable across a reload.
type limiterSpec struct {
	limit   ratelimit.Limit
	key     keyKind
	header  string
	maxKeys int
}

// rateRule is a compiled RateLimit.
type rateRule struct {
	name    string
	prefix  string
	paths   pathSet
	methods MethodSet
	headers []HeaderMatcher
	key     keyKind
	header  string // canonical header key, for keyHeader
	global  bool   // asks the rate limit service; lim is nil
	descKey string // descriptor key of a global limit's key entry
	spec    limiterSpec
	lim     *ratelimit.Limiter
	counts  *counts
	refused Decision
}

// connLimit is a compiled ConnectionRateLimit.
type connLimit struct {
	key     keyKind
	spec    limiterSpec
	lim     *ratelimit.Limiter
	counts  *counts
	refused Decision
}

// ConnectionRateLimitRule is the Rule name of connection rate-limit decisions.
const ConnectionRateLimitRule = "connection_rate_limit"

// parseKey parses a rate-limit key; header-keyed limits return the canonical header key.
func parseKey(s string, headerOK bool) (keyKind, string, bool) {
	switch s {
	case "", "none":
		return keyNone, "", true
	case "source":
		return keySource, "", headerOK
	case "client_ip", "source_ip":
		return keyClientIP, "", true
	}
	if name, ok := strings.CutPrefix(s, "header:"); ok && headerOK && validToken(name) {
		return keyHeader, textproto.CanonicalMIMEHeaderKey(name), true
	}
	return keyNone, "", false
}

// checkRate reports problems with a rate and burst.
func checkRate(p path, rateKey string, r float64, burst, maxKeys int) []*FieldError {
	var errs []*FieldError
	if !(r > 0) || math.IsInf(r, 0) || r > maxRate {
		errs = append(errs, fieldErr(p.with(rateKey), "must be positive and at most %g", float64(maxRate)))
	}
	if burst < 0 || burst > math.MaxInt32 {
		errs = append(errs, fieldErr(p.with("burst"), "must be positive (0 means %s rounded up)", rateKey))
	}
	if maxKeys < 0 {
		errs = append(errs, fieldErr(p.with("max_keys"), "must not be negative (0 means %d)", ratelimit.DefaultMaxKeys))
	}
	return errs
}

// limiter returns prev's limiter for name if it has the same spec, else a new one.
func limiter(spec limiterSpec, prev *ratelimit.Limiter, prevSpec limiterSpec, now func() time.Time) *ratelimit.Limiter {
	if prev != nil && prevSpec == spec {
		return prev
	}
	return ratelimit.New(spec.limit, spec.key != keyNone, ratelimit.Options{MaxKeys: spec.maxKeys, Now: now})
}

func (p *Policy) compileRateLimits(c *Config, opts Options, cs *counters) []*FieldError {
	var errs []*FieldError
	prev := make(map[string]*rateRule)
	if opts.Prev != nil {
		for i := range opts.Prev.limits {
			prev[opts.Prev.limits[i].name] = &opts.Prev.limits[i]
		}
	}
	names := make(map[string]int)
	for i := range c.RateLimits {
		rc := &c.RateLimits[i]
		pp := path{"rate_limits", i}
		r := rateRule{name: rc.Name, prefix: rc.PathPrefix}
		if r.name == "" {
			r.name = "rate_limits[" + strconv.Itoa(i) + "]"
		} else if !ValidName(r.name) {
			errs = append(errs, fieldErr(pp.with("name"), "invalid name %q (%s)", r.name, NameRule))
		}
		if j, dup := names[r.name]; dup {
			errs = append(errs, fieldErr(pp.with("name"), "name %q already used by rate_limits[%d]", r.name, j))
		} else {
			names[r.name] = i
		}
		if rc.PathPrefix != "" {
			// Normalized like the requests it matches.
			_, m, err := p.norm.Path(rc.PathPrefix)
			switch {
			case rc.PathPrefix[0] != '/':
				errs = append(errs, fieldErr(pp.with("path_prefix"), "%q does not start with /", rc.PathPrefix))
			case strings.ContainsAny(rc.PathPrefix, "*;"):
				errs = append(errs, fieldErr(pp.with("path_prefix"), "%q holds * or ; (path_prefix is a plain prefix; use paths for patterns)", rc.PathPrefix))
			case err != nil:
				errs = append(errs, fieldErr(pp.with("path_prefix"), "%q: %v", rc.PathPrefix, err))
			default:
				r.prefix = m
			}
		}
		for j, s := range rc.Paths {
			pat, err := CompilePath(s, p.norm)
			if err != nil {
				errs = append(errs, fieldErr(pp.with("paths", j), "%v", err))
				continue
			}
			r.paths = append(r.paths, pat)
		}
		var es []*FieldError
		r.methods, es = compileMethods(rc.Methods, pp.with("methods"))
		errs = append(errs, es...)
		for j := range rc.Headers {
			h, es := CompileHeaderMatch(&rc.Headers[j])
			errs = append(errs, under(pp.with("headers", j), es)...)
			r.headers = append(r.headers, h)
		}
		var ok bool
		r.key, r.header, ok = parseKey(rc.Key, true)
		if !ok {
			errs = append(errs, fieldErr(pp.with("key"), "invalid key %q (want none, source, client_ip or header:NAME)", rc.Key))
		}
		if rc.Global {
			switch {
			case c.RateLimitService == nil:
				errs = append(errs, fieldErr(pp.with("global"), "needs rate_limit_service"))
			case rc.RequestsPerSecond != 0 || rc.Burst != 0 || rc.MaxKeys != 0:
				errs = append(errs, fieldErr(pp.with("global"), "a global limit is set in the rate limit service: leave out requests_per_second, burst and max_keys"))
			}
		} else {
			errs = append(errs, checkRate(pp, "requests_per_second", rc.RequestsPerSecond, rc.Burst, rc.MaxKeys)...)
		}
		if len(errs) > 0 {
			continue // no limiter for a broken config
		}
		r.counts = cs.get(KindRateLimit, r.name)
		r.refused = Decision{Kind: KindRateLimit, Rule: r.name,
			Reply: newReply(http.StatusTooManyRequests, ErrRequestDenied, "rate limit "+r.name)}
		if rc.Global {
			r.global = true
			switch r.key {
			case keySource:
				r.descKey = "source_identity"
			case keyClientIP:
				r.descKey = "remote_address"
			case keyHeader:
				r.descKey = strings.ToLower(r.header)
			}
			p.global = append(p.global, r)
			continue
		}
		r.spec = limiterSpec{limit: limitFor(rc.RequestsPerSecond, rc.Burst), key: r.key, header: r.header, maxKeys: rc.MaxKeys}
		var prevLim *ratelimit.Limiter
		var prevSpec limiterSpec
		if pr := prev[r.name]; pr != nil {
			prevLim, prevSpec = pr.lim, pr.spec
		}
		r.lim = limiter(r.spec, prevLim, prevSpec, opts.Now)
		p.limits = append(p.limits, r)
	}

	if sc := c.RateLimitService; sc != nil {
		errs = append(errs, p.compileService(sc, cs)...)
	}

	if cc := c.ConnectionRateLimit; cc != nil {
		pp := path{"connection_rate_limit"}
		key, _, ok := parseKey(cc.Key, false)
		if !ok {
			errs = append(errs, fieldErr(pp.with("key"), "invalid key %q (want none or client_ip)", cc.Key))
		}
		errs = append(errs, checkRate(pp, "connections_per_second", cc.ConnectionsPerSecond, cc.Burst, cc.MaxKeys)...)
		if len(errs) == 0 {
			cl := &connLimit{key: key,
				spec: limiterSpec{limit: limitFor(cc.ConnectionsPerSecond, cc.Burst), key: key, maxKeys: cc.MaxKeys}}
			var prevLim *ratelimit.Limiter
			var prevSpec limiterSpec
			if opts.Prev != nil && opts.Prev.conn != nil {
				prevLim, prevSpec = opts.Prev.conn.lim, opts.Prev.conn.spec
			}
			cl.lim = limiter(cl.spec, prevLim, prevSpec, opts.Now)
			cl.counts = cs.get(KindConnectionRateLimit, ConnectionRateLimitRule)
			cl.refused = Decision{Kind: KindConnectionRateLimit, Rule: ConnectionRateLimitRule,
				Reply: newReply(http.StatusTooManyRequests, ErrRequestDenied, "rate limit "+ConnectionRateLimitRule)}
			p.conn = cl
		}
	}
	return errs
}

// match reports whether rr applies to r.
func (rr *rateRule) match(r *Request) bool {
	return strings.HasPrefix(r.Path, rr.prefix) &&
		rr.methods.Match(r.Method) &&
		rr.paths.match(r.Path) &&
		matchAllHeaders(rr.headers, r)
}

// keyOf returns r's bucket key for rr.
func (rr *rateRule) keyOf(r *Request) ratelimit.Key {
	switch rr.key {
	case keySource:
		return ratelimit.Key{S: r.SourceID}
	case keyClientIP:
		return ratelimit.Key{IP: r.SourceIP.Unmap()}
	case keyHeader:
		if vs := r.Header[rr.header]; len(vs) > 0 {
			return ratelimit.Key{S: vs[0]}
		}
	}
	return ratelimit.Key{}
}

// RateLimit takes a token from the bucket of every rate limit that applies to r, in config
// order, and refuses r (429) at the first that is empty; tokens already taken from earlier
// limits stay taken. Allowed with Kind KindNone when no limit applies. It allocates only for
// a key its bucket set has not seen (or has evicted).
func (p *Policy) RateLimit(r *Request) Decision {
	if p == nil {
		return Decision{Allowed: true}
	}
	d := Decision{Allowed: true}
	for i := range p.limits {
		rr := &p.limits[i]
		if !rr.match(r) {
			continue
		}
		res := rr.lim.Allow(rr.keyOf(r))
		if !res.Allowed {
			rr.counts.limited.Add(1)
			d = rr.refused
			d.RateLimit = res
			return d
		}
		rr.counts.allowed.Add(1)
		if d.Kind == KindNone || res.Remaining < d.RateLimit.Remaining {
			d = Decision{Allowed: true, Kind: KindRateLimit, Rule: rr.name, RateLimit: res}
		}
	}
	return d
}

// takeTokens is RateLimit for a caller that needs no decision for an allowed request: it
// returns the refusal, in buf, or nil when every limit that applies had a token.
func (p *Policy) takeTokens(r *Request, buf *Decision) *Decision {
	for i := range p.limits {
		rr := &p.limits[i]
		if !rr.match(r) {
			continue
		}
		if !rr.lim.Take(rr.keyOf(r), &buf.RateLimit) {
			rr.counts.limited.Add(1)
			res := buf.RateLimit
			*buf = rr.refused
			buf.RateLimit = res
			return buf
		}
		rr.counts.allowed.Add(1)
	}
	return nil
}

// AllowConn takes a token from the connection rate limit for a new connection from src.
// When it refuses, close the connection at once (for HTTP, a 429 may be written first).
// Allowed with Kind KindNone when no connection rate limit is configured.
func (p *Policy) AllowConn(src netip.Addr) Decision {
	if p == nil || p.conn == nil {
		return Decision{Allowed: true}
	}
	cl := p.conn
	var k ratelimit.Key
	if cl.key == keyClientIP {
		k.IP = src.Unmap()
	}
	res := cl.lim.Allow(k)
	if !res.Allowed {
		cl.counts.limited.Add(1)
		d := cl.refused
		d.RateLimit = res
		return d
	}
	cl.counts.allowed.Add(1)
	return Decision{Allowed: true, Kind: KindConnectionRateLimit, Rule: ConnectionRateLimitRule, RateLimit: res}
}

// ServiceRule is the Rule name of decisions the rate limit service's failures make.
const ServiceRule = "rate_limit_service"

// service is the compiled rate_limit_service block.
type service struct {
	address string
	opts    ratelimit.ServiceOptions
	counts  *counts
	refused Decision // fail closed
}

func (p *Policy) compileService(sc *RateLimitService, cs *counters) []*FieldError {
	var errs []*FieldError
	pp := path{"rate_limit_service"}
	if _, _, err := net.SplitHostPort(sc.Address); err != nil || sc.Address == "" {
		errs = append(errs, fieldErr(pp.with("address"), "invalid address %q (want host:port)", sc.Address))
	}
	if sc.Timeout < 0 {
		errs = append(errs, fieldErr(pp.with("timeout"), "must not be negative (0 means %v)", ratelimit.DefaultServiceTimeout))
	}
	closed := false
	switch sc.FailureMode {
	case "", "open":
	case "closed":
		closed = true
	default:
		errs = append(errs, fieldErr(pp.with("failure_mode"), "invalid failure_mode %q (want open or closed)", sc.FailureMode))
	}
	if len(errs) > 0 {
		return errs
	}
	domain := sc.Domain
	if domain == "" {
		domain = "ferry"
	}
	p.service = &service{address: sc.Address,
		opts:    ratelimit.ServiceOptions{Domain: domain, Timeout: time.Duration(sc.Timeout), FailClosed: closed},
		counts:  cs.get(KindRateLimit, ServiceRule),
		refused: Decision{Kind: KindRateLimit, Rule: ServiceRule, Reply: newReply(http.StatusInternalServerError, ErrProxyInternal, "rate limit service unavailable")},
	}
	if p.service.opts.Timeout == 0 {
		p.service.opts.Timeout = ratelimit.DefaultServiceTimeout
	}
	return nil
}

// RateLimitService returns the address of rate_limit_service and the options to make a
// ratelimit.Service with (ratelimit.NewService(conn, opts) on a gRPC connection to address),
// or "" when none is configured. Keep the Service across reloads while these are unchanged.
func (p *Policy) RateLimitService() (address string, opts ratelimit.ServiceOptions) {
	if p == nil || p.service == nil {
		return "", ratelimit.ServiceOptions{}
	}
	return p.service.address, p.service.opts
}

// HasGlobalRateLimits reports whether any rate limit asks the rate limit service, so that
// the proxy calls GlobalRateLimit only then.
func (p *Policy) HasGlobalRateLimits() bool { return p != nil && len(p.global) > 0 }

// GlobalRateLimit asks svc (made from RateLimitService) about r, counting it against the
// descriptor of every global rate limit that applies, in one call bounded by the service
// timeout. It refuses with 429 (Rule naming the limit over) when the service says
// OVER_LIMIT, and when the service fails with failure_mode closed with 500 (Rule
// "rate_limit_service"); with failure_mode open a failure allows, Kind KindRateLimit and
// Rule "rate_limit_service" saying so. RateLimit carries the service's limit, headers to add
// to the response (RateLimit.ExtraHeaders, written by SetHeaders) and to the forwarded
// request (RateLimit.RequestHeaders). Allowed with Kind KindNone when no global limit
// applies. It allocates (it is a gRPC call).
func (p *Policy) GlobalRateLimit(ctx context.Context, svc *ratelimit.Service, r *Request) Decision {
	if !p.HasGlobalRateLimits() || svc == nil {
		return Decision{Allowed: true}
	}
	var (
		descs []ratelimit.Descriptor
		rules []*rateRule
	)
	for i := range p.global {
		rr := &p.global[i]
		if !rr.match(r) {
			continue
		}
		d := ratelimit.Descriptor{{Key: "generic_key", Value: rr.name}}
		if v := rr.keyValue(r); v != "" {
			d = append(d, ratelimit.Entry{Key: rr.descKey, Value: v})
		}
		descs = append(descs, d)
		rules = append(rules, rr)
	}
	if len(descs) == 0 {
		return Decision{Allowed: true}
	}
	res := svc.Check(ctx, descs)
	if res.Err != nil {
		p.service.counts.errors.Add(1)
		if !res.Allowed {
			p.service.counts.denied.Add(1)
			return p.service.refused
		}
		p.service.counts.allowed.Add(1)
		return Decision{Allowed: true, Kind: KindRateLimit, Rule: ServiceRule}
	}
	rule := rules[0]
	if res.Descriptor >= 0 && res.Descriptor < len(rules) {
		rule = rules[res.Descriptor]
	}
	if !res.Allowed {
		rule.counts.limited.Add(1)
		d := rule.refused
		d.RateLimit = res.Result
		return d
	}
	for _, rr := range rules {
		rr.counts.allowed.Add(1)
	}
	return Decision{Allowed: true, Kind: KindRateLimit, Rule: rule.name, RateLimit: res.Result}
}

// keyValue returns r's value for a global limit's key entry, "" if it has none.
func (rr *rateRule) keyValue(r *Request) string {
	switch rr.key {
	case keySource:
		return r.SourceID
	case keyClientIP:
		if r.SourceIP.IsValid() {
			return r.SourceIP.Unmap().String()
		}
	case keyHeader:
		if vs := r.Header[rr.header]; len(vs) > 0 {
			return vs[0]
		}
	}
	return ""
}
