package l7

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
)

// requestIDs makes the X-Request-Id values of requests that come without one: UUIDv4-
// formatted, unique, and not guessable from one another without the generators' random
// keys (they serve to correlate logs, access-log records and replies, not to authorize).
// Drawing 128 random bits per request from the runtime's ChaCha8 generator and encoding
// them cost about 1 k instructions; a generator here numbers its IDs and scrambles the
// number with a keyed permutation, which costs a few dozen. Generators live in a
// sync.Pool, so each processor mostly uses its own and the counter is not shared.
//
// The zero value is ready to use; next is safe to call concurrently. A requestIDs must
// not be copied after first use.
type requestIDs struct {
	pool sync.Pool // *idGen
}

// idGen numbers IDs. hi is random per generator: IDs from different generators differ
// there (but for a 2^-60 chance per pair of generators). lo is a permutation of the
// counter on 62 bits, keyed by k, so it never repeats within a generator.
type idGen struct {
	hi         uint64
	k0, k1, k2 uint64
	n          uint64
}

const mask62 = 1<<62 - 1

// next returns a new request ID.
func (r *requestIDs) next() string {
	g, _ := r.pool.Get().(*idGen)
	if g == nil {
		g = &idGen{hi: rand.Uint64(), k0: rand.Uint64(), k1: rand.Uint64(), k2: rand.Uint64()}
	}
	g.n++
	hi, lo := g.hi, spread62(permute62(g.n, g.k0, g.k1, g.k2))
	r.pool.Put(g)
	return formatUUID(hi, lo)
}

// permute62 is a bijection of the 62-bit values keyed by k0, k1 and k2: additions of keys
// and multiplications by odd constants modulo 2^62, and xorshifts, each one invertible.
func permute62(x, k0, k1, k2 uint64) uint64 {
	x = (x + k0) & mask62
	x = x * 0x9e3779b97f4a7c15 & mask62
	x ^= x >> 31
	x = (x + k1) & mask62
	x = x * 0xbf58476d1ce4e5b9 & mask62
	x ^= x >> 29
	x = (x + k2) & mask62
	x = x * 0x94d049bb133111eb & mask62
	x ^= x >> 32
	return x
}

// spread62 places the 62 bits of x in a uint64 leaving bits 6 and 7 zero: those become the
// UUID's variant bits (the top bits of its ninth byte, lo's lowest).
func spread62(x uint64) uint64 {
	return x&0x3f | x>>6<<8
}

// formatUUID formats the 16 bytes hi and lo stand for (least significant byte first, as
// newRequestID lays them out) as a UUIDv4: version 4, variant 10.
func formatUUID(hi, lo uint64) string {
	hi = hi&^(0xf0<<48) | 0x40<<48 // version: the top of the seventh byte
	lo = lo&^0xc0 | 0x80           // variant: the top of the ninth byte
	var out [36]byte
	le := binary.LittleEndian
	le.PutUint64(out[0:], hex4(uint32(hi)))
	out[8] = '-'
	h := hex4(uint32(hi >> 32))
	le.PutUint32(out[9:], uint32(h))
	out[13] = '-'
	le.PutUint32(out[14:], uint32(h>>32))
	out[18] = '-'
	h = hex4(uint32(lo))
	le.PutUint32(out[19:], uint32(h))
	out[23] = '-'
	le.PutUint32(out[24:], uint32(h>>32))
	le.PutUint64(out[28:], hex4(uint32(lo>>32)))
	return string(out[:])
}

// hex4 returns the lower-case hex digits of the 4 bytes of v, least significant byte
// first and each byte's high digit first, as the 8 bytes of a little-endian uint64:
// all digits at once rather than one table lookup each.
func hex4(v uint32) uint64 {
	x := uint64(v)
	x = (x | x<<16) & 0x0000ffff0000ffff
	x = (x | x<<8) & 0x00ff00ff00ff00ff // byte 2k holds byte k of v
	x = x>>4&0x000f000f000f000f | (x&0x000f000f000f000f)<<8
	// Each byte is now a digit's value d: '0'+d, plus 'a'-'0'-10 where d >= 10.
	letters := (x + 0x0606060606060606) >> 4 & 0x0101010101010101
	return x + 0x3030303030303030 + letters*('a'-'0'-10)
}
