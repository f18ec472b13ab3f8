package policy

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/ferrymesh/ferry/policy/ratelimit"
)

// ProxyName is the name Ferry gives itself in Proxy-Status headers.
const ProxyName = "ferry"

// RFC 9209 Proxy-Status error types used in replies.
const (
	// ErrRequestDenied is for requests refused by policy: access rules, deny lists, rate
	// limits.
	ErrRequestDenied = "http_request_denied"
	// ErrRequestError is for malformed or oversized requests.
	ErrRequestError = "http_request_error"
	// ErrProxyInternal is for a failure of Ferry's own machinery (a rate limit service
	// that cannot be asked, failing closed).
	ErrProxyInternal = "proxy_internal_error"
)

// gRPC status codes sent to gRPC callers with a reply.
const (
	grpcInvalidArgument   = 3
	grpcPermissionDenied  = 7
	grpcResourceExhausted = 8
	grpcUnimplemented     = 12
	grpcUnavailable       = 14
)

// Kind says which part of a Policy made a decision.
type Kind uint8

const (
	// KindNone is the zero Kind: no check was made (or none applied).
	KindNone Kind = iota
	// KindNormalize is path normalization (400 for a path that cannot be normalized).
	KindNormalize
	// KindFilter is request filtering: limits, method allow-list, header deny list, IP
	// lists.
	KindFilter
	// KindAccess is the access rules.
	KindAccess
	// KindRateLimit is the request rate limits.
	KindRateLimit
	// KindConnectionRateLimit is the new-connection rate limit.
	KindConnectionRateLimit
)

// String returns the Kind's name as used in metrics and logs: "normalize", "filter",
// "access", "rate_limit", "connection_rate_limit" ("" for KindNone).
func (k Kind) String() string {
	switch k {
	case KindNormalize:
		return "normalize"
	case KindFilter:
		return "filter"
	case KindAccess:
		return "access"
	case KindRateLimit:
		return "rate_limit"
	case KindConnectionRateLimit:
		return "connection_rate_limit"
	}
	return ""
}

// Reply is the response Ferry sends instead of forwarding a refused request. Its strings
// are built when the Policy is compiled, so a refusal costs no allocation.
type Reply struct {
	// Status is the HTTP status: 400, 403, 405, 413, 414, 429, 431, or 500 (the rate limit
	// service failing closed).
	Status int
	// Type is the RFC 9209 error type (ErrRequestDenied, ErrRequestError or
	// ErrProxyInternal).
	Type string
	// Details is the Proxy-Status details, e.g. "rule no-admin".
	Details string
	// ProxyStatus is the whole Proxy-Status header value:
	// `ferry; error=http_request_denied; details="rule no-admin"`.
	ProxyStatus string
	// GRPCCode is the gRPC status for gRPC callers: 7 (PERMISSION_DENIED) for 403, 8
	// (RESOURCE_EXHAUSTED) for 413, 414, 429 and 431, 3 (INVALID_ARGUMENT) for 400, 12
	// (UNIMPLEMENTED) for 405, 14 (UNAVAILABLE) for 500.
	GRPCCode int
	// Allow is, for a 405, the Allow header value listing the allowed methods.
	Allow string
}

func newReply(status int, typ, details string) Reply {
	r := Reply{Status: status, Type: typ, Details: details,
		ProxyStatus: ProxyName + "; error=" + typ + "; details=" + strconv.Quote(details)}
	switch status {
	case http.StatusBadRequest:
		r.GRPCCode = grpcInvalidArgument
	case http.StatusForbidden:
		r.GRPCCode = grpcPermissionDenied
	case http.StatusMethodNotAllowed:
		r.GRPCCode = grpcUnimplemented
	case http.StatusInternalServerError:
		r.GRPCCode = grpcUnavailable
	default:
		r.GRPCCode = grpcResourceExhausted
	}
	return r
}

// Decision is what one check decided. The zero Decision (Kind KindNone) allows.
type Decision struct {
	// Allowed reports whether the request (or connection) may go on. It is true for a
	// denial that dry-run mode suppressed.
	Allowed bool
	// DryRun reports a denial that dry-run mode suppressed: the request goes on, and Reply
	// is what would have been sent.
	DryRun bool
	// Kind is the check that decided.
	Kind Kind
	// Rule names what decided: an access rule ("default" when none matched), a filter
	// ("max_body_bytes", "methods", "deny_headers[0]", "ip_allow", "ip_deny", ...), a rate
	// limit, or "path" for normalization. "" when nothing applied (no rate limit matched).
	Rule string
	// Reply is the response to send when !Allowed (and, when DryRun, the one that would
	// have been sent).
	Reply Reply
	// RateLimit is, for KindRateLimit and KindConnectionRateLimit, the bucket's state: call
	// its SetHeaders on the 429 (Retry-After, RateLimit-*, X-RateLimit-*). With several
	// limits applying to an allowed request, it is the one with the fewest tokens left.
	RateLimit ratelimit.Result
}

// Outcome is the decision as a metrics label and log value: "allowed", "denied",
// "dry_run_denied" or "limited" (a rate limit refused). "" for a zero Decision.
func (d *Decision) Outcome() string {
	switch {
	case d.Kind == KindNone:
		return ""
	case d.DryRun:
		return "dry_run_denied"
	case d.Allowed:
		return "allowed"
	case d.Kind == KindRateLimit || d.Kind == KindConnectionRateLimit:
		return "limited"
	}
	return "denied"
}

// counts are one rule's decision counters. They are shared between successive Policies
// compiled with the previous one as prev, so that they keep counting across reloads.
type counts struct {
	allowed, denied, dryRun, limited, errors atomic.Uint64
}

// RuleStats is a snapshot of one rule's counters.
type RuleStats struct {
	Kind Kind
	Rule string
	// Allowed counts requests the rule allowed (access rules, rate limits).
	Allowed uint64
	// Denied counts requests it refused (access rules, filters).
	Denied uint64
	// DryRunDenied counts requests it would have denied but for dry_run.
	DryRunDenied uint64
	// Limited counts requests (or connections) a rate limit refused.
	Limited uint64
	// Errors counts failed calls to the rate limit service (rule "rate_limit_service").
	Errors uint64
}

// statKey identifies a rule's counters across reloads.
type statKey struct {
	kind Kind
	name string
}

// counters hands out the counters of a Policy being compiled, reusing prev's.
type counters struct {
	prev  map[statKey]*counts
	order []statKey
	m     map[statKey]*counts
}

func (c *counters) get(k Kind, name string) *counts {
	key := statKey{k, name}
	if x := c.m[key]; x != nil {
		return x
	}
	x := c.prev[key]
	if x == nil {
		x = new(counts)
	}
	if c.m == nil {
		c.m = make(map[statKey]*counts)
	}
	c.m[key] = x
	c.order = append(c.order, key)
	return x
}
