// Package circuit is per-upstream circuit breaking, as Envoy's circuit breakers: limits on
// the connections, pending connection attempts, requests and retries in flight to one
// upstream, plus the retry budget. A call over a limit is refused at once (the proxy answers
// 503 with Proxy-Status connection_limit_reached) instead of queueing.
//
// A Breaker lives as long as its upstream, across config reloads; counters are atomics and
// limits an atomically published value, so every method is safe for concurrent use and
// cheap enough for the request path: no lock, no allocation.
package circuit

import (
	"fmt"
	"sync/atomic"
)

// Limit names, as in the config file and in metrics.
const (
	MaxConnections = "max_connections"
	MaxPending     = "max_pending"
	MaxRequests    = "max_requests"
	MaxRetries     = "max_retries"
	RetryBudget    = "retry_budget"
)

// Limits are a Breaker's thresholds. A zero Max* is no limit.
type Limits struct {
	// MaxConnections bounds the connections open (and being opened) to the upstream's
	// endpoints, HTTP and TCP together.
	MaxConnections int64
	// MaxPending bounds the connection attempts in progress: calls waiting for a new
	// connection.
	MaxPending int64
	// MaxRequests bounds the HTTP requests in flight.
	MaxRequests int64
	// MaxRetries bounds the requests that are retrying at once.
	MaxRetries int64
	// BudgetPercent is the retry budget: requests retrying at once may be at most this
	// percentage of the requests in flight...
	BudgetPercent float64
	// MinRetryConcurrency ...but at least this many, so that a quiet upstream can retry.
	MinRetryConcurrency int64
}

// OverflowError is the error of a call refused because a limit was reached.
type OverflowError struct {
	// Limit is the name of the limit (MaxRequests, ...).
	Limit string
	// Max is its value.
	Max int64
}

func (e *OverflowError) Error() string {
	if e.Limit == RetryBudget {
		return fmt.Sprintf("%s exhausted (%d retrying)", e.Limit, e.Max)
	}
	return fmt.Sprintf("%s (%d) reached", e.Limit, e.Max)
}

// Stats are a Breaker's counters at one moment.
type Stats struct {
	Requests    int64 `json:"requests"`
	Pending     int64 `json:"pending"`
	Connections int64 `json:"connections"`
	Retries     int64 `json:"retries"`
}

// Breaker counts what is in flight to one upstream and refuses what would exceed its limits.
type Breaker struct {
	limits   atomic.Pointer[Limits]
	onReject func(limit string)

	requests, pending, connections, retries atomic.Int64
}

// New returns a Breaker without limits. onReject, if not nil, is called (on the caller's
// goroutine, so it must not block) each time a limit refuses something.
func New(onReject func(limit string)) *Breaker {
	b := &Breaker{onReject: onReject}
	b.limits.Store(&Limits{BudgetPercent: 100})
	return b
}

// SetLimits publishes new limits; what is already in flight stays.
func (b *Breaker) SetLimits(l Limits) { b.limits.Store(&l) }

// Limits returns the limits in force.
func (b *Breaker) Limits() Limits { return *b.limits.Load() }

// Stats returns the counters.
func (b *Breaker) Stats() Stats {
	return Stats{Requests: b.requests.Load(), Pending: b.pending.Load(),
		Connections: b.connections.Load(), Retries: b.retries.Load()}
}

// acquire adds one to c unless that would exceed max (0: no limit).
func (b *Breaker) acquire(c *atomic.Int64, max int64, limit string) error {
	if max <= 0 {
		c.Add(1)
		return nil
	}
	for {
		n := c.Load()
		if n >= max {
			return b.reject(limit, max)
		}
		if c.CompareAndSwap(n, n+1) {
			return nil
		}
	}
}

func (b *Breaker) reject(limit string, max int64) error {
	if b.onReject != nil {
		b.onReject(limit)
	}
	return &OverflowError{Limit: limit, Max: max}
}

// StartRequest admits an HTTP request, or returns an *OverflowError at max_requests. Every
// admitted request is matched by one EndRequest.
func (b *Breaker) StartRequest() error {
	return b.acquire(&b.requests, b.limits.Load().MaxRequests, MaxRequests)
}

// EndRequest ends a request admitted by StartRequest.
func (b *Breaker) EndRequest() { b.requests.Add(-1) }

// StartConnect admits a new connection attempt, or returns an *OverflowError at
// max_pending or max_connections. The attempt counts as a connection until EndConnect says
// it failed, or until the connection it made is closed (EndConnection).
func (b *Breaker) StartConnect() error {
	l := b.limits.Load()
	if err := b.acquire(&b.pending, l.MaxPending, MaxPending); err != nil {
		return err
	}
	if err := b.acquire(&b.connections, l.MaxConnections, MaxConnections); err != nil {
		b.pending.Add(-1)
		return err
	}
	return nil
}

// EndConnect ends an attempt admitted by StartConnect; connected says whether it made a
// connection, which then counts until EndConnection.
func (b *Breaker) EndConnect(connected bool) {
	b.pending.Add(-1)
	if !connected {
		b.connections.Add(-1)
	}
}

// EndConnection counts a connection made through StartConnect as closed.
func (b *Breaker) EndConnection() { b.connections.Add(-1) }

// StartRetry admits a retry of a request, or returns an *OverflowError when the retry
// budget or max_retries is exhausted. A request counts as retrying from its first admitted
// retry until EndRetry; retrying says whether the request already is (its later retries
// are admitted against the others).
func (b *Breaker) StartRetry(retrying bool) error {
	l := b.limits.Load()
	budget := max(l.MinRetryConcurrency, int64(l.BudgetPercent*float64(b.requests.Load())/100))
	for {
		n := b.retries.Load()
		others := n
		if retrying {
			others--
		}
		if others >= budget {
			return b.reject(RetryBudget, others)
		}
		if l.MaxRetries > 0 && others >= l.MaxRetries {
			return b.reject(MaxRetries, l.MaxRetries)
		}
		if retrying || b.retries.CompareAndSwap(n, n+1) {
			return nil
		}
	}
}

// EndRetry ends the retrying of a request admitted by StartRetry.
func (b *Breaker) EndRetry() { b.retries.Add(-1) }
