package balancer

import (
	"math/rand/v2"
	"slices"
)

// maxRepicks bounds how many times PickAvoiding asks the picker again before it scans.
const maxRepicks = 4

// PickAvoiding picks an endpoint for a retry: one whose address is not in avoid (the
// endpoints already tried) whenever one exists. It asks p first (with info's hash, so that
// a first try of ring_hash and maglev keeps its affinity), then again a few times without
// the hash, and then scans candidates, the endpoints p was built from, from a random
// start. When every endpoint is in avoid it returns what p picked. candidates may be nil
// (no scan). It allocates nothing and is safe for concurrent use.
func PickAvoiding(p Picker, candidates []*Endpoint, info PickInfo, avoid []string) (*Endpoint, error) {
	ep, err := p.Pick(info)
	if err != nil || len(avoid) == 0 || !slices.Contains(avoid, ep.Address) {
		return ep, err
	}
	info.HasHash = false
	for range maxRepicks {
		if e, err := p.Pick(info); err == nil && !slices.Contains(avoid, e.Address) {
			return e, nil
		}
	}
	if n := len(candidates); n > 0 {
		start := rand.IntN(n)
		for i := range n {
			if e := candidates[(start+i)%n]; !slices.Contains(avoid, e.Address) {
				return e, nil
			}
		}
	}
	return ep, nil
}
