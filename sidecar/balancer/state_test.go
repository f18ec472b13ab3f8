package balancer

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/ferrymesh/ferry/discovery"
)

func TestDoneCountsOutcomes(t *testing.T) {
	refused := errors.New("connection refused")
	tests := []struct {
		name                       string
		info                       DoneInfo
		wantSuccess, wantFail      uint64
		wantRun5xx, wantRunGateway uint32
		wantFailures               uint64
	}{
		{"200", DoneInfo{Status: 200}, 1, 0, 0, 0, 0},
		{"404", DoneInfo{Status: 404}, 1, 0, 0, 0, 0},
		{"TCP session", DoneInfo{}, 1, 0, 0, 0, 0},
		{"500", DoneInfo{Status: 500}, 0, 1, 1, 0, 1},
		{"503", DoneInfo{Status: 503}, 0, 1, 1, 1, 1},
		{"504", DoneInfo{Status: 504}, 0, 1, 1, 1, 1},
		{"connect failure", DoneInfo{Err: refused}, 0, 1, 1, 1, 1},
		{"dropped", DoneInfo{Err: refused, Dropped: true}, 0, 0, 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := NewEndpoint(discovery.Endpoint{Address: "a:1"}, nil)
			e.State.SetTripwire(&Tripwire{Consecutive5xx: 9, ConsecutiveGatewayFailure: 9, Signal: make(chan struct{}, 1)})
			e.Begin()
			e.Done(tc.info)
			if a := e.State.Active.Load(); a != 0 {
				t.Errorf("Active = %d, want 0", a)
			}
			r5, rg := e.State.Runs()
			s, f := e.State.SwapCounts()
			if s != tc.wantSuccess || f != tc.wantFail || r5 != tc.wantRun5xx || rg != tc.wantRunGateway || e.State.Failures.Load() != tc.wantFailures {
				t.Errorf("SwapCounts() = %d, %d; Runs() = %d, %d; Failures = %d; want %d, %d; %d, %d; %d",
					s, f, r5, rg, e.State.Failures.Load(), tc.wantSuccess, tc.wantFail, tc.wantRun5xx, tc.wantRunGateway, tc.wantFailures)
			}
		})
	}
}

func TestTripwireSignalsOncePerRunWithoutBlocking(t *testing.T) {
	sig := make(chan struct{}, 1)
	e := NewEndpoint(discovery.Endpoint{Address: "a:1"}, nil)
	e.State.SetTripwire(&Tripwire{Consecutive5xx: 3, Signal: sig})
	fail := DoneInfo{Status: 500}
	for range 2 {
		e.Begin()
		e.Done(fail)
	}
	if len(sig) != 0 {
		t.Fatalf("signalled after 2 failures with threshold 3")
	}
	for range 10 { // reaching 3 signals; going on does not signal again, nor block
		e.Begin()
		e.Done(fail)
	}
	if len(sig) != 1 {
		t.Fatalf("len(signal) = %d, want 1", len(sig))
	}
	<-sig
	e.State.ResetRuns()
	for range 3 { // a new run of 3 signals again; the channel is full after it
		e.Begin()
		e.Done(fail)
	}
	if len(sig) != 1 {
		t.Fatalf("len(signal) = %d after a second run, want 1", len(sig))
	}
	e.State.ResetRuns()
	for range 3 { // full channel: Done must not block
		e.Begin()
		e.Done(fail)
	}
	// A success ends the run.
	e.Begin()
	e.Done(DoneInfo{Status: 200})
	if r, _ := e.State.Runs(); r != 0 {
		t.Errorf("run after a success = %d, want 0", r)
	}
}

