package consul

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/ferrymesh/ferry/discovery"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// answer is one scripted reply of fakeAPI.
type answer struct {
	entries []*api.ServiceEntry
	index   uint64
	err     error
}

// fakeAPI replays answers in order and records the WaitIndex of every query; once the
// script is exhausted, queries block until done is closed.
type fakeAPI struct {
	mu      sync.Mutex
	script  []answer
	indexes []uint64
	roots   *api.CARootList
	done    chan struct{}
}

func (f *fakeAPI) next(q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	f.mu.Lock()
	f.indexes = append(f.indexes, q.WaitIndex)
	if len(f.script) == 0 {
		f.mu.Unlock()
		<-f.done
		return nil, nil, errors.New("fake closed")
	}
	a := f.script[0]
	f.script = f.script[1:]
	f.mu.Unlock()
	if a.err != nil {
		return nil, nil, a.err
	}
	return a.entries, &api.QueryMeta{LastIndex: a.index}, nil
}

func (f *fakeAPI) ServiceMultipleTags(_ string, _ []string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return f.next(q)
}

func (f *fakeAPI) ConnectMultipleTags(_ string, _ []string, _ bool, q *api.QueryOptions) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	return f.next(q)
}

func (f *fakeAPI) ConnectCARoots(*api.QueryOptions) (*api.CARootList, *api.QueryMeta, error) {
	if f.roots == nil {
		return nil, nil, errors.New("connect disabled")
	}
	return f.roots, &api.QueryMeta{}, nil
}

func (f *fakeAPI) waitIndexes() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.indexes...)
}

// entry is a passing instance of web at 10.0.0.<host>:8080.
func entry(host string) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: "n-" + host, Address: host, Datacenter: "dc1"},
		Service: &api.AgentService{ID: "web-" + host, Service: "web", Port: 8080, Weights: api.AgentWeights{Passing: 1, Warning: 1}},
		Checks:  api.HealthChecks{{CheckID: "serfHealth", Status: api.HealthPassing}},
	}
}

// recorder collects the sets a Watch publishes.
type recorder struct {
	mu   sync.Mutex
	sets []*discovery.EndpointSet
}

func (r *recorder) update(s *discovery.EndpointSet) {
	r.mu.Lock()
	r.sets = append(r.sets, s)
	r.mu.Unlock()
}

func (r *recorder) all() []*discovery.EndpointSet {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*discovery.EndpointSet(nil), r.sets...)
}

func addrs(s *discovery.EndpointSet) string {
	var out []string
	for _, e := range s.Endpoints() {
		out = append(out, e.Address)
	}
	return strings.Join(out, ",")
}

// runFake watches upstream "web" of a source over f inside the current synctest bubble
// until the script is used up, then stops the watch and returns what it published.
func runFake(t *testing.T, f *fakeAPI, opts Options) (*recorder, *Source) {
	t.Helper()
	if opts.Upstreams == nil {
		opts.Upstreams = map[string]Upstream{"web": {Service: "web"}}
	}
	src, err := newSource(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	f.done = make(chan struct{})
	rec := &recorder{}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- src.Watch(ctx, "web", rec.update) }()
	// Let the loop run through the script (backoff and rate limits use the fake clock).
	time.Sleep(time.Hour)
	synctest.Wait()
	cancel()
	close(f.done)
	if err := <-done; err != nil {
		t.Fatalf("Watch() = %v, want nil after cancel", err)
	}
	return rec, src
}

func TestWatchIndexRules(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeAPI{script: []answer{
			{entries: []*api.ServiceEntry{entry("10.0.0.1")}, index: 10}, // first answer
			{entries: []*api.ServiceEntry{entry("10.0.0.1")}, index: 10}, // timeout, unchanged
			{entries: []*api.ServiceEntry{entry("10.0.0.1")}, index: 12}, // idempotent write
			{entries: []*api.ServiceEntry{entry("10.0.0.2")}, index: 5},  // went backwards
			{entries: []*api.ServiceEntry{entry("10.0.0.2")}, index: 0},  // broken index 0
			{entries: []*api.ServiceEntry{entry("10.0.0.2")}, index: 20},
			{err: errors.New("connection refused")},
			{entries: []*api.ServiceEntry{entry("10.0.0.2")}, index: 3}, // new agent, lower index
		}}
		rec, _ := runFake(t, f, Options{})
		// After 10: block on 10. After 10 again: still 10. After 12: 12. After 5 (< 12):
		// reset to 0. After 0: 1, so the query blocks. After 20: 20. After an error:
		// 0 (fresh read). After 3 (from 0): 3.
		want := []uint64{0, 10, 10, 12, 0, 1, 20, 0, 3}
		if got := f.waitIndexes(); !equalU64(got, want) {
			t.Errorf("WaitIndex sequence = %v, want %v", got, want)
		}
		sets := rec.all()
		if len(sets) != 2 {
			t.Fatalf("published %d sets, want 2 (initial and the change to 10.0.0.2)", len(sets))
		}
		if got := addrs(sets[0]); got != "10.0.0.1:8080" {
			t.Errorf("first set = %s, want 10.0.0.1:8080", got)
		}
		if got, want := sets[1].Version(), "5-2"; got != want {
			t.Errorf("second set Version() = %s, want %s", got, want)
		}
	})
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWatchFirstAnswerEmptyIsPublished(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeAPI{script: []answer{{index: 7}, {index: 8}}}
		rec, _ := runFake(t, f, Options{})
		sets := rec.all()
		if len(sets) != 1 || sets[0].Len() != 0 {
			t.Fatalf("published %d sets (first Len %v), want 1 empty set", len(sets), sets)
		}
	})
}

