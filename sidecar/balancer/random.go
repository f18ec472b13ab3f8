package balancer

import "math/rand/v2"

// random picks an endpoint at random in proportion to its weight.
type random struct {
	endpoints []*Endpoint
	// cum holds the running sums of the weights, or is nil when all weights are equal.
	cum []uint64
}

var _ Picker = (*random)(nil)

// NewRandom is the Builder of the random policy: each Pick chooses an endpoint at random
// with probability proportional to its weight (a uniform draw on the cumulative weights,
// found by binary search). Randomness comes from math/rand/v2's goroutine-safe top-level
// functions, which take no lock. NewRandom may be called concurrently; the Picker is
// immutable and safe for concurrent use.
func NewRandom(endpoints []*Endpoint) Picker {
	r := &random{endpoints: endpoints}
	if cum, equal := cumulativeWeights(endpoints); !equal {
		r.cum = cum
	}
	return r
}

// Pick returns a random endpoint. It ignores info and is safe for concurrent use.
func (r *random) Pick(PickInfo) (*Endpoint, error) {
	n := len(r.endpoints)
	switch {
	case n == 0:
		return nil, ErrNoEndpoint
	case r.cum == nil:
		return r.endpoints[rand.IntN(n)], nil
	}
	return r.endpoints[searchCum(r.cum, rand.Uint64N(r.cum[n-1]))], nil
}
