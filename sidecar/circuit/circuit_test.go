package circuit

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func overflow(err error) string {
	var oe *OverflowError
	if errors.As(err, &oe) {
		return oe.Limit
	}
	if err != nil {
		return "unexpected: " + err.Error()
	}
	return ""
}

func TestRequests(t *testing.T) {
	var rejected []string
	b := New(func(l string) { rejected = append(rejected, l) })
	b.SetLimits(Limits{MaxRequests: 2})
	for i, want := range []string{"", "", MaxRequests, MaxRequests} {
		if got := overflow(b.StartRequest()); got != want {
			t.Errorf("StartRequest() #%d = %q, want %q", i+1, got, want)
		}
	}
	b.EndRequest()
	if err := b.StartRequest(); err != nil {
		t.Errorf("StartRequest() after EndRequest = %v, want nil", err)
	}
	if len(rejected) != 2 {
		t.Errorf("rejections = %v, want 2", rejected)
	}
	if got := (&OverflowError{Limit: MaxRequests, Max: 2}).Error(); got != "max_requests (2) reached" {
		t.Errorf("Error() = %q", got)
	}
	b.SetLimits(Limits{}) // no limit
	for range 100 {
		if err := b.StartRequest(); err != nil {
			t.Fatalf("StartRequest() without a limit = %v", err)
		}
	}
	if got := b.Stats().Requests; got != 102 {
		t.Errorf("Stats().Requests = %d, want 102", got)
	}
}

func TestConnections(t *testing.T) {
	b := New(nil)
	b.SetLimits(Limits{MaxPending: 2, MaxConnections: 3})
	check := func(step string, want string) {
		t.Helper()
		if got := overflow(b.StartConnect()); got != want {
			t.Errorf("%s: StartConnect() = %q, want %q (stats %+v)", step, got, want, b.Stats())
		}
	}
	check("first attempt", "")
	check("second attempt", "")
	check("third attempt while two are pending", MaxPending)
	b.EndConnect(true)
	b.EndConnect(true) // two connections open, none pending
	check("third connection", "")
	b.EndConnect(true)
	check("fourth connection", MaxConnections)
	b.EndConnection()
	check("after a close", "")
	b.EndConnect(false) // that attempt failed: it does not hold a connection
	if s := b.Stats(); s.Connections != 2 || s.Pending != 0 {
		t.Errorf("Stats() = %+v, want 2 connections, 0 pending", s)
	}
}

func TestRetryBudget(t *testing.T) {
	tests := []struct {
		name     string
		limits   Limits
		requests int
		// how many requests may start retrying
		want     int
		wantStop string
	}{
		{"20% of 50 requests", Limits{BudgetPercent: 20, MinRetryConcurrency: 3}, 50, 10, RetryBudget},
		{"the minimum on a quiet upstream", Limits{BudgetPercent: 20, MinRetryConcurrency: 3}, 5, 3, RetryBudget},
		{"max_retries below the budget", Limits{BudgetPercent: 20, MinRetryConcurrency: 3, MaxRetries: 4}, 50, 4, MaxRetries},
		{"100% budget", Limits{BudgetPercent: 100}, 7, 7, RetryBudget},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := New(nil)
			b.SetLimits(tc.limits)
			for range tc.requests {
				if err := b.StartRequest(); err != nil {
					t.Fatal(err)
				}
			}
			n := 0
			var stop string
			for range tc.requests + 1 {
				if stop = overflow(b.StartRetry(false)); stop != "" {
					break
				}
				n++
			}
			if n != tc.want || stop != tc.wantStop {
				t.Errorf("admitted %d retries, stopped by %q; want %d, %q", n, stop, tc.want, tc.wantStop)
			}
			// A request that is already retrying may retry again while it is within the
			// budget counting the others.
			if err := b.StartRetry(true); err != nil {
				t.Errorf("StartRetry(true) for a request within the budget = %v", err)
			}
			b.EndRetry()
			if err := b.StartRetry(false); err != nil {
				t.Errorf("StartRetry() after EndRetry = %v", err)
			}
		})
	}
}

// TestLimitsHoldUnderConcurrency checks with -race that concurrent callers never exceed a
// limit.
func TestLimitsHoldUnderConcurrency(t *testing.T) {
	b := New(nil)
	b.SetLimits(Limits{MaxRequests: 5})
	var inside, peak atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 2000 {
				if b.StartRequest() != nil {
					continue
				}
				n := inside.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				inside.Add(-1)
				b.EndRequest()
			}
		})
	}
	wg.Wait()
	if p := peak.Load(); p > 5 {
		t.Errorf("peak requests in flight = %d, want at most 5", p)
	}
	if r := b.Stats().Requests; r != 0 {
		t.Errorf("Requests after all ended = %d, want 0", r)
	}
}

func TestAllocs(t *testing.T) {
	b := New(func(string) {})
	b.SetLimits(Limits{MaxRequests: 10, BudgetPercent: 20, MinRetryConcurrency: 3})
	if got := testing.AllocsPerRun(1000, func() {
		if b.StartRequest() == nil {
			b.EndRequest()
		}
	}); got != 0 {
		t.Errorf("StartRequest+EndRequest allocations = %v, want 0", got)
	}
}
