// Package route is an HTTP listener's ordered route table: routes match on the normalized
// path (exact, prefix or RE2 regex), method, headers and query parameters, and either
// forward to an upstream (one, or a weighted split for canaries) with header changes, a
// path-prefix rewrite and timeout or retry overrides, or answer with a redirect or a fixed
// response.
//
// A []Route (a listener's `routes:`) is compiled once into a Table, which is immutable and
// safe for concurrent use; Match takes no lock and does not allocate (a query condition
// allocates only to decode a percent-encoded parameter). Paths are matched in the form
// policy.Policy.NormalizePath gives as its match key, normalized with the same
// normalize.Options.
package route

import (
	"fmt"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferrymesh/ferry/policy"
	"github.com/ferrymesh/ferry/policy/normalize"
)

// Options are what compiling routes needs from the rest of the config.
type Options struct {
	// Normalize must be the options requests' paths are normalized with
	// (policy.Policy.Normalize()).
	Normalize normalize.Options
	// Upstream reports whether an upstream of that name exists; nil accepts any name.
	Upstream func(name string) bool
	// RetryOn reports whether a retries.on condition is known; nil accepts any.
	RetryOn func(cond string) bool
	// DefaultUpstream, if set, is where a route that sets none of upstream, split,
	// redirect and response forwards (an inbound listener's local application); "" makes
	// such a route an error. It is not checked with Upstream.
	DefaultUpstream string
}

// Action is what a route does with the requests it takes.
type Action uint8

const (
	// Forward sends the request to an upstream (Entry.Upstream).
	Forward Action = iota
	// RedirectAction answers with a redirect (Entry.RedirectLocation).
	RedirectAction
	// Respond answers with a fixed response (Entry.WriteResponse).
	Respond
)

// Table is a compiled route list. It is immutable: safe for concurrent use.
type Table struct {
	entries []Entry
}

// Entry is one compiled route. It is immutable: safe for concurrent use.
type Entry struct {
	name string

	pathKind pathKind
	path     string // exact path or prefix, normalized
	re       *regexp.Regexp
	methods  policy.MethodSet
	headers  []policy.HeaderMatcher
	query    []queryMatcher

	action     Action
	upstream   string
	split      []WeightedUpstream // weight > 0 only
	cumulative []uint64
	total      uint64
	redirect   *Redirect
	response   *response

	caseInsensitive bool
	prefixRewrite   *string
	reqOps, respOps headerOps
	timeout         time.Duration
	retries         *Retries
}

type pathKind uint8

const (
	pathAny pathKind = iota
	pathExact
	pathPrefix
	pathRegex
)

type response struct {
	status int
	body   string
	header http.Header
}

type headerOps struct {
	add, set [][2]string // canonical key, value
	remove   []string    // canonical keys
}

// path is a FieldError path under construction.
type path []any

func (p path) with(elems ...any) path {
	out := make(path, 0, len(p)+len(elems))
	return append(append(out, p...), elems...)
}

func fieldErr(p path, format string, args ...any) *policy.FieldError {
	return &policy.FieldError{Path: p, Msg: fmt.Sprintf(format, args...)}
}

func under(p path, errs []*policy.FieldError) []*policy.FieldError {
	for _, e := range errs {
		e.Path = p.with(e.Path...)
	}
	return errs
}

// Validate reports every problem in routes, each with its path relative to the routes list
// (e.g. {2, "match", "prefix"}; prefix it with where the list is); nil if they compile.
func Validate(routes []Route, opts Options) []*policy.FieldError {
	_, errs := compile(routes, opts)
	return errs
}

// Compile validates and compiles routes. On any problem it returns an error listing every
// *policy.FieldError (Validate returns them as a list).
func Compile(routes []Route, opts Options) (*Table, error) {
	t, errs := compile(routes, opts)
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = "routes" + policy.PathString(e.Path) + ": " + e.Msg
		}
		return nil, fmt.Errorf("%s", strings.Join(msgs, "\n"))
	}
	return t, nil
}

