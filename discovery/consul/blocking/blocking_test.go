package blocking

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestWithDefaults(t *testing.T) {
	def := Pacing{WaitTime: time.Minute, MinQueryInterval: time.Second, RetryBase: 250 * time.Millisecond, RetryMax: 10 * time.Second}
	tests := []struct {
		name string
		in   Pacing
		want Pacing
	}{
		{"zero takes every default", Pacing{}, def},
		{"negative takes the default", Pacing{WaitTime: -1, MinQueryInterval: -1, RetryBase: -1, RetryMax: -1}, def},
		{"set values stay",
			Pacing{WaitTime: 5 * time.Second, MinQueryInterval: 10 * time.Millisecond, RetryBase: time.Second, RetryMax: 2 * time.Second},
			Pacing{WaitTime: 5 * time.Second, MinQueryInterval: 10 * time.Millisecond, RetryBase: time.Second, RetryMax: 2 * time.Second}},
		{"wait time capped at Consul's maximum", Pacing{WaitTime: time.Hour},
			Pacing{WaitTime: MaxWaitTime, MinQueryInterval: time.Second, RetryBase: 250 * time.Millisecond, RetryMax: 10 * time.Second}},
		{"retry max below base follows base", Pacing{RetryBase: time.Minute, RetryMax: time.Second},
			Pacing{WaitTime: time.Minute, MinQueryInterval: time.Second, RetryBase: time.Minute, RetryMax: time.Minute}},
		{"default retry max below a set base follows base", Pacing{RetryBase: 30 * time.Second},
			Pacing{WaitTime: time.Minute, MinQueryInterval: time.Second, RetryBase: 30 * time.Second, RetryMax: 30 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.WithDefaults(def); got != tt.want {
				t.Errorf("%+v.WithDefaults() = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestQueryTimeout(t *testing.T) {
	tests := []struct {
		wait, want time.Duration
	}{
		{time.Minute, time.Minute + 3750*time.Millisecond + 10*time.Second},
		{MaxWaitTime, MaxWaitTime + 37500*time.Millisecond + 10*time.Second},
		{300 * time.Millisecond, 300*time.Millisecond + 18750*time.Microsecond + 10*time.Second},
	}
	for _, tt := range tests {
		if got := (Pacing{WaitTime: tt.wait}).QueryTimeout(); got != tt.want {
			t.Errorf("Pacing{WaitTime: %v}.QueryTimeout() = %v, want %v", tt.wait, got, tt.want)
		}
	}
}

func TestNextIndex(t *testing.T) {
	tests := []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first answer", 0, 42, 42},
		{"unchanged", 42, 42, 42},
		{"moved on", 42, 57, 57},
		{"went backwards: restart from 0", 57, 42, 0},
		{"went back to 0: restart from 0", 57, 0, 0},
		{"0 on a fresh read: 1 blocks", 0, 0, 1},
		{"1 stays", 1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NextIndex(tt.prev, tt.got); got != tt.want {
				t.Errorf("NextIndex(%d, %d) = %d, want %d", tt.prev, tt.got, got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		name      string
		base, max time.Duration
		n         int
		lo, hi    time.Duration
	}{
		{"first retry: base", 100 * time.Millisecond, 2 * time.Second, 1, 50 * time.Millisecond, 100 * time.Millisecond},
		{"doubles", 100 * time.Millisecond, 2 * time.Second, 3, 200 * time.Millisecond, 400 * time.Millisecond},
		{"capped", 100 * time.Millisecond, 2 * time.Second, 6, time.Second, 2 * time.Second},
		{"shift overflow stays capped", 100 * time.Millisecond, 2 * time.Second, 40, time.Second, 2 * time.Second},
		{"n = 30 stays capped", time.Second, time.Minute, 30, 30 * time.Second, time.Minute},
		{"base above max", time.Minute, time.Second, 1, 500 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seenLow, seenHigh := false, false
			for range 500 {
				d := Backoff(tt.base, tt.max, tt.n)
				if d < tt.lo || d > tt.hi {
					t.Fatalf("Backoff(%v, %v, %d) = %v, want in [%v, %v]", tt.base, tt.max, tt.n, d, tt.lo, tt.hi)
				}
				seenLow = seenLow || d < tt.lo+(tt.hi-tt.lo)/4
				seenHigh = seenHigh || d > tt.hi-(tt.hi-tt.lo)/4
			}
			if !seenLow || !seenHigh {
				t.Errorf("Backoff(%v, %v, %d) over 500 picks: low quarter seen %v, high quarter seen %v, want both (jitter over [%v, %v])",
					tt.base, tt.max, tt.n, seenLow, seenHigh, tt.lo, tt.hi)
			}
		})
	}
	for n := 1; n <= 40; n++ {
		base, maxDelay := 100*time.Millisecond, 2*time.Second
		want := min(base<<min(n-1, 30), maxDelay)
		for range 50 {
			if d := Backoff(base, maxDelay, n); d < want/2 || d > want {
				t.Fatalf("Backoff(%v, %v, %d) = %v, want in [%v, %v]", base, maxDelay, n, d, want/2, want)
			}
		}
	}
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(t.Context(), 3*time.Second) {
			t.Fatal("Sleep(live ctx, 3s) = false, want true")
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Errorf("Sleep(live ctx, 3s) took %v, want 3s", d)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start = time.Now()
		if Sleep(ctx, time.Hour) {
			t.Fatal("Sleep(ctx done after 1s, 1h) = true, want false")
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("Sleep(ctx done after 1s, 1h) took %v, want 1s", d)
		}
	})
}

// TestLoopRateLimit checks the token bucket: two queries go at once, then one per
// MinQueryInterval; and Wait reports false once ctx is done, waiting for ctx when its
// deadline comes before the next token.
func TestLoopRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := NewLoop(Pacing{WaitTime: time.Minute, MinQueryInterval: time.Second, RetryBase: time.Second, RetryMax: time.Second})
		start := time.Now()
		var at []time.Duration
		for range 4 {
			if !l.Wait(t.Context()) {
				t.Fatal("Wait(live ctx) = false, want true")
			}
			at = append(at, time.Since(start))
		}
		want := []time.Duration{0, 0, time.Second, 2 * time.Second}
		for i := range want {
			if at[i] != want[i] {
				t.Errorf("query %d went at %v, want %v (all: %v)", i, at[i], want[i], at)
			}
		}

		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start = time.Now()
		if l.Wait(ctx) {
			t.Error("Wait(ctx ending before the next token) = true, want false")
		}
		if d := time.Since(start); d != 100*time.Millisecond || ctx.Err() == nil {
			t.Errorf("Wait(ctx ending before the next token) returned after %v with ctx.Err() = %v, want after 100ms with ctx done", d, ctx.Err())
		}
	})
}

// TestLoopIndexAndFailures walks a loop through answers and failures and checks the
// index each query waits on, what Answered reports and the backoff bounds.
func TestLoopIndexAndFailures(t *testing.T) {
	p := Pacing{WaitTime: 30 * time.Second, MinQueryInterval: time.Millisecond, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond}
	l := NewLoop(p)
	type step struct {
		fail         bool
		answer       uint64
		wantIndex    uint64 // WaitIndex of the query that gets this result
		wantChanged  bool
		wantFailures int           // returned by Failed (the run so far) or Answered (the run it ends)
		wantMaxDelay time.Duration // upper bound of Failed's delay
	}
	steps := []step{
		{answer: 10, wantIndex: 0, wantChanged: true},
		{answer: 10, wantIndex: 10, wantChanged: false},
		{answer: 12, wantIndex: 10, wantChanged: true},
		{fail: true, wantIndex: 12, wantFailures: 1, wantMaxDelay: 100 * time.Millisecond},
		{fail: true, wantIndex: 0, wantFailures: 2, wantMaxDelay: 200 * time.Millisecond},
		{fail: true, wantIndex: 0, wantFailures: 3, wantMaxDelay: 300 * time.Millisecond},
		{fail: true, wantIndex: 0, wantFailures: 4, wantMaxDelay: 300 * time.Millisecond},
		// A fresh read after the outage: an agent that restarted answers with a low index.
		{answer: 5, wantIndex: 0, wantChanged: true, wantFailures: 4},
		{answer: 6, wantIndex: 5, wantChanged: true},
		// The index went backwards: the next query restarts from 0.
		{answer: 3, wantIndex: 6, wantChanged: true},
		// 0 on the fresh read: the next query waits on 1.
		{answer: 0, wantIndex: 0, wantChanged: false},
		{answer: 7, wantIndex: 1, wantChanged: true},
	}
	for i, s := range steps {
		q, cancel := l.Query(t.Context(), &api.QueryOptions{Datacenter: "dc1", AllowStale: true})
		if q.WaitIndex != s.wantIndex || l.Index() != s.wantIndex {
			t.Errorf("step %d: Query().WaitIndex = %d, Index() = %d, want %d", i, q.WaitIndex, l.Index(), s.wantIndex)
		}
		if q.WaitTime != p.WaitTime || q.Datacenter != "dc1" || !q.AllowStale {
			t.Errorf("step %d: Query() = %+v, want WaitTime %v with the caller's Datacenter and AllowStale kept", i, q, p.WaitTime)
		}
		if dl, ok := q.Context().Deadline(); !ok || time.Until(dl) > p.QueryTimeout() {
			t.Errorf("step %d: Query() context deadline %v (set %v), want within QueryTimeout %v", i, dl, ok, p.QueryTimeout())
		}
		cancel()
		if s.fail {
			n, d := l.Failed()
			if n != s.wantFailures || d < s.wantMaxDelay/2 || d > s.wantMaxDelay {
				t.Errorf("step %d: Failed() = %d, %v, want %d, a delay in [%v, %v]", i, n, d, s.wantFailures, s.wantMaxDelay/2, s.wantMaxDelay)
			}
			continue
		}
		changed, n := l.Answered(s.answer)
		if changed != s.wantChanged || n != s.wantFailures {
			t.Errorf("step %d: Answered(%d) = %v, %d, want %v, %d", i, s.answer, changed, n, s.wantChanged, s.wantFailures)
		}
	}
}
