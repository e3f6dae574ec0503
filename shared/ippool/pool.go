// Package ippool is root's fast path for handing out addresses: it proposes the lowest free
// address (or worker-subnet block) of a prefix in a few word operations, so creating a
// service never waits on a scan of the database or of everything already leased.
//
// A Pool is not the authority. Root's store holds the leases and refuses duplicates; a
// Pool is rebuilt from those leases on start (MarkUsed, MarkQuarantined) and told when a
// proposal was not committed (Unreserve). Released addresses sit in quarantine before
// reuse so that a stale cache never sends traffic to a different service (ADDRESSING.md).
//
// Costs: Allocate, Claim, Release and Unreserve are O(log₆₄ Window) plus O(log q) for q
// addresses in quarantine; nothing scans the used addresses. Memory is one bit per slot
// of the window, allocated in 512-byte chunks as they are first touched, plus a map entry
// per quarantined address and per address claimed beyond the window.
package ippool

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// Sentinel errors; compare with errors.Is. Every error a Pool returns wraps one of them and
// names the address and the pool's prefix.
var (
	// ErrExhausted: no free slot is left in the pool (or in its window).
	ErrExhausted = errors.New("pool exhausted")
	// ErrOutOfRange: the address is not in the pool's prefix, or is not the first address
	// of a block in a block pool.
	ErrOutOfRange = errors.New("address out of range")
	// ErrReserved: the address lies in one of the pool's reserved prefixes.
	ErrReserved = errors.New("address reserved")
	// ErrInUse: the address is allocated.
	ErrInUse = errors.New("address in use")
	// ErrQuarantined: the address was released and its quarantine is not over.
	ErrQuarantined = errors.New("address in quarantine")
	// ErrNotInUse: Release of an address that is free or already released.
	ErrNotInUse = errors.New("address not in use")
)

// poolError carries an operator-facing message and the sentinel it stands for; its text is
// the message alone, so callers can prefix it without repeating the sentinel's words.
type poolError struct {
	msg  string
	kind error
}

func (e *poolError) Error() string { return e.msg }
func (e *poolError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &poolError{msg: fmt.Sprintf(format, args...), kind: kind}
}

// DefaultWindow is the number of slots a pool tracks when Options.Window is 0: 128 KiB of
// bitmap at most, far more addresses than one platform will use.
const DefaultWindow = 1 << 20

// maxWindow bounds Options.Window: the summary levels are allocated up front (one bit per
// 64 slots), so an absurd window would cost memory before the first address.
const maxWindow = 1 << 32

// Options configure a Pool.
type Options struct {
	// BlockBits is 0 for a pool of single addresses; otherwise the pool hands out prefixes
	// of this length, e.g. 26 within 10.18.0.0/15 gives /26 worker subnets, 120 within
	// fc00::/8 gives /120s. A block is named by its first address.
	BlockBits int
	// Reserved prefixes are never allocated nor granted to Claim. In a block pool a block
	// is reserved if it overlaps a reserved prefix. Each must overlap the pool's prefix.
	Reserved []netip.Prefix
	// Quarantine is how long a released address waits before it is free again.
	Quarantine time.Duration
	// Window caps the slots tracked in the bitmap (default DefaultWindow). Allocate hands
	// out only the first min(slots in prefix, Window) slots: an IPv6 /21 has 2^107
	// addresses, far beyond any bitmap. Claim may still take a requested address beyond
	// the window; such addresses are tracked one by one in a map.
	Window int
	// Now is the clock; nil means time.Now. Quarantine expiry compares wall-clock times,
	// because the store records release times as wall-clock times.
	Now func() time.Time
	// Spread makes Allocate take the first free slot at or after a random one (wrapping
	// round) instead of the lowest. Root processes sharing one store each keep a pool of
	// their own; with the lowest-free rule they propose the same address whenever both
	// allocate between hearing of each other's allocations, and each such collision
	// costs the loser a rolled-back claim in the store and a retry.
	Spread bool
}

// Stats is a pool's fill level.
type Stats struct {
	// Size is the number of slots Allocate can hand out: the window less reserved slots.
	Size uint64
	// Used counts allocated slots, including those claimed beyond the window.
	Used uint64
	// Quarantined counts released slots whose quarantine is not over.
	Quarantined uint64
}

