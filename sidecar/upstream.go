package sidecar

import (
	"context"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferrymesh/ferry/discovery"
	"github.com/ferrymesh/ferry/sidecar/balancer"
	"github.com/ferrymesh/ferry/sidecar/circuit"
	"github.com/ferrymesh/ferry/sidecar/health"
	"github.com/ferrymesh/ferry/sidecar/outlier"
	"github.com/ferrymesh/ferry/sidecar/telemetry"
)

// upstream is the long-lived state of one upstream: its current picker (read on the
// request path with one atomic load), its circuit breaker, and, off the request path, the
// endpoint set, the per-address endpoint state that survives picker rebuilds and config
// reloads, and the outlier detector and health checker that publish into that state.
//
// The picker is rebuilt when discovery publishes a new set, when the config changes, and
// when the detector or the checker report a change: they signal the rebuild goroutine
// without blocking, so that none of them ever waits for the upstream's lock.
type upstream struct {
	name    string
	log     *slog.Logger
	metrics *telemetry.Metrics
	picker  atomic.Pointer[pickerBox]
	breaker *circuit.Breaker
	// identities maps endpoint addresses to the SPIFFE IDs discovery expects (see tls.go).
	identities atomic.Pointer[identities]

	mu             sync.Mutex // serializes discovery updates, Apply and rebuilds; never taken per request
	policy         string
	builder        balancer.Builder
	panicThreshold int
	set            *discovery.EndpointSet
	states         map[string]*balancer.EndpointState
	detector       *outlier.Detector
	outlierCfg     *outlier.Config
	checker        *health.Checker
	panicking      bool
	cancel         context.CancelFunc
	watchKey       string
	done           chan struct{} // closed when the current watch goroutine returns

	kick    chan struct{} // rebuild requests from the detector and the checker
	quit    chan struct{} // stops the rebuild goroutine
	rebuilt chan struct{} // closed when the rebuild goroutine returns
	stopped sync.Once

	firstSet  chan struct{} // closed once the first endpoint set has arrived
	firstOnce sync.Once

	lastReject atomic.Int64 // unix nanoseconds of the last logged circuit-breaker rejection
}

// pickerBox pairs a picker with the endpoints it was built from, for retries and the admin
// page.
type pickerBox struct {
	balancer.Picker
	endpoints []*balancer.Endpoint // every endpoint of the set
	picked    []*balancer.Endpoint // those the picker balances over
	version   string
	sel       outlier.Selection
}

// upstreamConfig is what the config says about one upstream, in the terms of the packages
// that act on it.
type upstreamConfig struct {
	policy         string
	endpoints      []discovery.Endpoint
	panicThreshold int
	limits         circuit.Limits
	outlier        *outlier.Config // nil: no outlier detection
	health         *health.Config  // nil: no active checks
}

func newUpstream(name string, log *slog.Logger, m *telemetry.Metrics) *upstream {
	u := &upstream{name: name, log: log, metrics: m, states: map[string]*balancer.EndpointState{},
		firstSet: make(chan struct{}), kick: make(chan struct{}, 1), quit: make(chan struct{}), rebuilt: make(chan struct{}),
		panicThreshold: outlier.DefaultHealthyPanicThreshold}
	u.breaker = circuit.New(u.rejected)
	b, _ := balancer.New(balancer.RoundRobin)
	u.builder = b
	u.picker.Store(&pickerBox{Picker: b(nil)})
	go u.rebuildLoop()
	return u
}

// Picker returns the current picker. Safe for concurrent use; one atomic load.
func (u *upstream) Picker() balancer.Picker { return u.picker.Load().Picker }

// Endpoints returns the endpoints the current picker balances over (for retries that look
// for an endpoint not tried yet). Safe for concurrent use; one atomic load.
func (u *upstream) Endpoints() []*balancer.Endpoint { return u.picker.Load().picked }

// configure applies the config's settings for the upstream, rebuilding the picker if they
// change what it picks from.
func (u *upstream) configure(c upstreamConfig, b balancer.Builder) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.breaker.SetLimits(c.limits)
	changed := false
	if c.policy != u.policy {
		u.policy, u.builder = c.policy, b
		changed = true
	}
	if c.panicThreshold != u.panicThreshold {
		u.panicThreshold = c.panicThreshold
		changed = true
	}

	switch {
	case c.outlier == nil && u.detector != nil:
		u.detector.Stop() // un-ejects everything
		u.detector, u.outlierCfg = nil, nil
		changed = true
	case c.outlier != nil && u.detector == nil:
		u.detector = outlier.New(outlier.Options{Upstream: u.name, Config: *c.outlier, OnChange: u.requestRebuild,
			OnEvent: u.outlierEvent, Logger: u.log})
		u.detector.SetEndpoints(u.states)
		u.outlierCfg = c.outlier
	case c.outlier != nil && !reflect.DeepEqual(c.outlier, u.outlierCfg):
		u.detector.SetConfig(*c.outlier)
		u.outlierCfg = c.outlier
	}

	if c.health == nil && u.checker != nil || c.health != nil && u.checker != nil && !u.checker.Config().Equal(*c.health) {
		u.checker.Stop() // forgets every endpoint's health
		u.checker = nil
		changed = true
	}
	if c.health != nil && u.checker == nil {
		u.checker = health.New(health.Options{Upstream: u.name, Config: *c.health, OnChange: u.requestRebuild,
			OnEvent: u.healthEvent, Logger: u.log})
		u.checker.SetEndpoints(u.states)
	}
	if changed {
		u.rebuildLocked()
	}
}

