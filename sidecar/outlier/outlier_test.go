package outlier

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture is a Detector over n endpoints named 10.0.0.1:80, 10.0.0.2:80, ...
type fixture struct {
	d       *Detector
	eps     []*balancer.Endpoint
	mu      sync.Mutex
	events  []Event
	changes int
}

func newFixture(t *testing.T, n int, c Config) *fixture {
	t.Helper()
	f := &fixture{}
	states := map[string]*balancer.EndpointState{}
	for i := range n {
		e := balancer.NewEndpoint(discovery.Endpoint{Address: fmt.Sprintf("10.0.0.%d:80", i+1)}, nil)
		f.eps = append(f.eps, e)
		states[e.Address] = e.State
	}
	f.d = New(Options{Upstream: "api", Config: c,
		OnChange: func() { f.mu.Lock(); f.changes++; f.mu.Unlock() },
		OnEvent:  func(e Event) { f.mu.Lock(); f.events = append(f.events, e); f.mu.Unlock() }})
	f.d.SetEndpoints(states)
	return f
}

// call makes a call to endpoint i with the given outcome.
func (f *fixture) call(i int, info balancer.DoneInfo) {
	f.eps[i].Begin()
	f.eps[i].Done(info)
}

func (f *fixture) calls(i, n int, info balancer.DoneInfo) {
	for range n {
		f.call(i, info)
	}
}

// ejected returns the indexes of the ejected endpoints.
func (f *fixture) ejected() []int {
	var out []int
	for i, e := range f.eps {
		if e.State.Ejected() {
			out = append(out, i)
		}
	}
	return out
}

func (f *fixture) eventKinds() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.events {
		out = append(out, e.Kind.String()+" "+e.Address)
	}
	return out
}

var (
	status500 = balancer.DoneInfo{Status: 500}
	status503 = balancer.DoneInfo{Status: 503}
	status200 = balancer.DoneInfo{Status: 200}
	connFail  = balancer.DoneInfo{Err: errors.New("connect: connection refused")}
)

func baseConfig() Config {
	return Config{Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second,
		MaxEjectionPercent: 100, Consecutive5xx: 5}
}

func TestConsecutive5xxEjectsAndUnejects(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 3, baseConfig())
		defer f.d.Stop()

		f.calls(0, 4, status500)
		f.call(0, status200) // a success ends the run
		f.calls(0, 4, status500)
		synctest.Wait()
		if got := f.ejected(); len(got) != 0 {
			t.Fatalf("ejected = %v after runs of 4, want none", got)
		}
		start := time.Now()
		f.call(0, connFail) // the fifth failure in a row; connect failures count as 5xx
		synctest.Wait()
		if got := f.ejected(); len(got) != 1 || got[0] != 0 {
			t.Fatalf("ejected = %v, want [0]", got)
		}
		st := f.eps[0].State.OutlierStatus()
		if st.Reason != "consecutive_5xx: 5 in a row" || !st.Until.Equal(start.Add(30*time.Second)) || st.Ejections != 1 {
			t.Errorf("OutlierStatus = %+v, want reason %q until +30s, 1 ejection", st, "consecutive_5xx: 5 in a row")
		}
		f.mu.Lock()
		changes := f.changes
		f.mu.Unlock()
		if changes != 1 {
			t.Errorf("OnChange calls = %d, want 1", changes)
		}
		time.Sleep(30*time.Second - time.Millisecond)
		synctest.Wait()
		if !f.eps[0].State.Ejected() {
			t.Fatalf("un-ejected before its ejection time")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if f.eps[0].State.Ejected() {
			t.Fatalf("still ejected after its ejection time")
		}
		if got, want := strings.Join(f.eventKinds(), ", "), "ejected 10.0.0.1:80, unejected 10.0.0.1:80"; got != want {
			t.Errorf("events = %s, want %s", got, want)
		}
	})
}

