package sidecar

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// upstream is the long-lived state of one upstream: its current picker (read on the
// request path with one atomic load) and, off the request path, the endpoint set and the
// per-address endpoint state that survives picker rebuilds and config reloads.
type upstream struct {
	name   string
	onSet  func(name string, n int) // reports the endpoint count (metrics)
	picker atomic.Pointer[pickerBox]

	mu       sync.Mutex // serializes discovery updates and Apply; never taken per request
	policy   string
	builder  balancer.Builder
	set      *discovery.EndpointSet
	states   map[string]*balancer.EndpointState
	cancel   context.CancelFunc
	watchKey string
	done     chan struct{} // closed when the current watch goroutine returns

	firstSet  chan struct{} // closed once the first endpoint set has arrived
	firstOnce sync.Once
}

// pickerBox pairs a picker with the endpoints it was built from, for the admin page.
type pickerBox struct {
	balancer.Picker
	endpoints []*balancer.Endpoint
	version   string
}

func newUpstream(name string, onSet func(string, int)) *upstream {
	u := &upstream{name: name, onSet: onSet, states: map[string]*balancer.EndpointState{}, firstSet: make(chan struct{})}
	b, _ := balancer.New(balancer.RoundRobin)
	u.builder = b
	u.picker.Store(&pickerBox{Picker: b(nil)})
	return u
}

// Picker returns the current picker. Safe for concurrent use; one atomic load.
func (u *upstream) Picker() balancer.Picker { return u.picker.Load().Picker }

// setPolicy switches the load-balancing policy, rebuilding the picker if it changed.
func (u *upstream) setPolicy(policy string, b balancer.Builder) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if policy == u.policy {
		return
	}
	u.policy, u.builder = policy, b
	u.rebuildLocked()
}

// update publishes a new endpoint set from discovery. An unchanged set rebuilds nothing.
func (u *upstream) update(set *discovery.EndpointSet) {
	u.mu.Lock()
	defer u.mu.Unlock()
	defer u.firstOnce.Do(func() { close(u.firstSet) })
	if u.set != nil && u.set.SameEndpoints(set) {
		u.set = set
		return
	}
	u.set = set
	u.rebuildLocked()
}

func (u *upstream) rebuildLocked() {
	var eps []*balancer.Endpoint
	live := make(map[string]*balancer.EndpointState)
	version := ""
	if u.set != nil {
		version = u.set.Version()
		for _, e := range u.set.Endpoints() {
			st := u.states[e.Address]
			if st == nil {
				st = new(balancer.EndpointState)
			}
			live[e.Address] = st
			eps = append(eps, balancer.NewEndpoint(e, st))
		}
	}
	u.states = live
	all := append([]*balancer.Endpoint(nil), eps...)
	u.picker.Store(&pickerBox{Picker: u.builder(eps), endpoints: all, version: version})
	if u.onSet != nil {
		u.onSet(u.name, len(eps))
	}
}

// watch makes src the upstream's source of endpoints unless key says it already is;
// the previous watch is stopped.
func (u *upstream) watch(src discovery.Source, key string, report func(error)) {
	u.mu.Lock()
	if u.cancel != nil && key == u.watchKey {
		u.mu.Unlock()
		return
	}
	if u.cancel != nil {
		u.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	u.cancel, u.watchKey, u.done = cancel, key, done
	u.mu.Unlock()
	go func() {
		defer close(done)
		if err := src.Watch(ctx, u.name, u.update); err != nil && ctx.Err() == nil {
			report(err)
		}
	}()
}

// stop ends the upstream's discovery watch and waits for it.
func (u *upstream) stop() {
	u.mu.Lock()
	cancel, done := u.cancel, u.done
	u.cancel = nil
	u.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// ready reports whether the upstream has received its first endpoint set.
func (u *upstream) ready() bool {
	select {
	case <-u.firstSet:
		return true
	default:
		return false
	}
}
