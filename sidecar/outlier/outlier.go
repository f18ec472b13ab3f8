// Package outlier is passive health checking with Envoy's outlier detection semantics: a
// decorator over an upstream's picker builder (Build) that leaves ejected and unhealthy
// endpoints out of the picker, and a Detector that decides ejections on its own goroutine.
//
// The request path never takes a lock here. Endpoint.Done counts each call's outcome in the
// endpoint's balancer.EndpointState with atomics; when a run of failures reaches a
// consecutive_5xx or consecutive_gateway_failure threshold, Done sends a non-blocking
// signal on a channel with a buffer of 1, and the Detector's goroutine looks at the
// counters. Every interval the Detector swaps each endpoint's counting bucket (as grpc-go's
// outlierdetection does) and runs the success-rate and failure-percentage algorithms over
// the interval that ended. Ejections and un-ejections are published into the
// EndpointStates, and the Detector asks the upstream to rebuild its picker.
package outlier

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// DefaultInterval is Envoy's default interval.
const DefaultInterval = 10 * time.Second

// Detector names, as used in ejection reasons, logs and metrics.
const (
	Consecutive5xx            = "consecutive_5xx"
	ConsecutiveGatewayFailure = "consecutive_gateway_failure"
	SuccessRate               = "success_rate"
	FailurePercentage         = "failure_percentage"
)

// Config is outlier detection's settings for one upstream, with Envoy's meaning.
type Config struct {
	// Interval is how often success rates and failure percentages are evaluated, over the
	// calls of the interval that ended; it also paces the decay of the ejection multiplier.
	// A value that is not positive stands for DefaultInterval.
	Interval time.Duration
	// BaseEjectionTime is how long a first ejection lasts; the n-th ejection in a row lasts
	// n times as long, up to max(BaseEjectionTime, MaxEjectionTime).
	BaseEjectionTime time.Duration
	// MaxEjectionTime caps the length of an ejection.
	MaxEjectionTime time.Duration
	// MaxEjectionPercent is the largest share of the endpoints (0-100) that may be ejected
	// at once; an ejection that would exceed it does not happen.
	MaxEjectionPercent int
	// Consecutive5xx ejects an endpoint after this many failures in a row (5xx responses,
	// connect failures, resets, timeouts); 0 disables it.
	Consecutive5xx uint32
	// ConsecutiveGatewayFailure ejects after this many gateway failures in a row (502, 503,
	// 504, connect failures, resets, timeouts); 0 disables it.
	ConsecutiveGatewayFailure uint32
	// SuccessRate, if not nil, enables success-rate ejection.
	SuccessRate *SuccessRateConfig
	// FailurePercentage, if not nil, enables failure-percentage ejection.
	FailurePercentage *FailurePercentageConfig
}

// SuccessRateConfig is success-rate ejection: an endpoint whose success rate over the
// interval is below mean − StdevFactor × stdev of the rates of the endpoints with at least
// RequestVolume calls is ejected, provided at least MinimumHosts endpoints qualify.
type SuccessRateConfig struct {
	MinimumHosts  int
	RequestVolume uint64
	StdevFactor   float64
	// Enforcing is the chance (0-100) that a detected outlier is actually ejected.
	Enforcing int
}

// FailurePercentageConfig is failure-percentage ejection: an endpoint with at least
// RequestVolume calls over the interval, more than Threshold percent of which failed, is
// ejected, provided at least MinimumHosts endpoints have RequestVolume calls.
type FailurePercentageConfig struct {
	Threshold     int
	MinimumHosts  int
	RequestVolume uint64
	// Enforcing is the chance (0-100) that a detected outlier is actually ejected.
	Enforcing int
}

// EventKind says what happened to an endpoint.
type EventKind int

