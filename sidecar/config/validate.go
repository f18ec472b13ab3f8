package config

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// Validate checks c as it is, without applying defaults, and returns Errors listing every
// problem, or nil. Load and Parse already validate what they return; Validate is for a
// Config built or changed in code. Its Errors carry no line numbers. It only reads c, so it
// is safe to call concurrently on a Config nobody modifies.
func (c *Config) Validate() error {
	col := &collector{file: c.File, loc: &locator{}}
	validate(c, col)
	return col.result()
}

// Upstream returns the upstream named name, or nil. It scans the list (configs hold few
// upstreams and this is not on the request path) and only reads c, so it is safe to call
// concurrently.
func (c *Config) Upstream(name string) *Upstream {
	for i := range c.Upstreams {
		if c.Upstreams[i].Name == name {
			return &c.Upstreams[i]
		}
	}
	return nil
}

// validate records every problem of c in col.
func validate(c *Config, col *collector) {
	l := col.loc

	switch {
	case c.Service == "":
		col.add(path{"service"}, "missing service name (this service's name in the mesh)")
	case !validName(c.Service):
		col.add(path{"service"}, "invalid name %q (%s)", c.Service, nameRule)
	}

	var ls listeners
	ls.check(col, path{"admin", "address"}, c.Admin.Address)

	if in := c.Inbound; in != nil {
		p := path{"inbound"}
		checkListener(col, &ls, p, &in.Listener)
		checkAddress(col, p.with("target"), "target", in.Target, false)
		positive(col, p.with("connect_timeout"), in.ConnectTimeout)
		notNegative(col, p.with("request_timeout"), in.RequestTimeout)
		switch in.TargetProtocol {
		case ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2:
			if in.Protocol == ProtocolTCP {
				col.add(p.with("target_protocol"), "target_protocol applies to http listeners only")
			}
		case "":
		default:
			col.add(p.with("target_protocol"), "unknown protocol %q (want %s, %s or %s)", in.TargetProtocol, ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2)
		}
	}

	names := make(map[string]int) // upstream name → decoded index
	for i := range c.Upstreams {
		checkUpstream(col, i, &c.Upstreams[i], names)
	}

	namesHidden := col.brokenWhere(hidesUpstreamName)
	if in := c.Inbound; in != nil {
		checkRoutes(c, col, path{"inbound"}, in.Protocol, in.Routes, names, namesHidden, true)
	}
	for i := range c.Outbound {
		o := &c.Outbound[i]
		p := l.outbound(i)
		checkListener(col, &ls, p, &o.Listener)
		checkRoutes(c, col, p, o.Protocol, o.Routes, names, namesHidden, false)
		switch _, ok := names[o.Upstream]; {
		case o.Upstream == "" && len(o.Routes) > 0 && o.Protocol == ProtocolHTTP:
			// Requests no route takes get 404.
		case o.Upstream == "":
			col.add(p.with("upstream"), "missing upstream (the name of an entry of upstreams; an http listener with routes may leave it out)")
		case !ok && !namesHidden:
			col.add(p.with("upstream"), "unknown upstream %q (%s)", o.Upstream, knownUpstreams(c))
		}
	}

	checkIngress(c, col, &ls, names, namesHidden)
	notNegative(col, path{"drain_timeout"}, c.DrainTimeout)
	checkDiscovery(c, col)
	if strings.ContainsRune(c.Telemetry.AccessLog, 0) {
		col.add(path{"telemetry", "access_log"}, "invalid file name %q", c.Telemetry.AccessLog)
	}
	checkMTLS(c, col)
	checkTelemetry(col, &c.Telemetry)
	checkPolicy(col, &c.Policy)
	checkPolicySource(col, c)
}