func compile(routes []Route, opts Options) (*Table, []*policy.FieldError) {
	var errs []*policy.FieldError
	t := &Table{entries: make([]Entry, len(routes))}
	names := make(map[string]int)
	for i := range routes {
		es := compileEntry(&t.entries[i], &routes[i], i, opts)
		errs = append(errs, under(path{i}, es)...)
		n := t.entries[i].name
		if j, dup := names[n]; dup {
			errs = append(errs, fieldErr(path{i, "name"}, "name %q already used by routes[%d]", n, j))
		} else {
			names[n] = i
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return t, nil
}

func compileEntry(e *Entry, rc *Route, i int, opts Options) []*policy.FieldError {
	var errs []*policy.FieldError
	add := func(p path, format string, args ...any) { errs = append(errs, fieldErr(p, format, args...)) }

	e.name = rc.Name
	if e.name == "" {
		e.name = "routes[" + strconv.Itoa(i) + "]"
	} else if !policy.ValidName(e.name) {
		add(path{"name"}, "invalid name %q (%s)", e.name, policy.NameRule)
	}
	e.caseInsensitive = opts.Normalize.CaseInsensitive

	// match
	m := &rc.Match
	mp := path{"match"}
	set := 0
	normPath := func(key, s string) string {
		if s == "" || s[0] != '/' {
			add(mp.with(key), "%q does not start with /", s)
			return ""
		}
		if strings.ContainsRune(s, ';') {
			add(mp.with(key), "%q holds ';' (path params are stripped before matching)", s)
			return ""
		}
		_, norm, err := opts.Normalize.Path(s)
		if err != nil {
			add(mp.with(key), "%q: %v", s, err)
		}
		return norm
	}
	if m.Path != "" {
		set++
		e.pathKind, e.path = pathExact, normPath("path", m.Path)
	}
	if m.Prefix != "" {
		set++
		e.pathKind, e.path = pathPrefix, normPath("prefix", m.Prefix)
	}
	if m.Regex != "" {
		set++
		re, err := regexp.Compile(`^(?:` + m.Regex + `)$`)
		if err != nil {
			add(mp.with("regex"), "invalid regular expression: %v", err)
		}
		e.pathKind, e.re = pathRegex, re
	}
	if set > 1 {
		add(mp, "set at most one of path, prefix and regex")
	}
	var es []*policy.FieldError
	e.methods, es = policy.CompileMethods(m.Methods)
	errs = append(errs, under(mp.with("methods"), es)...)
	for j := range m.Headers {
		h, es := policy.CompileHeaderMatch(&m.Headers[j])
		errs = append(errs, under(mp.with("headers", j), es)...)
		e.headers = append(e.headers, h)
	}
	for j := range m.Query {
		q, es := compileQuery(&m.Query[j])
		errs = append(errs, under(mp.with("query", j), es)...)
		e.query = append(e.query, q)
	}

	// action
	actions := 0
	if rc.Upstream != "" {
		actions++
		e.action, e.upstream = Forward, rc.Upstream
		if opts.Upstream != nil && !opts.Upstream(rc.Upstream) {
			add(path{"upstream"}, "unknown upstream %q", rc.Upstream)
		}
	}
	if len(rc.Split) > 0 {
		actions++
		e.action = Forward
		seen := map[string]bool{}
		for j, w := range rc.Split {
			sp := path{"split", j}
			switch {
			case w.Upstream == "":
				add(sp.with("upstream"), "missing upstream")
			case opts.Upstream != nil && !opts.Upstream(w.Upstream):
				add(sp.with("upstream"), "unknown upstream %q", w.Upstream)
			case seen[w.Upstream]:
				add(sp.with("upstream"), "upstream %q listed twice", w.Upstream)
			}
			seen[w.Upstream] = true
			if w.Weight > 0 {
				e.total += uint64(w.Weight)
				e.split = append(e.split, w)
				e.cumulative = append(e.cumulative, e.total)
			}
		}
		if e.total == 0 {
			add(path{"split"}, "every weight is 0 (at least one upstream must take traffic)")
		}
	}
	if r := rc.Redirect; r != nil {
		actions++
		e.action, e.redirect = RedirectAction, r
		rp := path{"redirect"}
		switch r.Code {
		case 0, 301, 302, 303, 307, 308:
		default:
			add(rp.with("code"), "invalid redirect code %d (want 301, 302, 303, 307 or 308)", r.Code)
		}
		if r.Scheme != "" && r.Scheme != "http" && r.Scheme != "https" {
			add(rp.with("scheme"), "invalid scheme %q (want http or https)", r.Scheme)
		}
		if r.Port < 0 || r.Port > 65535 {
			add(rp.with("port"), "invalid port %d", r.Port)
		}
		if r.Host != "" && (strings.ContainsAny(r.Host, "/?#@ ") || strings.Contains(r.Host, ":") && !strings.HasPrefix(r.Host, "[")) {
			add(rp.with("host"), "invalid host %q (a host name or [IPv6] address, without port)", r.Host)
		}
		if r.Path != "" && r.PrefixRewrite != "" {
			add(rp, "set at most one of path and prefix_rewrite")
		}
		if r.Path != "" && !strings.HasPrefix(r.Path, "/") {
			add(rp.with("path"), "%q does not start with /", r.Path)
		}
		if r.PrefixRewrite != "" && e.pathKind != pathPrefix {
			add(rp.with("prefix_rewrite"), "needs match.prefix")
		}
	}
	if r := rc.Response; r != nil {
		actions++
		e.action = Respond
		e.response = &response{status: r.Status, body: r.Body, header: http.Header{}}
		if r.Status < 200 || r.Status > 599 {
			add(path{"response", "status"}, "invalid status %d (want 200 to 599)", r.Status)
		}
		for _, k := range sortedKeys(r.Headers) {
			if !validHeaderName(k) {
				add(path{"response", "headers", k}, "invalid header name %q", k)
				continue
			}
			e.response.header.Set(k, r.Headers[k])
		}
		if e.response.header.Get("Content-Type") == "" {
			e.response.header.Set("Content-Type", "text/plain; charset=utf-8")
		}
		e.response.header.Set("Content-Length", strconv.Itoa(len(r.Body)))
	}
	switch {
	case actions == 0 && opts.DefaultUpstream != "":
		actions = 1
		e.action, e.upstream = Forward, opts.DefaultUpstream
	case actions == 0:
		add(nil, "missing action: set one of upstream, split, redirect and response")
	case actions == 1:
	default:
		add(nil, "set only one of upstream, split, redirect and response")
	}

	// forwarding options
	forwarding := e.action == Forward && actions == 1
	onlyForward := func(key string) {
		if !forwarding && actions == 1 {
			add(path{key}, "applies only to routes with upstream or split")
		}
	}
	if rc.PrefixRewrite != "" {
		onlyForward("prefix_rewrite")
		if e.pathKind != pathPrefix {
			add(path{"prefix_rewrite"}, "needs match.prefix")
		}
		if !strings.HasPrefix(rc.PrefixRewrite, "/") {
			add(path{"prefix_rewrite"}, "%q does not start with /", rc.PrefixRewrite)
		}
		pr := rc.PrefixRewrite
		e.prefixRewrite = &pr
	}
	if ops := &rc.RequestHeaders; len(ops.Add)+len(ops.Set)+len(ops.Remove) > 0 {
		onlyForward("request_headers")
	}
	e.reqOps, es = compileOps(&rc.RequestHeaders)
	errs = append(errs, under(path{"request_headers"}, es)...)
	e.respOps, es = compileOps(&rc.ResponseHeaders)
	errs = append(errs, under(path{"response_headers"}, es)...)
	if rc.Timeout != 0 {
		onlyForward("timeout")
		if rc.Timeout < 0 {
			add(path{"timeout"}, "must not be negative")
		}
	}
	e.timeout = time.Duration(rc.Timeout)
	if r := rc.Retries; r != nil {
		onlyForward("retries")
		if r.Attempts < 0 {
			add(path{"retries", "attempts"}, "must not be negative")
		}
		if r.PerTryTimeout < 0 {
			add(path{"retries", "per_try_timeout"}, "must not be negative")
		}
		for j, c := range r.On {
			if opts.RetryOn != nil && !opts.RetryOn(c) {
				add(path{"retries", "on", j}, "unknown retry condition %q", c)
			}
		}
		rr := *r
		rr.On = slices.Clone(r.On)
		e.retries = &rr
	}
	return errs
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func validHeaderName(s string) bool {
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

// hopByHop are headers a route may not change: they belong to the connection, and Host to
// the proxy's own handling.
var hopByHop = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Host": true, "Content-Length": true}

func compileOps(o *HeaderOps) (headerOps, []*policy.FieldError) {
	var (
		ops  headerOps
		errs []*policy.FieldError
	)
	check := func(p path, k string) (string, bool) {
		ck := textproto.CanonicalMIMEHeaderKey(k)
		switch {
		case !validHeaderName(k):
			errs = append(errs, fieldErr(p, "invalid header name %q", k))
		case hopByHop[ck]:
			errs = append(errs, fieldErr(p, "header %s cannot be changed by a route", ck))
		default:
			return ck, true
		}
		return "", false
	}
	for _, k := range sortedKeys(o.Add) {
		if ck, ok := check(path{"add", k}, k); ok {
			ops.add = append(ops.add, [2]string{ck, o.Add[k]})
		}
	}
	for _, k := range sortedKeys(o.Set) {
		if ck, ok := check(path{"set", k}, k); ok {
			ops.set = append(ops.set, [2]string{ck, o.Set[k]})
		}
	}
	for j, k := range o.Remove {
		if ck, ok := check(path{"remove", j}, k); ok {
			ops.remove = append(ops.remove, ck)
		}
	}
	return ops, errs
}

func (o *headerOps) apply(h http.Header) {
	for _, k := range o.remove {
		delete(h, k)
	}
	for _, kv := range o.set {
		h[kv[0]] = []string{kv[1]}
	}
	for _, kv := range o.add {
		h[kv[0]] = append(h[kv[0]], kv[1])
	}
}

// queryMatcher is a compiled QueryMatch.
type queryMatcher struct {
	name  string
	op    uint8
	value string
	re    *regexp.Regexp
}

const (
	qExact = iota
	qPrefix
	qRegex
	qPresent
	qAbsent
)

func compileQuery(q *QueryMatch) (queryMatcher, []*policy.FieldError) {
	var errs []*policy.FieldError
	m := queryMatcher{name: q.Name}
	if q.Name == "" {
		errs = append(errs, fieldErr(path{"name"}, "missing parameter name"))
	}
	n := 0
	if q.Exact != nil {
		n++
		m.op, m.value = qExact, *q.Exact
	}
	if q.Prefix != "" {
		n++
		m.op, m.value = qPrefix, q.Prefix
	}
	if q.Regex != "" {
		n++
		m.op = qRegex
		re, err := regexp.Compile(`^(?:` + q.Regex + `)$`)
		if err != nil {
			errs = append(errs, fieldErr(path{"regex"}, "invalid regular expression: %v", err))
		}
		m.re = re
	}
	if q.Present {
		n++
		m.op = qPresent
	}
	if q.Absent {
		n++
		m.op = qAbsent
	}
	if n != 1 {
		errs = append(errs, fieldErr(nil, "want exactly one of exact, prefix, regex, present, absent; got %d", n))
	}
	return m, errs
}

// unescapeQuery decodes a query component if it needs it.
func unescapeQuery(s string) (string, bool) {
	if strings.IndexByte(s, '%') < 0 && strings.IndexByte(s, '+') < 0 {
		return s, true
	}
	u, err := url.QueryUnescape(s)
	return u, err == nil
}

// match reports whether the raw query string satisfies q.
func (q *queryMatcher) match(raw string) bool {
	found := false
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k, ok := unescapeQuery(k); !ok || k != q.name {
			continue
		}
		found = true
		v, ok := unescapeQuery(v)
		if !ok {
			continue
		}
		switch q.op {
		case qExact:
			if v == q.value {
				return true
			}
		case qPrefix:
			if strings.HasPrefix(v, q.value) {
				return true
			}
		case qRegex:
			if q.re.MatchString(v) {
				return true
			}
		}
	}
	switch q.op {
	case qPresent:
		return found
	case qAbsent:
		return !found
	}
	return false
}

// Len returns the number of routes.
func (t *Table) Len() int { return len(t.entries) }

// Match returns the first route that takes r (r.Path a match key from
// policy.Policy.NormalizePath; r.Method, r.Header, r.Host and r.RawQuery are read), or nil
// when none does: answer 404 then (Proxy-Status destination_not_found). A nil Table has no
// routes.
func (t *Table) Match(r *policy.Request) *Entry {
	if i := t.MatchIndex(r); i >= 0 {
		return &t.entries[i]
	}
	return nil
}

// MatchIndex is Match returning the index of the route in the list, or -1 when none takes
// r, for callers that keep what they resolved per route in a slice in the routes' order.
func (t *Table) MatchIndex(r *policy.Request) int {
	if t == nil {
		return -1
	}
	for i := range t.entries {
		if t.entries[i].matches(r) {
			return i
		}
	}
	return -1
}

// Entry returns the i-th route (0 <= i < Len()).
func (t *Table) Entry(i int) *Entry { return &t.entries[i] }

func (e *Entry) matches(r *policy.Request) bool {
	switch e.pathKind {
	case pathExact:
		if r.Path != e.path {
			return false
		}
	case pathPrefix:
		if !strings.HasPrefix(r.Path, e.path) {
			return false
		}
	case pathRegex:
		if !e.re.MatchString(r.Path) {
			return false
		}
	}
	if !e.methods.Match(r.Method) {
		return false
	}
	for i := range e.headers {
		if !e.headers[i].Match(r) {
			return false
		}
	}
	for i := range e.query {
		if !e.query[i].match(r.RawQuery) {
			return false
		}
	}
	return true
}

// Name returns the route's name, for logs, spans and metrics.
func (e *Entry) Name() string { return e.name }

// Action returns what the route does.
func (e *Entry) Action() Action { return e.action }

// Upstream returns the upstream to forward to: the route's upstream, or for a split one of
// its upstreams, chosen by rnd (a uniformly random number, e.g. math/rand/v2.Uint64()) in
// proportion to the weights. "" for routes that do not forward.
func (e *Entry) Upstream(rnd uint64) string {
	if len(e.split) == 0 {
		return e.upstream
	}
	return e.split[e.Pick(rnd)].Upstream
}

// Pick is Upstream returning the index in Upstreams() of the upstream chosen, for callers
// that resolved the upstreams into a slice ahead of time; 0 for a route with one upstream,
// -1 for routes that do not forward.
func (e *Entry) Pick(rnd uint64) int {
	if len(e.split) == 0 {
		if e.upstream == "" {
			return -1
		}
		return 0
	}
	x := rnd % e.total
	for i, c := range e.cumulative {
		if x < c {
			return i
		}
	}
	return len(e.split) - 1
}

// Upstreams returns every upstream the route may forward to.
func (e *Entry) Upstreams() []string {
	if len(e.split) == 0 {
		if e.upstream == "" {
			return nil
		}
		return []string{e.upstream}
	}
	out := make([]string, len(e.split))
	for i, w := range e.split {
		out[i] = w.Upstream
	}
	return out
}

// rewritePrefix replaces the matched prefix of forward (the forwarded path) with repl. The
// prefix was matched on the match key; the forwarded path starts with it too unless it
// differs by case (case-insensitive matching) or params, which are then handled: by
// comparing without case, or else by rewriting the match key.
func (e *Entry) rewritePrefix(forward, match, repl string) string {
	n := len(e.path)
	switch {
	case strings.HasPrefix(forward, e.path):
	case e.caseInsensitive && len(forward) >= n && strings.EqualFold(forward[:n], e.path):
	default:
		forward = match
	}
	return repl + forward[n:]
}

// RewritePath returns the path to forward: forward (the path from NormalizePath) with the
// route's prefix_rewrite applied, or forward itself when the route has none. match is the
// request's match key. It allocates only when it rewrites.
func (e *Entry) RewritePath(forward, match string) string {
	if e.prefixRewrite == nil || e.pathKind != pathPrefix {
		return forward
	}
	out := e.rewritePrefix(forward, match, *e.prefixRewrite)
	// "/api/" → "/" on "/api/x" gives "/x"; "/api" → "/" on "/api/x" gives "//x": merge.
	if strings.HasPrefix(out, "//") {
		out = out[1:]
	}
	return out
}

// ApplyRequestHeaders changes h, the header of the request to forward, as the route says.
func (e *Entry) ApplyRequestHeaders(h http.Header) { e.reqOps.apply(h) }

// ApplyResponseHeaders changes h, the header of the response (forwarded, redirect or fixed),
// as the route says.
func (e *Entry) ApplyResponseHeaders(h http.Header) { e.respOps.apply(h) }

// Timeout returns the route's request timeout, 0 when the upstream's applies.
func (e *Entry) Timeout() time.Duration { return e.timeout }

// Retries returns the route's retry policy, nil when the upstream's applies. Do not modify it.
func (e *Entry) Retries() *Retries { return e.retries }

// RedirectLocation returns, for a redirect route, the status and Location for a request that
// came with scheme ("http" or "https"), host (http.Request.Host), forward (the normalized
// path) and match (its match key), and rawQuery.
func (e *Entry) RedirectLocation(scheme, host, forward, match, rawQuery string) (int, string) {
	r := e.redirect
	if r == nil {
		return 0, ""
	}
	code := r.Code
	if code == 0 {
		code = http.StatusMovedPermanently
	}
	if r.Scheme != "" {
		scheme = r.Scheme
	}
	if r.Host != "" || r.Port != 0 {
		name := strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if h, _, err := net.SplitHostPort(host); err == nil {
			name = h
		}
		if r.Host != "" {
			name = strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]")
		}
		host = name
		if strings.Contains(name, ":") {
			host = "[" + name + "]"
		}
		if r.Port != 0 {
			host = net.JoinHostPort(name, strconv.Itoa(r.Port))
		}
	}
	p := forward
	switch {
	case r.Path != "":
		p = r.Path
	case r.PrefixRewrite != "":
		p = e.rewritePrefix(forward, match, r.PrefixRewrite)
	}
	loc := scheme + "://" + host + p
	if rawQuery != "" && !r.StripQuery {
		loc += "?" + rawQuery
	}
	return code, loc
}

// WriteResponse writes a fixed-response route's response to w (with the route's response
// header changes). It does nothing for other routes.
func (e *Entry) WriteResponse(w http.ResponseWriter) {
	r := e.response
	if r == nil {
		return
	}
	h := w.Header()
	for k, v := range r.header {
		h[k] = slices.Clone(v)
	}
	e.respOps.apply(h)
	w.WriteHeader(r.status)
	if r.body != "" {
		_, _ = w.Write([]byte(r.body))
	}
}