// Event kinds.
const (
	// Ejected: the endpoint was ejected.
	Ejected EventKind = iota
	// Unejected: the endpoint's ejection time is over; it takes traffic again.
	Unejected
	// Overflow: the endpoint is an outlier but was not ejected, because max_ejection_percent
	// would be exceeded.
	Overflow
	// Unenforced: the endpoint is an outlier but the enforcing percentage said not to eject.
	Unenforced
)

// String returns the kind as used in logs and metrics.
func (k EventKind) String() string {
	switch k {
	case Ejected:
		return "ejected"
	case Unejected:
		return "unejected"
	case Overflow:
		return "overflow"
	case Unenforced:
		return "unenforced"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is one decision of a Detector about one endpoint.
type Event struct {
	Kind     EventKind
	Upstream string
	Address  string
	// Detector is Consecutive5xx, ConsecutiveGatewayFailure, SuccessRate or
	// FailurePercentage (empty for Unejected).
	Detector string
	// Reason is the human-readable cause, e.g. "consecutive_5xx: 5 in a row".
	Reason string
	// Until is when an ejection ends (Ejected only).
	Until time.Time
	// Ejections is how many times the endpoint has been ejected.
	Ejections uint64
}

// Options configures a Detector.
type Options struct {
	// Upstream names the upstream in events and logs.
	Upstream string
	// Config is the initial configuration.
	Config Config
	// OnChange is called, on the Detector's goroutine, after an endpoint was ejected or
	// un-ejected, so that the upstream rebuilds its picker. It must not block: the
	// upstream typically makes a non-blocking send to its own rebuild goroutine.
	OnChange func()
	// OnEvent, if not nil, is called on the Detector's goroutine for every Event (to count
	// it). It must not block.
	OnEvent func(Event)
	// Logger receives one structured line per event; nil discards them.
	Logger *slog.Logger
}

// Detector runs outlier detection for one upstream. Its methods are safe for concurrent
// use; none is ever called on the request path.
type Detector struct {
	upstream string
	onChange func()
	onEvent  func(Event)
	log      *slog.Logger

	signal chan struct{} // from the request path: a run of failures reached a threshold
	reconf chan struct{} // from SetConfig: the interval may have changed
	stop   chan struct{}
	done   chan struct{}

	mu    sync.Mutex // guards what follows; taken by the goroutine and the setters only
	cfg   Config
	trip  *balancer.Tripwire
	hosts map[string]*host
}

// host is the Detector's own record of one endpoint; only the Detector touches it, under mu.
type host struct {
	addr        string
	state       *balancer.EndpointState
	ejected     bool
	ejectedAt   time.Time
	until       time.Time
	unejectedAt time.Time
	reason      string
	ejections   uint64
	multiplier  uint64
	calls       uint64
	failures    uint64
	successRate float64
	// overflowed is set once an Overflow was reported for the current episode of failures,
	// so that a failing endpoint that cannot be ejected is reported once, not on every run.
	overflowed bool
}

// New starts a Detector; Stop ends it.
func New(o Options) *Detector {
	d := &Detector{
		upstream: o.Upstream,
		onChange: o.OnChange,
		onEvent:  o.OnEvent,
		log:      o.Logger,
		signal:   make(chan struct{}, 1),
		reconf:   make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
		hosts:    map[string]*host{},
	}
	if d.onChange == nil {
		d.onChange = func() {}
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.setConfigLocked(o.Config)
	go d.run(d.cfg.Interval)
	return d
}

// SetConfig replaces the configuration. Ejections in progress keep their end time.
func (d *Detector) SetConfig(c Config) {
	d.mu.Lock()
	d.setConfigLocked(c)
	d.mu.Unlock()
	select {
	case d.reconf <- struct{}{}:
	default:
	}
}

func (d *Detector) setConfigLocked(c Config) {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	d.cfg = c
	d.trip = &balancer.Tripwire{Consecutive5xx: c.Consecutive5xx,
		ConsecutiveGatewayFailure: c.ConsecutiveGatewayFailure, Signal: d.signal}
	for _, h := range d.hosts {
		h.state.SetTripwire(d.trip)
	}
}

// SetEndpoints makes states (by address) the endpoints under watch: new addresses start
// un-ejected, removed ones are forgotten. It does not block on the Detector's goroutine.
func (d *Detector) SetEndpoints(states map[string]*balancer.EndpointState) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for addr, h := range d.hosts {
		if states[addr] != h.state {
			h.state.SetTripwire(nil)
			delete(d.hosts, addr)
		}
	}
	for addr, st := range states {
		if d.hosts[addr] != nil {
			continue
		}
		h := &host{addr: addr, state: st, successRate: -1}
		st.ResetRuns()
		_, _ = st.SwapCounts() // start counting from now
		_, _ = st.SwapCounts()
		st.SetTripwire(d.trip)
		d.hosts[addr] = h
		d.publish(h)
	}
}

// Stop ends the Detector and waits for its goroutine. It then un-ejects every endpoint and
// removes its tripwires and published state, as if outlier detection had never run; the
// caller rebuilds its picker afterwards. OnChange is not called for that.
func (d *Detector) Stop() {
	close(d.stop)
	<-d.done
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.hosts {
		h.state.SetTripwire(nil)
		h.state.SetOutlierStatus(nil)
	}
	d.hosts = map[string]*host{}
}

// run is the Detector's goroutine: it reacts to trips from the request path, evaluates the
// interval, and un-ejects endpoints when their time is up.
func (d *Detector) run(interval time.Duration) {
	defer close(d.done)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	unejectTimer := time.NewTimer(time.Hour)
	unejectTimer.Stop()
	defer unejectTimer.Stop()
	for {
		changed := false
		select {
		case <-d.stop:
			return
		case <-d.signal:
			changed = d.onTrip()
		case <-ticker.C:
			changed = d.onInterval()
		case <-unejectTimer.C:
			changed = d.onUnejectTimer()
		case <-d.reconf:
			d.mu.Lock()
			if iv := d.cfg.Interval; iv != interval {
				interval = iv
				ticker.Reset(iv)
			}
			d.mu.Unlock()
		}
		if changed {
			d.onChange()
		}
		if next, ok := d.nextUneject(); ok {
			unejectTimer.Reset(max(time.Until(next), 0))
		} else {
			unejectTimer.Stop()
		}
	}
}

// onTrip handles a signal from the request path.
func (d *Detector) onTrip() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.checkRuns(time.Now())
}

// onUnejectTimer un-ejects the endpoints whose time is up.
func (d *Detector) onUnejectTimer() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.unejectDue(time.Now())
}

