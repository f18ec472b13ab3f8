package l7

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/netip"

	"github.com/ferrymesh/ferry/policy"
)

// enforce applies the Handler's policy to r before it is proxied, in policy.Policy's
// order: path normalization (400), request filtering, access rules and rate limits, and,
// with max_body_bytes, a body of unknown length read up to the limit (413, never
// forwarded). It reports whether r may go on; when it may not, it has answered with a
// local reply. The decision that names a rule is kept in pn for the access log and the
// span, and the normalized path when it differs from r's.
func (h *Handler) enforce(st *state, r *http.Request, pn *policyNote) bool {
	p := h.o.Policy
	esc, fwd, match, nd := p.NormalizeURLPath(r.URL)
	if nd != nil {
		h.refuse(st, r, pn, nd)
		return false
	}
	req := policy.Request{Method: r.Method, Path: match, RawQuery: r.URL.RawQuery, URI: r.RequestURI,
		Host: r.Host, Header: r.Header, ContentLength: r.ContentLength, SourceID: st.peer,
		SourceIP: remoteIP(r.RemoteAddr), DestPort: h.o.Port}
	var buf policy.Decision
	refusal, allowed := p.Decide(&req, &buf)
	if refusal != nil {
		h.refuse(st, r, pn, refusal)
		return false
	}
	if allowed != nil {
		pn.keep(allowed)
	}
	if p.HasGlobalRateLimits() && !h.globalRateLimit(st, r, &req, pn) {
		return false
	}
	if max := p.MaxBodyBytes(); max > 0 && r.ContentLength < 0 && r.Body != nil && r.Body != http.NoBody {
		b, err := policy.ReadBody(r.Body, max)
		if errors.Is(err, policy.ErrBodyTooLarge) {
			d := p.RefuseBody()
			h.refuse(st, r, pn, &d)
			return false
		}
		if err != nil {
			h.localReply(st, r, &LocalReply{Status: http.StatusBadRequest, Type: ErrHTTPRequestError,
				Details: "request body could not be read", GRPCCode: grpcInvalidArgument, Err: err})
			return false
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(b)), int64(len(b))
	}
	if fwd != esc { // r.URL is not changed in between
		pn.forward = fwd
	}
	pn.match, pn.normalized = match, true
	return true
}

// remoteIP returns the address of http.Request.RemoteAddr, unmapped; the zero Addr when
// it is not an IP:port. It is netip.ParseAddrPort(s).Addr().Unmap(), with the usual case,
// a dotted-decimal IPv4 address and a port, parsed in one pass without its generality;
// anything else, or anything unusual in it, goes to netip.
func remoteIP(s string) netip.Addr {
	var b [4]byte
	i := 0
	for f := 0; f < 4; f++ {
		// one to three digits, no leading zero, then '.' (':' after the last field)
		if i >= len(s) || s[i]-'0' > 9 {
			return slowRemoteIP(s)
		}
		n := uint(s[i] - '0')
		i++
		if n != 0 {
			for k := 0; k < 2 && i < len(s) && s[i]-'0' <= 9; k++ {
				n = n*10 + uint(s[i]-'0')
				i++
			}
		}
		sep := byte('.')
		if f == 3 {
			sep = ':'
		}
		if n > 255 || i >= len(s) || s[i] != sep {
			return slowRemoteIP(s)
		}
		b[f] = byte(n)
		i++
	}
	if !validPort(s[i:]) {
		return slowRemoteIP(s)
	}
	return netip.AddrFrom4(b)
}

// slowRemoteIP is remoteIP for anything but a.b.c.d:port.
func slowRemoteIP(s string) netip.Addr {
	ap, _ := netip.ParseAddrPort(s)
	return ap.Addr().Unmap()
}

// validPort reports whether s is a port as strconv.ParseUint(s, 10, 16) accepts it.
func validPort(s string) bool {
	if s == "" {
		return false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return false
		}
		if n = n*10 + int(c-'0'); n > 65535 {
			return false
		}
	}
	return true
}

// refuse answers r with the local reply of d, a refusing policy decision, and keeps d in
// pn. A 429 carries Retry-After and the RateLimit-* headers, a 405 the Allow header.
func (h *Handler) refuse(st *state, r *http.Request, pn *policyNote, d *policy.Decision) {
	pn.keep(d)
	hdr := st.Header()
	if d.Reply.Allow != "" {
		hdr.Set("Allow", d.Reply.Allow)
	}
	if d.Kind == policy.KindRateLimit {
		d.RateLimit.SetHeaders(hdr)
	}
	h.localReply(st, r, &LocalReply{Status: d.Reply.Status, Type: d.Reply.Type, Details: d.Reply.Details,
		GRPCCode: d.Reply.GRPCCode})
}

// policyNote is what the policy decided about one request, for the access log and the
// span, and the normalized path to forward when it differs from the request's.
type policyNote struct {
	outcome, rule string // see policy.Decision.Outcome and Rule; "" when no rule applied
	forward       string
	// match is the path's match key (policy.Policy.NormalizePath), for routes; set when
	// normalized is.
	match      string
	normalized bool
}

// keep records d in n.
func (n *policyNote) keep(d *policy.Decision) {
	n.outcome, n.rule = d.Outcome(), d.Rule
}

// globalRateLimit asks the global rate limit service about r (req is its policy view) and
// reports whether r may go on; when it may not, it has answered with the service's 429 (or,
// failing closed, a 500). Headers the service asks to add to the request are set on r.
func (h *Handler) globalRateLimit(st *state, r *http.Request, req *policy.Request, pn *policyNote) bool {
	d := h.o.Policy.GlobalRateLimit(r.Context(), h.o.RateLimitService, req)
	if !d.Allowed {
		h.refuse(st, r, pn, &d)
		return false
	}
	for _, e := range d.RateLimit.RequestHeaders {
		r.Header.Set(e.Key, e.Value)
	}
	if d.Kind != policy.KindNone && pn.rule == "" {
		pn.keep(&d)
	}
	return true
}
