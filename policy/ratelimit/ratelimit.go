// Package ratelimit is Ferry's local rate limiting: token buckets
// (golang.org/x/time/rate) shared by all requests, or one per key (a source identity, a
// header value, a client IP) kept in a bounded LRU so that a caller sending endless distinct
// keys cannot grow memory, and the response headers a limited request gets (Retry-After,
// RateLimit-* and X-RateLimit-*).
//
// Which requests a limit applies to, and which key a request has, is decided by package
// policy; this package only counts.
//
// Per-key buckets are keyed state that changes on every request, so unlike Ferry's
// immutable rule sets they cannot be swapped in whole: they live in a fixed number of
// shards, each a small map plus an intrusive LRU list under its own mutex. A lookup holds
// its shard's lock only for the map access and the move to the front of the list (a few
// pointer writes, no allocation on a hit); the token arithmetic happens after the lock is
// released, under the bucket's own mutex in rate.Limiter. Requests with different keys
// rarely share a shard lock, and requests with the same key must serialize on their bucket
// anyway.
package ratelimit

import (
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"golang.org/x/time/rate"
)

// DefaultMaxKeys is how many per-key buckets a Limiter keeps when Options.MaxKeys is 0.
const DefaultMaxKeys = 10000

// MaxKeyLen is the longest key kept as it is; longer keys (a huge header value, say) are
// replaced by a 64-bit hash of their contents, so that an entry's size is bounded too.
const MaxKeyLen = 128

// Limit is the shape of a token bucket: it refills at Rate tokens per second up to Burst
// tokens, and each request takes one.
type Limit struct {
	// Rate is in tokens (requests, connections) per second; it must be positive.
	Rate float64
	// Burst is the bucket's capacity; it must be at least 1.
	Burst int
}

// Key selects a bucket of a keyed Limiter. The zero Key is a valid key of its own (the
// bucket of requests that have no key value, such as unauthenticated callers when keying
// by identity).
type Key struct {
	// S is a string key: a SPIFFE ID or a header value.
	S string
	// IP is an address key (a client IP).
	IP netip.Addr
}

// Options are a Limiter's optional settings.
type Options struct {
	// MaxKeys bounds how many per-key buckets are kept (least recently used first out);
	// 0 means DefaultMaxKeys. An evicted key starts again with a full bucket.
	MaxKeys int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Limiter is a token bucket, or a set of token buckets one per Key. It is safe for
// concurrent use.
type Limiter struct {
	limit  Limit
	now    func() time.Time
	single *rate.Limiter // unkeyed
	shards []shard       // keyed
}

// New returns a Limiter with one bucket shared by every request (keyed false) or one bucket
// per Key (keyed true) at most opts.MaxKeys of them. It panics if l is not valid (Rate not
// positive and finite, Burst below 1): validate config first.
func New(l Limit, keyed bool, opts Options) *Limiter {
	if !(l.Rate > 0) || math.IsInf(l.Rate, 0) || l.Burst < 1 {
		panic("ratelimit: invalid Limit " + strconv.FormatFloat(l.Rate, 'g', -1, 64) + "/s burst " + strconv.Itoa(l.Burst))
	}
	lim := &Limiter{limit: l, now: opts.Now}
	if lim.now == nil {
		lim.now = time.Now
	}
	if !keyed {
		lim.single = rate.NewLimiter(rate.Limit(l.Rate), l.Burst)
		return lim
	}
	max := opts.MaxKeys
	if max <= 0 {
		max = DefaultMaxKeys
	}
	n := min(numShards, max)
	lim.shards = make([]shard, n)
	for i := range lim.shards {
		s := &lim.shards[i]
		s.capacity = max / n
		if i < max%n {
			s.capacity++
		}
		s.m = make(map[Key]*entry, min(s.capacity, 1024))
		s.head.prev, s.head.next = &s.head, &s.head
	}
	return lim
}

// Limit returns the bucket shape l was made with.
func (l *Limiter) Limit() Limit { return l.limit }

// Keyed reports whether l keeps one bucket per key.
func (l *Limiter) Keyed() bool { return l.single == nil }

// Len returns how many per-key buckets l holds now (1 for an unkeyed Limiter).
func (l *Limiter) Len() int {
	if l.single != nil {
		return 1
	}
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m) + len(s.m4)
		s.mu.Unlock()
	}
	return n
}

