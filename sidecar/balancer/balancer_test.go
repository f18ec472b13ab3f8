package balancer

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ferrymesh/ferry/discovery"
)

// endpointsWith returns endpoints 10.0.0.1:8080, 10.0.0.2:8080, ... with the given weights.
func endpointsWith(weights ...uint32) []*Endpoint {
	eps := make([]*Endpoint, len(weights))
	for i, w := range weights {
		eps[i] = NewEndpoint(discovery.Endpoint{Address: addr(i), Weight: w}, nil)
	}
	return eps
}

func addr(i int) string { return fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1) }

// policy is a builder under test and whether it uses PickInfo.Hash.
type policy struct {
	name   string
	build  Builder
	hashed bool
}

var policies = []policy{
	{RoundRobin, NewRoundRobin, false},
	{LeastRequest, NewLeastRequest, false},
	{Random, NewRandom, false},
	{RingHash, NewRingHash, true},
	{Maglev, NewMaglev, true},
}

// keys returns n request hashes built as the HTTP layer builds them.
func keys(n int) []PickInfo {
	infos := make([]PickInfo, n)
	for i := range infos {
		infos[i] = PickInfo{Hash: HashString(fmt.Sprintf("user-%d", i)), HasHash: true}
	}
	return infos
}

// shares picks once per info and returns the fraction of picks that went to each endpoint.
func shares(t *testing.T, p Picker, eps []*Endpoint, infos []PickInfo) []float64 {
	t.Helper()
	index := make(map[*Endpoint]int, len(eps))
	for i, e := range eps {
		index[e] = i
	}
	counts := make([]int, len(eps))
	for _, info := range infos {
		e, err := p.Pick(info)
		if err != nil {
			t.Fatalf("Pick() error = %v, want nil", err)
		}
		i, ok := index[e]
		if !ok {
			t.Fatalf("Pick() = %v, not one of the endpoints", e)
		}
		counts[i]++
	}
	out := make([]float64, len(eps))
	for i, c := range counts {
		out[i] = float64(c) / float64(len(infos))
	}
	return out
}

func TestNew(t *testing.T) {
	for _, name := range append([]string{""}, Policies...) {
		t.Run("policy="+name, func(t *testing.T) {
			b, err := New(name)
			if err != nil || b == nil {
				t.Fatalf("New(%q) = %v, %v, want a builder", name, b, err)
			}
			e, err := b(endpointsWith(1)).Pick(PickInfo{})
			if err != nil || e == nil {
				t.Errorf("Pick() = %v, %v, want an endpoint", e, err)
			}
		})
	}
	if _, err := New("least_conn"); err == nil {
		t.Errorf("New(%q) error = nil, want an error", "least_conn")
	}
}

// TestDistribution checks that every policy spreads picks in proportion to weight. Policies
// that ignore the hash make N picks; hash policies pick for N distinct request keys, and
// again for N requests without a key (a random point).
func TestDistribution(t *testing.T) {
	const n = 200_000
	infos := keys(n)
	unkeyed := make([]PickInfo, n)
	// Tolerances in absolute share. random and least_request: the standard deviation of a
	// share over 200k picks is at most 0.0012, so 0.01 is over 8σ. round_robin is exact to
	// 1/n. ring_hash: with 128+ points per unit of weight an endpoint's share of the ring is
	// within a few per cent of its weight. maglev: the table is proportional to within 0.1%,
	// plus sampling noise of the keys.
	tolerance := map[string]float64{
		RoundRobin:   0.001,
		LeastRequest: 0.01,
		Random:       0.01,
		RingHash:     0.04,
		Maglev:       0.01,
	}
	tests := []struct {
		name    string
		weights []uint32 // a weight of 0 is set after NewEndpoint, which would make it 1
	}{
		{"single", []uint32{1}},
		{"weights 1:3", []uint32{1, 3}},
		{"weights 10:30", []uint32{10, 30}},
		{"equal weights", []uint32{1, 1, 1, 1, 1}},
		{"equal weights 7", []uint32{7, 7, 7, 7}},
		{"weights 1:2:3:4", []uint32{1, 2, 3, 4}},
		{"weights 3:1", []uint32{3, 1}},
		{"weight 0 counts as 1", []uint32{0, 1, 2}},
	}
	for _, pol := range policies {
		for _, tt := range tests {
			t.Run(pol.name+"/"+tt.name, func(t *testing.T) {
				eps := endpointsWith(tt.weights...)
				for i, w := range tt.weights {
					eps[i].Weight = w
				}
				var sum float64
				for _, w := range tt.weights {
					sum += float64(max(w, 1))
				}
				p := pol.build(eps)
				runs := map[string][]PickInfo{"": infos}
				if pol.hashed {
					runs = map[string][]PickInfo{"keyed": infos, "unkeyed": unkeyed}
				}
				for run, in := range runs {
					got := shares(t, p, eps, in)
					for i, w := range tt.weights {
						want := float64(max(w, 1)) / sum
						if math.Abs(got[i]-want) > tolerance[pol.name] {
							t.Errorf("%s share of %s = %.4f, want %.4f ± %.3f",
								run, eps[i].Address, got[i], want, tolerance[pol.name])
						}
					}
				}
			})
		}
	}
}

