// Package balancer chooses an upstream endpoint for each call.
//
// It follows grpc-go's balancer/picker split: a Builder turns an immutable list of endpoints
// into an immutable Picker; when endpoints change, a new Picker is built off the request path
// and published atomically. Pick never blocks, never takes a mutex and does no I/O. Live
// per-endpoint state (requests in flight) is kept in an EndpointState shared by every picker
// built for the same address, so it survives picker rebuilds.
package balancer

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ferrymesh/ferry/discovery"
)

// ErrNoEndpoint is returned by Pick when there is no endpoint to choose.
var ErrNoEndpoint = errors.New("no endpoint")

// EndpointState is the live state of one endpoint address: its load, the outcomes of its
// calls, and its health as active checks and outlier detection see it (see state.go). It is
// shared by every picker built for the same address, so it survives picker rebuilds and
// config reloads. The zero value is ready to use; all fields are atomics, so it is safe for
// concurrent use.
type EndpointState struct {
	// Active counts calls in flight to the endpoint: incremented by the caller when it starts
	// a call on a picked endpoint (see Endpoint.Begin) and decremented by Done.
	Active atomic.Int64
	// Total counts calls started on the endpoint.
	Total atomic.Uint64
	// Failures counts calls that failed: an error below HTTP (connect failure, reset,
	// timeout) or a 5xx status.
	Failures atomic.Uint64

	outcomes outcomeState
	health   atomic.Pointer[HealthStatus]
	outlier  atomic.Pointer[OutlierStatus]
}

// DoneInfo is the outcome of one call to an endpoint.
type DoneInfo struct {
	// Err is non-nil when the call failed below HTTP (connect failure, reset, timeout).
	Err error
	// Status is the HTTP status received (for gRPC, the grpc-status mapped to HTTP as
	// Envoy does), or 0 for TCP and for calls that failed with Err.
	Status int
	// Dropped marks a call whose outcome says nothing about the endpoint: the client went
	// away, or a local limit stopped it. It counts neither as a success nor as a failure.
	Dropped bool
}

// Endpoint is an endpoint as a picker sees it: the discovered endpoint plus its live state.
// It is immutable apart from State and safe for concurrent use.
type Endpoint struct {
	discovery.Endpoint
	State *EndpointState
}

// NewEndpoint returns an Endpoint for e with state st (a fresh state when st is nil).
func NewEndpoint(e discovery.Endpoint, st *EndpointState) *Endpoint {
	if st == nil {
		st = new(EndpointState)
	}
	if e.Weight == 0 {
		e.Weight = 1
	}
	return &Endpoint{Endpoint: e, State: st}
}

// Begin records the start of a call on the endpoint. Every Begin is matched by one Done.
func (e *Endpoint) Begin() {
	e.State.Active.Add(1)
	e.State.Total.Add(1)
}

// Done records the end of a call started with Begin and counts its outcome for outlier
// detection. It takes no lock, does no I/O and does not allocate.
func (e *Endpoint) Done(info DoneInfo) {
	e.State.Active.Add(-1)
	if !info.Dropped {
		e.State.count(info)
	}
}

// PickInfo carries what a picker may use from the request.
type PickInfo struct {
	// Hash is the request's hash key for ring_hash and maglev; valid only if HasHash.
	Hash uint64
	// HasHash is false when the request carries no hash key (the policy then picks at random).
	HasHash bool
}

// Picker chooses an endpoint for one call. Implementations are immutable and safe for
// concurrent use; Pick never blocks. The caller calls Begin on the endpoint it uses and
// Done when the call ends.
type Picker interface {
	Pick(info PickInfo) (*Endpoint, error)
}

// Builder builds a Picker over endpoints. The slice is owned by the picker afterwards; it
// may be empty, in which case Pick returns ErrNoEndpoint.
type Builder func(endpoints []*Endpoint) Picker

// Policy names as used in the config file's `lb` key.
const (
	RoundRobin   = "round_robin"
	LeastRequest = "least_request"
	Random       = "random"
	RingHash     = "ring_hash"
	Maglev       = "maglev"
)

// Policies lists every policy name New accepts.
var Policies = []string{RoundRobin, LeastRequest, Random, RingHash, Maglev}

// New returns the Builder for a policy name.
func New(policy string) (Builder, error) {
	switch policy {
	case RoundRobin, "":
		return NewRoundRobin, nil
	case LeastRequest:
		return NewLeastRequest, nil
	case Random:
		return NewRandom, nil
	case RingHash:
		return NewRingHash, nil
	case Maglev:
		return NewMaglev, nil
	}
	return nil, fmt.Errorf("unknown load-balancing policy %q", policy)
}