func TestConsecutiveGatewayFailure(t *testing.T) {
	tests := []struct {
		name    string
		outcome balancer.DoneInfo
		want    bool
	}{
		{"503 counts", status503, true},
		{"502 counts", balancer.DoneInfo{Status: 502}, true},
		{"504 counts", balancer.DoneInfo{Status: 504}, true},
		{"connect failure counts", connFail, true},
		{"500 does not", status500, false},
		{"dropped does not", balancer.DoneInfo{Err: errors.New("client went away"), Dropped: true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := baseConfig()
				c.Consecutive5xx = 0
				c.ConsecutiveGatewayFailure = 3
				f := newFixture(t, 2, c)
				defer f.d.Stop()
				f.calls(1, 3, tc.outcome)
				synctest.Wait()
				if got := f.eps[1].State.Ejected(); got != tc.want {
					t.Errorf("Ejected() = %v, want %v", got, tc.want)
				}
				if tc.want {
					if r := f.eps[1].State.OutlierStatus().Reason; r != "consecutive_gateway_failure: 3 in a row" {
						t.Errorf("Reason = %q", r)
					}
				}
			})
		})
	}
}

func TestEjectionTimeGrowsAndDecays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := baseConfig()
		c.BaseEjectionTime = 10 * time.Second
		c.MaxEjectionTime = 25 * time.Second
		c.Interval = 60 * time.Second // decay is slow: only after a whole interval back in service
		f := newFixture(t, 2, c)
		defer f.d.Stop()
		durations := []time.Duration{10 * time.Second, 20 * time.Second, 25 * time.Second, 25 * time.Second}
		for i, want := range durations {
			f.calls(0, 5, status500)
			synctest.Wait()
			st := f.eps[0].State.OutlierStatus()
			if !st.Ejected {
				t.Fatalf("ejection %d: not ejected", i+1)
			}
			if got := st.Until.Sub(st.EjectedAt); got != want {
				t.Errorf("ejection %d lasts %v, want %v (base × times ejected, capped by max_ejection_time)", i+1, got, want)
			}
			time.Sleep(want)
			synctest.Wait()
			if f.eps[0].State.Ejected() {
				t.Fatalf("ejection %d: still ejected after %v", i+1, want)
			}
		}
		mult := f.eps[0].State.OutlierStatus().Multiplier
		if mult != 3 {
			t.Fatalf("Multiplier = %d, want 3 (it stops growing at the cap)", mult)
		}
		// Back in service and healthy: one step back per interval once a whole interval
		// has passed.
		time.Sleep(3*c.Interval + time.Second)
		synctest.Wait()
		if got := f.eps[0].State.OutlierStatus().Multiplier; got != 1 && got != 0 {
			t.Fatalf("Multiplier after 3 intervals = %d, want it decayed", got)
		}
		time.Sleep(2 * c.Interval)
		synctest.Wait()
		if got := f.eps[0].State.OutlierStatus().Multiplier; got != 0 {
			t.Fatalf("Multiplier = %d, want 0", got)
		}
		f.calls(0, 5, status500)
		synctest.Wait()
		if st := f.eps[0].State.OutlierStatus(); st.Until.Sub(st.EjectedAt) != 10*time.Second || st.Ejections != 5 {
			t.Errorf("after decay: ejection lasts %v (ejections %d), want 10s (5)", st.Until.Sub(st.EjectedAt), st.Ejections)
		}
	})
}

