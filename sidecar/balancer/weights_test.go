package balancer

import (
	"fmt"
	"slices"
	"testing"
)

func TestSearchCum(t *testing.T) {
	cum := []uint64{1, 4, 4, 10} // weights 1, 3, 0, 6
	tests := []struct {
		r    uint64
		want int
	}{
		{0, 0}, {1, 1}, {3, 1}, {4, 3}, {9, 3},
	}
	for _, tt := range tests {
		if got := searchCum(cum, tt.r); got != tt.want {
			t.Errorf("searchCum(%v, %d) = %d, want %d", cum, tt.r, got, tt.want)
		}
	}
}

func TestReducedAndScaledWeights(t *testing.T) {
	tests := []struct {
		weights []uint32
		limit   uint64
		want    []uint64
	}{
		{[]uint32{2, 4, 6}, 100, []uint64{1, 2, 3}},
		{[]uint32{0, 0}, 100, []uint64{1, 1}}, // zero counts as 1
		{[]uint32{7}, 100, []uint64{1}},
		{[]uint32{300, 100}, 4, []uint64{3, 1}},            // within the limit once reduced
		{[]uint32{1000, 3000, 1}, 40, []uint64{10, 30, 1}}, // rounded, at least 1
		{[]uint32{50, 50, 1}, 10, []uint64{5, 5, 1}},       // over the limit by the minimums
		{[]uint32{60, 20, 40}, 5, []uint64{3, 1, 2}},       // reduced again after scaling
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights, tt.limit), func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			for i, w := range tt.weights {
				eps[i].Weight = w // bypass NewEndpoint's 0 → 1
			}
			w, sum := reducedWeights(eps)
			sum = scaleWeights(w, sum, tt.limit)
			var wantSum uint64
			for _, v := range tt.want {
				wantSum += v
			}
			if !slices.Equal(w, tt.want) || sum != wantSum {
				t.Errorf("weights = %v (sum %d), want %v (sum %d)", w, sum, tt.want, wantSum)
			}
		})
	}
}
