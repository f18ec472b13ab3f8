package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	commonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	rlsv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
)

// DefaultServiceTimeout bounds a call to the rate limit service when ServiceOptions.Timeout
// is 0 (Envoy's default).
const DefaultServiceTimeout = 20 * time.Millisecond

// Entry is one key/value pair of a descriptor, as the rate limit service's configuration
// matches them (e.g. {generic_key, api} or {remote_address, 10.1.2.3}).
type Entry struct {
	Key, Value string
}

// Descriptor is a list of entries the service counts a request against.
type Descriptor []Entry

// ServiceOptions configure a Service.
type ServiceOptions struct {
	// Domain is the rate limit service's domain for this sidecar's limits.
	Domain string
	// Timeout bounds each call; 0 means DefaultServiceTimeout.
	Timeout time.Duration
	// FailClosed refuses requests when the service cannot be asked (error, timeout, an
	// UNKNOWN answer); otherwise they are allowed (fail open).
	FailClosed bool
}

// Service asks a global rate limit service speaking Envoy's protocol
// (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit). It is safe for concurrent
// use; the caller owns the gRPC connection.
type Service struct {
	client rlsv3.RateLimitServiceClient
	opts   ServiceOptions
}

// NewService returns a Service calling the rate limit service over conn (a *grpc.ClientConn
// the caller dialed and closes).
func NewService(conn grpc.ClientConnInterface, opts ServiceOptions) *Service {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultServiceTimeout
	}
	return &Service{client: rlsv3.NewRateLimitServiceClient(conn), opts: opts}
}

// ErrServiceUnknown is the error when the service answers with code UNKNOWN.
var ErrServiceUnknown = errors.New("rate limit service answered UNKNOWN")

// ServiceResult is the outcome of a call to the service.
type ServiceResult struct {
	// Result is the decision and the limit it came from: Allowed, and for the descriptor
	// closest to (or over) its limit, Limit (requests per unit), Remaining, Reset (until
	// the unit's window resets) and RetryAfter (Reset, when refused). ExtraHeaders holds the
	// service's response_headers_to_add, RequestHeaders its request_headers_to_add.
	Result
	// Err is set when the service could not be asked or gave no usable answer; Allowed then
	// follows ServiceOptions.FailClosed.
	Err error
	// Descriptor is the index of the descriptor Result reports on (over its limit, else
	// closest to it), -1 if none.
	Descriptor int
}

// Check asks the service whether a request counted against descriptors may go on. With no
// descriptors it allows without calling.
func (s *Service) Check(ctx context.Context, descriptors []Descriptor) ServiceResult {
	if len(descriptors) == 0 {
		return ServiceResult{Result: Result{Allowed: true}, Descriptor: -1}
	}
	req := &rlsv3.RateLimitRequest{Domain: s.opts.Domain, HitsAddend: 1,
		Descriptors: make([]*commonv3.RateLimitDescriptor, len(descriptors))}
	for i, d := range descriptors {
		pd := &commonv3.RateLimitDescriptor{Entries: make([]*commonv3.RateLimitDescriptor_Entry, len(d))}
		for j, e := range d {
			pd.Entries[j] = &commonv3.RateLimitDescriptor_Entry{Key: e.Key, Value: e.Value}
		}
		req.Descriptors[i] = pd
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	resp, err := s.client.ShouldRateLimit(ctx, req)
	if err != nil {
		return s.failure(fmt.Errorf("rate limit service: %w", err))
	}
	r := ServiceResult{Descriptor: -1}
	switch resp.GetOverallCode() {
	case rlsv3.RateLimitResponse_OK:
		r.Allowed = true
	case rlsv3.RateLimitResponse_OVER_LIMIT:
	default:
		return s.failure(ErrServiceUnknown)
	}
	// Report the descriptor over its limit, else the one with the fewest requests left.
	var best *rlsv3.RateLimitResponse_DescriptorStatus
	for i, st := range resp.GetStatuses() {
		if st.GetCurrentLimit() == nil {
			continue
		}
		over := st.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT
		if best == nil || over && best.GetCode() != rlsv3.RateLimitResponse_OVER_LIMIT ||
			over == (best.GetCode() == rlsv3.RateLimitResponse_OVER_LIMIT) && st.GetLimitRemaining() < best.GetLimitRemaining() {
			best, r.Descriptor = st, i
		}
	}
	if best != nil {
		r.Limit = int(best.GetCurrentLimit().GetRequestsPerUnit())
		r.Remaining = int(best.GetLimitRemaining())
		if d := best.GetDurationUntilReset(); d != nil {
			r.Reset = d.AsDuration()
		} else {
			r.Reset = unitDuration(best.GetCurrentLimit().GetUnit())
		}
	}
	if !r.Allowed {
		r.RetryAfter = r.Reset
	}
	r.ExtraHeaders = headerEntries(resp.GetResponseHeadersToAdd())
	r.RequestHeaders = headerEntries(resp.GetRequestHeadersToAdd())
	return r
}

func (s *Service) failure(err error) ServiceResult {
	return ServiceResult{Result: Result{Allowed: !s.opts.FailClosed}, Err: err, Descriptor: -1}
}

func headerEntries(hs []*corev3.HeaderValue) []Entry {
	if len(hs) == 0 {
		return nil
	}
	out := make([]Entry, 0, len(hs))
	for _, h := range hs {
		v := h.GetValue()
		if v == "" && len(h.GetRawValue()) > 0 {
			v = string(h.GetRawValue())
		}
		out = append(out, Entry{Key: h.GetKey(), Value: v})
	}
	return out
}

// unitDuration is the longest a window of unit can take to reset, for answers without
// duration_until_reset.
func unitDuration(u rlsv3.RateLimitResponse_RateLimit_Unit) time.Duration {
	switch u {
	case rlsv3.RateLimitResponse_RateLimit_SECOND:
		return time.Second
	case rlsv3.RateLimitResponse_RateLimit_MINUTE:
		return time.Minute
	case rlsv3.RateLimitResponse_RateLimit_HOUR:
		return time.Hour
	case rlsv3.RateLimitResponse_RateLimit_DAY:
		return 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_WEEK:
		return 7 * 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_MONTH:
		return 31 * 24 * time.Hour
	case rlsv3.RateLimitResponse_RateLimit_YEAR:
		return 366 * 24 * time.Hour
	}
	return 0
}