func TestMaxEjectionPercent(t *testing.T) {
	tests := []struct {
		percent, hosts, failing, want int
	}{
		{50, 3, 2, 1},
		{10, 3, 1, 0}, // Envoy's default: with 3 endpoints nothing may be ejected
		{34, 3, 3, 1},
		{67, 3, 3, 2},
		{100, 3, 3, 3},
		{50, 4, 4, 2},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d%%/%d of %d", tc.percent, tc.failing, tc.hosts), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := baseConfig()
				c.MaxEjectionPercent = tc.percent
				f := newFixture(t, tc.hosts, c)
				defer f.d.Stop()
				for range 3 { // runs that keep failing are reported once
					for i := range tc.failing {
						f.calls(i, 5, status500)
						synctest.Wait()
					}
				}
				if got := len(f.ejected()); got != tc.want {
					t.Errorf("ejected %d, want %d", got, tc.want)
				}
				overflows := 0
				for _, k := range f.eventKinds() {
					if strings.HasPrefix(k, "overflow") {
						overflows++
					}
				}
				if overflows != tc.failing-tc.want {
					t.Errorf("overflow events = %d, want %d (once per endpoint): %v", overflows, tc.failing-tc.want, f.eventKinds())
				}
			})
		})
	}
}

func TestSuccessRate(t *testing.T) {
	tests := []struct {
		name string
		cfg  SuccessRateConfig
		// calls and failures per endpoint over one interval
		calls, failures []int
		want            []int
	}{
		{"30% errors among 4 healthy peers, Envoy defaults", SuccessRateConfig{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1.9, Enforcing: 100},
			[]int{200, 200, 200, 200, 200}, []int{0, 0, 0, 0, 60}, []int{4}},
		{"below minimum_hosts", SuccessRateConfig{MinimumHosts: 6, RequestVolume: 100, StdevFactor: 1.9, Enforcing: 100},
			[]int{200, 200, 200, 200, 200}, []int{0, 0, 0, 0, 60}, nil},
		{"below request_volume", SuccessRateConfig{MinimumHosts: 5, RequestVolume: 300, StdevFactor: 1.9, Enforcing: 100},
			[]int{200, 200, 200, 200, 200}, []int{0, 0, 0, 0, 60}, nil},
		{"an endpoint below request_volume does not count toward minimum_hosts", SuccessRateConfig{MinimumHosts: 5, RequestVolume: 100, StdevFactor: 1.9, Enforcing: 100},
			[]int{200, 200, 200, 50, 200}, []int{0, 0, 0, 0, 60}, nil},
		{"three hosts can never be 1.9 stdevs apart", SuccessRateConfig{MinimumHosts: 3, RequestVolume: 10, StdevFactor: 1.9, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, nil},
		{"three hosts with factor 1", SuccessRateConfig{MinimumHosts: 3, RequestVolume: 10, StdevFactor: 1, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, []int{2}},
		{"all equally bad: no outlier", SuccessRateConfig{MinimumHosts: 3, RequestVolume: 10, StdevFactor: 1, Enforcing: 100},
			[]int{100, 100, 100}, []int{30, 30, 30}, nil},
		{"not enforced", SuccessRateConfig{MinimumHosts: 3, RequestVolume: 10, StdevFactor: 1, Enforcing: 0},
			[]int{100, 100, 100}, []int{0, 0, 30}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := baseConfig()
				c.Consecutive5xx = 0
				cfg := tc.cfg
				c.SuccessRate = &cfg
				f := newFixture(t, len(tc.calls), c)
				defer f.d.Stop()
				for i := range tc.calls {
					f.calls(i, tc.calls[i]-tc.failures[i], status200)
					f.calls(i, tc.failures[i], status500)
				}
				time.Sleep(c.Interval)
				synctest.Wait()
				if got := f.ejected(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("ejected = %v, want %v; events %v", got, tc.want, f.eventKinds())
				}
				for _, i := range tc.want {
					if r := f.eps[i].State.OutlierStatus().Reason; !strings.HasPrefix(r, "success_rate: 70.0% of") {
						t.Errorf("Reason = %q, want success_rate: 70.0%% of ...", r)
					}
				}
				if got := f.eps[0].State.OutlierStatus().Calls; got != uint64(tc.calls[0]) {
					t.Errorf("Calls = %d, want %d", got, tc.calls[0])
				}
			})
		})
	}
}

