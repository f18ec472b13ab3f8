// Package discovery defines what every discovery source (static, Consul, xDS) publishes:
// immutable, versioned sets of upstream endpoints.
package discovery

import (
	"context"
	"slices"
	"strings"
)

// Endpoint is one instance of an upstream service.
//
// An Endpoint is a value; once inside an EndpointSet it must not be modified.
type Endpoint struct {
	// Address is host:port of the instance (or of its sidecar).
	Address string `json:"address"`
	// Weight is the relative share of traffic the instance should get; at least 1.
	Weight uint32 `json:"weight"`
	// Identity is the SPIFFE ID the instance is expected to present, if known.
	Identity string `json:"identity,omitempty"`
}

// EndpointSet is an immutable, versioned list of the endpoints of one upstream,
// sorted by address with no duplicate addresses. It is safe for concurrent use.
type EndpointSet struct {
	upstream  string
	version   string
	endpoints []Endpoint
}

// NewEndpointSet copies eps into a new set: weights of 0 become 1, endpoints are sorted by
// address, and for a duplicated address the first entry wins.
func NewEndpointSet(upstream, version string, eps []Endpoint) *EndpointSet {
	out := make([]Endpoint, 0, len(eps))
	seen := make(map[string]bool, len(eps))
	for _, e := range eps {
		if seen[e.Address] {
			continue
		}
		seen[e.Address] = true
		if e.Weight == 0 {
			e.Weight = 1
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return strings.Compare(a.Address, b.Address) })
	return &EndpointSet{upstream: upstream, version: version, endpoints: out}
}

// Upstream is the name of the upstream the set belongs to.
func (s *EndpointSet) Upstream() string { return s.upstream }

// Version identifies this set as the source published it (an index, a nonce, a hash).
func (s *EndpointSet) Version() string { return s.version }

// Len is the number of endpoints.
func (s *EndpointSet) Len() int { return len(s.endpoints) }

// Endpoints returns the endpoints sorted by address. The slice is shared: do not modify it.
func (s *EndpointSet) Endpoints() []Endpoint { return s.endpoints }

// SameEndpoints reports whether s and o hold the same endpoints (addresses, weights,
// identities), whatever their versions. A nil set equals an empty one.
func (s *EndpointSet) SameEndpoints(o *EndpointSet) bool {
	var a, b []Endpoint
	if s != nil {
		a = s.endpoints
	}
	if o != nil {
		b = o.endpoints
	}
	return slices.Equal(a, b)
}

// Source publishes the endpoints of upstreams. Implementations live in sub-packages.
type Source interface {
	// Watch calls update with the current endpoints of upstream and again each time they
	// change, until ctx is done. update is called from one goroutine at a time and must not
	// block for long. Watch returns when ctx is done, or at once with an error if the
	// upstream cannot be watched at all.
	Watch(ctx context.Context, upstream string, update func(*EndpointSet)) error
}
