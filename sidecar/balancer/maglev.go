package balancer

import (
	"cmp"
	"math/rand/v2"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// maglevTableSize is the size of the Maglev lookup table, Envoy's default. It must be prime.
const maglevTableSize = 65537

// maglev is a Maglev lookup table: table[hash % maglevTableSize] indexes endpoints. Exactly
// one of table16 and table32 is set (table16 when there are at most 1<<16 endpoints).
type maglev struct {
	endpoints []*Endpoint
	table16   []uint16
	table32   []uint32
}

var _ Picker = (*maglev)(nil)

// NewMaglev is the Builder of the maglev policy: a Maglev lookup table (Eisenbud et al.,
// NSDI 2016) of 65537 entries, filled like Envoy's MaglevTable. Each endpoint walks its own
// permutation of the table, from offset xxHash(address, seed 0) mod 65537 in steps of
// xxHash(address, seed 1) mod 65536 + 1, claiming the first free entry each time it takes a
// turn; in the weighted form an endpoint takes a turn on a round only while it is not ahead
// of weight/maxWeight turns per round, so it ends up with entries in proportion to its
// weight. Pick returns table[PickInfo.Hash mod 65537], or a random entry's endpoint when the
// request has no hash key.
//
// Endpoints are placed in address order, so equal sets give equal tables whatever their
// order. When one of N endpoints is removed, its entries go to the others and, as the paper
// shows, only a few other entries change hands: under 1% of the table for N from 3 to 100,
// equal or mixed weights (TestMaglevRemoveEndpoint). The table takes 128 KiB (256 KiB
// above 65536 endpoints).
//
// NewMaglev may be called concurrently; the Picker is immutable and safe for concurrent use.
func NewMaglev(endpoints []*Endpoint) Picker {
	m := &maglev{endpoints: endpoints}
	if len(endpoints) < 2 {
		return m
	}
	table := maglevTable(endpoints)
	if len(endpoints) <= 1<<16 {
		m.table16 = make([]uint16, len(table))
		for i, v := range table {
			m.table16[i] = uint16(v)
		}
	} else {
		m.table32 = table
	}
	return m
}

// maglevTable fills a lookup table with indexes into endpoints.
func maglevTable(endpoints []*Endpoint) []uint32 {
	const size = maglevTableSize
	type entry struct {
		index  uint32
		weight uint64
		target uint64 // turns are taken while round·weight >= target
		skip   uint64
		next   uint64 // the next table slot of the endpoint's permutation
	}
	entries := make([]entry, len(endpoints))
	var maxWeight uint64
	d := xxhash.NewWithSeed(0)
	for i, e := range endpoints {
		d.ResetWithSeed(0)
		_, _ = d.WriteString(e.Address)
		offset := d.Sum64() % size
		d.ResetWithSeed(1)
		_, _ = d.WriteString(e.Address)
		skip := d.Sum64()%(size-1) + 1
		w := weightOf(e)
		maxWeight = max(maxWeight, w)
		entries[i] = entry{index: uint32(i), weight: w, skip: skip, next: offset}
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		return cmp.Compare(endpoints[a.index].Address, endpoints[b.index].Address)
	})

	const free = ^uint32(0)
	table := make([]uint32, size)
	for i := range table {
		table[i] = free
	}
	filled := 0
	// A turn per round for the heaviest endpoints, one every maxWeight/w rounds for the
	// others (Envoy's MaglevTable with integer weights instead of normalised ones).
	for round := uint64(1); filled < size; round++ {
		for i := range entries {
			if filled == size {
				break
			}
			e := &entries[i]
			if round*e.weight < e.target {
				continue
			}
			e.target += maxWeight
			for table[e.next] != free {
				e.next = (e.next + e.skip) % size
			}
			table[e.next] = e.index
			e.next = (e.next + e.skip) % size
			filled++
		}
	}
	return table
}

// Pick returns the endpoint of the table entry for the request's hash, or of a random entry
// when info has no hash. It is safe for concurrent use.
func (m *maglev) Pick(info PickInfo) (*Endpoint, error) {
	switch len(m.endpoints) {
	case 0:
		return nil, ErrNoEndpoint
	case 1:
		return m.endpoints[0], nil
	}
	h := info.Hash
	if !info.HasHash {
		h = rand.Uint64()
	}
	i := h % maglevTableSize
	if m.table16 != nil {
		return m.endpoints[m.table16[i]], nil
	}
	return m.endpoints[m.table32[i]], nil
}