func TestWatchOutageKeepsLastSetAndLogsOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		script := []answer{{entries: []*api.ServiceEntry{entry("10.0.0.1"), entry("10.0.0.2")}, index: 4}}
		for range 6 {
			script = append(script, answer{err: errors.New("dial tcp 127.0.0.1:8500: connection refused")})
		}
		script = append(script, answer{entries: []*api.ServiceEntry{entry("10.0.0.1"), entry("10.0.0.2")}, index: 4})
		f := &fakeAPI{script: script}
		type seen struct {
			st Status
			at time.Time
		}
		var (
			mu       sync.Mutex
			statuses []seen
		)
		opts := Options{
			Logger:    logger,
			RetryBase: 100 * time.Millisecond,
			RetryMax:  time.Second,
			OnStatus: func(s Status) {
				mu.Lock()
				statuses = append(statuses, seen{s, time.Now()})
				mu.Unlock()
			},
		}
		rec, src := runFake(t, f, opts)
		if n := len(rec.all()); n != 1 {
			t.Errorf("published %d sets, want 1: an outage and an unchanged answer publish nothing", n)
		}
		if got := strings.Count(logs.String(), "level=WARN"); got != 1 {
			t.Errorf("%d warnings logged, want 1 per outage:\n%s", got, logs.String())
		}
		if got := strings.Count(logs.String(), "Consul answers again"); got != 1 {
			t.Errorf("%d recovery lines logged, want 1:\n%s", got, logs.String())
		}
		if _, ok := src.Status("web"); ok {
			t.Errorf("Status(web) still present after Watch returned")
		}
		mu.Lock()
		defer mu.Unlock()
		if len(statuses) != 8 {
			t.Fatalf("OnStatus called %d times, want 8 (one per query)", len(statuses))
		}
		if s := statuses[0].st; s.Stale() || !s.Ready || s.Endpoints != 2 || s.Index != 4 || s.Updates != 1 {
			t.Errorf("status after the first answer = %+v, want ready, fresh, 2 endpoints, index 4", s)
		}
		var prev time.Duration
		for i, x := range statuses[1:7] {
			st := x.st
			if !st.Stale() || st.ConsecutiveErrors != uint64(i+1) || !st.Ready || st.Endpoints != 2 || st.Updates != 1 {
				t.Errorf("status after failure %d = %+v, want stale, ready, 2 endpoints, %d consecutive errors", i+1, st, i+1)
			}
			if !st.StaleSince.Equal(statuses[1].st.StaleSince) {
				t.Errorf("failure %d: StaleSince = %v, want %v (the outage's start)", i+1, st.StaleSince, statuses[1].st.StaleSince)
			}
			if !st.LastContact.Equal(statuses[0].st.LastContact) {
				t.Errorf("failure %d: LastContact = %v, want %v", i+1, st.LastContact, statuses[0].st.LastContact)
			}
			// Backoff sleeps between failures, so the staleness grows with each one.
			if s := st.Staleness(x.at); i > 0 && s <= prev {
				t.Errorf("failure %d: Staleness() = %v, want more than %v", i+1, s, prev)
			} else {
				prev = s
			}
			if st.LastError == nil || !strings.Contains(st.LastError.Error(), "connection refused") {
				t.Errorf("LastError = %v, want connection refused", st.LastError)
			}
		}
		end := statuses[7].st
		if end.Stale() || end.ConsecutiveErrors != 0 || end.Errors != 6 || end.Staleness(time.Now()) != 0 || end.Updates != 1 {
			t.Errorf("status after recovery = %+v, want fresh, 0 consecutive errors, 6 errors, 1 update", end)
		}
	})
}