// MaxKeys returns the bound on Len.
func (l *Limiter) MaxKeys() int {
	if l.single != nil {
		return 1
	}
	n := 0
	for i := range l.shards {
		n += l.shards[i].capacity
	}
	return n
}

// Allow takes a token from k's bucket (the shared bucket if l is not keyed; k is then
// ignored) and reports the outcome. It does not allocate unless k is seen for the first
// time (or again after eviction).
func (l *Limiter) Allow(k Key) Result {
	now := l.now()
	b := l.single
	if b == nil {
		b = l.bucket(k)
	}
	ok := b.AllowN(now, 1)
	return l.result(ok, b.TokensAt(now))
}

// Take takes a token from k's bucket like Allow and reports whether it could. When it
// could not, it sets *refused to the Result Allow would have returned; an allowed call
// leaves *refused alone and costs one pass through the bucket's lock where Allow takes it
// twice (once more for the tokens left). Use it where an allowed request's Result is not
// needed.
func (l *Limiter) Take(k Key, refused *Result) bool {
	now := l.now()
	b := l.single
	if b == nil {
		b = l.bucket(k)
	}
	if b.AllowN(now, 1) {
		return true
	}
	*refused = l.result(false, b.TokensAt(now))
	return false
}

// result turns a decision and the tokens left into a Result.
func (l *Limiter) result(ok bool, tokens float64) Result {
	r := Result{Allowed: ok, Limit: l.limit.Burst, Remaining: int(math.Floor(tokens))}
	if r.Remaining < 0 {
		r.Remaining = 0
	}
	r.Reset = l.durationFor(float64(l.limit.Burst) - tokens)
	if !ok {
		r.RetryAfter = l.durationFor(1 - tokens)
	}
	return r
}

// durationFor returns how long the bucket takes to gain tokens tokens.
func (l *Limiter) durationFor(tokens float64) time.Duration {
	if tokens <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(tokens / l.limit.Rate * float64(time.Second)))
}

// Result is the outcome of Allow.
type Result struct {
	// Allowed reports whether the request may go on.
	Allowed bool
	// Limit is the bucket's capacity (its burst): the most requests allowed at once.
	Limit int
	// Remaining is how many whole tokens are left after this request.
	Remaining int
	// Reset is how long until the bucket is full again.
	Reset time.Duration
	// RetryAfter is, for a refused request, how long until a token is available; 0 when
	// Allowed.
	RetryAfter time.Duration
	// ExtraHeaders are more response headers to set, from a global rate limit service's
	// response_headers_to_add; nil for local limits.
	ExtraHeaders []Entry
	// RequestHeaders are headers to set on the forwarded request, from a global rate limit
	// service's request_headers_to_add; nil for local limits.
	RequestHeaders []Entry
}

// ceilSeconds returns d in whole seconds, rounded up.
func ceilSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

// RetryAfterSeconds returns the Retry-After value: RetryAfter in whole seconds, rounded up,
// and at least 1 for a refused request (0 when Allowed).
func (r Result) RetryAfterSeconds() int64 {
	if r.Allowed {
		return 0
	}
	return max(1, ceilSeconds(r.RetryAfter))
}

// ResetSeconds returns the RateLimit-Reset value: Reset in whole seconds, rounded up.
func (r Result) ResetSeconds() int64 { return ceilSeconds(r.Reset) }

// SetHeaders sets the rate-limit response headers on h: RateLimit-Limit,
// RateLimit-Remaining and RateLimit-Reset (draft-ietf-httpapi-ratelimit-headers-03, Reset
// in delta seconds), their X-RateLimit-* twins (same values, as Envoy sends them), and for
// a refused request Retry-After (delta seconds), then ExtraHeaders. Send them on every 429;
// on allowed responses they are optional. It allocates the header values.
func (r Result) SetHeaders(h http.Header) {
	limit := strconv.Itoa(r.Limit)
	remaining := strconv.Itoa(r.Remaining)
	reset := strconv.FormatInt(r.ResetSeconds(), 10)
	h["Ratelimit-Limit"] = []string{limit}
	h["Ratelimit-Remaining"] = []string{remaining}
	h["Ratelimit-Reset"] = []string{reset}
	h["X-Ratelimit-Limit"] = []string{limit}
	h["X-Ratelimit-Remaining"] = []string{remaining}
	h["X-Ratelimit-Reset"] = []string{reset}
	if !r.Allowed {
		h["Retry-After"] = []string{strconv.FormatInt(r.RetryAfterSeconds(), 10)}
	}
	for _, e := range r.ExtraHeaders {
		h.Set(e.Key, e.Value)
	}
}