// Pool allocates addresses or blocks from one prefix. It is safe for concurrent use.
type Pool struct {
	name       string
	prefix     netip.Prefix
	is4        bool
	base       u128 // prefix.Addr()
	slotBits   int  // prefix length of one slot: 32 or 128 for single addresses
	shift      uint // host bits per slot: slot i is base + i<<shift
	n          uint64
	reserved   []netip.Prefix
	quarantine int64 // nanoseconds
	now        func() time.Time
	spread     bool

	mu        sync.Mutex
	taken     *bitmap         // slots < n: set = not free
	sparse    map[u128]bool   // used slots ≥ n (claimed beyond the window)
	quar      map[u128]qEntry // quarantined slots, window or not; authoritative over heap
	heap      qheap           // quarantine expiries, possibly with stale entries
	seq       uint64          // last qEntry.seq handed out
	used      uint64          // used slots, window and sparse
	reservedN uint64          // reserved slots < n
}

// New returns a pool over prefix. name identifies it in metrics and reports.
func New(name string, prefix netip.Prefix, opt Options) (*Pool, error) {
	if !prefix.IsValid() {
		return nil, errors.New("prefix is not set")
	}
	if prefix != prefix.Masked() {
		return nil, fmt.Errorf("prefix %s has host bits set (did you mean %s?)", prefix, prefix.Masked())
	}
	addrBits := prefix.Addr().BitLen()
	slotBits := addrBits
	if opt.BlockBits != 0 {
		if opt.BlockBits <= prefix.Bits() || opt.BlockBits > addrBits {
			return nil, fmt.Errorf("block size /%d does not fit in %s (need /%d../%d)", opt.BlockBits, prefix, prefix.Bits()+1, addrBits)
		}
		slotBits = opt.BlockBits
	}
	if prefix.Bits() == slotBits {
		return nil, fmt.Errorf("prefix %s holds a single address: nothing to allocate", prefix)
	}
	window := opt.Window
	if window == 0 {
		window = DefaultWindow
	}
	if window < 0 || window > maxWindow {
		return nil, fmt.Errorf("window %d must be between 1 and %d", window, maxWindow)
	}
	if opt.Quarantine < 0 {
		return nil, fmt.Errorf("quarantine %s is negative", opt.Quarantine)
	}
	n := uint64(window)
	if idxBits := slotBits - prefix.Bits(); idxBits < 64 && uint64(1)<<idxBits < n {
		n = uint64(1) << idxBits
	}
	p := &Pool{
		name:       name,
		prefix:     prefix,
		is4:        prefix.Addr().Is4(),
		base:       fromAddr(prefix.Addr()),
		slotBits:   slotBits,
		shift:      uint(addrBits - slotBits),
		n:          n,
		reserved:   append([]netip.Prefix(nil), opt.Reserved...),
		quarantine: int64(opt.Quarantine),
		now:        opt.Now,
		spread:     opt.Spread,
		taken:      newBitmap(n),
		sparse:     map[u128]bool{},
		quar:       map[u128]qEntry{},
	}
	if p.now == nil {
		p.now = time.Now
	}
	for i, r := range p.reserved {
		if !r.IsValid() || r.Addr().Is4() != p.is4 || !r.Overlaps(prefix) {
			return nil, fmt.Errorf("reserved %s is not inside %s", r, prefix)
		}
		r = r.Masked()
		p.reserved[i] = r
		if r.Bits() <= prefix.Bits() {
			r = prefix
		}
		// Pre-mark the reserved slots inside the window, so Allocate never sees them.
		lo := p.slotOf(r.Addr())
		if lo.hi != 0 || lo.lo >= n {
			continue
		}
		hi := p.slotOf(fromAddr(r.Addr()).or(lowMask(uint(addrBits - r.Bits()))).addr(p.is4))
		last := hi.lo
		if hi.hi != 0 || last >= n {
			last = n - 1
		}
		for i := lo.lo; i <= last; i++ {
			if p.taken.set(i) {
				p.reservedN++
			}
		}
	}
	return p, nil
}

// Name is the name the pool was created with.
func (p *Pool) Name() string { return p.name }

// Prefix is the prefix the pool allocates from.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Contains reports whether a lies in the pool's prefix (in a block pool: in any block).
func (p *Pool) Contains(a netip.Addr) bool { return p.prefix.Contains(a) }

// Allocate takes the lowest free slot (with Options.Spread, the first free one at or
// after a random slot) and returns its address (in a block pool, the block's first
// address). It never hands out a used or quarantined address: when nothing in the
// window is free the error wraps ErrExhausted.
func (p *Pool) Allocate() (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	i, ok := p.taken.first()
	if !ok {
		return netip.Addr{}, errorf(ErrExhausted, "pool %s exhausted", p.prefix)
	}
	if p.spread {
		if j, found := p.taken.firstFrom(rand.Uint64N(p.n)); found {
			i = j
		}
	}
	p.taken.set(i)
	p.used++
	return p.addrOf(u128{lo: i}), nil
}

