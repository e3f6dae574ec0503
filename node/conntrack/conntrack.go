// Package conntrack remembers the flows the node's translator rewrites, so that later
// packets of a flow stick to the instance chosen for its first packet and replies can be
// mapped back to the Service IP the caller dialled (FLOWS.md, steps 4 and 6).
//
// A flow is recorded as two tuples: orig, the 5-tuple the local sender produced
// (NamespaceIP:port -> ServiceIP:port), and rewritten, what went on the wire
// (InstanceIP:port -> chosen NamespaceIP:port). [Table.Outbound] finds rewritten from
// orig; [Table.Reply] finds, from a reply's tuple (see [Table.Add]), the addresses to
// restore (orig reversed). Keys are full 5-tuples: the reference keyed by source port
// alone, so two callers using the same port collided.
//
// The table is bounded and never evicts a live flow: when full, a new flow is refused and
// counted ([Table.Refused]). Idle flows expire per protocol and are reclaimed by
// [Table.Sweep], by Add when it needs their room, and lazily when a new flow replaces an
// expired one. The caller passes the current time to every call: a batch of packets reads
// the clock once, and tests control time.
package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// IP protocol numbers the timeouts distinguish.
const (
	protoICMPv4 = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Tuple identifies one direction of a flow. For ICMP echo the identifier goes in both
// SrcPort and DstPort (a request and its reply carry the same one). It is comparable, so
// it serves as a map key without allocation. Addresses must be unzoned, and IPv4 ones
// 4-byte addresses (netip.Addr.Unmap), so that one flow has one key.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8 // IP protocol number
}

// equal is t == *o field by field: the compiler compares the whole struct with memeq,
// padding bytes included, which was a twentieth of a translated packet's time.
func (t *Tuple) equal(o *Tuple) bool {
	return t.Src == o.Src && t.Dst == o.Dst && t.SrcPort == o.SrcPort && t.DstPort == o.DstPort && t.Proto == o.Proto
}

// Reverse returns the tuple of the opposite direction: the one a reply carries.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto}
}

// String formats the tuple as "TCP 10.18.0.2:40000 > 10.30.0.1:80".
func (t Tuple) String() string {
	var p string
	switch t.Proto {
	case protoTCP:
		p = "TCP"
	case protoUDP:
		p = "UDP"
	case protoICMPv4:
		p = "ICMPv4"
	case protoICMPv6:
		p = "ICMPv6"
	default:
		p = fmt.Sprintf("proto-%d", t.Proto)
	}
	return fmt.Sprintf("%s %v > %v", p, netip.AddrPortFrom(t.Src, t.SrcPort), netip.AddrPortFrom(t.Dst, t.DstPort))
}

// Config sizes a Table. Zero fields take the defaults of DefaultConfig.
type Config struct {
	// MaxFlows bounds the flows held, live or expired but not yet reclaimed.
	MaxFlows int
	// Shards is the number of parts that writers lock independently, a power of two.
	Shards int
	// Idle timeouts per protocol: a flow expires when no packet used it for this long.
	TCPTimeout, UDPTimeout, ICMPTimeout, OtherTimeout time.Duration
	// UnrepliedTimeout caps the timeout of a flow until its first reply: scans, SYN
	// floods and flows to an instance that has gone quiet give their room back soon.
	UnrepliedTimeout time.Duration
	// ClosingTimeout caps the timeout of a flow marked closing (MarkClosing: a TCP FIN
	// or RST was seen), so finished connections give their room back soon.
	ClosingTimeout time.Duration
}