func TestEmpty(t *testing.T) {
	for _, pol := range policies {
		for _, eps := range [][]*Endpoint{nil, {}} {
			for _, info := range []PickInfo{{}, {Hash: 42, HasHash: true}} {
				t.Run(fmt.Sprintf("%s/%v/%+v", pol.name, eps == nil, info), func(t *testing.T) {
					e, err := pol.build(eps).Pick(info)
					if !errors.Is(err, ErrNoEndpoint) || e != nil {
						t.Errorf("Pick() = %v, %v, want nil, %v", e, err, ErrNoEndpoint)
					}
				})
			}
		}
	}
}

func TestSingleEndpoint(t *testing.T) {
	for _, pol := range policies {
		t.Run(pol.name, func(t *testing.T) {
			eps := endpointsWith(5)
			p := pol.build(eps)
			for i, info := range keys(1000) {
				if i%2 == 0 {
					info = PickInfo{}
				}
				if e, err := p.Pick(info); e != eps[0] || err != nil {
					t.Fatalf("Pick() = %v, %v, want %v, nil", e, err, eps[0])
				}
			}
		})
	}
}

// TestConcurrentPick runs Pick from many goroutines, with Begin and Done as the proxy calls
// them, while new pickers over the same states are published; run it with -race.
func TestConcurrentPick(t *testing.T) {
	const goroutines, picks = 16, 2000
	for _, pol := range policies {
		t.Run(pol.name, func(t *testing.T) {
			eps := endpointsWith(1, 2, 3, 4, 5, 6, 7, 8)
			var current atomic.Pointer[Picker]
			p := pol.build(eps)
			current.Store(&p)
			stop := make(chan struct{})
			var rebuilds sync.WaitGroup
			rebuilds.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					fresh := make([]*Endpoint, len(eps))
					for i, e := range eps {
						fresh[i] = NewEndpoint(e.Endpoint, e.State) // same shared state
					}
					p := pol.build(fresh)
					current.Store(&p)
				}
			})
			var pickers sync.WaitGroup
			for g := range goroutines {
				pickers.Go(func() {
					for i := range picks {
						info := PickInfo{Hash: HashString(fmt.Sprint(g, i)), HasHash: i%3 != 0}
						e, err := (*current.Load()).Pick(info)
						if err != nil || e == nil {
							t.Errorf("Pick() = %v, %v, want an endpoint", e, err)
							return
						}
						e.Begin()
						e.Done(DoneInfo{Status: 200})
					}
				})
			}
			pickers.Wait()
			close(stop)
			rebuilds.Wait()
			var total uint64
			for _, e := range eps {
				if a := e.State.Active.Load(); a != 0 {
					t.Errorf("%s Active = %d, want 0", e.Address, a)
				}
				total += e.State.Total.Load()
			}
			if total != goroutines*picks {
				t.Errorf("Total = %d, want %d", total, goroutines*picks)
			}
		})
	}
}