// AllocatePrefix is Allocate for block pools: it returns the block as a prefix. In a pool
// of single addresses it returns a /32 or /128.
func (p *Pool) AllocatePrefix() (netip.Prefix, error) {
	a, err := p.Allocate()
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, p.slotBits), nil
}

// Claim takes the requested address a (in a block pool, a block's first address). It
// fails with ErrOutOfRange, ErrReserved, ErrInUse or ErrQuarantined. Addresses beyond the
// window may be claimed; Allocate never hands them out.
func (p *Pool) Claim(a netip.Addr) error {
	s, err := p.checkSlot(a)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	if q, ok := p.quar[s]; ok {
		return errorf(ErrQuarantined, "address %s is in quarantine in pool %s until %s", a, p.prefix, time.Unix(0, q.until).UTC().Format(time.RFC3339))
	}
	if p.isUsed(s) {
		return errorf(ErrInUse, "address %s is already in use in pool %s", a, p.prefix)
	}
	p.markUsed(s)
	return nil
}

// Release puts a used address into quarantine until Now()+Quarantine. Releasing an address
// that is not in use (free, or already released) fails with ErrNotInUse.
func (p *Pool) Release(a netip.Addr) error {
	s, err := p.checkSlot(a)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now().UnixNano()
	p.expireAt(now)
	if q, ok := p.quar[s]; ok {
		return errorf(ErrNotInUse, "address %s in pool %s was already released (in quarantine until %s)", a, p.prefix, time.Unix(0, q.until).UTC().Format(time.RFC3339))
	}
	if !p.isUsed(s) {
		return errorf(ErrNotInUse, "address %s is not in use in pool %s", a, p.prefix)
	}
	p.used--
	until := now + p.quarantine
	if until < now {
		until = math.MaxInt64 // a quarantine of centuries saturates rather than wraps
	}
	p.quarantineUntil(s, until, now)
	return nil
}

// Unreserve undoes an Allocate or Claim whose lease was never committed: a used address is
// free again at once, without quarantine, because nobody ever saw it. Anything else is
// left alone.
func (p *Pool) Unreserve(a netip.Addr) {
	s, err := p.checkSlot(a)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, q := p.quar[s]; q || !p.isUsed(s) {
		return
	}
	p.used--
	p.free(s)
}

// MarkUsed records that a is leased, when rebuilding the pool from the store. It is
// idempotent, ends a quarantine, and ignores addresses outside the prefix and reserved
// ones (they are never handed out anyway). In a block pool any address marks its block.
func (p *Pool) MarkUsed(a netip.Addr) {
	if !p.prefix.Contains(a) {
		return
	}
	s := p.slotOf(a)
	if p.isReserved(s) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.quar[s]; ok {
		delete(p.quar, s) // its heap entry goes stale; a window slot's bit stays set
		p.used++
		if !p.inWindow(s) {
			p.sparse[s] = true
		}
		return
	}
	if !p.isUsed(s) {
		p.markUsed(s)
	}
}

// MarkQuarantined records a lease released at releasedAt, when rebuilding the pool from
// the store: the address is free again at releasedAt+Quarantine, at once if that has
// passed. It never shortens what blocks an address: a used address stays used and a
// longer quarantine is kept. Addresses outside the prefix and reserved ones are ignored.
func (p *Pool) MarkQuarantined(a netip.Addr, releasedAt time.Time) {
	if !p.prefix.Contains(a) {
		return
	}
	s := p.slotOf(a)
	if p.isReserved(s) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	until := releasedAt.Add(time.Duration(p.quarantine))
	if !until.After(now) {
		return
	}
	untilNs := int64(math.MaxInt64)
	if until.Year() < 2262 { // UnixNano's range ends in 2262
		untilNs = until.UnixNano()
	}
	if q, ok := p.quar[s]; (ok && q.until >= untilNs) || (!ok && p.isUsed(s)) {
		return
	}
	p.quarantineUntil(s, untilNs, now.UnixNano())
}

// Stats returns the pool's fill level.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	return Stats{Size: p.n - p.reservedN, Used: p.used, Quarantined: uint64(len(p.quar))}
}

