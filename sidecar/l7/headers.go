package l7

import (
	"net"
	"net/http"
	"strings"

	"github.com/ferrymesh/ferry/sidecar/balancer"
)

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
