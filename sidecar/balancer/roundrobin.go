package balancer

import (
	"container/heap"
	"math/rand/v2"
	"sync/atomic"
)

// maxSchedule bounds the length of a round-robin schedule (one cycle). When the reduced
// weights add up to more, they are scaled down proportionally, each keeping at least one
// slot.
const maxSchedule = 1 << 14

// roundRobin picks endpoints in the order of a precomputed smooth weighted schedule: one
// cycle holds each endpoint weight times (weights reduced by their gcd), interleaved.
type roundRobin struct {
	schedule []*Endpoint
	next     atomic.Uint64
}

var _ Picker = (*roundRobin)(nil)

// NewRoundRobin is the Builder of the round_robin policy. It computes one cycle of a smooth
// weighted round-robin schedule over endpoints in which each endpoint appears in proportion
// to its weight, spread out rather than in runs; Pick walks the cycle with an atomic
// counter that starts at a random position so that sidecars do not move in lockstep.
// NewRoundRobin may be called concurrently; the Picker is immutable apart from its counter
// and safe for concurrent use.
func NewRoundRobin(endpoints []*Endpoint) Picker {
	rr := &roundRobin{schedule: smoothSchedule(endpoints, maxSchedule)}
	if n := len(rr.schedule); n > 0 {
		rr.next.Store(rand.Uint64N(uint64(n)))
	}
	return rr
}

// Pick returns the next endpoint of the schedule. It ignores info and is safe for
// concurrent use.
func (rr *roundRobin) Pick(PickInfo) (*Endpoint, error) {
	n := uint64(len(rr.schedule))
	switch n {
	case 0:
		return nil, ErrNoEndpoint
	case 1:
		return rr.schedule[0], nil
	}
	return rr.schedule[(rr.next.Add(1)-1)%n], nil
}

// smoothSchedule returns one cycle of a smooth weighted round-robin over endpoints, about
// limit entries long at most (see scaleWeights).
//
// It is earliest-deadline-first (stride) scheduling with centred deadlines: the k-th slot
// (k = 0, 1, ...) of an endpoint of weight w is due at (k+½)/w of the cycle, and slots are
// laid out in order of due time, ties going to the endpoint listed first. Exactly w slots of
// each endpoint fall before the end of the cycle, so a cycle holds each endpoint exactly w
// times, and the slots of an endpoint are evenly spaced through it, like nginx's smooth
// weighted round-robin. With a heap it costs O(L log n) for a cycle of length L over n
// endpoints, where nginx's algorithm costs O(L·n).
func smoothSchedule(endpoints []*Endpoint, limit uint64) []*Endpoint {
	if len(endpoints) == 0 {
		return nil
	}
	w, sum := reducedWeights(endpoints)
	sum = scaleWeights(w, sum, limit)
	h := make(strideHeap, len(endpoints))
	for i := range h {
		h[i] = stride{index: i, weight: w[i]}
	}
	heap.Init(&h)
	schedule := make([]*Endpoint, sum)
	for k := range schedule {
		schedule[k] = endpoints[h[0].index]
		h[0].slots++
		heap.Fix(&h, 0)
	}
	return schedule
}

// stride is one endpoint in smoothSchedule: its next slot is due at (2·slots+1)/(2·weight).
type stride struct {
	index  int
	weight uint64
	slots  uint64
}

// strideHeap orders strides by due time of their next slot, then by index.
type strideHeap []stride

func (h strideHeap) Len() int { return len(h) }

func (h strideHeap) Less(i, j int) bool {
	// (2a+1)/wa < (2b+1)/wb, cross-multiplied; weights are at most about 2^14 here
	// (scaleWeights) and slots at most the weight, so the products are small.
	a := (2*h[i].slots + 1) * h[j].weight
	b := (2*h[j].slots + 1) * h[i].weight
	if a != b {
		return a < b
	}
	return h[i].index < h[j].index
}

func (h strideHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }

// Push and Pop are required by heap.Interface; smoothSchedule never changes the heap's size.
func (h *strideHeap) Push(x any) { *h = append(*h, x.(stride)) }

func (h *strideHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