// DefaultConfig returns the defaults:
//   - MaxFlows 65,536: about 14 MiB when full (BenchmarkAdd: ~210 bytes per flow, the
//     entry and two index slots), within the idle node's memory budget because the
//     indexes grow as flows arrive and shrink as they go.
//   - Shards 64: writers (new flows, Sweep, Forget) lock one or two shards, so new flows
//     on different cores rarely wait for each other, and growing an index copies a 64th
//     of the table. Lookups take no lock whatever the count.
//   - TCP 5 min: what cloud NATs allow an idle connection (AWS NAT gateway 350 s, Azure
//     4 min); applications idle for longer need keepalives, as they do there. The table
//     does not follow TCP state, so this applies to every TCP flow once answered.
//   - UDP 30 s (Linux nf_conntrack's UDP timeout), ICMP 10 s (an echo is answered within
//     a second or never), other protocols 30 s.
//   - UnrepliedTimeout 30 s: covers a TCP handshake's first SYN retransmissions (1, 3,
//     7, 15 s); a later retransmission simply resolves an instance again.
//   - ClosingTimeout 10 s: Linux's CLOSE state timeout; any packet still refreshes it,
//     so a half-closed connection that keeps sending lives on.
func DefaultConfig() Config {
	return Config{
		MaxFlows:         65536,
		Shards:           64,
		TCPTimeout:       5 * time.Minute,
		UDPTimeout:       30 * time.Second,
		ICMPTimeout:      10 * time.Second,
		OtherTimeout:     30 * time.Second,
		UnrepliedTimeout: 30 * time.Second,
		ClosingTimeout:   10 * time.Second,
	}
}

// Errors of Add, fixed values so that refusing a flow allocates nothing; compare with
// errors.Is.
var (
	// ErrTableFull: the table holds MaxFlows live flows; the new one is refused, no live
	// flow is evicted. Raise MaxFlows or shorten the timeouts.
	ErrTableFull = errors.New("conntrack: table full: new flow refused (raise MaxFlows or shorten timeouts)")
	// ErrConflict: another live flow already owns the new flow's reply tuple, so replies
	// could not be told apart (the same sender port to two Service IPs that chose the
	// same instance). The caller must drop the packet or rewrite to another tuple (the
	// gateway picks another port).
	ErrConflict = errors.New("conntrack: reply tuple already belongs to another live flow")
)

// touchEvery is the resolution of a flow's last-seen time. A lookup stores the time only
// when it moved by at least this much, so the packets of a busy flow read its cache line
// instead of writing it on every packet (a write from one core evicts the line from the
// others). Flows may thus expire up to this much early.
const touchEvery = int64(100 * time.Millisecond)

// sweepEvery limits how often a full table's Add sweeps it for expired flows, so that a
// flood of new flows against a table full of live ones costs a map lookup each, not a
// scan of the table each.
const sweepEvery = int64(time.Second)

// Table is the connection tracking table. It is safe for concurrent use. Lookups of
// existing flows take no lock, write nothing shared and allocate nothing.
//
// Why not sharded maps under RWMutex: even a read lock writes its mutex (the reader
// count), so every lookup pulls its shard's cache line to its core, and with flows spread
// over all shards, two cores looking up keep taking lines from each other: a per-packet
// lock in all but name (PERFORMANCE.md asks for none). Go maps cannot be read while
// written, so the flows live in open-addressing arrays of atomic pointers instead
// (index.go): a lookup loads the array and probes it; writers (Add, Sweep, Forget)
// serialize per shard and publish entries with atomic stores. sync.Map was not used: its
// keys are interfaces, so a lookup by Tuple allocates.
//
// Each flow is indexed twice, by orig and by its reply tuple; the two keys usually fall in
// different shards, so Add locks both, in index order.
type Table struct {
	epoch            time.Time // times are stored as nanoseconds since epoch
	seed             [4]uint64 // per-table hash seeds: outsiders cannot aim at one chain
	shardShift       uint      // the top bits of a key's hash choose its shard
	shards           []shard
	tomb             *entry // marks a removed slot, so probing goes past it
	max              int64
	timeouts         [4]int64 // TCP, UDP, ICMP, other, in nanoseconds
	unreplied        int64
	closing          int64
	count            atomic.Int64 // entries not yet dead
	nextSweep        atomic.Int64 // when a full table's Add may sweep again
	refused, clashes atomic.Uint64
}

// Directions of a flow's two keys: entry.key[byOrig] is orig, entry.key[byReply] the
// tuple its replies carry (rewritten reversed).
const (
	byOrig  = 0
	byReply = 1
)

