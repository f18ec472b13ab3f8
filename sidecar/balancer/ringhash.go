package balancer

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Ring sizes, in points. The bounds are Envoy's ring_hash defaults.
const (
	minRingSize = 1024
	maxRingSize = 8 << 20
	// ringPointsPerWeight is the number of points per unit of gcd-reduced weight: with at
	// least two endpoints the total weight is at least 2, so the ring has at least
	// minRingSize points.
	ringPointsPerWeight = 512
	// ringBudget is the ring size beyond which the points per unit of weight are halved
	// (down to 1), so that large sets keep a ring of at most about 3 MiB.
	ringBudget = 1 << 18
)

// ringHash is a consistent-hash ring: sorted point hashes and the endpoint owning each.
type ringHash struct {
	endpoints []*Endpoint
	hashes    []uint64 // sorted ascending
	owners    []uint32 // owners[i] indexes endpoints; the owner of hashes[i]
}

var _ Picker = (*ringHash)(nil)

// NewRingHash is the Builder of the ring_hash policy, a Ketama-style consistent hash ring
// like Envoy's. Each endpoint puts points on the ring at the xxHash of "ADDRESS_k",
// k = 0, 1, ..., in number proportional to its weight; Pick returns the owner of the first
// point at or after PickInfo.Hash (wrapping around), or of a random point when the request
// has no hash key.
//
// An endpoint of gcd-reduced weight w has 512·w points while the total weight W is at most
// 512 (the ring then has 1024 to 256Ki points), and half, a quarter... as many, down to w,
// as W doubles past that; if even w points per endpoint would exceed Envoy's maximum ring
// size of 8Mi, the weights are scaled down to fit. Envoy instead derives the number of
// points of every host from the size of the whole set, so that removing one host changes
// the points of all the others and moves keys between them (up to about 8% of all keys when
// one of 10 hosts goes). Here an endpoint's points depend only on its own address and weight
// as long as the gcd of the weights stays the same and W stays on the same side of 512
// (1024, 2048, ...), so removing an endpoint moves only its own keys, and adding one moves
// only the keys it takes. The ring is built from addresses, so equal sets give equal rings
// whatever their order. It takes 12 bytes per point.
//
// NewRingHash may be called concurrently; the Picker is immutable and safe for concurrent
// use.
func NewRingHash(endpoints []*Endpoint) Picker {
	r := &ringHash{endpoints: endpoints}
	if len(endpoints) < 2 {
		return r
	}
	counts, total := ringPointCounts(endpoints)
	type point struct {
		hash  uint64
		owner uint32
	}
	points := make([]point, 0, total)
	var key []byte
	for i, e := range endpoints {
		key = append(append(key[:0], e.Address...), '_')
		prefix := len(key)
		for k := range counts[i] {
			key = strconv.AppendUint(key[:prefix], k, 10)
			points = append(points, point{hash: xxhash.Sum64(key), owner: uint32(i)})
		}
	}
	slices.SortFunc(points, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return strings.Compare(endpoints[a.owner].Address, endpoints[b.owner].Address)
	})
	r.hashes = make([]uint64, len(points))
	r.owners = make([]uint32, len(points))
	for i, p := range points {
		r.hashes[i] = p.hash
		r.owners[i] = p.owner
	}
	return r
}

// ringPointCounts returns the number of ring points of each endpoint, and their sum.
func ringPointCounts(endpoints []*Endpoint) (counts []uint64, total uint64) {
	w, sum := reducedWeights(endpoints)
	perWeight := max(ringPointsPerWeight, (minRingSize+sum-1)/sum)
	for perWeight > 1 && sum > ringBudget/perWeight {
		perWeight /= 2
	}
	if sum > maxRingSize {
		sum = scaleWeights(w, sum, maxRingSize)
	}
	for i := range w {
		w[i] *= perWeight
	}
	return w, sum * perWeight
}

// Pick returns the endpoint owning the hash of the request, or a random point's owner when
// info has no hash. It is safe for concurrent use.
func (r *ringHash) Pick(info PickInfo) (*Endpoint, error) {
	switch len(r.endpoints) {
	case 0:
		return nil, ErrNoEndpoint
	case 1:
		return r.endpoints[0], nil
	}
	h := info.Hash
	if !info.HasHash {
		h = rand.Uint64()
	}
	// The first point at or after h; past the last point the ring wraps to the first.
	lo, hi := 0, len(r.hashes)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.hashes[mid] < h {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == len(r.hashes) {
		lo = 0
	}
	return r.endpoints[r.owners[lo]], nil
}