// checkUpstream checks the i-th upstream and records its name in names.
func checkUpstream(col *collector, i int, u *Upstream, names map[string]int) {
	l := col.loc
	p := l.upstream(i)
	if u.Name == "" {
		col.add(p.with("name"), "missing name")
	} else {
		if !validName(u.Name) {
			col.add(p.with("name"), "invalid name %q (%s)", u.Name, nameRule)
		}
		if first, dup := names[u.Name]; dup {
			col.add(p.with("name"), "duplicate upstream name %q (first at %s%s)", u.Name, l.upstream(first), lineNote(l, l.upstream(first).with("name")))
		} else {
			names[u.Name] = i
		}
	}

	eps := p.with("endpoints")
	switch {
	case u.Consul != nil && len(u.Endpoints) > 0:
		col.add(eps, "upstream %q has both endpoints and consul (want exactly one)", u.Name)
	case u.Consul != nil:
		checkConsulUpstream(col, p, u.Consul)
	case len(u.Endpoints) == 0 && !col.brokenWhere(func(b string) bool { return under(b, eps.String()) }):
		// (Items that failed to decode are not "no endpoints".)
		col.add(eps, "upstream %q has no endpoints", u.Name)
	}
	seen := make(map[string]path, len(u.Endpoints))
	for _, it := range l.endpointItems(i, u.Endpoints) {
		ep, e := it.p, it.e
		at := ep.with("address")
		// Address problems are reported at the endpoint (the scalar form has no
		// "address" key); one that failed to decode is reported at ep.address already.
		if !col.brokenUnder(at) && checkAddressAt(col, ep, at, "endpoint address", e.Address, false) {
			if first, dup := seen[e.Address]; dup {
				col.addAt(ep, at, "duplicate endpoint %s (first at %s)", e.Address, first)
			} else {
				seen[e.Address] = ep
			}
		}
		if e.Weight < 1 || e.Weight > MaxWeight {
			col.add(ep.with("weight"), "weight must be from 1 to %d, got %d", MaxWeight, e.Weight)
		}
	}

	knownLB := slices.Contains(balancer.Policies, u.LB)
	hashing := u.LB == balancer.RingHash || u.LB == balancer.Maglev
	if !knownLB {
		col.add(p.with("lb"), "unknown policy %q (want %s)", u.LB, strings.Join(balancer.Policies, ", "))
	}
	if u.HashOn != "" {
		if !validHashOn(u.HashOn) {
			col.add(p.with("hash_on"), "invalid hash_on %q (want header:NAME, cookie:NAME or source_ip)", u.HashOn)
		} else if knownLB && !hashing {
			col.add(p.with("hash_on"), "hash_on needs lb %s or %s (lb is %s)", balancer.RingHash, balancer.Maglev, u.LB)
		}
	}
	switch u.Protocol {
	case ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2:
	default:
		col.add(p.with("protocol"), "unknown protocol %q (want %s, %s or %s)", u.Protocol, ProtocolAuto, ProtocolHTTP1, ProtocolHTTP2)
	}
	positive(col, p.with("connect_timeout"), u.ConnectTimeout)
	notNegative(col, p.with("request_timeout"), u.RequestTimeout)
	positive(col, p.with("idle_timeout"), u.IdleTimeout)
	if u.MaxIdleConnsPerEndpoint < 1 {
		col.add(p.with("max_idle_connections_per_endpoint"), "must be at least 1, got %d", u.MaxIdleConnsPerEndpoint)
	}
	percent(col, p.with("healthy_panic_threshold"), u.HealthyPanicThreshold)
	if u.Retries != nil {
		checkRetries(col, p.with("retries"), u.Retries)
	}
	cb, cp := &u.CircuitBreaker, p.with("circuit_breaker")
	notNegativeInt(col, cp.with("max_connections"), cb.MaxConnections)
	notNegativeInt(col, cp.with("max_pending"), cb.MaxPending)
	notNegativeInt(col, cp.with("max_requests"), cb.MaxRequests)
	notNegativeInt(col, cp.with("max_retries"), cb.MaxRetries)
	if u.OutlierDetection != nil {
		checkOutlier(col, p.with("outlier_detection"), u.OutlierDetection)
	}
	if u.HealthCheck != nil {
		checkHealthCheck(col, p.with("health_check"), u.HealthCheck)
	}
}

