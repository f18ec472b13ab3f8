package l7

import (
	"encoding/binary"
	"encoding/hex"
	"math/bits"
	"math/rand/v2"
	"regexp"
	"sync"
	"testing"
)

var uuid4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestRequestIDs checks that IDs are UUIDv4s and unique, from one goroutine and from
// several at once (several generators).
func TestRequestIDs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		goroutines int
		each       int
	}{
		{name: "one goroutine", goroutines: 1, each: 100000},
		{name: "concurrent", goroutines: 8, each: 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ids requestIDs
			got := make([][]string, tc.goroutines)
			var wg sync.WaitGroup
			for i := range tc.goroutines {
				wg.Go(func() {
					for range tc.each {
						got[i] = append(got[i], ids.next())
					}
				})
			}
			wg.Wait()
			seen := make(map[string]bool, tc.goroutines*tc.each)
			for _, l := range got {
				for _, id := range l {
					if !uuid4.MatchString(id) {
						t.Fatalf("next() = %q, want a UUIDv4", id)
					}
					if seen[id] {
						t.Fatalf("next() = %q twice", id)
					}
					seen[id] = true
				}
			}
		})
	}
}

// TestPermute62 checks that permute62 is invertible (so IDs of one generator never
// repeat): undoing its steps gives the input back, for inputs spread over the 62 bits.
func TestPermute62(t *testing.T) {
	const k0, k1, k2 = 0x0123456789abcdef, 0xfedcba9876543210, 0x0f1e2d3c4b5a6978
	inverse := func(y uint64) uint64 {
		unshift := func(y uint64, k uint) uint64 {
			x := y
			for range 62/k + 1 {
				x = y ^ x>>k
			}
			return x
		}
		// modInv is the inverse of an odd c modulo 2^64 (Newton's iteration).
		modInv := func(c uint64) uint64 {
			inv := c
			for range 6 {
				inv *= 2 - c*inv
			}
			return inv
		}
		y = unshift(y, 32)
		y = y * modInv(0x94d049bb133111eb) & mask62
		y = (y - k2) & mask62
		y = unshift(y, 29)
		y = y * modInv(0xbf58476d1ce4e5b9) & mask62
		y = (y - k1) & mask62
		y = unshift(y, 31)
		y = y * modInv(0x9e3779b97f4a7c15) & mask62
		return (y - k0) & mask62
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 100000 {
		x := uint64(i)
		if i%2 == 1 {
			x = r.Uint64() & mask62
		}
		p := permute62(x, k0, k1, k2)
		if p > mask62 {
			t.Fatalf("permute62(%#x) = %#x, want at most 62 bits", x, p)
		}
		if back := inverse(p); back != x {
			t.Fatalf("inverse(permute62(%#x)) = %#x, want %#x", x, back, x)
		}
	}
}

// TestSpread62 checks that spread62 moves each of the 62 bits to a bit of its own, none
// of them 6 or 7 (the variant bits), so that it keeps distinct values distinct.
func TestSpread62(t *testing.T) {
	var used uint64
	for i := range 62 {
		s := spread62(1 << i)
		if bits.OnesCount64(s) != 1 || s&0xc0 != 0 || s&used != 0 {
			t.Fatalf("spread62(1<<%d) = %#x, want one bit, not 6 or 7, not used by another (%#x)", i, s, used)
		}
		used |= s
	}
}

// TestFormatUUID checks the layout: bytes least significant first, version and variant
// set.
func TestFormatUUID(t *testing.T) {
	for _, tc := range []struct {
		hi, lo uint64
		want   string
	}{
		{0, 0, "00000000-0000-4000-8000-000000000000"},
		{0x0706050403020100, 0x0f0e0d0c0b0a0908, "00010203-0405-4607-8809-0a0b0c0d0e0f"},
		{^uint64(0), ^uint64(0), "ffffffff-ffff-4fff-bfff-ffffffffffff"},
	} {
		if got := formatUUID(tc.hi, tc.lo); got != tc.want {
			t.Errorf("formatUUID(%#x, %#x) = %q, want %q", tc.hi, tc.lo, got, tc.want)
		}
	}
	// The same as encoding the bytes one by one.
	r := rand.New(rand.NewPCG(3, 4))
	for range 10000 {
		hi, lo := r.Uint64(), r.Uint64()
		var b [16]byte
		binary.LittleEndian.PutUint64(b[:8], hi)
		binary.LittleEndian.PutUint64(b[8:], lo)
		b[6] = b[6]&0x0f | 0x40
		b[8] = b[8]&0x3f | 0x80
		h := hex.EncodeToString(b[:])
		want := h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
		if got := formatUUID(hi, lo); got != want {
			t.Fatalf("formatUUID(%#x, %#x) = %q, want %q", hi, lo, got, want)
		}
	}
}

// BenchmarkRequestID compares the generator with drawing 128 random bits per ID.
func BenchmarkRequestID(b *testing.B) {
	b.Run("requestIDs", func(b *testing.B) {
		var ids requestIDs
		b.ReportAllocs()
		for b.Loop() {
			_ = ids.next()
		}
	})
	b.Run("random", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = newRequestID()
		}
	})
}

// newRequestID is the generator requestIDs replaced, drawing 128 random bits per ID: the
// benchmark's baseline.
func newRequestID() string {
	var b [16]byte
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := range 8 {
		b[i] = byte(hi >> (8 * i))
		b[8+i] = byte(lo >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}