// onInterval is the interval algorithm: close the counting interval, un-eject, decay
// multipliers, then run the success-rate and failure-percentage algorithms.
func (d *Detector) onInterval() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	for _, h := range d.hosts {
		s, f := h.state.SwapCounts()
		h.calls, h.failures = s+f, f
		h.successRate = -1
		if h.calls > 0 {
			h.successRate = float64(s) / float64(h.calls)
		}
		if f == 0 && s > 0 {
			h.overflowed = false // the episode is over
		}
	}
	changed := d.unejectDue(now)
	for _, h := range d.hosts {
		// An endpoint back in service for a whole interval earns one step of its multiplier
		// back each interval (Envoy's decay of the ejection time).
		if !h.ejected && h.multiplier > 0 && now.Sub(h.unejectedAt) >= d.cfg.Interval {
			h.multiplier--
		}
	}
	if d.cfg.SuccessRate != nil {
		changed = d.successRate(now) || changed
	}
	if d.cfg.FailurePercentage != nil {
		changed = d.failurePercentage(now) || changed
	}
	changed = d.checkRuns(now) || changed
	for _, h := range d.hosts {
		d.publish(h)
	}
	return changed
}

// checkRuns ejects the endpoints whose run of failures has reached a threshold, and starts
// their runs again. At each interval it also catches runs that went past a threshold
// without hitting it exactly (the threshold was lowered by a reload).
func (d *Detector) checkRuns(now time.Time) bool {
	changed := false
	for _, h := range d.sortedHosts() {
		r5, rg := h.state.Runs()
		var detector string
		var n uint32
		switch {
		case d.cfg.Consecutive5xx > 0 && r5 >= d.cfg.Consecutive5xx:
			detector, n = Consecutive5xx, r5
		case d.cfg.ConsecutiveGatewayFailure > 0 && rg >= d.cfg.ConsecutiveGatewayFailure:
			detector, n = ConsecutiveGatewayFailure, rg
		default:
			continue
		}
		h.state.ResetRuns()
		if h.ejected {
			continue // panic mode still sends it traffic; it is ejected already
		}
		if d.eject(h, detector, fmt.Sprintf("%s: %d in a row", detector, n), now) {
			changed = true
		}
	}
	return changed
}