// update publishes a new endpoint set from discovery. An unchanged set rebuilds nothing.
func (u *upstream) update(set *discovery.EndpointSet) {
	u.mu.Lock()
	defer u.mu.Unlock()
	defer u.firstOnce.Do(func() { close(u.firstSet) })
	u.setIdentities(set)
	if u.set != nil && u.set.SameEndpoints(set) {
		u.set = set
		return
	}
	u.set = set
	live := make(map[string]*balancer.EndpointState, set.Len())
	for _, e := range set.Endpoints() {
		st := u.states[e.Address]
		if st == nil {
			st = new(balancer.EndpointState)
		}
		live[e.Address] = st
	}
	u.states = live
	if u.detector != nil {
		u.detector.SetEndpoints(live)
	}
	if u.checker != nil {
		u.checker.SetEndpoints(live)
	}
	u.rebuildLocked()
}

// requestRebuild asks the rebuild goroutine for a new picker. It never blocks: one pending
// request covers every change made before it is served.
func (u *upstream) requestRebuild() {
	select {
	case u.kick <- struct{}{}:
	default:
	}
}

func (u *upstream) rebuildLoop() {
	defer close(u.rebuilt)
	for {
		select {
		case <-u.quit:
			return
		case <-u.kick:
			u.mu.Lock()
			u.rebuildLocked()
			u.mu.Unlock()
		}
	}
}

// rebuildLocked builds and publishes a picker over the endpoints that may take traffic
// (the outlier decorator leaves out ejected and unhealthy ones, except in panic mode).
func (u *upstream) rebuildLocked() {
	var all []*balancer.Endpoint
	version := ""
	if u.set != nil {
		version = u.set.Version()
		for _, e := range u.set.Endpoints() {
			all = append(all, balancer.NewEndpoint(e, u.states[e.Address]))
		}
	}
	var picked []*balancer.Endpoint
	p, sel := outlier.Build(func(eps []*balancer.Endpoint) balancer.Picker {
		picked = eps
		return u.builder(eps)
	}, all, u.panicThreshold)
	u.picker.Store(&pickerBox{Picker: p, endpoints: all, picked: picked, version: version, sel: sel})

	ejected := 0
	for _, e := range all {
		if e.State.Ejected() {
			ejected++
		}
	}
	u.metrics.SetEndpoints(u.name, len(all))
	u.metrics.SetUpstreamHealth(u.name, sel.Available, ejected, sel.Panic)
	if sel.Panic != u.panicking {
		u.panicking = sel.Panic
		if sel.Panic {
			u.log.Warn("upstream in panic mode: too few endpoints available; balancing over all of them",
				"upstream", u.name, "available", sel.Available, "endpoints", sel.Total, "healthy_panic_threshold", u.panicThreshold)
		} else {
			u.log.Info("upstream out of panic mode", "upstream", u.name, "available", sel.Available, "endpoints", sel.Total)
		}
	}
}

// outlierEvent counts an outlier detection event (the detector logs it).
func (u *upstream) outlierEvent(e outlier.Event) {
	switch e.Kind {
	case outlier.Ejected:
		u.metrics.OutlierEjection(u.name, e.Detector)
	case outlier.Overflow, outlier.Unenforced:
		u.metrics.OutlierNotEjected(u.name, e.Detector, e.Kind.String())
	}
}

// healthEvent counts a health transition (the checker logs it).
func (u *upstream) healthEvent(e health.Event) {
	u.metrics.HealthTransition(u.name, e.To.String())
}

// rejected counts a circuit-breaker rejection and logs it, at most once a second per
// upstream: under overload every request is rejected, and one line says it.
func (u *upstream) rejected(limit string) {
	u.metrics.CircuitRejection(u.name, limit)
	now := time.Now().UnixNano()
	last := u.lastReject.Load()
	if now-last >= int64(time.Second) && u.lastReject.CompareAndSwap(last, now) {
		l := u.breaker.Limits()
		u.log.Warn("circuit breaker open: refusing at once", "upstream", u.name, "limit", limit,
			"in_flight", u.breaker.Stats(), "max_connections", l.MaxConnections, "max_pending", l.MaxPending,
			"max_requests", l.MaxRequests, "max_retries", l.MaxRetries)
	}
}

// watch makes src the upstream's source of endpoints unless key says it already is;
// the previous watch is stopped. It reports whether src's watch was started.
func (u *upstream) watch(src discovery.Source, key string, report func(error)) (first <-chan struct{}, restarted bool) {
	u.mu.Lock()
	if u.cancel != nil && key == u.watchKey {
		u.mu.Unlock()
		return nil, false
	}
	if u.cancel != nil {
		u.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	u.cancel, u.watchKey, u.done = cancel, key, done
	u.mu.Unlock()
	published := make(chan struct{})
	var once sync.Once
	go func() {
		defer close(done)
		publish := func(set *discovery.EndpointSet) {
			u.update(set)
			once.Do(func() { close(published) })
		}
		if err := src.Watch(ctx, u.name, publish); err != nil && ctx.Err() == nil {
			report(err)
		}
	}()
	return published, true
}

// stop ends the upstream's discovery watch, its outlier detection, its health checks and
// its rebuild goroutine, and waits for them.
func (u *upstream) stop() {
	u.mu.Lock()
	cancel, done := u.cancel, u.done
	u.cancel = nil
	det, chk := u.detector, u.checker
	u.detector, u.checker, u.outlierCfg = nil, nil, nil
	u.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
	if det != nil {
		det.Stop()
	}
	if chk != nil {
		chk.Stop()
	}
	u.stopped.Do(func() { close(u.quit) })
	<-u.rebuilt
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
