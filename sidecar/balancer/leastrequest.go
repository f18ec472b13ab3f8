package balancer

import (
	"math/bits"
	"math/rand/v2"
)

// leastRequest is power-of-two-choices: two distinct random candidates, the less loaded wins.
type leastRequest struct {
	endpoints []*Endpoint
	// cum holds the running sums of the weights, or is nil when all weights are equal.
	cum []uint64
}

var _ Picker = (*leastRequest)(nil)

// NewLeastRequest is the Builder of the least_request policy, power of two choices as in
// grpc-go's balancer/leastrequest and Envoy: Pick draws two distinct endpoints at random and
// returns the one with fewer requests in flight (EndpointState.Active).
//
// When all weights are equal the candidates are drawn uniformly and compared on Active
// alone. Otherwise they are drawn in proportion to weight (the second among the endpoints
// other than the first) and compared on Active/weight, requests in flight per unit of
// weight; on a tie the first candidate wins. So an idle or evenly loaded upstream gets
// traffic in proportion to weight, and under load each endpoint is held to about its
// weighted share of the requests in flight.
//
// NewLeastRequest may be called concurrently; the Picker is immutable and safe for
// concurrent use.
func NewLeastRequest(endpoints []*Endpoint) Picker {
	lr := &leastRequest{endpoints: endpoints}
	if cum, equal := cumulativeWeights(endpoints); !equal {
		lr.cum = cum
	}
	return lr
}

// Pick returns the less loaded of two random endpoints. It ignores info and is safe for
// concurrent use.
func (lr *leastRequest) Pick(PickInfo) (*Endpoint, error) {
	eps := lr.endpoints
	n := len(eps)
	switch n {
	case 0:
		return nil, ErrNoEndpoint
	case 1:
		return eps[0], nil
	}
	if lr.cum == nil {
		i := rand.IntN(n)
		j := rand.IntN(n - 1)
		if j >= i {
			j++
		}
		if active(eps[j]) < active(eps[i]) {
			return eps[j], nil
		}
		return eps[i], nil
	}
	total := lr.cum[n-1]
	i := searchCum(lr.cum, rand.Uint64N(total))
	wi := weightOf(eps[i])
	// Draw the second candidate from the weight line with the first one's interval cut out.
	r := rand.Uint64N(total - wi)
	if r >= lr.cum[i]-wi {
		r += wi
	}
	j := searchCum(lr.cum, r)
	// active(j)/w(j) < active(i)/w(i), cross-multiplied in 128 bits.
	jh, jl := bits.Mul64(active(eps[j]), wi)
	ih, il := bits.Mul64(active(eps[i]), weightOf(eps[j]))
	if jh < ih || jh == ih && jl < il {
		return eps[j], nil
	}
	return eps[i], nil
}

// active returns the requests in flight on e (0 if the count is transiently negative).
func active(e *Endpoint) uint64 {
	return uint64(max(e.State.Active.Load(), 0))
}
