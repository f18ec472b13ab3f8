package balancer

import (
	"fmt"
	"testing"
)

// picks returns n consecutive picks of p.
func picks(t *testing.T, p Picker, n int) []*Endpoint {
	t.Helper()
	out := make([]*Endpoint, n)
	for i := range out {
		e, err := p.Pick(PickInfo{})
		if err != nil {
			t.Fatalf("Pick() error = %v, want nil", err)
		}
		out[i] = e
	}
	return out
}

// TestRoundRobinCycle checks that any window of one cycle's length, wherever it starts,
// holds each endpoint exactly its gcd-reduced weight times, and that the order repeats.
func TestRoundRobinCycle(t *testing.T) {
	tests := []struct {
		weights []uint32
		want    []int // picks per cycle of each endpoint
	}{
		{[]uint32{1}, []int{1}},
		{[]uint32{1, 1, 1}, []int{1, 1, 1}},
		{[]uint32{1, 3}, []int{1, 3}},
		{[]uint32{5, 1, 1}, []int{5, 1, 1}},
		{[]uint32{2, 4, 6}, []int{1, 2, 3}},
		{[]uint32{7, 3, 2, 1}, []int{7, 3, 2, 1}},
		{[]uint32{100, 100}, []int{1, 1}},
		{[]uint32{1000, 1}, []int{1000, 1}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			cycle := 0
			for _, w := range tt.want {
				cycle += w
			}
			seq := picks(t, NewRoundRobin(eps), 3*cycle)
			for start := 0; start+cycle <= len(seq); start++ {
				count := make(map[*Endpoint]int)
				for _, e := range seq[start : start+cycle] {
					count[e]++
				}
				for i, e := range eps {
					if count[e] != tt.want[i] {
						t.Fatalf("picks %d..%d: %s picked %d times, want %d",
							start, start+cycle, e.Address, count[e], tt.want[i])
					}
				}
			}
			for i := cycle; i < len(seq); i++ {
				if seq[i] != seq[i-cycle] {
					t.Fatalf("Pick() #%d = %v, want %v (period %d)", i, seq[i].Address, seq[i-cycle].Address, cycle)
				}
			}
		})
	}
}

// TestRoundRobinSmooth checks that an endpoint's picks are spread through the cycle: the gap
// between two picks of an endpoint of weight w in a cycle of length L is at most ⌈L/w⌉+1.
func TestRoundRobinSmooth(t *testing.T) {
	for _, weights := range [][]uint32{{5, 1, 1}, {1, 3}, {7, 3, 2, 1}, {10, 9, 1}, {1, 1, 1, 1}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			eps := endpointsWith(weights...)
			cycle := 0
			for _, w := range weights {
				cycle += int(w)
			}
			seq := picks(t, NewRoundRobin(eps), 3*cycle)
			for i, e := range eps {
				maxGap := (cycle+int(weights[i])-1)/int(weights[i]) + 1
				last := -1
				for k, got := range seq {
					if got != e {
						continue
					}
					if last >= 0 && k-last > maxGap {
						t.Errorf("%s picked at %d then %d, gap %d, want at most %d", e.Address, last, k, k-last, maxGap)
					}
					last = k
				}
			}
		})
	}
}

// TestRoundRobinScaledWeights checks that a huge total weight gives a bounded schedule that
// keeps the proportions.
func TestRoundRobinScaledWeights(t *testing.T) {
	tests := []struct {
		weights []uint32
	}{
		{[]uint32{1 << 31, 1<<31 - 1, 1}},
		{[]uint32{40000, 20000, 3}},
		{[]uint32{^uint32(0), ^uint32(0) - 1}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights), func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			schedule := smoothSchedule(eps, maxSchedule)
			if len(schedule) > maxSchedule+len(eps) {
				t.Errorf("schedule length = %d, want at most %d", len(schedule), maxSchedule+len(eps))
			}
			var total float64
			for _, w := range tt.weights {
				total += float64(w)
			}
			count := make(map[*Endpoint]int)
			for _, e := range schedule {
				count[e]++
			}
			for i, e := range eps {
				if count[e] == 0 {
					t.Errorf("%s never scheduled, want at least once", e.Address)
				}
				want := float64(tt.weights[i]) / total
				if got := float64(count[e]) / float64(len(schedule)); got-want > 0.001 || want-got > 0.001 {
					t.Errorf("share of %s = %.5f, want %.5f", e.Address, got, want)
				}
			}
		})
	}
}

// TestRoundRobinManyEndpoints checks a set larger than maxSchedule: each endpoint once.
func TestRoundRobinManyEndpoints(t *testing.T) {
	weights := make([]uint32, maxSchedule+100)
	for i := range weights {
		weights[i] = uint32(i%3 + 1)
	}
	eps := endpointsWith(weights...)
	schedule := smoothSchedule(eps, maxSchedule)
	if len(schedule) != len(eps) {
		t.Fatalf("schedule length = %d, want %d", len(schedule), len(eps))
	}
	seen := make(map[*Endpoint]bool)
	for _, e := range schedule {
		seen[e] = true
	}
	if len(seen) != len(eps) {
		t.Errorf("schedule holds %d endpoints, want %d", len(seen), len(eps))
	}
}

// TestRoundRobinRandomStart checks that pickers over the same endpoints do not all start at
// the same place in the cycle.
func TestRoundRobinRandomStart(t *testing.T) {
	weights := make([]uint32, 1000)
	for i := range weights {
		weights[i] = 1
	}
	eps := endpointsWith(weights...)
	first := make(map[*Endpoint]bool)
	for range 20 {
		e, _ := NewRoundRobin(eps).Pick(PickInfo{})
		first[e] = true
	}
	if len(first) < 2 {
		t.Errorf("20 pickers all started at %v, want random starts", first)
	}
}
