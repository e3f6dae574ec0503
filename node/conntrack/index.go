package conntrack

import "sync/atomic"

// An index maps one key of every flow (orig, or reply tuple) to its entry, in one shard:
// open addressing with linear probing over a power-of-two array of atomic pointers.
//
// Readers (get) take no lock: they load the array and probe from the key's hash until they
// find the key or an empty slot. Writers hold the shard's mutex. put stores into the slot
// of the same key (replacing a dead or expired entry), else into the first tombstone or
// empty slot on the way. Removal marks the entry dead, then stores the tombstone, never
// nil: a slot that became empty again would stop a probe short of the keys placed after
// it. When the non-empty slots would pass half the array, tombstones a quarter, or the
// entries fall below a sixteenth, the index is rebuilt into a fresh array sized for its
// live entries and published with one atomic store. Writers never touch the old array
// again, so a reader still probing it sees the index as it was when the reader loaded it:
// a flow removed since is marked dead, a flow added since is not there yet. Each lookup is
// thus ordered at its load of the array.

// minSlots is the size of an empty index: a shard of a lightly used table costs little.
const minSlots = 8

type slots struct {
	mask uint64
	s    []atomic.Pointer[entry]
}

func newSlots(n int) *slots {
	return &slots{mask: uint64(n - 1), s: make([]atomic.Pointer[entry], n)}
}

// get returns the entry whose key[dir] is k (it may be dead or expired), or nil.
func get(a *slots, k *Tuple, h uint64, dir int, tomb *entry) *entry {
	for i, n := h&a.mask, uint64(0); n <= a.mask; i, n = (i+1)&a.mask, n+1 {
		e := a.s[i].Load()
		if e == nil {
			return nil
		}
		if e != tomb && e.key[dir].equal(k) {
			return e
		}
	}
	return nil
}

// put indexes e by its key[dir], whose hash is h, in shard s (locked). A live entry under
// that key must not exist (Add checked).
func (t *Table) put(s *shard, dir int, e *entry, h uint64) {
	a := s.idx[dir].Load()
	if (s.w.used[dir]+1)*2 > len(a.s) {
		a = t.rebuild(s, dir)
	}
	k := &e.key[dir]
	free := -1
	for i := h & a.mask; ; i = (i + 1) & a.mask {
		switch cur := a.s[i].Load(); {
		case cur == nil:
			if free < 0 {
				free = int(i)
				s.w.used[dir]++
			} else {
				s.w.tombs[dir]--
			}
			a.s[free].Store(e)
			return
		case cur == t.tomb:
			if free < 0 {
				free = int(i)
			}
		case cur.key[dir] == *k:
			a.s[i].Store(e)
			return
		}
	}
}

// removeLocked replaces every entry of index dir of shard s (locked) for which drop is
// true by a tombstone, kills it, and returns how many it killed (an entry already dead,
// through its other key, is cleared without counting).
func (t *Table) removeLocked(s *shard, dir int, drop func(*entry) bool) int {
	a := s.idx[dir].Load()
	killed := 0
	for i := range a.s {
		e := a.s[i].Load()
		if e == nil || e == t.tomb || !drop(e) {
			continue
		}
		if t.kill(e) {
			killed++
		}
		a.s[i].Store(t.tomb)
		s.w.tombs[dir]++
	}
	// Rebuild when tombstones lengthen probes, or to shrink an index that is mostly empty
	// after a burst (a rebuild leaves it a quarter to an eighth full, so a shrink is not
	// followed by a grow at once).
	if held := s.w.used[dir] - s.w.tombs[dir]; s.w.tombs[dir]*4 > len(a.s) || len(a.s) > minSlots && held*16 < len(a.s) {
		t.rebuild(s, dir)
	}
	return killed
}

// rebuild copies the entries of index dir of shard s (locked) that are not dead into a
// new array at most a quarter full, publishes it and returns it.
func (t *Table) rebuild(s *shard, dir int) *slots {
	old := s.idx[dir].Load()
	live := 0
	for i := range old.s {
		if e := old.s[i].Load(); e != nil && e != t.tomb && !e.dead.Load() {
			live++
		}
	}
	n := minSlots
	for n < 4*(live+1) {
		n *= 2
	}
	a := newSlots(n)
	for i := range old.s {
		e := old.s[i].Load()
		if e == nil || e == t.tomb || e.dead.Load() {
			continue
		}
		j := t.hash(&e.key[dir]) & a.mask
		for a.s[j].Load() != nil {
			j = (j + 1) & a.mask
		}
		a.s[j].Store(e)
	}
	s.w.used[dir], s.w.tombs[dir] = live, 0
	s.idx[dir].Store(a)
	return a
}