func TestWatchRateLimitsChurn(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var script []answer
		for i := range 10 {
			script = append(script, answer{entries: []*api.ServiceEntry{entry("10.0.0.1")}, index: uint64(10 + i)})
		}
		f := &fakeAPI{script: script}
		start := time.Now()
		var (
			mu    sync.Mutex
			times []time.Duration
		)
		_, _ = runFake(t, f, Options{MinQueryInterval: time.Second, OnStatus: func(Status) {
			mu.Lock()
			times = append(times, time.Since(start))
			mu.Unlock()
		}})
		mu.Lock()
		defer mu.Unlock()
		// A burst of 2, then one query per second.
		want := []time.Duration{0, 0, time.Second, 2 * time.Second, 3 * time.Second}
		for i, w := range want {
			if times[i] != w {
				t.Errorf("query %d answered at %v, want %v (all: %v)", i, times[i], w, times)
			}
		}
	})
}

func TestWatchConnectTrustDomain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		proxy := entry("10.0.0.9")
		proxy.Service.Kind = api.ServiceKindConnectProxy
		proxy.Service.Port = 21000
		f := &fakeAPI{
			roots:  &api.CARootList{TrustDomain: "11111111-2222-3333-4444-555555555555.consul"},
			script: []answer{{entries: []*api.ServiceEntry{proxy}, index: 3}},
		}
		rec, _ := runFake(t, f, Options{Upstreams: map[string]Upstream{"web": {Service: "web", Connect: true}}})
		sets := rec.all()
		if len(sets) != 1 {
			t.Fatalf("published %d sets, want 1", len(sets))
		}
		want := discovery.Endpoint{Address: "10.0.0.9:21000", Weight: 1, Identity: "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"}
		if got := sets[0].Endpoints(); len(got) != 1 || got[0] != want {
			t.Errorf("Endpoints() = %+v, want [%+v]", got, want)
		}
	})
}

func TestWatchConnectWithoutCAKeepsRetrying(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &fakeAPI{script: []answer{{entries: []*api.ServiceEntry{entry("10.0.0.1")}, index: 3}}}
		rec, _ := runFake(t, f, Options{Upstreams: map[string]Upstream{"web": {Service: "web", Connect: true}}})
		if n := len(rec.all()); n != 0 {
			t.Errorf("published %d sets without a trust domain, want 0", n)
		}
		if n := len(f.waitIndexes()); n != 0 {
			t.Errorf("%d health queries without a trust domain, want 0", n)
		}
	})
}

