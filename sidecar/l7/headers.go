package l7

import (
	"encoding/hex"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

// newRequestID returns a random UUIDv4-formatted request ID.
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

// hashFunc returns the function computing a request's hash key for ring_hash and maglev from
// a hash_on setting; a request without the key gets no hash (a random pick).
func hashFunc(hashOn string) func(*http.Request) (uint64, bool) {
	kind, name, _ := strings.Cut(hashOn, ":")
	switch kind {
	case "header":
		name = http.CanonicalHeaderKey(name)
		return func(r *http.Request) (uint64, bool) {
			v := r.Header[name]
			if len(v) == 0 {
				return 0, false
			}
			return balancer.HashString(v[0]), true
		}
	case "cookie":
		return func(r *http.Request) (uint64, bool) {
			c, err := r.Cookie(name)
			if err != nil {
				return 0, false
			}
			return balancer.HashString(c.Value), true
		}
	case "source_ip":
		return func(r *http.Request) (uint64, bool) {
			ip, _, err := net.SplitHostPort(r.RemoteAddr)
			if err != nil {
				ip = r.RemoteAddr
			}
			return balancer.HashString(ip), true
		}
	default:
		return func(*http.Request) (uint64, bool) { return 0, false }
	}
}