func TestSwapCountsUnderConcurrency(t *testing.T) {
	e := NewEndpoint(discovery.Endpoint{Address: "a:1"}, nil)
	const goroutines, calls = 8, 5000
	var wg sync.WaitGroup
	var total uint64
	var mu sync.Mutex
	stop := make(chan struct{})
	swapper := make(chan struct{})
	go func() {
		defer close(swapper)
		for {
			s, f := e.State.SwapCounts()
			mu.Lock()
			total += s + f
			mu.Unlock()
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	for g := range goroutines {
		wg.Go(func() {
			for i := range calls {
				e.Begin()
				e.Done(DoneInfo{Status: 200 + 300*((g+i)%2)})
			}
		})
	}
	wg.Wait()
	close(stop)
	<-swapper
	// Late increments land in the bucket read two swaps later: two more swaps collect all.
	for range 2 {
		s, f := e.State.SwapCounts()
		total += s + f
	}
	if total != goroutines*calls {
		t.Errorf("counted %d outcomes, want %d", total, goroutines*calls)
	}
}

func TestAvailable(t *testing.T) {
	tests := []struct {
		name    string
		outlier *OutlierStatus
		health  *HealthStatus
		want    bool
	}{
		{"fresh", nil, nil, true},
		{"healthy", &OutlierStatus{}, &HealthStatus{Health: HealthHealthy}, true},
		{"unknown health", nil, &HealthStatus{Health: HealthUnknown}, true},
		{"ejected", &OutlierStatus{Ejected: true}, nil, false},
		{"unhealthy", nil, &HealthStatus{Health: HealthUnhealthy}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s EndpointState
			s.SetOutlierStatus(tc.outlier)
			s.SetHealthStatus(tc.health)
			if got := s.Available(); got != tc.want {
				t.Errorf("Available() = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestDoneAllocs checks that Done, with outlier detection's tripwire installed, does not
// allocate.
func TestDoneAllocs(t *testing.T) {
	e := NewEndpoint(discovery.Endpoint{Address: "a:1"}, nil)
	e.State.SetTripwire(&Tripwire{Consecutive5xx: 5, ConsecutiveGatewayFailure: 5, Signal: make(chan struct{}, 1)})
	i := 0
	if got := testing.AllocsPerRun(1000, func() {
		i++
		e.Begin()
		e.Done(DoneInfo{Status: 200 + 300*(i%7/6)})
	}); got != 0 {
		t.Errorf("Begin+Done allocations = %v, want 0", got)
	}
}

func TestPickAvoiding(t *testing.T) {
	eps := endpointsWith(1, 1, 1)
	for _, pol := range policies {
		t.Run(pol.name, func(t *testing.T) {
			p := pol.build(eps)
			for i := range 200 {
				info := PickInfo{Hash: uint64(i) * 0x9e3779b97f4a7c15, HasHash: true}
				first, err := p.Pick(info)
				if err != nil {
					t.Fatal(err)
				}
				e, err := PickAvoiding(p, eps, info, []string{first.Address})
				if err != nil || e.Address == first.Address {
					t.Fatalf("PickAvoiding(avoid %s) = %v, %v; want another endpoint", first.Address, e, err)
				}
				two := []string{first.Address, e.Address}
				e3, err := PickAvoiding(p, eps, info, two)
				if err != nil || slices.Contains(two, e3.Address) {
					t.Fatalf("PickAvoiding(avoid %v) = %v, %v; want the third endpoint", two, e3, err)
				}
				all := []string{eps[0].Address, eps[1].Address, eps[2].Address}
				if e, err := PickAvoiding(p, eps, info, all); err != nil || e == nil {
					t.Fatalf("PickAvoiding(avoid all) = %v, %v; want some endpoint", e, err)
				}
			}
		})
	}
	// Power of two choices over two endpoints always returns the less loaded one: the scan
	// finds the other.
	two := endpointsWith(1, 1)
	two[1].State.Active.Store(5)
	lr := NewLeastRequest(two)
	if e, _ := PickAvoiding(lr, two, PickInfo{}, []string{two[0].Address}); e != two[1] {
		t.Errorf("PickAvoiding(least_request) = %v, want %v", e, two[1])
	}
	if _, err := PickAvoiding(NewRoundRobin(nil), nil, PickInfo{}, []string{"x"}); err != ErrNoEndpoint {
		t.Errorf("PickAvoiding(empty) error = %v, want ErrNoEndpoint", err)
	}
	if got := testing.AllocsPerRun(100, func() { _, _ = PickAvoiding(lr, two, PickInfo{}, []string{two[0].Address}) }); got != 0 {
		t.Errorf("PickAvoiding allocations = %v, want 0", got)
	}
}