// successRate runs Envoy's success-rate algorithm over the interval that ended.
func (d *Detector) successRate(now time.Time) bool {
	c := d.cfg.SuccessRate
	var qualified []*host
	for _, h := range d.sortedHosts() {
		if !h.ejected && h.calls > 0 && h.calls >= c.RequestVolume {
			qualified = append(qualified, h)
		}
	}
	if len(qualified) == 0 || len(qualified) < c.MinimumHosts {
		return false
	}
	mean, stdev := meanStdev(qualified)
	threshold := mean - c.StdevFactor*stdev
	changed := false
	for _, h := range qualified {
		if h.successRate >= threshold {
			continue
		}
		reason := fmt.Sprintf("%s: %.1f%% of %d calls succeeded, below %.1f%% (mean %.1f%% - %g × stdev %.1f%%)",
			SuccessRate, 100*h.successRate, h.calls, 100*threshold, 100*mean, c.StdevFactor, 100*stdev)
		if d.enforce(h, SuccessRate, reason, c.Enforcing) && d.eject(h, SuccessRate, reason, now) {
			changed = true
		}
	}
	return changed
}

// meanStdev returns the mean and the population standard deviation of the hosts' success
// rates.
func meanStdev(hs []*host) (mean, stdev float64) {
	for _, h := range hs {
		mean += h.successRate
	}
	mean /= float64(len(hs))
	var sq float64
	for _, h := range hs {
		sq += (h.successRate - mean) * (h.successRate - mean)
	}
	return mean, math.Sqrt(sq / float64(len(hs)))
}

// failurePercentage runs Envoy's failure-percentage algorithm over the interval that ended.
func (d *Detector) failurePercentage(now time.Time) bool {
	c := d.cfg.FailurePercentage
	var qualified []*host
	for _, h := range d.sortedHosts() {
		if !h.ejected && h.calls > 0 && h.calls >= c.RequestVolume {
			qualified = append(qualified, h)
		}
	}
	if len(qualified) == 0 || len(qualified) < c.MinimumHosts {
		return false
	}
	changed := false
	for _, h := range qualified {
		if 100*h.failures <= uint64(c.Threshold)*h.calls {
			continue
		}
		reason := fmt.Sprintf("%s: %.1f%% of %d calls failed, above %d%%", FailurePercentage,
			100*float64(h.failures)/float64(h.calls), h.calls, c.Threshold)
		if d.enforce(h, FailurePercentage, reason, c.Enforcing) && d.eject(h, FailurePercentage, reason, now) {
			changed = true
		}
	}
	return changed
}

// enforce draws against an enforcing percentage, and reports an outlier that escapes it.
func (d *Detector) enforce(h *host, detector, reason string, percent int) bool {
	if percent >= 100 || rand.IntN(100) < percent {
		return true
	}
	d.event(Event{Kind: Unenforced, Address: h.addr, Detector: detector, Reason: reason, Ejections: h.ejections})
	return false
}

