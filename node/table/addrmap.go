package table

import (
	"encoding/binary"
	"maps"
	"math/bits"
	"net/netip"
)

// addrMap is a map keyed by unmapped, unzoned addresses of both families, in two forms:
// Go maps that writers change (on their private copy of a snapshot), and, once frozen,
// the form lookups read. Lookups in a Go map keyed by netip.Addr hash its 24 bytes with
// the generic hash (about 25 ns here), so:
//   - IPv4 keys are stored as uint32, which Go maps look up on their 4-byte fast path
//     (about 7 ns); the same map serves readers and writers;
//   - IPv6 keys are also copied, at freeze, into index6, an open-addressing table with a
//     one-multiply hash (about 14 ns).
//
// An IPv4-mapped IPv6 address is an IPv6 key, so it never matches the IPv4 address it
// maps, and the zero address is never a key.
type addrMap[V any] struct {
	v4  map[uint32]V
	v6  map[netip.Addr]V
	ix6 index6[V] // v6 as of the last freeze
}

func newAddrMap[V any]() addrMap[V] {
	return addrMap[V]{v4: make(map[uint32]V), v6: make(map[netip.Addr]V)}
}

func key4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// get reads the writers' form.
func (m *addrMap[V]) get(a netip.Addr) (V, bool) {
	if a.Is4() {
		v, ok := m.v4[key4(a)]
		return v, ok
	}
	v, ok := m.v6[a]
	return v, ok
}

// find reads the frozen form: the lookups' get.
func (m *addrMap[V]) find(a netip.Addr) (V, bool) {
	if a.Is4() {
		v, ok := m.v4[key4(a)]
		return v, ok
	}
	return m.ix6.get(a)
}

func (m *addrMap[V]) set(a netip.Addr, v V) {
	if a.Is4() {
		m.v4[key4(a)] = v
		return
	}
	m.v6[a] = v
}

func (m *addrMap[V]) del(a netip.Addr) {
	if a.Is4() {
		delete(m.v4, key4(a))
		return
	}
	delete(m.v6, a)
}

// clone returns a copy for writers; freeze it before publishing.
func (m *addrMap[V]) clone() addrMap[V] {
	return addrMap[V]{v4: maps.Clone(m.v4), v6: maps.Clone(m.v6)}
}

// freeze builds the lookups' form of the IPv6 keys.
func (m *addrMap[V]) freeze(seed uint64) { m.ix6 = buildIndex6(m.v6, seed) }

// update replaces each value v with f(v).
func (m *addrMap[V]) update(f func(V) V) {
	for k, v := range m.v4 {
		m.v4[k] = f(v)
	}
	for k, v := range m.v6 {
		m.v6[k] = f(v)
	}
}

// index6 is a read-only hash table of IPv6 keys with linear probing, at most half full so
// that probes stay short, hits and misses alike. The hash is seeded per table, so no
// set of addresses clusters the same way on every node.
type index6[V any] struct {
	slots []slot6[V]
	mask  uint64
	seed  uint64
}

type slot6[V any] struct {
	key netip.Addr // zero: empty
	val V
}

func hash6(a netip.Addr, seed uint64) uint64 {
	b := a.As16()
	hi, lo := bits.Mul64(binary.BigEndian.Uint64(b[:8])^seed, binary.BigEndian.Uint64(b[8:])^0x9e3779b97f4a7c15)
	return hi ^ lo
}

func buildIndex6[V any](m map[netip.Addr]V, seed uint64) index6[V] {
	if len(m) == 0 {
		return index6[V]{}
	}
	n := uint64(1) << bits.Len(uint(2*len(m)-1)) // the power of two >= 2 len(m)
	x := index6[V]{slots: make([]slot6[V], n), mask: n - 1, seed: seed}
	for k, v := range m {
		i := hash6(k, seed) & x.mask
		for x.slots[i].key.IsValid() {
			i = (i + 1) & x.mask
		}
		x.slots[i] = slot6[V]{key: k, val: v}
	}
	return x
}

func (x *index6[V]) get(a netip.Addr) (v V, ok bool) {
	if len(x.slots) == 0 || !a.IsValid() {
		return v, false
	}
	for i := hash6(a, x.seed) & x.mask; ; i = (i + 1) & x.mask {
		s := &x.slots[i]
		if s.key == a {
			return s.val, true
		}
		if !s.key.IsValid() {
			return v, false
		}
	}
}