// TestPickAllocs checks that Pick does not allocate.
func TestPickAllocs(t *testing.T) {
	for _, pol := range policies {
		for _, weights := range [][]uint32{{1, 1, 1}, {1, 2, 3}} {
			for _, info := range []PickInfo{{}, {Hash: 12345, HasHash: true}} {
				t.Run(fmt.Sprintf("%s/%v/%v", pol.name, weights, info.HasHash), func(t *testing.T) {
					p := pol.build(endpointsWith(weights...))
					if got := testing.AllocsPerRun(1000, func() { _, _ = p.Pick(info) }); got != 0 {
						t.Errorf("Pick() allocations = %v, want 0", got)
					}
				})
			}
		}
	}
}

// BenchmarkPick measures Pick over 16 endpoints of mixed weights from parallel goroutines.
func BenchmarkPick(b *testing.B) {
	weights := []uint32{1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}
	for _, pol := range policies {
		b.Run(pol.name, func(b *testing.B) {
			p := pol.build(endpointsWith(weights...))
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var h uint64
				for pb.Next() {
					h += 0x9e3779b97f4a7c15 // a different, well-spread key per request
					e, err := p.Pick(PickInfo{Hash: h, HasHash: true})
					if err != nil || e == nil {
						b.Fatalf("Pick() = %v, %v, want an endpoint", e, err)
					}
				}
			})
		})
	}
}

// BenchmarkBuild measures building a picker over 100 endpoints of mixed weights, the cost
// paid off the request path each time an upstream's endpoints change.
func BenchmarkBuild(b *testing.B) {
	weights := make([]uint32, 100)
	for i := range weights {
		weights[i] = uint32(i%4 + 1)
	}
	eps := endpointsWith(weights...)
	for _, pol := range policies {
		b.Run(pol.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				pol.build(eps)
			}
		})
	}
}

// without returns a copy of eps without eps[i].
func without(eps []*Endpoint, i int) []*Endpoint {
	return append(append([]*Endpoint{}, eps[:i]...), eps[i+1:]...)
}

// ownerAddresses returns the address p picks for each info.
func ownerAddresses(t *testing.T, p Picker, infos []PickInfo) []string {
	t.Helper()
	out := make([]string, len(infos))
	for i, info := range infos {
		e, err := p.Pick(info)
		if err != nil {
			t.Fatalf("Pick() error = %v, want nil", err)
		}
		out[i] = e.Address
	}
	return out
}

// moves compares the owners of keys before and after a change of endpoints: it returns the
// fraction of keys that changed owner, and the fraction that changed owner although their
// owner before is still in the set after.
func moves(before, after []string, stillThere map[string]bool) (moved, movedFromSurvivor float64) {
	var m, s int
	for i := range before {
		if before[i] != after[i] {
			m++
			if stillThere[before[i]] {
				s++
			}
		}
	}
	return float64(m) / float64(len(before)), float64(s) / float64(len(before))
}

// TestHashStableAcrossRebuilds checks that ring_hash and maglev send a key to the same
// endpoint address in every picker built over the same set, whatever the order of the
// endpoints and whether their states are fresh.
func TestHashStableAcrossRebuilds(t *testing.T) {
	infos := keys(20_000)
	for _, pol := range policies {
		if !pol.hashed {
			continue
		}
		for _, weights := range [][]uint32{{1, 1, 1, 1, 1}, {1, 2, 3}, {5, 1, 7, 2, 9, 9, 1}} {
			t.Run(fmt.Sprint(pol.name, weights), func(t *testing.T) {
				eps := endpointsWith(weights...)
				want := ownerAddresses(t, pol.build(eps), infos)
				again := ownerAddresses(t, pol.build(eps), infos)
				reversed := make([]*Endpoint, len(eps))
				for i, e := range eps {
					reversed[len(eps)-1-i] = NewEndpoint(e.Endpoint, nil)
				}
				fresh := ownerAddresses(t, pol.build(reversed), infos)
				for i := range infos {
					if again[i] != want[i] || fresh[i] != want[i] {
						t.Fatalf("key %d: Pick() = %v (rebuilt), %v (reversed), want %v", i, again[i], fresh[i], want[i])
					}
				}
			})
		}
	}
}
