package policy

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// filter is the compiled request filters.
type filter struct {
	maxHeaderCount, maxHeaderBytes, maxURI int
	maxBody                                int64
	methods                                MethodSet
	denyHeaders                            []HeaderMatcher
	ipAllow, ipDeny                        ipSet

	// one check per filter: its refusing decision and counters
	headerCount, headerBytes, uri, body, method, allowList, denyList check
	denyHeader                                                       []check
	// none: no filter is configured, so every request passes.
	none bool
}

// check is one filter's refusal and counters.
type check struct {
	refused Decision
	counts  *counts
}

func newCheck(cs *counters, name string, status int, typ string) check {
	return check{
		refused: Decision{Kind: KindFilter, Rule: name, Reply: newReply(status, typ, "filter "+name)},
		counts:  cs.get(KindFilter, name),
	}
}

func (f *filter) compile(c *Filter, cs *counters) []*FieldError {
	var errs []*FieldError
	base := path{"filter"}
	nonNegative := func(key string, v int64) {
		if v < 0 {
			errs = append(errs, fieldErr(base.with(key), "must not be negative (0 is no limit)"))
		}
	}
	nonNegative("max_header_count", int64(c.MaxHeaderCount))
	nonNegative("max_header_bytes", int64(c.MaxHeaderBytes))
	nonNegative("max_uri_length", int64(c.MaxURILength))
	nonNegative("max_body_bytes", c.MaxBodyBytes)
	f.maxHeaderCount, f.maxHeaderBytes, f.maxURI, f.maxBody = c.MaxHeaderCount, c.MaxHeaderBytes, c.MaxURILength, c.MaxBodyBytes

	var es []*FieldError
	f.methods, es = compileMethods(c.Methods, base.with("methods"))
	errs = append(errs, es...)
	for i := range c.DenyHeaders {
		h, es := CompileHeaderMatch(&c.DenyHeaders[i])
		errs = append(errs, under(base.with("deny_headers", i), es)...)
		f.denyHeaders = append(f.denyHeaders, h)
	}
	prefixes := func(key string, list []string) ipSet {
		var ps []netip.Prefix
		for i, s := range list {
			p, err := parsePrefix(s)
			if err != nil {
				errs = append(errs, fieldErr(base.with(key, i), "%v", err))
				continue
			}
			ps = append(ps, p)
		}
		return newIPSet(ps)
	}
	f.ipDeny = prefixes("ip_deny", c.IPDeny)
	f.ipAllow = prefixes("ip_allow", c.IPAllow)

	if !f.ipDeny.empty() {
		f.denyList = newCheck(cs, "ip_deny", http.StatusForbidden, ErrRequestDenied)
	}
	if !f.ipAllow.empty() {
		f.allowList = newCheck(cs, "ip_allow", http.StatusForbidden, ErrRequestDenied)
	}
	if f.maxURI > 0 {
		f.uri = newCheck(cs, "max_uri_length", http.StatusRequestURITooLong, ErrRequestError)
	}
	if f.maxHeaderCount > 0 {
		f.headerCount = newCheck(cs, "max_header_count", http.StatusRequestHeaderFieldsTooLarge, ErrRequestError)
	}
	if f.maxHeaderBytes > 0 {
		f.headerBytes = newCheck(cs, "max_header_bytes", http.StatusRequestHeaderFieldsTooLarge, ErrRequestError)
	}
	if len(f.methods) > 0 {
		f.method = newCheck(cs, "methods", http.StatusMethodNotAllowed, ErrRequestDenied)
		f.method.refused.Reply.Allow = strings.Join(f.methods, ", ")
	}
	for i := range f.denyHeaders {
		f.denyHeader = append(f.denyHeader, newCheck(cs, "deny_headers["+strconv.Itoa(i)+"]", http.StatusForbidden, ErrRequestDenied))
	}
	// Always made: RefuseBody may need it even when only the proxy's own limit applies.
	f.body = check{
		refused: Decision{Kind: KindFilter, Rule: "max_body_bytes",
			Reply: newReply(http.StatusRequestEntityTooLarge, ErrRequestError, "filter max_body_bytes")},
		counts: new(counts),
	}
	if f.maxBody > 0 {
		f.body.counts = cs.get(KindFilter, "max_body_bytes")
	}
	f.none = f.maxHeaderCount <= 0 && f.maxHeaderBytes <= 0 && f.maxURI <= 0 && f.maxBody <= 0 &&
		len(f.methods) == 0 && len(f.denyHeaders) == 0 && f.ipDeny.empty() && f.ipAllow.empty()
	return errs
}

func (f *filter) refuse(c *check) Decision {
	return *f.refusePtr(c)
}

// refusePtr counts a refusal by c and returns c's decision, which nobody may modify.
func (f *filter) refusePtr(c *check) *Decision {
	c.counts.denied.Add(1)
	return &c.refused
}

// checkIP applies the IP lists to src.
func (f *filter) checkIP(src netip.Addr) (Decision, bool) {
	if d := f.refusalIP(src); d != nil {
		return *d, true
	}
	return Decision{}, false
}

// refusalIP applies the IP lists to src: the counted refusal, nil when src may go on.
func (f *filter) refusalIP(src netip.Addr) *Decision {
	if f.denyList.counts != nil && f.ipDeny.contains(src) {
		return f.refusePtr(&f.denyList)
	}
	if f.allowList.counts != nil && !f.ipAllow.contains(src) {
		return f.refusePtr(&f.allowList)
	}
	return nil
}

// check applies every filter to r.
func (f *filter) check(r *Request) Decision {
	if d := f.refusal(r); d != nil {
		return *d
	}
	return Decision{Allowed: true, Kind: KindFilter}
}

// refusal applies every filter to r and returns the counted refusal (which nobody may
// modify), nil when r passes them all.
func (f *filter) refusal(r *Request) *Decision {
	if f.none {
		return nil
	}
	if d := f.refusalIP(r.SourceIP); d != nil {
		return d
	}
	if f.maxURI > 0 && len(r.URI) > f.maxURI {
		return f.refusePtr(&f.uri)
	}
	if f.maxHeaderCount > 0 || f.maxHeaderBytes > 0 {
		n, size := 0, 0
		for k, vs := range r.Header {
			n += len(vs)
			for _, v := range vs {
				size += len(k) + len(v)
			}
		}
		if f.maxHeaderCount > 0 && n > f.maxHeaderCount {
			return f.refusePtr(&f.headerCount)
		}
		if f.maxHeaderBytes > 0 && size+len(r.Host) > f.maxHeaderBytes {
			return f.refusePtr(&f.headerBytes)
		}
	}
	if !f.methods.Match(r.Method) {
		return f.refusePtr(&f.method)
	}
	for i := range f.denyHeaders {
		if f.denyHeaders[i].Match(r) {
			return f.refusePtr(&f.denyHeader[i])
		}
	}
	if f.maxBody > 0 && r.ContentLength > f.maxBody {
		return f.refusePtr(&f.body)
	}
	return nil
}
