package ratelimit

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func within(got, want, frac float64) bool { return math.Abs(got-want) <= frac*want }

// TestAccuracySynctest sends at 3× the limit for 3 s of fake time and expects
// rate × time + burst requests through, ±10 %. (With a burst of 1 a token bucket fed at
// discrete instants loses the part of each token period that passes between a token
// becoming whole and the next arrival, so the cases keep a burst of at least 2.)
func TestAccuracySynctest(t *testing.T) {
	tests := []struct {
		rate  float64
		burst int
	}{{100, 50}, {10, 5}, {1000, 100}, {7.5, 20}, {50, 2}}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%g/s burst %d", tc.rate, tc.burst), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := New(Limit{Rate: tc.rate, Burst: tc.burst}, false, Options{})
				const dur = 3 * time.Second
				interval := time.Duration(float64(time.Second) / (3 * tc.rate))
				allowed := 0
				for start := time.Now(); time.Since(start) < dur; time.Sleep(interval) {
					if l.Allow(Key{}).Allowed {
						allowed++
					}
				}
				want := tc.rate*dur.Seconds() + float64(tc.burst)
				if !within(float64(allowed), want, 0.10) {
					t.Errorf("allowed = %d, want %v ±10%%", allowed, want)
				}
			})
		})
	}
}

// TestAccuracyRealTime is the same check against the real clock, with the expected count
// computed from the time that really passed.
func TestAccuracyRealTime(t *testing.T) {
	// A burst of a second's worth keeps the count right even if this goroutine is kept off
	// the CPU for a while on a loaded machine (tokens are lost only when the bucket is full).
	const rate, burst = 100.0, 100
	l := New(Limit{Rate: rate, Burst: burst}, false, Options{})
	interval := time.Second / (3 * rate)
	allowed := 0
	start := time.Now()
	next := start
	for time.Since(start) < time.Second {
		if l.Allow(Key{}).Allowed {
			allowed++
		}
		next = next.Add(interval)
		time.Sleep(time.Until(next))
	}
	want := rate*time.Since(start).Seconds() + burst
	if !within(float64(allowed), want, 0.10) {
		t.Errorf("allowed = %d, want %.0f ±10%%", allowed, want)
	}
}

func TestResult(t *testing.T) {
	c := newClock()
	l := New(Limit{Rate: 2, Burst: 3}, false, Options{Now: c.Now})
	steps := []struct {
		advance time.Duration
		want    Result
	}{
		{0, Result{Allowed: true, Limit: 3, Remaining: 2, Reset: 500 * time.Millisecond}},
		{0, Result{Allowed: true, Limit: 3, Remaining: 1, Reset: time.Second}},
		{0, Result{Allowed: true, Limit: 3, Remaining: 0, Reset: 1500 * time.Millisecond}},
		{0, Result{Allowed: false, Limit: 3, Remaining: 0, Reset: 1500 * time.Millisecond, RetryAfter: 500 * time.Millisecond}},
		{250 * time.Millisecond, Result{Allowed: false, Limit: 3, Remaining: 0, Reset: 1250 * time.Millisecond, RetryAfter: 250 * time.Millisecond}},
		{250 * time.Millisecond, Result{Allowed: true, Limit: 3, Remaining: 0, Reset: 1500 * time.Millisecond}},
		{10 * time.Second, Result{Allowed: true, Limit: 3, Remaining: 2, Reset: 500 * time.Millisecond}},
	}
	for i, s := range steps {
		c.Advance(s.advance)
		if got := l.Allow(Key{}); !reflect.DeepEqual(got, s.want) {
			t.Errorf("step %d: Allow() = %+v, want %+v", i, got, s.want)
		}
	}
}