type shard struct {
	// idx is all that lookups touch; it sits on its own cache line, apart from the
	// writers' state, so that new flows do not evict it from the readers' caches.
	idx [2]atomic.Pointer[slots]
	_   [64 - 16]byte
	w   shardWriter
	_   [64 - unsafe.Sizeof(shardWriter{})%64]byte
}

// shardWriter is a shard's state for writers, guarded by mu.
type shardWriter struct {
	mu          sync.Mutex
	used, tombs [2]int // per index: non-nil slots, and those that are tombstones
}

// entry is one flow. key and the timeouts never change once the entry is published;
// lastSeen, replied and dead are atomics so that lookups can update them without a lock.
// A dead entry may stay in the other index until Sweep or a new flow replaces it; lookups
// treat it as absent.
type entry struct {
	key                [2]Tuple // byOrig, byReply
	rewritten          Tuple
	timeout, unreplied int64
	lastSeen           atomic.Int64
	replied            atomic.Bool
	closing            atomic.Bool // MarkClosing: the timeout is capped at Table.closing
	dead               atomic.Bool
	table              *Table // for the closing timeout
}

func (e *entry) live(n int64) bool {
	if e.dead.Load() {
		return false
	}
	timeout := e.timeout
	if !e.replied.Load() && e.unreplied < timeout {
		timeout = e.unreplied
	}
	if e.closing.Load() && e.table.closing < timeout {
		timeout = e.table.closing
	}
	return n-e.lastSeen.Load() < timeout
}

func (e *entry) touch(n int64) {
	// Concurrent touches may store slightly out of order; the error is at most the spread
	// of the callers' clocks, far below touchEvery's own.
	if n-e.lastSeen.Load() >= touchEvery {
		e.lastSeen.Store(n)
	}
}

func (e *entry) involves(a netip.Addr) bool {
	o, r, w := &e.key[byOrig], &e.key[byReply], &e.rewritten
	return o.Src == a || o.Dst == a || r.Src == a || r.Dst == a || w.Src == a || w.Dst == a
}

// New returns an empty table; zero fields of cfg take DefaultConfig's values.
func New(cfg Config) (*Table, error) {
	d := DefaultConfig()
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = d.MaxFlows
	}
	if cfg.Shards == 0 {
		cfg.Shards = d.Shards
	}
	for _, f := range []struct {
		p   *time.Duration
		def time.Duration
	}{{&cfg.TCPTimeout, d.TCPTimeout}, {&cfg.UDPTimeout, d.UDPTimeout}, {&cfg.ICMPTimeout, d.ICMPTimeout},
		{&cfg.OtherTimeout, d.OtherTimeout}, {&cfg.UnrepliedTimeout, d.UnrepliedTimeout},
		{&cfg.ClosingTimeout, d.ClosingTimeout}} {
		if *f.p == 0 {
			*f.p = f.def
		}
		if *f.p < 0 {
			return nil, fmt.Errorf("conntrack: timeout %v is negative: give a positive duration, or 0 for the default", *f.p)
		}
	}
	if cfg.MaxFlows < 0 {
		return nil, fmt.Errorf("conntrack: MaxFlows %d is negative: give a positive bound, or 0 for %d", cfg.MaxFlows, d.MaxFlows)
	}
	if cfg.Shards < 0 || cfg.Shards&(cfg.Shards-1) != 0 || cfg.Shards > 1<<16 {
		return nil, fmt.Errorf("conntrack: Shards %d is not a power of two up to 65536 (0 for %d)", cfg.Shards, d.Shards)
	}
	t := &Table{
		epoch:      time.Now(),
		seed:       [4]uint64{rand.Uint64() | 1, rand.Uint64() | 1, rand.Uint64() | 1, rand.Uint64() | 1},
		shardShift: uint(64 - bits.TrailingZeros(uint(cfg.Shards))),
		shards:     make([]shard, cfg.Shards),
		tomb:       new(entry),
		max:        int64(cfg.MaxFlows),
		timeouts:   [4]int64{int64(cfg.TCPTimeout), int64(cfg.UDPTimeout), int64(cfg.ICMPTimeout), int64(cfg.OtherTimeout)},
		unreplied:  int64(cfg.UnrepliedTimeout),
		closing:    int64(cfg.ClosingTimeout),
	}
	for i := range t.shards {
		for d := range t.shards[i].idx {
			t.shards[i].idx[d].Store(newSlots(minSlots))
		}
	}
	t.nextSweep.Store(math.MinInt64)
	return t, nil
}