func TestFailurePercentage(t *testing.T) {
	tests := []struct {
		name            string
		cfg             FailurePercentageConfig
		calls, failures []int
		want            []int
	}{
		{"30% errors over a threshold of 20", FailurePercentageConfig{Threshold: 20, MinimumHosts: 3, RequestVolume: 50, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, []int{2}},
		{"at the threshold is not above it", FailurePercentageConfig{Threshold: 30, MinimumHosts: 3, RequestVolume: 50, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, nil},
		{"below minimum_hosts", FailurePercentageConfig{Threshold: 20, MinimumHosts: 4, RequestVolume: 50, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, nil},
		{"below request_volume", FailurePercentageConfig{Threshold: 20, MinimumHosts: 3, RequestVolume: 101, Enforcing: 100},
			[]int{100, 100, 100}, []int{0, 0, 30}, nil},
		{"every endpoint failing, as far as max_ejection_percent allows", FailurePercentageConfig{Threshold: 20, MinimumHosts: 1, RequestVolume: 10, Enforcing: 100},
			[]int{100, 100, 100}, []int{90, 90, 90}, []int{0}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				c := baseConfig()
				c.Consecutive5xx = 0
				c.MaxEjectionPercent = 50
				cfg := tc.cfg
				c.FailurePercentage = &cfg
				f := newFixture(t, len(tc.calls), c)
				defer f.d.Stop()
				for i := range tc.calls {
					f.calls(i, tc.calls[i]-tc.failures[i], status200)
					f.calls(i, tc.failures[i], status500)
				}
				time.Sleep(c.Interval)
				synctest.Wait()
				if got := f.ejected(); fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Errorf("ejected = %v, want %v; events %v", got, tc.want, f.eventKinds())
				}
			})
		})
	}
}

func TestCountsAreSwappedPerInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := baseConfig()
		c.Consecutive5xx = 0
		c.FailurePercentage = &FailurePercentageConfig{Threshold: 20, MinimumHosts: 1, RequestVolume: 10, Enforcing: 100}
		f := newFixture(t, 2, c)
		defer f.d.Stop()
		// Failures spread over two intervals, each below the request volume: no ejection.
		f.calls(0, 9, status500)
		time.Sleep(c.Interval)
		synctest.Wait()
		f.calls(0, 9, status500)
		time.Sleep(c.Interval)
		synctest.Wait()
		if got := f.ejected(); len(got) != 0 {
			t.Fatalf("ejected = %v, want none: counts must not carry over intervals", got)
		}
		if got := f.eps[0].State.OutlierStatus(); got.Calls != 9 || got.SuccessRate != 0 {
			t.Errorf("Calls, SuccessRate = %d, %v, want 9, 0", got.Calls, got.SuccessRate)
		}
		if got := f.eps[1].State.OutlierStatus().SuccessRate; got >= 0 {
			t.Errorf("SuccessRate without calls = %v, want negative", got)
		}
	})
}

func TestSetConfigAndStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 2, baseConfig())
		stopped := false
		defer func() {
			if !stopped {
				f.d.Stop()
			}
		}()
		f.calls(1, 3, status500) // a run of 3 under consecutive_5xx 5
		c := baseConfig()
		c.Consecutive5xx = 2
		c.Interval = time.Second
		f.d.SetConfig(c)
		// Endpoint 1's run goes from 3 to 4 and never hits 2 exactly: no signal, but the
		// next interval (now 1s) catches it.
		f.call(1, status500)
		synctest.Wait()
		if f.eps[1].State.Ejected() {
			t.Fatal("ejected without a signal")
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if !f.eps[1].State.Ejected() {
			t.Fatal("a run past the lowered threshold was not caught by the interval")
		}
		if r := f.eps[1].State.OutlierStatus().Reason; r != "consecutive_5xx: 4 in a row" {
			t.Errorf("Reason = %q, want consecutive_5xx: 4 in a row", r)
		}
		f.calls(0, 2, status500)
		synctest.Wait()
		if !f.eps[0].State.Ejected() {
			t.Fatal("not ejected after 2 failures with consecutive_5xx 2")
		}
		f.d.Stop()
		stopped = true
		for i, e := range f.eps {
			if e.State.Ejected() || e.State.OutlierStatus() != nil {
				t.Errorf("endpoint %d after Stop: OutlierStatus = %+v, want nil", i, e.State.OutlierStatus())
			}
		}
		// With no tripwire, failures are still counted and nothing blocks.
		f.calls(0, 10, status500)
		if got := f.eps[0].State.Failures.Load(); got != 12 {
			t.Errorf("Failures = %d, want 12", got)
		}
	})
}