// checkRetries checks an upstream's retry policy.
func checkRetries(col *collector, p path, r *Retries) {
	if r.Attempts < 1 || r.Attempts > MaxRetryAttempts {
		col.add(p.with("attempts"), "must be from 1 to %d, got %d", MaxRetryAttempts, r.Attempts)
	}
	if len(r.On) == 0 && !col.brokenUnder(p.with("on")) {
		col.add(p.with("on"), "must list at least one condition (%s)", strings.Join(RetryConditions, ", "))
	}
	for i, c := range r.On {
		if !slices.Contains(RetryConditions, c) {
			col.add(p.with("on", i), "unknown retry condition %q (want %s)", c, strings.Join(RetryConditions, ", "))
		}
	}
	byCode := slices.Contains(r.On, RetryRetriableStatusCodes)
	switch {
	case byCode && len(r.RetriableStatusCodes) == 0:
		col.add(p.with("retriable_status_codes"), "on has %s but no codes are listed", RetryRetriableStatusCodes)
	case !byCode && len(r.RetriableStatusCodes) > 0:
		col.add(p.with("retriable_status_codes"), "codes are listed but on does not have %s", RetryRetriableStatusCodes)
	}
	for i, c := range r.RetriableStatusCodes {
		if c < 100 || c > 599 {
			col.add(p.with("retriable_status_codes", i), "must be an HTTP status from 100 to 599, got %d", c)
		}
	}
	notNegative(col, p.with("per_try_timeout"), r.PerTryTimeout)
	positive(col, p.with("backoff", "base"), r.Backoff.Base)
	if r.Backoff.Max < r.Backoff.Base && r.Backoff.Base > 0 {
		col.add(p.with("backoff", "max"), "must be at least backoff.base (%s), got %s", r.Backoff.Base, r.Backoff.Max)
	}
	if r.BudgetPercent < 0 || r.BudgetPercent > 100 {
		col.add(p.with("budget_percent"), "must be from 0 to 100, got %g", r.BudgetPercent)
	}
	notNegativeInt(col, p.with("min_retry_concurrency"), r.MinRetryConcurrency)
	notNegativeInt(col, p.with("buffer_limit"), r.BufferLimit)
}

// checkOutlier checks an upstream's outlier detection.
func checkOutlier(col *collector, p path, od *OutlierDetection) {
	positive(col, p.with("interval"), od.Interval)
	positive(col, p.with("base_ejection_time"), od.BaseEjectionTime)
	notNegative(col, p.with("max_ejection_time"), od.MaxEjectionTime)
	percent(col, p.with("max_ejection_percent"), od.MaxEjectionPercent)
	notNegativeInt(col, p.with("consecutive_5xx"), od.Consecutive5xx)
	notNegativeInt(col, p.with("consecutive_gateway_failure"), od.ConsecutiveGatewayFailure)
	if sr := od.SuccessRate; sr != nil {
		sp := p.with("success_rate")
		notNegativeInt(col, sp.with("minimum_hosts"), sr.MinimumHosts)
		notNegativeInt(col, sp.with("request_volume"), sr.RequestVolume)
		switch {
		case sr.StdevFactor <= 0:
			col.add(sp.with("stdev_factor"), "must be positive, got %g", sr.StdevFactor)
		case sr.StdevFactor >= 100:
			col.add(sp.with("stdev_factor"), "%g standard deviations can never be reached: write the factor itself (1.9), not Envoy's thousandths (1900)", sr.StdevFactor)
		}
		percent(col, sp.with("enforcing"), sr.Enforcing)
	}
	if fp := od.FailurePercentage; fp != nil {
		fpp := p.with("failure_percentage")
		percent(col, fpp.with("threshold"), fp.Threshold)
		notNegativeInt(col, fpp.with("minimum_hosts"), fp.MinimumHosts)
		notNegativeInt(col, fpp.with("request_volume"), fp.RequestVolume)
		percent(col, fpp.with("enforcing"), fp.Enforcing)
	}
}

// checkHealthCheck checks an upstream's active health check.
func checkHealthCheck(col *collector, p path, hc *HealthCheck) {
	var kinds []string
	if hc.HTTP != "" {
		kinds = append(kinds, "http")
	}
	if hc.TCP {
		kinds = append(kinds, "tcp")
	}
	if hc.GRPC != nil {
		kinds = append(kinds, "grpc")
	}
	switch {
	case len(kinds) == 0:
		col.add(p, "want one of http: PATH, tcp: true or grpc: SERVICE")
	case len(kinds) > 1:
		col.add(p.with(kinds[1]), "want only one of http, tcp and grpc, got %s", strings.Join(kinds, " and "))
	}
	if hc.HTTP != "" && (!strings.HasPrefix(hc.HTTP, "/") || strings.ContainsAny(hc.HTTP, " \t\r\n")) {
		col.add(p.with("http"), "invalid path %q (want an absolute path such as /healthz)", hc.HTTP)
	}
	switch {
	case hc.HTTP != "" && len(hc.ExpectedStatuses) == 0 && !col.brokenUnder(p.with("expected_statuses")):
		col.add(p.with("expected_statuses"), "must list at least one status")
	case hc.HTTP == "" && len(hc.ExpectedStatuses) > 0:
		col.add(p.with("expected_statuses"), "applies to http checks only")
	}
	for i, r := range hc.ExpectedStatuses {
		if r.Min < 100 || r.Max > 599 || r.Min > r.Max {
			col.add(p.with("expected_statuses", i), "invalid status range %s (want codes from 100 to 599, low to high)", r)
		}
	}
	positive(col, p.with("interval"), hc.Interval)
	notNegative(col, p.with("interval_jitter"), hc.IntervalJitter)
	positive(col, p.with("timeout"), hc.Timeout)
	if hc.UnhealthyThreshold < 1 {
		col.add(p.with("unhealthy_threshold"), "must be at least 1, got %d", hc.UnhealthyThreshold)
	}
	if hc.HealthyThreshold < 1 {
		col.add(p.with("healthy_threshold"), "must be at least 1, got %d", hc.HealthyThreshold)
	}
}

