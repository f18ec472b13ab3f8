package balancer

import "github.com/cespare/xxhash/v2"

// HashString returns the 64-bit xxHash (XXH64, seed 0) of s, for PickInfo.Hash: the HTTP
// layer hashes the value of the configured header or cookie, or the source IP. Equal strings
// give equal hashes in every process and version. It does not allocate and is safe for
// concurrent use.
func HashString(s string) uint64 {
	return xxhash.Sum64String(s)
}