func TestSetEndpointsForgetsRemoved(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFixture(t, 3, baseConfig())
		defer f.d.Stop()
		f.calls(2, 5, status500)
		synctest.Wait()
		f.d.SetEndpoints(map[string]*balancer.EndpointState{f.eps[0].Address: f.eps[0].State, f.eps[1].Address: f.eps[1].State})
		f.calls(2, 5, status500) // no tripwire any more: no signal
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := len(f.eventKinds()); got != 1 {
			t.Errorf("events = %v, want only the first ejection", f.eventKinds())
		}
	})
}

func TestBuild(t *testing.T) {
	type epState struct {
		ejected bool
		health  balancer.Health
	}
	ok := epState{}
	ej := epState{ejected: true}
	bad := epState{health: balancer.HealthUnhealthy}
	good := epState{health: balancer.HealthHealthy}
	tests := []struct {
		name      string
		eps       []epState
		threshold int
		wantN     int
		wantPanic bool
	}{
		{"all available", []epState{ok, good, ok}, 50, 3, false},
		{"one ejected", []epState{ok, ej, ok}, 50, 2, false},
		{"one unhealthy", []epState{ok, bad, ok}, 50, 2, false},
		{"half available is not panic", []epState{ok, bad, ok, ej}, 50, 2, false},
		{"below the threshold: panic over all", []epState{ok, bad, ej}, 50, 3, true},
		{"none available: panic over all", []epState{ej, bad}, 50, 2, true},
		{"threshold 0 disables panic", []epState{ok, bad, ej}, 0, 1, false},
		{"threshold 0 and none available", []epState{ej, ej}, 0, 0, false},
		{"threshold 100 panics on any loss", []epState{ok, ok, ej}, 100, 3, true},
		{"no endpoints", nil, 50, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var eps []*balancer.Endpoint
			for i, s := range tc.eps {
				e := balancer.NewEndpoint(discovery.Endpoint{Address: fmt.Sprintf("10.0.0.%d:80", i+1)}, nil)
				if s.ejected {
					e.State.SetOutlierStatus(&balancer.OutlierStatus{Ejected: true})
				}
				if s.health != balancer.HealthUnknown {
					e.State.SetHealthStatus(&balancer.HealthStatus{Health: s.health})
				}
				eps = append(eps, e)
			}
			var built []*balancer.Endpoint
			p, sel := Build(func(e []*balancer.Endpoint) balancer.Picker { built = e; return balancer.NewRoundRobin(e) }, eps, tc.threshold)
			if len(built) != tc.wantN || sel.Panic != tc.wantPanic || sel.Total != len(eps) {
				t.Errorf("Build() built over %d, Selection %+v; want %d, panic %v", len(built), sel, tc.wantN, tc.wantPanic)
			}
			for _, e := range built {
				if !tc.wantPanic && !e.State.Available() {
					t.Errorf("Build() included %s, which is not available", e.Address)
				}
			}
			if _, err := p.Pick(balancer.PickInfo{}); (err != nil) != (tc.wantN == 0) {
				t.Errorf("Pick() error = %v", err)
			}
		})
	}
}