// eject ejects h unless max_ejection_percent forbids it, and reports what happened.
func (d *Detector) eject(h *host, detector, reason string, now time.Time) bool {
	ejected := 0
	for _, o := range d.hosts {
		if o.ejected {
			ejected++
		}
	}
	// As Envoy: the ejection happens only if the share ejected afterwards stays within the
	// limit.
	if 100*(ejected+1) > d.cfg.MaxEjectionPercent*len(d.hosts) {
		if !h.overflowed {
			h.overflowed = true
			d.event(Event{Kind: Overflow, Address: h.addr, Detector: detector, Reason: reason, Ejections: h.ejections})
		}
		return false
	}
	h.overflowed = false
	base := d.cfg.BaseEjectionTime
	limit := max(base, d.cfg.MaxEjectionTime)
	// The multiplier stops growing once the ejection time has reached its cap, so that a
	// long-failing endpoint does not take forever to earn it back.
	if base <= 0 || time.Duration(h.multiplier)*base < limit {
		h.multiplier++
	}
	dur := min(time.Duration(h.multiplier)*base, limit)
	h.ejected, h.ejectedAt, h.until, h.reason = true, now, now.Add(dur), reason
	h.ejections++
	d.publish(h)
	d.event(Event{Kind: Ejected, Address: h.addr, Detector: detector, Reason: reason, Until: h.until, Ejections: h.ejections})
	return true
}

// unejectDue un-ejects the endpoints whose ejection time is over.
func (d *Detector) unejectDue(now time.Time) bool {
	changed := false
	for _, h := range d.sortedHosts() {
		if !h.ejected || now.Before(h.until) {
			continue
		}
		h.ejected, h.unejectedAt = false, now
		h.state.ResetRuns()
		d.publish(h)
		d.event(Event{Kind: Unejected, Address: h.addr, Reason: h.reason, Ejections: h.ejections})
		changed = true
	}
	return changed
}

// nextUneject returns the earliest end of an ejection in progress.
func (d *Detector) nextUneject() (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var next time.Time
	for _, h := range d.hosts {
		if h.ejected && (next.IsZero() || h.until.Before(next)) {
			next = h.until
		}
	}
	return next, !next.IsZero()
}

// sortedHosts returns the hosts in address order, so that decisions (which of two outliers
// is ejected when only one may be) do not depend on map order.
func (d *Detector) sortedHosts() []*host {
	hs := make([]*host, 0, len(d.hosts))
	for _, h := range d.hosts {
		hs = append(hs, h)
	}
	slices.SortFunc(hs, func(a, b *host) int { return cmp.Compare(a.addr, b.addr) })
	return hs
}

// publish stores h's state in its EndpointState for the picker builder and /clusters.
func (d *Detector) publish(h *host) {
	h.state.SetOutlierStatus(&balancer.OutlierStatus{
		Ejected: h.ejected, EjectedAt: h.ejectedAt, Until: h.until, Reason: h.reason,
		Ejections: h.ejections, Multiplier: h.multiplier, SuccessRate: h.successRate, Calls: h.calls,
	})
}

// event logs e once and hands it to OnEvent.
func (d *Detector) event(e Event) {
	e.Upstream = d.upstream
	switch e.Kind {
	case Ejected:
		d.log.Warn("outlier ejected", "upstream", e.Upstream, "endpoint", e.Address, "detector", e.Detector,
			"reason", e.Reason, "until", e.Until, "ejections", e.Ejections)
	case Unejected:
		d.log.Info("outlier ejection ended", "upstream", e.Upstream, "endpoint", e.Address, "ejections", e.Ejections)
	case Overflow:
		d.log.Warn("outlier not ejected: max_ejection_percent reached", "upstream", e.Upstream, "endpoint", e.Address,
			"detector", e.Detector, "reason", e.Reason)
	case Unenforced:
		d.log.Info("outlier not ejected: not enforced this time", "upstream", e.Upstream, "endpoint", e.Address,
			"detector", e.Detector, "reason", e.Reason)
	}
	if d.onEvent != nil {
		d.onEvent(e)
	}
}