// percent requires 0 <= n <= 100.
func percent(col *collector, p path, n int) {
	if n < 0 || n > 100 {
		col.add(p, "must be a percentage from 0 to 100, got %d", n)
	}
}

// notNegativeInt requires n >= 0.
func notNegativeInt(col *collector, p path, n int) {
	if n < 0 {
		col.add(p, "must not be negative, got %d", n)
	}
}

var reUpstreamName = regexp.MustCompile(`^upstreams(\[\d+\](\.name)?)?$`)

// hidesUpstreamName reports whether decoding failed at broken path b in a way that can
// leave an upstream's name out of the decoded config (the list, an item or a name), so
// that an outbound naming it must not be called unknown.
func hidesUpstreamName(b string) bool {
	return b == "" || reUpstreamName.MatchString(b)
}

// checkListener checks the settings every listener shares and its address against the
// other listeners'.
func checkListener(col *collector, ls *listeners, p path, ln *Listener) {
	ls.check(col, p.with("address"), ln.Address)
	switch ln.Protocol {
	case ProtocolHTTP, ProtocolTCP:
	default:
		col.add(p.with("protocol"), "unknown protocol %q (want %s or %s)", ln.Protocol, ProtocolHTTP, ProtocolTCP)
	}
	positive(col, p.with("idle_timeout"), ln.IdleTimeout)
	positive(col, p.with("read_header_timeout"), ln.ReadHeaderTimeout)
	if ln.MaxHeaderBytes < 1 {
		col.add(p.with("max_header_bytes"), "must be positive, got %d", ln.MaxHeaderBytes)
	}
}

// positive requires d > 0.
func positive(col *collector, p path, d Duration) {
	if d <= 0 {
		col.add(p, "must be positive, got %s", d)
	}
}

// notNegative requires d >= 0 (0 disables the timeout).
func notNegative(col *collector, p path, d Duration) {
	if d < 0 {
		col.add(p, "must not be negative, got %s", d)
	}
}

// lineNote returns ", line N" for "(first at X, line N)" when p is in the file.
func lineNote(l *locator, p path) string {
	if n := l.exactLine(p); n > 0 {
		return fmt.Sprintf(", line %d", n)
	}
	return ""
}

// knownUpstreams describes the upstream names for an "unknown upstream" message.
func knownUpstreams(c *Config) string {
	var names []string
	for _, u := range c.Upstreams {
		if u.Name != "" && !slices.Contains(names, u.Name) {
			names = append(names, u.Name)
		}
	}
	switch {
	case len(names) == 0:
		return "no upstreams are defined"
	case len(names) > 10:
		names = append(names[:10], "...")
	}
	return "have " + strings.Join(names, ", ")
}

// boundAddr is a listen address already in use.
type boundAddr struct {
	host string
	at   path
	addr string
	note string // ", line N" or " (the default)", for messages
}

// listeners tracks the listen addresses of admin, inbound and outbound listeners, by port.
type listeners map[uint16][]boundAddr

