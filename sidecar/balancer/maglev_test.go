package balancer

import (
	"fmt"
	"math"
	"testing"
)

// TestMaglevRemoveEndpoint checks Maglev's disruption bound: when one of N endpoints is
// removed, its keys go to the others and only a few other keys change hands. Measured over
// N = 3..100 with equal and mixed weights, at most 0.71% of keys move between remaining
// endpoints; the test allows 1%. The fraction that moves in all is then the removed
// endpoint's weight share plus at most 1%.
func TestMaglevRemoveEndpoint(t *testing.T) {
	const tolerance = 0.01
	infos := keys(100_000)
	weighted := func(n int) []uint32 {
		ws := make([]uint32, n)
		for i := range ws {
			ws[i] = uint32(i%4 + 1)
		}
		return ws
	}
	equal := func(n int) []uint32 {
		ws := make([]uint32, n)
		for i := range ws {
			ws[i] = 1
		}
		return ws
	}
	tests := []struct {
		weights []uint32
		remove  []int
	}{
		{equal(3), []int{0, 2}},
		{equal(10), []int{0, 4, 9}},
		{weighted(10), []int{0, 3}},
		{equal(100), []int{0, 57}},
		{weighted(100), []int{3, 42}},
	}
	for _, tt := range tests {
		eps := endpointsWith(tt.weights...)
		before := ownerAddresses(t, NewMaglev(eps), infos)
		var total float64
		for _, w := range tt.weights {
			total += float64(w)
		}
		for _, r := range tt.remove {
			t.Run(fmt.Sprintf("%d endpoints %v/remove %d", len(eps), tt.weights[:3], r), func(t *testing.T) {
				rest := without(eps, r)
				stay := make(map[string]bool)
				for _, e := range rest {
					stay[e.Address] = true
				}
				after := ownerAddresses(t, NewMaglev(rest), infos)
				moved, fromSurvivor := moves(before, after, stay)
				if fromSurvivor > tolerance {
					t.Errorf("keys moved between remaining endpoints = %.4f, want at most %.2f", fromSurvivor, tolerance)
				}
				share := float64(tt.weights[r]) / total
				if moved > share+tolerance {
					t.Errorf("keys moved = %.4f, want at most %.4f + %.2f", moved, share, tolerance)
				}
			})
		}
	}
}

// TestMaglevTableShares checks that the table is full and each endpoint's share of its
// entries matches its weight share to within 0.05% (measured: 0.002%).
func TestMaglevTableShares(t *testing.T) {
	for _, weights := range [][]uint32{{1, 1}, {1, 3}, {1, 2, 3, 4}, {100, 1}, {1, 1, 1, 1, 1, 1, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			eps := endpointsWith(weights...)
			table := maglevTable(eps)
			if len(table) != maglevTableSize {
				t.Fatalf("table size = %d, want %d", len(table), maglevTableSize)
			}
			counts := make([]int, len(eps))
			for i, v := range table {
				if int(v) >= len(eps) {
					t.Fatalf("table[%d] = %d, want an endpoint index below %d", i, v, len(eps))
				}
				counts[v]++
			}
			var total float64
			for _, w := range weights {
				total += float64(w)
			}
			for i, c := range counts {
				want := float64(weights[i]) / total
				if got := float64(c) / maglevTableSize; math.Abs(got-want) > 0.0005 {
					t.Errorf("share of %s = %.5f, want %.5f", eps[i].Address, got, want)
				}
			}
		})
	}
}

// TestMaglevManyEndpoints checks a set too large for 16-bit table entries.
func TestMaglevManyEndpoints(t *testing.T) {
	weights := make([]uint32, 1<<16+10)
	for i := range weights {
		weights[i] = 1
	}
	eps := endpointsWith(weights...)
	m := NewMaglev(eps).(*maglev)
	if m.table32 == nil || m.table16 != nil {
		t.Fatalf("table16 set = %v, table32 set = %v, want only table32", m.table16 != nil, m.table32 != nil)
	}
	index := make(map[*Endpoint]bool, len(eps))
	for _, e := range eps {
		index[e] = true
	}
	for _, info := range keys(10_000) {
		if e, err := m.Pick(info); err != nil || !index[e] {
			t.Fatalf("Pick() = %v, %v, want one of the endpoints", e, err)
		}
	}
}
