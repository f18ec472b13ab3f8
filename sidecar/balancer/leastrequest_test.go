package balancer

import (
	"fmt"
	"testing"
)

// TestLeastRequestPrefersLessLoaded sets Active on endpoints and checks which one every
// pick returns.
func TestLeastRequestPrefersLessLoaded(t *testing.T) {
	tests := []struct {
		name    string
		weights []uint32
		active  []int64
		want    int
	}{
		{"second idle", []uint32{1, 1}, []int64{5, 0}, 1},
		{"first idle", []uint32{1, 1}, []int64{0, 5}, 0},
		{"fewer by one", []uint32{1, 1}, []int64{3, 2}, 1},
		{"per unit of weight: heavy busier but less loaded per weight", []uint32{4, 1}, []int64{2, 1}, 0},
		{"per unit of weight: light idle", []uint32{3, 1}, []int64{3, 0}, 1},
		{"per unit of weight: heavy fuller", []uint32{3, 1}, []int64{7, 2}, 1},
		{"negative active counts as 0", []uint32{1, 1}, []int64{-3, 1}, 0},
		{"huge active", []uint32{1, 1}, []int64{1<<62 + 1, 1 << 62}, 1},
		// (2^62-1)/(2^32-1) is just over 2^30, so it loses to 2^30 and beats 2^30+1.
		{"huge active and weight, heavy wins", []uint32{^uint32(0), 1}, []int64{1<<62 - 1, 1<<30 + 1}, 0},
		{"huge active and weight, light wins", []uint32{^uint32(0), 1}, []int64{1<<62 - 1, 1 << 30}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			for i, a := range tt.active {
				eps[i].State.Active.Store(a)
			}
			p := NewLeastRequest(eps)
			for range 1000 {
				if e, err := p.Pick(PickInfo{}); e != eps[tt.want] || err != nil {
					t.Fatalf("Pick() = %v, %v, want %v, nil", e.Address, err, eps[tt.want].Address)
				}
			}
		})
	}
}

// TestLeastRequestNeverBusiest checks that with more than two endpoints the strictly
// busiest one (per unit of weight) is never picked, since it loses to any other candidate,
// and that the idle one wins whenever it is drawn.
func TestLeastRequestNeverBusiest(t *testing.T) {
	tests := []struct {
		weights []uint32
		active  []int64
		idle    int
		busiest int
	}{
		{[]uint32{1, 1, 1, 1}, []int64{0, 5, 5, 9}, 0, 3},
		{[]uint32{2, 1, 1, 4}, []int64{3, 0, 1, 9}, 1, 3},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.weights, tt.active), func(t *testing.T) {
			eps := endpointsWith(tt.weights...)
			for i, a := range tt.active {
				eps[i].State.Active.Store(a)
			}
			p := NewLeastRequest(eps)
			got := shares(t, p, eps, make([]PickInfo, 20000))
			if got[tt.busiest] != 0 {
				t.Errorf("share of busiest %s = %.3f, want 0", eps[tt.busiest].Address, got[tt.busiest])
			}
			// The idle endpoint is drawn as one of two distinct candidates with probability
			// well above its weight share, and always wins then.
			var sum uint32
			for _, w := range tt.weights {
				sum += w
			}
			if min := float64(tt.weights[tt.idle]) / float64(sum); got[tt.idle] <= min {
				t.Errorf("share of idle %s = %.3f, want more than %.3f", eps[tt.idle].Address, got[tt.idle], min)
			}
		})
	}
}

// TestLeastRequestUnderLoad starts calls on picked endpoints without finishing them and
// checks that requests in flight stay balanced in proportion to weight: 3600 calls end up in
// flight, so Active/weight is about 360 to 1800 per endpoint, and it may differ between
// endpoints by at most maxSpread (measured: 6 at worst in 300 runs; picking at random
// instead would spread them by several dozen).
func TestLeastRequestUnderLoad(t *testing.T) {
	const maxSpread = 10
	for _, weights := range [][]uint32{{1, 1}, {1, 3}, {1, 1, 1, 1}, {1, 2, 3, 4}} {
		t.Run(fmt.Sprint(weights), func(t *testing.T) {
			eps := endpointsWith(weights...)
			p := NewLeastRequest(eps)
			var inFlight []*Endpoint
			for i := range 4000 {
				e, err := p.Pick(PickInfo{})
				if err != nil {
					t.Fatalf("Pick() error = %v, want nil", err)
				}
				e.Begin()
				inFlight = append(inFlight, e)
				if i%10 == 9 { // now and then, the oldest call ends
					inFlight[0].Done(DoneInfo{Status: 200})
					inFlight = inFlight[1:]
				}
			}
			lo, hi := 1e18, 0.0
			for _, e := range eps {
				load := float64(e.State.Active.Load()) / float64(e.Weight)
				lo, hi = min(lo, load), max(hi, load)
			}
			if hi-lo > maxSpread {
				t.Errorf("Active/weight spread = %.2f (%.2f..%.2f), want at most %v", hi-lo, lo, hi, maxSpread)
			}
		})
	}
}