// checkSlot maps a requested address to its slot, refusing addresses outside the prefix,
// inside a block, or reserved. It reads only immutable fields, so it needs no lock.
func (p *Pool) checkSlot(a netip.Addr) (u128, error) {
	if !p.prefix.Contains(a) {
		return u128{}, errorf(ErrOutOfRange, "address %s is outside pool %s", a, p.prefix)
	}
	off := fromAddr(a).sub(p.base)
	if !off.and(lowMask(p.shift)).isZero() {
		return u128{}, errorf(ErrOutOfRange, "address %s is not the first address of a /%d block in pool %s", a, p.slotBits, p.prefix)
	}
	s := off.shr(p.shift)
	if p.isReserved(s) {
		return u128{}, errorf(ErrReserved, "address %s is reserved in pool %s", a, p.prefix)
	}
	return s, nil
}

// slotOf returns the slot holding a, which must be in the prefix.
func (p *Pool) slotOf(a netip.Addr) u128 { return fromAddr(a).sub(p.base).shr(p.shift) }

// addrOf returns the first address of slot s.
func (p *Pool) addrOf(s u128) netip.Addr { return p.base.or(s.shl(p.shift)).addr(p.is4) }

func (p *Pool) inWindow(s u128) bool { return s.hi == 0 && s.lo < p.n }

// isReserved reports whether slot s overlaps a reserved prefix. Reserved lists are a
// handful of prefixes from the address plan, so a linear check is the cheap one.
func (p *Pool) isReserved(s u128) bool {
	if len(p.reserved) == 0 {
		return false
	}
	sp := netip.PrefixFrom(p.addrOf(s), p.slotBits)
	for _, r := range p.reserved {
		if r.Overlaps(sp) {
			return true
		}
	}
	return false
}

// isUsed reports whether slot s, which the caller knows is neither reserved nor
// quarantined, is allocated. (In the window a quarantined slot is taken too.)
func (p *Pool) isUsed(s u128) bool {
	if p.inWindow(s) {
		return p.taken.get(s.lo)
	}
	return p.sparse[s]
}

// markUsed takes the free slot s.
func (p *Pool) markUsed(s u128) {
	if p.inWindow(s) {
		p.taken.set(s.lo)
	} else {
		p.sparse[s] = true
	}
	p.used++
}

// free returns slot s, used or quarantined (already uncounted), to the free slots.
func (p *Pool) free(s u128) {
	if p.inWindow(s) {
		p.taken.clear(s.lo)
	} else {
		delete(p.sparse, s)
	}
}

// quarantineUntil moves the unreserved, uncounted slot s (just released, or free) into
// quarantine until the given time, or frees it if that is not after now.
func (p *Pool) quarantineUntil(s u128, until, now int64) {
	if until <= now {
		delete(p.quar, s)
		p.free(s)
		return
	}
	if p.inWindow(s) {
		p.taken.set(s.lo)
	} else {
		delete(p.sparse, s)
	}
	p.seq++
	e := qEntry{slot: s, until: until, seq: p.seq}
	p.quar[s] = e
	p.heap.push(e)
	// Stale entries (quarantines ended early or lengthened) leave with their expiry; if
	// they pile up faster, rebuild the heap from the map. Amortised O(1) per entry.
	if len(p.heap) > 64 && len(p.heap) > 2*len(p.quar) {
		p.heap = p.heap[:0]
		for _, e := range p.quar {
			p.heap = append(p.heap, e)
		}
		p.heap.init()
	}
}

// expire frees every slot whose quarantine is over.
func (p *Pool) expire() { p.expireAt(p.now().UnixNano()) }

func (p *Pool) expireAt(now int64) {
	for len(p.heap) > 0 && p.heap[0].until <= now {
		e := p.heap.pop()
		if q, ok := p.quar[e.slot]; ok && q.seq == e.seq {
			delete(p.quar, e.slot)
			p.free(e.slot)
		}
	}
}

// Peek returns up to n addresses that Allocate would hand out next, lowest first, without
// taking them: the reference API's look-ahead. The answer is advice and may be stale at
// once. It marks the slots taken and frees them again under the pool's lock, so no other
// caller can observe the intermediate state.
func (p *Pool) Peek(n int) []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.expire()
	slots := make([]uint64, 0, n)
	for len(slots) < n {
		i, ok := p.taken.first()
		if !ok {
			break
		}
		p.taken.set(i)
		slots = append(slots, i)
	}
	out := make([]netip.Addr, len(slots))
	for k, i := range slots {
		p.taken.clear(i)
		out[k] = p.addrOf(u128{lo: i})
	}
	return out
}