// since converts a time to the table's clock: nanoseconds since the table was made. It
// uses the monotonic reading when now has one (time.Now), the wall clock otherwise.
func (t *Table) since(now time.Time) int64 { return int64(now.Sub(t.epoch)) }

func (t *Table) timeout(proto uint8) int64 {
	switch proto {
	case protoTCP:
		return t.timeouts[0]
	case protoUDP:
		return t.timeouts[1]
	case protoICMPv4, protoICMPv6:
		return t.timeouts[2]
	}
	return t.timeouts[3]
}

// hash is a seeded hash of every field of k, wyhash-style: two independent 64x64->128-bit
// multiplies (they run in parallel) and a final one to mix them. AppendBinary writes each
// address straight into a local array (As16 would copy its array with a load the CPU
// cannot forward from the stores, doubling the cost). hash/maphash.Comparable would
// allocate: it forces values holding pointers, as netip.Addr does, to the heap. A zoned
// address (never stored: Add refuses them) makes AppendBinary allocate.
func (t *Table) hash(k *Tuple) uint64 {
	var s, d [16]byte
	k.Src.AppendBinary(s[:0]) // its error is always nil
	k.Dst.AppendBinary(d[:0])
	ports := uint64(k.SrcPort)<<32 | uint64(k.DstPort)<<16 | uint64(k.Proto)
	a := mum(binary.LittleEndian.Uint64(s[:8])^t.seed[0], binary.LittleEndian.Uint64(s[8:])^t.seed[1])
	b := mum(binary.LittleEndian.Uint64(d[:8])^t.seed[2], binary.LittleEndian.Uint64(d[8:])^ports^t.seed[3])
	return mum(a^t.seed[0], b^t.seed[3])
}