// check validates addr as a listen address and reports it if it clashes with one checked
// before: the same host and port, or the same port where either host is a wildcard.
func (ls *listeners) check(col *collector, p path, addr string) {
	if !checkAddress(col, p, "address", addr, true) {
		return
	}
	host, portStr, _ := net.SplitHostPort(addr)
	port, _ := strconv.ParseUint(portStr, 10, 16) // valid: checked above
	if *ls == nil {
		*ls = make(listeners)
	}
	for _, b := range (*ls)[uint16(port)] {
		if !hostsOverlap(host, b.host) {
			continue
		}
		if b.addr == addr {
			col.add(p, "address %s already used by %s%s", addr, b.at, b.note)
		} else {
			col.add(p, "address %s overlaps %s (%s%s)", addr, b.at, b.addr, b.note)
		}
		return
	}
	note := lineNote(col.loc, p)
	if note == "" && col.loc.root != nil {
		note = " (the default)"
	}
	(*ls)[uint16(port)] = append((*ls)[uint16(port)], boundAddr{host: host, at: p, addr: addr, note: note})
}

// hostsOverlap reports whether listening on a and on b (same port) would clash. The empty
// host and "::" listen on every address; "0.0.0.0" on every IPv4 address. Names are
// compared as written, not resolved.
func hostsOverlap(a, b string) bool {
	if strings.EqualFold(a, b) {
		return true
	}
	ipA, errA := netip.ParseAddr(a)
	ipB, errB := netip.ParseAddr(b)
	if errA == nil && errB == nil && ipA.Unmap() == ipB.Unmap() {
		return true
	}
	any6 := func(h string, ip netip.Addr, err error) bool {
		return h == "" || (err == nil && ip.Is6() && ip.IsUnspecified())
	}
	any4 := func(ip netip.Addr, err error) bool { return err == nil && ip.Unmap().Is4() && ip.IsUnspecified() }
	v6 := func(ip netip.Addr, err error) bool { return err == nil && ip.Is6() && !ip.Is4In6() }
	switch {
	case any6(a, ipA, errA) || any6(b, ipB, errB):
		return true
	case any4(ipA, errA):
		return !v6(ipB, errB)
	case any4(ipB, errB):
		return !v6(ipA, errA)
	}
	return false
}

// checkAddress reports whether addr is a valid host:port, recording a problem at p if not.
// what names the value in messages. A listen address may leave the host empty (every
// interface); a dial address may not.
func checkAddress(col *collector, p path, what, addr string, listen bool) bool {
	return checkAddressAt(col, p, p, what, addr, listen)
}

// checkAddressAt is checkAddress reporting at path p with the line of lineOf.
func checkAddressAt(col *collector, p, lineOf path, what, addr string, listen bool) bool {
	if addr == "" {
		col.addAt(p, lineOf, "missing %s (want host:port)", what)
		return false
	}
	if msg := addressProblem(addr, listen); msg != "" {
		col.addAt(p, lineOf, "invalid %s %q: %s", what, addr, msg)
		return false
	}
	return true
}

// addressProblem says what is wrong with addr as host:port, or returns "".
func addressProblem(addr string, listen bool) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		if ae, ok := err.(*net.AddrError); ok {
			return ae.Err + " (want host:port)"
		}
		return err.Error()
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "port must be a number from 1 to 65535"
	}
	if host == "" {
		if listen {
			return ""
		}
		return "missing host"
	}
	if !validHost(host) {
		return fmt.Sprintf("invalid host %q (want an IP address or a DNS name)", host)
	}
	return ""
}

// validHost reports whether h is an IP address (IPv6 possibly with a zone) or a DNS name.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if strings.Contains(h, ":") {
		return false
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	allDigits := true
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			switch {
			case r >= '0' && r <= '9':
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '-', r == '_':
				allDigits = false
			default:
				return false
			}
		}
	}
	// All-numeric names such as 10.0.0.300 are malformed IPv4 addresses, not names.
	return !allDigits
}

const nameRule = "want letters, digits, '.', '-' and '_', starting and ending with a letter or digit, at most 253 characters"

// validName reports whether s is a valid service or upstream name. Names appear in SPIFFE
// IDs, metric labels and admin URLs, so they are kept to DNS-like characters.
func validName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	alnum := func(b byte) bool { return b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' }
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; !alnum(b) && b != '.' && b != '-' && b != '_' {
			return false
		}
	}
	return true
}

// validHashOn reports whether s is header:NAME, cookie:NAME or source_ip, NAME being an
// HTTP token (RFC 9110).
func validHashOn(s string) bool {
	if s == "source_ip" {
		return true
	}
	kind, name, ok := strings.Cut(s, ":")
	if !ok || (kind != "header" && kind != "cookie") || name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		b := name[i]
		if !(b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0) {
			return false
		}
	}
	return true
}
