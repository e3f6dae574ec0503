package table

import (
	"encoding/binary"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
)

// addrMap is a map keyed by unmapped, unzoned addresses of both families, built for fast
// reads. A Go map keyed by netip.Addr hashes the key's 24 bytes with the generic hash
// (about 25 ns a lookup here), so:
//   - IPv4 keys are stored as uint32, which Go maps look up on their 4-byte fast path
//     (about 7 ns);
//   - IPv6 keys go to index6, an open-addressing table with a one-multiply hash (about
//     14 ns).
//
// Like the rest of a snapshot it is copied before a change (clone) and never changed once
// published. An IPv4-mapped IPv6 address is an IPv6 key, so it never matches the IPv4
// address it maps.
type addrMap[V any] struct {
	v4 map[uint32]V
	v6 index6[V]
}

func newAddrMap[V any](seed uint64) addrMap[V] {
	return addrMap[V]{v4: make(map[uint32]V), v6: index6[V]{seed: seed}}
}

func key4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func (m *addrMap[V]) get(a netip.Addr) (V, bool) {
	if a.Is4() {
		v, ok := m.v4[key4(a)]
		return v, ok
	}
	return m.v6.get(a)
}

// set stores v under a, which must be valid.
func (m *addrMap[V]) set(a netip.Addr, v V) {
	if a.Is4() {
		m.v4[key4(a)] = v
		return
	}
	m.v6.set(a, v)
}

func (m *addrMap[V]) del(a netip.Addr) {
	if a.Is4() {
		delete(m.v4, key4(a))
		return
	}
	m.v6.del(a)
}

func (m *addrMap[V]) clone() addrMap[V] {
	return addrMap[V]{v4: maps.Clone(m.v4), v6: m.v6.clone()}
}

// update replaces each value v with f(v).
func (m *addrMap[V]) update(f func(V) V) {
	for k, v := range m.v4 {
		m.v4[k] = f(v)
	}
	for i := range m.v6.slots {
		if s := &m.v6.slots[i]; s.hi|s.lo != 0 {
			s.val = f(s.val)
		}
	}
}

// index6 is a hash table of IPv6 keys with linear probing, kept at most half full so that
// probes stay short for hits and misses alike; deletion shifts the following entries back
// instead of leaving tombstones. The hash is seeded per table, so no set of addresses
// clusters the same way on every node. Keys are stored as two integers, not netip.Addr,
// so that the slots hold one pointer each (the value's) and copying them is closer to a
// memcpy. The unspecified address :: marks an empty slot and cannot be a key; zones are
// ignored.
type index6[V any] struct {
	slots []slot6[V] // len is 0 or a power of two
	n     int        // keys held
	seed  uint64
}

type slot6[V any] struct {
	hi, lo uint64 // the address; both 0: empty
	val    V
}

// split6 returns a's halves. AppendBinary writes into a local array the loads can read
// straight from the stores; As16 would return a copy the CPU cannot forward, doubling the
// cost on the per-packet path (as conntrack's hash found).
func split6(a netip.Addr) (hi, lo uint64) {
	if !a.Is6() {
		// AppendBinary writes an IPv4 address in 4 bytes; As16 maps it, as before.
		b := a.As16()
		return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	}
	var b [16]byte
	a.AppendBinary(b[:0]) // its error is always nil; a zone, never in the table, is cut off
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

func (x *index6[V]) home(hi, lo uint64) int {
	h, l := bits.Mul64(hi^x.seed, lo^0x9e3779b97f4a7c15)
	return int(h^l) & (len(x.slots) - 1)
}

// find returns the slot holding hi, lo, or else the empty slot where it would go.
func (x *index6[V]) find(hi, lo uint64) int {
	mask := len(x.slots) - 1
	i := x.home(hi, lo)
	for s := &x.slots[i]; (s.hi != hi || s.lo != lo) && s.hi|s.lo != 0; s = &x.slots[i] {
		i = (i + 1) & mask
	}
	return i
}

func (x *index6[V]) get(a netip.Addr) (v V, ok bool) {
	hi, lo := split6(a)
	if x.n == 0 || hi|lo == 0 {
		return v, false
	}
	s := &x.slots[x.find(hi, lo)]
	if s.hi|s.lo == 0 {
		return v, false
	}
	return s.val, true
}

// set stores v under a; a must not be ::.
func (x *index6[V]) set(a netip.Addr, v V) {
	hi, lo := split6(a)
	if hi|lo == 0 {
		panic("table: the unspecified address cannot be a key")
	}
	if 2*(x.n+1) > len(x.slots) {
		x.grow()
	}
	i := x.find(hi, lo)
	if x.slots[i].hi|x.slots[i].lo == 0 {
		x.n++
	}
	x.slots[i] = slot6[V]{hi: hi, lo: lo, val: v}
}

func (x *index6[V]) grow() {
	old := x.slots
	x.slots = make([]slot6[V], max(16, 2*len(old)))
	for _, s := range old {
		if s.hi|s.lo != 0 {
			x.slots[x.find(s.hi, s.lo)] = s
		}
	}
}

func (x *index6[V]) del(a netip.Addr) {
	hi, lo := split6(a)
	if x.n == 0 || hi|lo == 0 {
		return
	}
	i := x.find(hi, lo)
	if x.slots[i].hi|x.slots[i].lo == 0 {
		return
	}
	// Move back every following entry of the run whose home is not in (i, j], so that
	// each stays reachable from its home without a gap (Knuth's algorithm R).
	mask := len(x.slots) - 1
	for j := (i + 1) & mask; x.slots[j].hi|x.slots[j].lo != 0; j = (j + 1) & mask {
		k := x.home(x.slots[j].hi, x.slots[j].lo)
		if i <= j && i < k && k <= j || i > j && (i < k || k <= j) {
			continue
		}
		x.slots[i] = x.slots[j]
		i = j
	}
	x.slots[i] = slot6[V]{}
	x.n--
}

func (x *index6[V]) clone() index6[V] {
	return index6[V]{slots: slices.Clone(x.slots), n: x.n, seed: x.seed}
}
