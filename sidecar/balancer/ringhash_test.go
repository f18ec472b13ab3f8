package balancer

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

// TestRingHashRemoveEndpoint checks that removing one endpoint moves only the keys that were
// on it: no key moves between the endpoints that stay, and the fraction that moves is the
// removed endpoint's weight share, within 0.03 (its share of the ring differs from its
// weight share by a few per cent of that share, plus sampling noise of the keys).
func TestRingHashRemoveEndpoint(t *testing.T) {
	const tolerance = 0.03
	infos := keys(100_000)
	tests := []struct {
		weights []uint32
		remove  []int
	}{
		{[]uint32{1, 1, 1}, []int{0, 2}},
		{[]uint32{1, 1, 1, 1, 1}, []int{1}},
		{[]uint32{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}, []int{0, 4, 9}},
		{[]uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, []int{3, 9}},
		{[]uint32{3, 3, 3, 3, 3}, []int{2}},
	}
	for _, tt := range tests {
		eps := endpointsWith(tt.weights...)
		before := ownerAddresses(t, NewRingHash(eps), infos)
		var total float64
		for _, w := range tt.weights {
			total += float64(w)
		}
		for _, r := range tt.remove {
			t.Run(fmt.Sprintf("%v/remove %d", tt.weights, r), func(t *testing.T) {
				rest := without(eps, r)
				stay := make(map[string]bool)
				for _, e := range rest {
					stay[e.Address] = true
				}
				after := ownerAddresses(t, NewRingHash(rest), infos)
				moved, fromSurvivor := moves(before, after, stay)
				if fromSurvivor != 0 {
					t.Errorf("keys moved between remaining endpoints = %.4f, want 0", fromSurvivor)
				}
				share := float64(tt.weights[r]) / total
				if moved > share+tolerance {
					t.Errorf("keys moved = %.4f, want at most %.4f + %.2f", moved, share, tolerance)
				}
			})
		}
	}
}

// TestRingHashAddEndpoint checks that a new endpoint only takes keys, about its share.
func TestRingHashAddEndpoint(t *testing.T) {
	const tolerance = 0.03
	infos := keys(100_000)
	for _, weights := range [][]uint32{{1, 1}, {1, 1, 1, 1}, {2, 1, 3, 1, 2, 1, 1, 1, 1, 2}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			all := endpointsWith(append(weights, 1)...)
			old := all[:len(weights)]
			before := ownerAddresses(t, NewRingHash(old), infos)
			after := ownerAddresses(t, NewRingHash(all), infos)
			stay := make(map[string]bool)
			for _, e := range old {
				stay[e.Address] = true
			}
			newcomer := all[len(all)-1].Address
			var taken int
			for i := range infos {
				if after[i] == before[i] {
					continue
				}
				if after[i] != newcomer {
					t.Fatalf("key %d: Pick() = %v, want %v (unchanged) or %v (new)", i, after[i], before[i], newcomer)
				}
				taken++
			}
			var total float64
			for _, w := range weights {
				total += float64(w)
			}
			share := 1 / (total + 1)
			if got := float64(taken) / float64(len(infos)); math.Abs(got-share) > tolerance {
				t.Errorf("keys taken by the new endpoint = %.4f, want %.4f ± %.2f", got, share, tolerance)
			}
		})
	}
}

// TestRingPointCounts checks the ring size bounds and that points follow weights.
func TestRingPointCounts(t *testing.T) {
	many := func(n int, w uint32) []uint32 {
		ws := make([]uint32, n)
		for i := range ws {
			ws[i] = w
		}
		return ws
	}
	tests := []struct {
		name      string
		weights   []uint32
		perWeight uint64 // points per unit of reduced weight; 0: weights were scaled
	}{
		{"two", []uint32{1, 1}, 512},
		{"weights 1:3", []uint32{1, 3}, 512},
		{"gcd reduced", []uint32{20, 60}, 512},
		{"512 endpoints", many(512, 1), 512},
		{"513 endpoints", many(513, 1), 256},
		{"2000 endpoints", many(2000, 7), 128},
		{"300000 endpoints", many(300_000, 1), 1},
		{"huge weights", []uint32{^uint32(0), ^uint32(0) - 1, 1000}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			counts, total := ringPointCounts(eps)
			var sum uint64
			for _, c := range counts {
				sum += c
			}
			if sum != total {
				t.Errorf("total = %d, want the sum of counts %d", total, sum)
			}
			if total < minRingSize || total > maxRingSize+uint64(len(eps)) {
				t.Errorf("ring size = %d, want %d..%d", total, minRingSize, maxRingSize)
			}
			w, _ := reducedWeights(eps)
			if tt.perWeight != 0 {
				for i := range w {
					w[i] *= tt.perWeight
				}
				if !slices.Equal(counts, w) {
					t.Errorf("counts = %v, want %v", counts[:min(len(counts), 4)], w[:min(len(w), 4)])
				}
				return
			}
			var wsum float64
			for _, x := range w {
				wsum += float64(x)
			}
			for i := range w {
				want := float64(w[i]) / wsum
				if got := float64(counts[i]) / float64(total); math.Abs(got-want) > 1e-6 || counts[i] == 0 {
					t.Errorf("share of %s = %.8f (%d points), want %.8f", eps[i].Address, got, counts[i], want)
				}
			}
		})
	}
}

// TestRingHashLookup checks the ring order and the search: a key goes to the first point at
// or after it, and past the last point back to the first.
func TestRingHashLookup(t *testing.T) {
	eps := endpointsWith(1, 2, 3)
	r := NewRingHash(eps).(*ringHash)
	if !slices.IsSorted(r.hashes) {
		t.Fatal("ring points are not sorted")
	}
	owner := func(i int) *Endpoint { return eps[r.owners[i%len(r.owners)]] }
	last := len(r.hashes) - 1
	tests := []struct {
		name string
		hash uint64
		want *Endpoint
	}{
		{"zero", 0, owner(0)},
		{"first point", r.hashes[0], owner(0)},
		{"just after first point", r.hashes[0] + 1, owner(1)},
		{"a middle point", r.hashes[100], owner(100)},
		{"just before a middle point", r.hashes[100] - 1, owner(100)},
		{"last point", r.hashes[last], owner(last)},
		{"after the last point", r.hashes[last] + 1, owner(0)},
		{"max", math.MaxUint64, owner(0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := r.Pick(PickInfo{Hash: tt.hash, HasHash: true}); got != tt.want || err != nil {
				t.Errorf("Pick() = %v, %v, want %v, nil", got.Address, err, tt.want.Address)
			}
		})
	}
}