func TestWatchUnknownUpstream(t *testing.T) {
	src, err := newSource(&fakeAPI{}, Options{Upstreams: map[string]Upstream{"web": {Service: "web"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Watch(t.Context(), "db", func(*discovery.EndpointSet) {}); err == nil {
		t.Errorf("Watch(db) = nil, want an error for an unconfigured upstream")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := newSource(&fakeAPI{}, Options{Upstreams: map[string]Upstream{"web": {}}}); err == nil {
		t.Errorf("newSource(upstream without service) = nil error, want one")
	}
	if _, err := New(nil, Options{}); err == nil {
		t.Errorf("New(nil client) = nil error, want one")
	}
}

func TestEndpoints(t *testing.T) {
	withService := func(e *api.ServiceEntry, f func(*api.AgentService)) *api.ServiceEntry {
		f(e.Service)
		return e
	}
	withChecks := func(e *api.ServiceEntry, statuses ...string) *api.ServiceEntry {
		e.Checks = nil
		for i, s := range statuses {
			id := "check" + string(rune('a'+i))
			if s == api.HealthMaint {
				id, s = api.ServiceMaintPrefix+"web", api.HealthCritical
			}
			e.Checks = append(e.Checks, &api.HealthCheck{CheckID: id, Status: s})
		}
		return e
	}
	tru, fals := true, false
	tests := []struct {
		name    string
		up      Upstream
		entries []*api.ServiceEntry
		want    []discovery.Endpoint
	}{
		{
			name:    "node address when the service has none",
			up:      Upstream{Service: "web"},
			entries: []*api.ServiceEntry{entry("10.0.0.1")},
			want:    []discovery.Endpoint{{Address: "10.0.0.1:8080", Weight: 1}},
		},
		{
			name:    "service address wins, IPv6 bracketed",
			up:      Upstream{Service: "web"},
			entries: []*api.ServiceEntry{withService(entry("10.0.0.1"), func(s *api.AgentService) { s.Address = "fd00::5" })},
			want:    []discovery.Endpoint{{Address: "[fd00::5]:8080", Weight: 1}},
		},
		{
			name: "passing weight; warning left out with passing_only",
			up:   Upstream{Service: "web", PassingOnly: &tru},
			entries: []*api.ServiceEntry{
				withService(entry("10.0.0.1"), func(s *api.AgentService) { s.Weights = api.AgentWeights{Passing: 7, Warning: 2} }),
				withChecks(entry("10.0.0.2"), api.HealthPassing, api.HealthWarning),
			},
			want: []discovery.Endpoint{{Address: "10.0.0.1:8080", Weight: 7}},
		},
		{
			name: "warning weight without passing_only; critical and maintenance left out",
			up:   Upstream{Service: "web", PassingOnly: &fals},
			entries: []*api.ServiceEntry{
				withService(withChecks(entry("10.0.0.1"), api.HealthPassing), func(s *api.AgentService) { s.Weights = api.AgentWeights{Passing: 7, Warning: 2} }),
				withService(withChecks(entry("10.0.0.2"), api.HealthPassing, api.HealthWarning), func(s *api.AgentService) { s.Weights = api.AgentWeights{Passing: 7, Warning: 2} }),
				withChecks(entry("10.0.0.3"), api.HealthWarning, api.HealthCritical),
				withChecks(entry("10.0.0.4"), api.HealthPassing, api.HealthMaint),
				withChecks(entry("10.0.0.5"), "bogus"),
			},
			want: []discovery.Endpoint{{Address: "10.0.0.1:8080", Weight: 7}, {Address: "10.0.0.2:8080", Weight: 2}},
		},
		{
			name: "warning weight 0 means no traffic; unset weights mean 1",
			up:   Upstream{Service: "web", PassingOnly: &fals},
			entries: []*api.ServiceEntry{
				withService(withChecks(entry("10.0.0.1"), api.HealthWarning), func(s *api.AgentService) { s.Weights = api.AgentWeights{Passing: 3, Warning: 0} }),
				withService(entry("10.0.0.2"), func(s *api.AgentService) { s.Weights = api.AgentWeights{} }),
			},
			want: []discovery.Endpoint{{Address: "10.0.0.2:8080", Weight: 1}},
		},
		{
			name: "no port or no address: left out",
			up:   Upstream{Service: "web"},
			entries: []*api.ServiceEntry{
				withService(entry("10.0.0.1"), func(s *api.AgentService) { s.Port = 0 }),
				{Node: &api.Node{}, Service: &api.AgentService{Port: 80}},
				{Node: &api.Node{Address: "10.0.0.3"}},
				nil,
			},
			want: []discovery.Endpoint{},
		},
		{
			name: "connect identity with namespace, partition and node datacenter",
			up:   Upstream{Service: "web", Connect: true, Datacenter: "east"},
			entries: []*api.ServiceEntry{
				withService(entry("10.0.0.1"), func(s *api.AgentService) { s.Namespace = "team"; s.Partition = "p1" }),
				withService(entry("10.0.0.2"), func(s *api.AgentService) { s.Partition = "default" }),
			},
			want: []discovery.Endpoint{
				{Address: "10.0.0.1:8080", Weight: 1, Identity: "spiffe://td.consul/ap/p1/ns/team/dc/dc1/svc/web"},
				{Address: "10.0.0.2:8080", Weight: 1, Identity: "spiffe://td.consul/ns/default/dc/dc1/svc/web"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := discovery.NewEndpointSet("web", "1", endpoints(tt.up, tt.entries, "td.consul")).Endpoints()
			want := discovery.NewEndpointSet("web", "1", tt.want).Endpoints()
			if len(got) != len(want) {
				t.Fatalf("endpoints() = %+v, want %+v", got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("endpoints()[%d] = %+v, want %+v", i, got[i], want[i])
				}
			}
		})
	}
}

func TestSpiffeID(t *testing.T) {
	tests := []struct {
		td, ap, ns, dc, svc, want string
	}{
		{"abc.consul", "", "", "dc1", "web", "spiffe://abc.consul/ns/default/dc/dc1/svc/web"},
		{"abc.consul", "default", "team", "dc2", "api", "spiffe://abc.consul/ns/team/dc/dc2/svc/api"},
		{"abc.consul", "eu", "default", "dc1", "db", "spiffe://abc.consul/ap/eu/ns/default/dc/dc1/svc/db"},
	}
	for _, tt := range tests {
		if got := SpiffeID(tt.td, tt.ap, tt.ns, tt.dc, tt.svc); got != tt.want {
			t.Errorf("SpiffeID(%q, %q, %q, %q, %q) = %s, want %s", tt.td, tt.ap, tt.ns, tt.dc, tt.svc, got, tt.want)
		}
	}
}