// numShards is how many shards a keyed Limiter has (fewer if MaxKeys is smaller): enough
// that cores rarely meet on a shard lock.
const numShards = 64

// shard is one part of a keyed Limiter's LRU: a map from key to entry and a circular list
// of the entries, most recently used first, under mu. Keys that are only an IPv4 address
// (the usual client_ip key) live in m4 instead of m, indexed by the address as a number:
// a lookup there neither hashes a Key struct nor compares strings.
type shard struct {
	mu       sync.Mutex
	m        map[Key]*entry
	m4       map[uint32]*entry
	head     entry // sentinel: head.next is the most recently used entry
	capacity int
	_        [64]byte // keep shards' locks on separate cache lines
}

// entry is one key's bucket and its place in the LRU list.
type entry struct {
	key        Key
	bucket     *rate.Limiter
	prev, next *entry
}

// bucket returns k's bucket, making it (and evicting the least recently used bucket of its
// shard if the shard is full) if k has none.
func (l *Limiter) bucket(k Key) *rate.Limiter {
	if len(k.S) > MaxKeyLen {
		k.S = hashedKey(k.S)
	}
	a4, is4 := ipv4Key(k)
	var s *shard
	if is4 {
		s = &l.shards[shardOf4(a4)%uint64(len(l.shards))]
	} else {
		s = &l.shards[shardOf(k)%uint64(len(l.shards))]
	}
	s.mu.Lock()
	var e *entry
	if is4 {
		e = s.m4[a4]
	} else {
		e = s.m[k]
	}
	if e != nil {
		if s.head.next != e {
			e.unlink()
			s.pushFront(e)
		}
		b := e.bucket
		s.mu.Unlock()
		return b
	}
	if len(s.m)+len(s.m4) >= s.capacity {
		e = s.head.prev
		e.unlink()
		if a, ok := ipv4Key(e.key); ok {
			delete(s.m4, a)
		} else {
			delete(s.m, e.key)
		}
	} else {
		e = new(entry)
	}
	// A new bucket even when the entry is reused: a goroutine may still hold the evicted
	// one outside the lock.
	e.key = k
	e.bucket = rate.NewLimiter(rate.Limit(l.limit.Rate), l.limit.Burst)
	if is4 {
		if s.m4 == nil {
			s.m4 = make(map[uint32]*entry)
		}
		s.m4[a4] = e
	} else {
		s.m[k] = e
	}
	s.pushFront(e)
	b := e.bucket
	s.mu.Unlock()
	return b
}

func (s *shard) pushFront(e *entry) {
	e.prev, e.next = &s.head, s.head.next
	s.head.next.prev = e
	s.head.next = e
}

func (e *entry) unlink() {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

// hashedKey replaces a long key by a fixed-size one derived from its contents. The leading
// NUL keeps it apart from short keys, which come from header values and identities and so
// cannot contain NUL.
func hashedKey(s string) string {
	var b [9]byte
	h := xxhash.Sum64String(s)
	for i := 1; i < 9; i++ {
		b[i] = byte(h >> (8 * (i - 1)))
	}
	return string(b[:])
}

// ipv4Key returns k's address as a number when k is only an IPv4 address (no string, not
// IPv4-mapped, so no zone either).
func ipv4Key(k Key) (uint32, bool) {
	if k.S != "" || !k.IP.Is4() {
		return 0, false
	}
	b := k.IP.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]), true
}

// shardOf4 hashes an IPv4 key (see ipv4Key) to choose its shard: a multiplicative hash,
// whose high bits mix every bit of the address.
func shardOf4(a uint32) uint64 {
	return (uint64(a) * 0x9e3779b97f4a7c15) >> 32
}

// shardOf hashes k to choose its shard.
func shardOf(k Key) uint64 {
	h := xxhash.Sum64String(k.S)
	if k.IP.IsValid() {
		a := k.IP.As16()
		h ^= xxhash.Sum64(a[:])
	}
	return h
}
