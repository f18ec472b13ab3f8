package balancer

import (
	"sync/atomic"
	"time"
)

// This file is the one health model of an endpoint. Three writers publish into an
// EndpointState and everyone else reads it:
//
//   - the request path (Endpoint.Done) counts outcomes with atomics, and at most sends a
//     non-blocking signal to outlier detection when a run of failures reaches a threshold;
//   - outlier detection (sidecar/outlier) publishes the endpoint's ejection state
//     (OutlierStatus) from its own goroutine;
//   - active health checks (sidecar/health) publish the endpoint's check result
//     (HealthStatus) from theirs.
//
// The picker builder (through outlier.Build), retries and the admin page read the published
// values; none of them takes a lock.

// Health is the result of active health checks on an endpoint.
type Health int32

// Health values. HealthUnknown is an endpoint no check has judged yet (or one that is not
// checked at all): it takes traffic.
const (
	HealthUnknown Health = iota
	HealthHealthy
	HealthUnhealthy
)

// String returns "unknown", "healthy" or "unhealthy".
func (h Health) String() string {
	switch h {
	case HealthHealthy:
		return "healthy"
	case HealthUnhealthy:
		return "unhealthy"
	}
	return "unknown"
}

// HealthStatus is what active health checks last published about an endpoint. It is
// immutable once published.
type HealthStatus struct {
	// Health is the endpoint's state per the configured thresholds.
	Health Health
	// Since is when Health last changed.
	Since time.Time
	// Detail says why, e.g. "3 failed checks in a row: status 503".
	Detail string
}

// OutlierStatus is what outlier detection last published about an endpoint. It is immutable
// once published.
type OutlierStatus struct {
	// Ejected is true while the endpoint is ejected.
	Ejected bool
	// EjectedAt and Until bound the current ejection (or the last one, once it is over).
	EjectedAt, Until time.Time
	// Reason names the detector and what it saw, e.g. "consecutive_5xx: 5 in a row"; it
	// describes the current or last ejection.
	Reason string
	// Ejections counts the times the endpoint has been ejected.
	Ejections uint64
	// Multiplier is the factor of base_ejection_time the next ejection lasts, less one:
	// it grows with each ejection and shrinks while the endpoint stays healthy.
	Multiplier uint64
	// SuccessRate is the share of successful calls over the last interval, in [0, 1];
	// negative when there were no calls.
	SuccessRate float64
	// Calls is the number of calls over the last interval.
	Calls uint64
}

// Tripwire is what outlier detection installs in the states it watches so that the request
// path can tell it, without blocking, that a run of failures has reached a threshold.
// It is immutable once installed.
type Tripwire struct {
	// Consecutive5xx is the run of failures (5xx responses and failures without a response)
	// that trips; 0 disables it.
	Consecutive5xx uint32
	// ConsecutiveGatewayFailure is the run of gateway failures (502, 503, 504 and failures
	// without a response) that trips; 0 disables it.
	ConsecutiveGatewayFailure uint32
	// Signal receives a value, if it has room, each time a run reaches its threshold. It
	// should have a buffer of 1: one pending signal says "look at the counters".
	Signal chan<- struct{}
}

// counts is one interval's outcome counts.
type counts struct {
	successes, failures atomic.Uint64
}

// outcomeState is the part of EndpointState that Done writes and outlier detection reads.
type outcomeState struct {
	// buckets are swapped each interval: Done adds to buckets[active&1].
	buckets [2]counts
	active  atomic.Uint32
	// run5xx and runGateway are the current runs of failures and of gateway failures.
	run5xx, runGateway atomic.Uint32
	trip               atomic.Pointer[Tripwire]
}

// SetTripwire installs t (nil removes it). Safe for concurrent use.
func (s *EndpointState) SetTripwire(t *Tripwire) { s.outcomes.trip.Store(t) }

// SwapCounts starts a new counting interval and returns the successes and failures counted
// in the interval that ended. A Done racing with the swap may land in the old interval's
// bucket after it was read; it is then counted with the interval after next, never lost.
// Intended for the single goroutine of outlier detection; safe for concurrent use.
func (s *EndpointState) SwapCounts() (successes, failures uint64) {
	o := &s.outcomes
	old := &o.buckets[(o.active.Add(1)&1)^1]
	return old.successes.Swap(0), old.failures.Swap(0)
}

// Runs returns the current runs of failures and of gateway failures.
func (s *EndpointState) Runs() (run5xx, runGateway uint32) {
	return s.outcomes.run5xx.Load(), s.outcomes.runGateway.Load()
}

// ResetRuns restarts both runs of failures from zero.
func (s *EndpointState) ResetRuns() {
	s.outcomes.run5xx.Store(0)
	s.outcomes.runGateway.Store(0)
}

// count records the outcome of one call: it is Done's share of the health model. It does
// no I/O, takes no lock and allocates nothing.
func (s *EndpointState) count(info DoneInfo) {
	o := &s.outcomes
	fail := info.Err != nil || info.Status >= 500
	gateway := info.Err != nil || info.Status == 502 || info.Status == 503 || info.Status == 504
	b := &o.buckets[o.active.Load()&1]
	if fail {
		s.Failures.Add(1)
		b.failures.Add(1)
	} else {
		b.successes.Add(1)
	}
	t := o.trip.Load()
	if t == nil {
		return
	}
	tripped := run(&o.run5xx, fail, t.Consecutive5xx)
	tripped = run(&o.runGateway, gateway, t.ConsecutiveGatewayFailure) || tripped
	if tripped {
		select {
		case t.Signal <- struct{}{}:
		default:
		}
	}
}

// run extends (failed) or ends a run of failures and reports whether it just reached
// threshold (never when threshold is 0). A success only writes when there is a run to end,
// so that healthy traffic does not bounce the cache line between cores.
func run(r *atomic.Uint32, failed bool, threshold uint32) bool {
	if !failed {
		if r.Load() != 0 {
			r.Store(0)
		}
		return false
	}
	return r.Add(1) == threshold && threshold != 0
}

// Health returns the endpoint's active health check state (HealthUnknown when it is not
// checked).
func (s *EndpointState) Health() Health {
	if h := s.health.Load(); h != nil {
		return h.Health
	}
	return HealthUnknown
}

// HealthStatus returns what active health checks last published, or nil.
func (s *EndpointState) HealthStatus() *HealthStatus { return s.health.Load() }

// SetHealthStatus publishes h (nil clears it: the endpoint is no longer checked).
func (s *EndpointState) SetHealthStatus(h *HealthStatus) { s.health.Store(h) }

// Ejected reports whether outlier detection has ejected the endpoint.
func (s *EndpointState) Ejected() bool {
	o := s.outlier.Load()
	return o != nil && o.Ejected
}

// OutlierStatus returns what outlier detection last published, or nil.
func (s *EndpointState) OutlierStatus() *OutlierStatus { return s.outlier.Load() }

// SetOutlierStatus publishes o (nil clears it: outlier detection is off).
func (s *EndpointState) SetOutlierStatus(o *OutlierStatus) { s.outlier.Store(o) }

// Available reports whether the endpoint may take traffic outside panic mode: it is not
// ejected and has not failed its active health checks.
func (s *EndpointState) Available() bool {
	return !s.Ejected() && s.Health() != HealthUnhealthy
}
