// Package blocking paces Consul blocking queries: the defaults of their timings, the
// index rules Consul documents for them, jittered exponential backoff after a failed
// query, and the minimum interval between queries. The discovery, intention and KV
// watchers of discovery/consul and the Connect CA source of mtls follow Consul with it.
package blocking

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"
)

// MaxWaitTime is the longest blocking time Consul honours: it answers a query that asks
// for more after this long anyway.
const MaxWaitTime = 10 * time.Minute

// queryMargin is added to a query's deadline beyond the blocking time and Consul's jitter.
const queryMargin = 10 * time.Second

// Pacing holds the timings of a blocking-query loop. It is a plain value, safe to copy
// and to read concurrently.
type Pacing struct {
	// WaitTime is how long one blocking query may wait for a change (at most MaxWaitTime).
	WaitTime time.Duration
	// MinQueryInterval rate-limits the loop, as Consul asks of blocking-query clients: a
	// token bucket with a burst of 2 refilled once per interval, so that quiet data is
	// followed at once and churning data is polled.
	MinQueryInterval time.Duration
	// RetryBase and RetryMax bound the jittered exponential backoff after a failed query.
	RetryBase, RetryMax time.Duration
}

// WithDefaults returns p with every zero or negative duration replaced by the one of def,
// WaitTime capped at MaxWaitTime and RetryMax raised to RetryBase if it is lower.
func (p Pacing) WithDefaults(def Pacing) Pacing {
	orDefault := func(d, def time.Duration) time.Duration {
		if d <= 0 {
			return def
		}
		return d
	}
	p.WaitTime = min(orDefault(p.WaitTime, def.WaitTime), MaxWaitTime)
	p.MinQueryInterval = orDefault(p.MinQueryInterval, def.MinQueryInterval)
	p.RetryBase = orDefault(p.RetryBase, def.RetryBase)
	p.RetryMax = max(orDefault(p.RetryMax, def.RetryMax), p.RetryBase)
	return p
}

// QueryTimeout bounds one query: the blocking time, Consul's jitter (up to WaitTime/16)
// and a margin. The HTTP client of consul/api has no timeout of its own, so this is how a
// silent agent is noticed.
func (p Pacing) QueryTimeout() time.Duration {
	return p.WaitTime + p.WaitTime/16 + queryMargin
}

// NextIndex is the WaitIndex of the query that follows an answer carrying X-Consul-Index
// got, to a query sent with WaitIndex prev, by the rules Consul documents for blocking
// queries: an index that went backwards (a snapshot restore, another server) restarts
// the loop from 0, and an index of 0 becomes 1, since 0 would make the next query return
// at once while 1 always blocks.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got < 1:
		return 1
	default:
		return got
	}
}

// Backoff is the delay before retry number n (from 1): base doubled per failure, capped
// at maxDelay, with "equal jitter" (a uniform pick in the upper half) so that sidecars
// that lost Consul together do not come back in step. It is safe to call concurrently.
func Backoff(base, maxDelay time.Duration, n int) time.Duration {
	d := maxDelay
	if n < 31 {
		if b := base << (n - 1); b > 0 && b < maxDelay {
			d = b
		}
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits for d or for ctx to be done, reporting whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Loop is the state of one blocking-query loop: the index the next query waits on, the
// run of failed queries, and the rate limiter that spaces the queries. A loop runs
//
//	for loop.Wait(ctx) {
//		q, cancel := loop.Query(ctx, &api.QueryOptions{...})
//		... run the query with q, then cancel() ...
//		on error: n, delay := loop.Failed(); log; if !Sleep(ctx, delay) { return }
//		on an answer: changed, failures := loop.Answered(meta.LastIndex)
//	}
//
// A Loop belongs to one goroutine: its methods are not safe to call concurrently.
type Loop struct {
	pacing   Pacing
	limiter  *rate.Limiter
	index    uint64
	failures int
}

// NewLoop returns the state of a new loop paced by p, whose first query is a
// non-blocking read (index 0). p should have been through WithDefaults.
func NewLoop(p Pacing) *Loop {
	return &Loop{pacing: p, limiter: rate.NewLimiter(rate.Every(p.MinQueryInterval), 2)}
}

// Wait waits until the rate limit lets the next query go, and reports false once ctx is
// done instead. When ctx has a deadline before the next token, it waits for ctx to be
// done, so false always means that ctx is done.
func (l *Loop) Wait(ctx context.Context) bool {
	if err := l.limiter.Wait(ctx); err != nil {
		<-ctx.Done()
		return false
	}
	return true
}

// Index is the WaitIndex of the next query: 0 (a non-blocking read) at first and after a
// failure, else as NextIndex says.
func (l *Loop) Index() uint64 { return l.index }

// Query fills in q for the next query, blocking on Index for at most WaitTime, with a
// context derived from ctx that ends after QueryTimeout. It returns q, and the cancel
// function of that context, to call once the query (and any follow-up read made with
// q.Context()) is done.
func (l *Loop) Query(ctx context.Context, q *api.QueryOptions) (*api.QueryOptions, context.CancelFunc) {
	qctx, cancel := context.WithTimeout(ctx, l.pacing.QueryTimeout())
	q.WaitIndex = l.index
	q.WaitTime = l.pacing.WaitTime
	return q.WithContext(qctx), cancel
}

// Failed records a failed query. It returns the number of failures in a row, this one
// included, and the backoff delay before the next try. The next answer, whoever gives it,
// starts from a fresh read (index 0): an agent or server that comes back may have a
// lower index than the one held.
func (l *Loop) Failed() (failures int, delay time.Duration) {
	l.failures++
	l.index = 0
	return l.failures, Backoff(l.pacing.RetryBase, l.pacing.RetryMax, l.failures)
}

// Answered records an answer carrying X-Consul-Index index, and sets the index of the
// next query by NextIndex. It reports whether index differs from the one the query waited
// on (at first and after a failure that one is 0, so any answer but 0 counts as
// changed), and the number of failures in a row this answer ends (0 if the previous
// query was answered too).
func (l *Loop) Answered(index uint64) (changed bool, failures int) {
	changed = index != l.index
	failures, l.failures = l.failures, 0
	l.index = NextIndex(l.index, index)
	return changed, failures
}