// mum folds the 128-bit product of a and b: every input bit can reach every output bit.
// (A zero operand would lose the other, which is why the seeds are mixed into both.)
func mum(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func (t *Table) shardOf(h uint64) *shard { return &t.shards[h>>t.shardShift] }

// Outbound looks up a flow by the tuple of its sender's packet and returns the tuple the
// packet is rewritten to. ok is false when the flow is unknown, expired or forgotten: the
// caller resolves an instance and calls Add. A hit counts as activity.
func (t *Table) Outbound(orig Tuple, now time.Time) (rewritten Tuple, ok bool) {
	e := t.lookup(byOrig, &orig, now)
	if e == nil {
		return Tuple{}, false
	}
	return e.rewritten, true
}

// OutboundDst is Outbound for a caller that needs only the rewritten destination (the
// chosen instance): it neither copies the tuple in nor the rewritten one out, a tenth of
// the datapath's per-packet time on IPv6.
func (t *Table) OutboundDst(orig *Tuple, now time.Time) (netip.Addr, bool) {
	e := t.lookup(byOrig, orig, now)
	if e == nil {
		return netip.Addr{}, false
	}
	return e.rewritten.Dst, true
}

// Reply looks up a flow by the tuple of a reply as it arrives (the reply tuple given to
// Add) and returns the tuple to give the reply (orig reversed: ServiceIP:port -> sender's
// NamespaceIP:port), so the sender sees the Service IP it dialled. A hit counts as activity and marks the flow answered.
func (t *Table) Reply(reply Tuple, now time.Time) (restored Tuple, ok bool) {
	restored, _, ok = t.ReplyFlow(reply, now)
	return restored, ok
}

// ReplySrc is Reply for the per-packet path, which needs only the restored source (the
// address the sender dialled): it returns an address, not two tuples, since copying
// those out was a sixth of a received reply's time.
func (t *Table) ReplySrc(reply *Tuple, now time.Time) (netip.Addr, bool) {
	e := t.replied(reply, now)
	if e == nil {
		return netip.Addr{}, false
	}
	return e.key[byOrig].Dst, true
}

// replied looks up a flow by its reply tuple and marks it answered.
func (t *Table) replied(reply *Tuple, now time.Time) *entry {
	e := t.lookup(byReply, reply, now)
	if e != nil && !e.replied.Load() {
		e.replied.Store(true)
	}
	return e
}

// ReplyFlow is Reply that also returns the flow's rewritten tuple, for a caller that
// checks which flow the reply belongs to (the gateway's NAPT).
func (t *Table) ReplyFlow(reply Tuple, now time.Time) (restored, rewritten Tuple, ok bool) {
	e := t.replied(&reply, now)
	if e == nil {
		return Tuple{}, Tuple{}, false
	}
	return e.key[byOrig].Reverse(), e.rewritten, true
}

// MarkClosing caps the idle timeout of the flow whose packets carry key (orig when
// reply is false, the reply tuple when true) at ClosingTimeout: the caller saw it end
// (a TCP FIN or RST). It does nothing for an unknown flow.
func (t *Table) MarkClosing(key Tuple, reply bool, now time.Time) {
	d := byOrig
	if reply {
		d = byReply
	}
	if e := t.lookup(d, &key, now); e != nil && !e.closing.Load() {
		e.closing.Store(true)
	}
}

// lookup returns the live entry under key in index d, touched, or nil.
func (t *Table) lookup(d int, key *Tuple, now time.Time) *entry {
	h := t.hash(key)
	e := get(t.shardOf(h).idx[d].Load(), key, h, d, t.tomb)
	n := t.since(now)
	if e == nil || !e.live(n) {
		return nil
	}
	e.touch(n)
	return e
}

// Add records that packets of orig are rewritten to rewritten and that their replies
// arrive as reply, and returns the tuple in effect: rewritten, or, when a live flow for
// orig already exists (another goroutine added it first), that flow's tuple, which the
// caller must use so the flow sticks to one instance.
//
// reply is not simply rewritten reversed: the answering node rewrites its reply as any
// outbound packet (source -> the answering instance's Instance IP, destination -> the
// caller's Namespace IP), so a reply arrives as chosen InstanceIP:port -> sender's
// NamespaceIP:port.
//
// It refuses with ErrConflict when another live flow already owns reply, and with
// ErrTableFull when MaxFlows live flows are held (counted
// by Refused). A full table is swept for expired flows before it refuses, at most once
// per second, so a table full of expired flows heals without waiting for Sweep. The
// tuples must have one protocol and one address family.
func (t *Table) Add(orig, rewritten, reply Tuple, now time.Time) (Tuple, error) {
	if err := checkTuples(orig, rewritten, reply); err != nil {
		return Tuple{}, err
	}
	n := t.since(now)
	got, err := t.add(orig, rewritten, reply, n)
	if err == ErrTableFull && t.sweepDue(n) {
		t.sweep(n)
		got, err = t.add(orig, rewritten, reply, n)
	}
	if err == ErrTableFull {
		t.refused.Add(1)
	}
	return got, err
}

// sweepDue reports whether a full table may be swept now, and if so claims the sweep.
func (t *Table) sweepDue(n int64) bool {
	next := t.nextSweep.Load()
	return n >= next && t.nextSweep.CompareAndSwap(next, n+sweepEvery)
}

func (t *Table) add(orig, rewritten, rk Tuple, n int64) (Tuple, error) {
	ho, hr := t.hash(&orig), t.hash(&rk)
	so, sr := t.shardOf(ho), t.shardOf(hr)
	lockPair(so, sr)
	defer unlockPair(so, sr)

	old := get(so.idx[byOrig].Load(), &orig, ho, byOrig, t.tomb)
	if old != nil && old.live(n) {
		old.touch(n)
		return old.rewritten, nil
	}
	prev := get(sr.idx[byReply].Load(), &rk, hr, byReply, t.tomb)
	if prev != nil && prev.live(n) {
		t.clashes.Add(1)
		return Tuple{}, ErrConflict
	}
	// Whatever sits under either key is dead or expired: this flow takes its place (put
	// replaces it in its slot). Its other key, in some other shard, now points at a dead
	// entry until Sweep or the next rebuild of that index drops it.
	if old != nil {
		t.kill(old)
	}
	if prev != nil {
		t.kill(prev)
	}
	if !t.reserve() {
		return Tuple{}, ErrTableFull
	}
	e := &entry{key: [2]Tuple{orig, rk}, rewritten: rewritten, timeout: t.timeout(orig.Proto), unreplied: t.unreplied, table: t}
	e.lastSeen.Store(n)
	t.put(so, byOrig, e, ho)
	t.put(sr, byReply, e, hr)
	return rewritten, nil
}

func checkTuples(orig, rewritten, reply Tuple) error {
	is4 := orig.Src.Is4()
	for _, a := range [...]netip.Addr{orig.Src, orig.Dst, rewritten.Src, rewritten.Dst, reply.Src, reply.Dst} {
		if !a.IsValid() || a.Is4() != is4 || a.Zone() != "" {
			return fmt.Errorf("conntrack: cannot track %v as %v (replies %v): every address must be valid, unzoned and of one family", orig, rewritten, reply)
		}
	}
	if orig.Proto != rewritten.Proto || orig.Proto != reply.Proto {
		return fmt.Errorf("conntrack: cannot track %v as %v (replies %v): the protocol cannot change", orig, rewritten, reply)
	}
	return nil
}

// reserve takes room for one flow, or reports that the table is full.
func (t *Table) reserve() bool {
	for {
		c := t.count.Load()
		if c >= t.max {
			return false
		}
		if t.count.CompareAndSwap(c, c+1) {
			return true
		}
	}
}

// kill marks e dead and gives back its room; it reports whether this call did it.
func (t *Table) kill(e *entry) bool {
	if e.dead.CompareAndSwap(false, true) {
		t.count.Add(-1)
		return true
	}
	return false
}

func lockPair(a, b *shard) {
	if a == b {
		a.w.mu.Lock()
		return
	}
	if uintptr(unsafe.Pointer(a)) > uintptr(unsafe.Pointer(b)) {
		a, b = b, a // lock in address order (= index order): no deadlock between two Adds
	}
	a.w.mu.Lock()
	b.w.mu.Lock()
}

func unlockPair(a, b *shard) {
	a.w.mu.Unlock()
	if a != b {
		b.w.mu.Unlock()
	}
}

// Sweep removes every flow idle past its timeout at now, and the leftovers of forgotten
// ones, and returns how many flows it removed. The node calls it periodically (every few
// seconds); it locks one shard at a time against writers only: lookups go on.
func (t *Table) Sweep(now time.Time) int { return t.sweep(t.since(now)) }

func (t *Table) sweep(n int64) int {
	return t.removeIf(func(e *entry) bool { return !e.live(n) })
}

// Forget removes every flow that involves addr as any of its four addresses and returns
// how many it removed; the next packet of such a flow misses and resolves again. Service,
// Instance and Namespace IPs are disjoint, so: a dead instance's Namespace IP ends the
// flows sent to it and, if it was local, those it sent; its Instance IP ends the flows it
// sent and those addressed to it directly; a Service IP ends every flow dialled to it.
// It scans the whole table, one shard at a time: it is for control-plane events, not per
// packet.
func (t *Table) Forget(addr netip.Addr) int {
	return t.removeIf(func(e *entry) bool { return e.dead.Load() || e.involves(addr) })
}

// removeIf kills the flows for which drop is true (and clears dead ones) in every index,
// one shard at a time, and returns how many flows it killed.
func (t *Table) removeIf(drop func(*entry) bool) int {
	killed := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.w.mu.Lock()
		for d := range s.idx {
			killed += t.removeLocked(s, d, drop)
		}
		s.w.mu.Unlock()
	}
	return killed
}

// Len returns the number of flows held: live ones and expired ones not yet reclaimed.
func (t *Table) Len() int { return int(t.count.Load()) }

// Refused returns how many new flows were refused because the table was full.
func (t *Table) Refused() uint64 { return t.refused.Load() }

// Conflicts returns how many new flows were refused with ErrConflict.
func (t *Table) Conflicts() uint64 { return t.clashes.Load() }