func TestSetHeaders(t *testing.T) {
	tests := []struct {
		name string
		r    Result
		want map[string]string
	}{
		{"limited", Result{Allowed: false, Limit: 10, Remaining: 0, Reset: 4100 * time.Millisecond, RetryAfter: 100 * time.Millisecond},
			map[string]string{"RateLimit-Limit": "10", "RateLimit-Remaining": "0", "RateLimit-Reset": "5",
				"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "5", "Retry-After": "1"}},
		{"limited long", Result{Allowed: false, Limit: 1, Reset: 90 * time.Second, RetryAfter: 90 * time.Second},
			map[string]string{"Retry-After": "90", "RateLimit-Reset": "90"}},
		{"allowed", Result{Allowed: true, Limit: 10, Remaining: 7, Reset: 300 * time.Millisecond},
			map[string]string{"RateLimit-Remaining": "7", "RateLimit-Reset": "1", "Retry-After": ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			tc.r.SetHeaders(h)
			for k, v := range tc.want {
				if got := h.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestSeparateKeys(t *testing.T) {
	c := newClock()
	l := New(Limit{Rate: 1, Burst: 2}, true, Options{Now: c.Now})
	keys := []Key{{}, {S: "spiffe://mesh.local/svc/a"}, {S: "spiffe://mesh.local/svc/b"},
		{IP: netip.MustParseAddr("10.0.0.1")}, {IP: netip.MustParseAddr("10.0.0.2")},
		{IP: netip.MustParseAddr("::1")}, {S: strings.Repeat("x", 1000)}, {S: strings.Repeat("x", 999) + "y"}}
	for _, k := range keys {
		for i := 0; i < 2; i++ {
			if !l.Allow(k).Allowed {
				t.Errorf("Allow(%.20v) #%d refused, want allowed (own bucket)", k, i+1)
			}
		}
		if l.Allow(k).Allowed {
			t.Errorf("Allow(%.20v) #3 allowed, want refused", k)
		}
	}
	if got := l.Len(); got != len(keys) {
		t.Errorf("Len() = %d, want %d", got, len(keys))
	}
}

func TestUnkeyedSharesOneBucket(t *testing.T) {
	c := newClock()
	l := New(Limit{Rate: 1, Burst: 2}, false, Options{Now: c.Now})
	got := []bool{l.Allow(Key{S: "a"}).Allowed, l.Allow(Key{S: "b"}).Allowed, l.Allow(Key{S: "c"}).Allowed}
	if want := []bool{true, true, false}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Allow() = %v, want %v", got, want)
	}
	if l.Keyed() || l.Len() != 1 {
		t.Errorf("Keyed() = %v, Len() = %d; want false, 1", l.Keyed(), l.Len())
	}
}

// TestLRUBound feeds 100k distinct keys (long ones too) and checks that the number of
// buckets and the heap stay bounded.
func TestLRUBound(t *testing.T) {
	const maxKeys = 1000
	l := New(Limit{Rate: 10, Burst: 10}, true, Options{MaxKeys: maxKeys})
	if l.MaxKeys() != maxKeys {
		t.Fatalf("MaxKeys() = %d, want %d", l.MaxKeys(), maxKeys)
	}
	for i := 0; i < 2000; i++ { // warm up to the bound
		l.Allow(Key{S: fmt.Sprintf("warm-%d", i)})
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	long := strings.Repeat("k", 4096)
	for i := 0; i < 100_000; i++ {
		k := Key{S: fmt.Sprintf("attacker-%d", i)}
		if i%10 == 0 {
			k = Key{S: long + k.S}
		}
		if i%3 == 0 {
			k = Key{IP: netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})}
		}
		if !l.Allow(k).Allowed {
			t.Fatalf("Allow(new key %d) refused, want a fresh full bucket", i)
		}
		if n := l.Len(); i%10000 == 0 && n > maxKeys {
			t.Fatalf("after %d keys Len() = %d, want <= %d", i, n, maxKeys)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := l.Len(); n != maxKeys {
		t.Errorf("Len() = %d, want %d", n, maxKeys)
	}
	if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 1<<20 {
		t.Errorf("heap grew by %d bytes over 100k keys, want < 1 MiB", grew)
	}
}

func TestLRUEvictsLeastRecentlyUsed(t *testing.T) {
	c := newClock()
	// MaxKeys below the shard count: one key per shard, so use a bound of 1 to test order.
	l := New(Limit{Rate: 1, Burst: 1}, true, Options{MaxKeys: 1, Now: c.Now})
	a, b := Key{S: "a"}, Key{S: "b"}
	l.Allow(a)
	if l.Allow(a).Allowed {
		t.Fatal("Allow(a) #2 allowed, want refused")
	}
	l.Allow(b) // evicts a
	if !l.Allow(a).Allowed {
		t.Error("Allow(a) after eviction refused, want a fresh bucket")
	}

	// With room for two per shard, touching a key keeps it.
	l = New(Limit{Rate: 1, Burst: 1}, true, Options{MaxKeys: 2, Now: c.Now})
	x, y, z := Key{S: "x"}, Key{S: "y"}, Key{S: "z"}
	l.Allow(x)
	l.Allow(y)
	l.Allow(x) // x most recent; refused, but touched
	l.Allow(z) // evicts y
	if l.Allow(x).Allowed {
		t.Error("Allow(x) allowed, want refused: x was used recently and must not be evicted")
	}
	if !l.Allow(y).Allowed {
		t.Error("Allow(y) refused, want a fresh bucket: y was least recently used")
	}
}

func TestConcurrent(t *testing.T) {
	l := New(Limit{Rate: 1000, Burst: 100}, true, Options{MaxKeys: 500})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ {
				l.Allow(Key{S: fmt.Sprint(g*7 + i%1000)})
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n > 500 {
		t.Errorf("Len() = %d, want <= 500", n)
	}
}

func TestNewPanicsOnInvalidLimit(t *testing.T) {
	for _, lim := range []Limit{{0, 1}, {-1, 1}, {1, 0}, {math.Inf(1), 1}, {math.NaN(), 1}} {
		t.Run(fmt.Sprint(lim), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%v) did not panic", lim)
				}
			}()
			New(lim, false, Options{})
		})
	}
}

func TestAllowDoesNotAllocate(t *testing.T) {
	l := New(Limit{Rate: 1e9, Burst: 1e9}, true, Options{})
	k := Key{S: "spiffe://mesh.local/svc/web", IP: netip.MustParseAddr("10.1.2.3")}
	l.Allow(k)
	if a := testing.AllocsPerRun(1000, func() { l.Allow(k) }); a != 0 {
		t.Errorf("Allow(known key) allocs = %v, want 0", a)
	}
	u := New(Limit{Rate: 1e9, Burst: 1e9}, false, Options{})
	if a := testing.AllocsPerRun(1000, func() { u.Allow(Key{}) }); a != 0 {
		t.Errorf("Allow(unkeyed) allocs = %v, want 0", a)
	}
}

func BenchmarkAllowUnkeyed(b *testing.B) {
	l := New(Limit{Rate: 1e9, Burst: 1e9}, false, Options{})
	b.ReportAllocs()
	for b.Loop() {
		l.Allow(Key{})
	}
}

func BenchmarkAllowKeyed(b *testing.B) {
	l := New(Limit{Rate: 1e9, Burst: 1e9}, true, Options{})
	keys := make([]Key, 1000)
	for i := range keys {
		keys[i] = Key{S: fmt.Sprintf("spiffe://mesh.local/svc/s%d", i)}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Allow(keys[i%len(keys)])
		i++
	}
}

func BenchmarkAllowKeyedParallel(b *testing.B) {
	l := New(Limit{Rate: 1e9, Burst: 1e9}, true, Options{})
	keys := make([]Key, 1000)
	for i := range keys {
		keys[i] = Key{IP: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l.Allow(keys[i%len(keys)])
			i++
		}
	})
}

func BenchmarkAllowNewKeys(b *testing.B) {
	l := New(Limit{Rate: 10, Burst: 10}, true, Options{MaxKeys: 10000})
	keys := make([]Key, 1<<16)
	for i := range keys {
		keys[i] = Key{IP: netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		l.Allow(keys[i%len(keys)])
		i++
	}
}

// TestShardSpread checks that similar keys (consecutive IPs, numbered identities) spread
// over the shards: a poor hash would put them all in one shard and evict early.
func TestShardSpread(t *testing.T) {
	for _, kind := range []string{"ipv4", "ipv6", "string"} {
		t.Run(kind, func(t *testing.T) {
			used := map[uint64]bool{}
			for i := 0; i < 4096; i++ {
				var k Key
				switch kind {
				case "ipv4":
					k.IP = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
				case "ipv6":
					k.IP = netip.AddrFrom16([16]byte{0x20, 0x01, 0xd, 0xb8, 14: byte(i >> 8), 15: byte(i)})
				default:
					k.S = fmt.Sprintf("spiffe://mesh.local/svc/s%d", i)
				}
				used[shardOf(k)%numShards] = true
			}
			if len(used) != numShards {
				t.Errorf("4096 keys used %d shards, want all %d", len(used), numShards)
			}
		})
	}
}

// TestTakeMatchesAllow runs the same keys through Allow and Take on two Limiters and
// compares the outcomes, and a refusal's Result.
func TestTakeMatchesAllow(t *testing.T) {
	c := newClock()
	keys := []Key{{IP: netip.MustParseAddr("10.0.0.1")}, {IP: netip.MustParseAddr("10.0.0.2")}, {S: "a"},
		{IP: netip.MustParseAddr("::1")}, {}, {IP: netip.MustParseAddr("10.0.0.1")}}
	for _, keyed := range []bool{false, true} {
		la := New(Limit{Rate: 2, Burst: 3}, keyed, Options{Now: c.Now})
		lt := New(Limit{Rate: 2, Burst: 3}, keyed, Options{Now: c.Now})
		for i := 0; i < 40; i++ {
			k := keys[i%len(keys)]
			c.Advance(70 * time.Millisecond)
			want := la.Allow(k)
			var got Result
			ok := lt.Take(k, &got)
			if ok != want.Allowed {
				t.Fatalf("keyed %v, call %d, key %+v: Take() = %v, want %v", keyed, i, k, ok, want.Allowed)
			}
			if !ok && !reflect.DeepEqual(got, want) {
				t.Fatalf("keyed %v, call %d, key %+v: Take() refused with %+v, want %+v", keyed, i, k, got, want)
			}
		}
	}
}

// TestLRUMixedKeys checks eviction across IPv4 keys (kept in their own map) and other keys
// in one shard.
func TestLRUMixedKeys(t *testing.T) {
	c := newClock()
	l := New(Limit{Rate: 1, Burst: 1}, true, Options{MaxKeys: 1, Now: c.Now})
	ip, s := Key{IP: netip.MustParseAddr("10.0.0.1")}, Key{S: "a"}
	l.Allow(ip)
	if l.Allow(ip).Allowed {
		t.Fatal("Allow(ip) #2 allowed, want refused")
	}
	l.Allow(s) // evicts ip
	if n := l.Len(); n != 1 {
		t.Errorf("Len() = %d, want 1", n)
	}
	if !l.Allow(ip).Allowed { // evicts s
		t.Error("Allow(ip) after eviction refused, want a fresh bucket")
	}
	if !l.Allow(s).Allowed {
		t.Error("Allow(s) after eviction refused, want a fresh bucket")
	}
}
