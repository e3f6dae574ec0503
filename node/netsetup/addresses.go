package netsetup

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
)

// firstOffset is the offset of the first instance address in a worker subnet: offset 0 is
// the network address (and IPv6's subnet-router anycast address), 1 the bridge.
const firstOffset = 2

// maxSlots bounds an Addresses' table; a node holds a /26 (61 instances), so a /16 is
// already far more than a node can run.
const maxSlots = 1 << 16

// ErrSubnetFull is wrapped by Allocate's error when every address is handed out; compare
// with errors.Is.
var ErrSubnetFull = errors.New("worker subnet is full")

// fullError names the subnet and how many instances fill it.
type fullError struct {
	subnet netip.Prefix
	n      int
}

func (e fullError) Error() string {
	return fmt.Sprintf("netsetup: worker subnet %s is full: %d instances", e.subnet, e.n)
}

func (e fullError) Is(target error) bool { return target == ErrSubnetFull }

// NamespaceIPs is one instance's pair of Namespace IPs: the same offset in the node's IPv4
// and IPv6 worker subnets, so either address names the pair.
type NamespaceIPs struct {
	V4 netip.Addr
	V6 netip.Addr
}

// Addresses hands out the Namespace IPs of one node's worker subnets: pairs at offsets 2
// upward (subnet+1 is the bridge), never the network or IPv4 broadcast address. It is safe
// for concurrent use.
//
// Allocation continues upward from the last address handed out and wraps, instead of
// taking the lowest free one, so a released address is reused as late as possible:
// neighbour caches and connection-tracking entries for the instance that had it have
// expired by then. A node that restarts rebuilds the table with Claim.
type Addresses struct {
	subnet, subnet6 netip.Prefix

	mu    sync.Mutex
	used  []uint64 // bit i: the pair at offset firstOffset+i is handed out
	slots int      // pairs in all
	inUse int
	next  int // slot where the search for a free pair starts
}

// NewAddresses returns an empty table over the node's IPv4 and IPv6 worker subnets. With
// a /26 and a /120 it holds 61 pairs: the IPv4 subnet's 64 addresses less network,
// bridge and broadcast.
func NewAddresses(subnet, subnet6 netip.Prefix) (*Addresses, error) {
	if err := checkSubnet(subnet, false); err != nil {
		return nil, err
	}
	if err := checkSubnet(subnet6, true); err != nil {
		return nil, err
	}
	// IPv4 loses its broadcast address; IPv6 has none. The smaller subnet sets the count.
	slots := min(subnetSize(subnet)-1, subnetSize(subnet6)) - firstOffset
	if slots > maxSlots {
		return nil, fmt.Errorf("netsetup: worker subnets %s and %s hold more than %d instances; a node's subnet is a /26", subnet, subnet6, maxSlots)
	}
	n := int(slots)
	return &Addresses{subnet: subnet, subnet6: subnet6, used: make([]uint64, (n+63)/64), slots: n}, nil
}

// Allocate hands out a free pair. When none is left its error wraps ErrSubnetFull and
// reads "netsetup: worker subnet 10.18.0.64/26 is full: 61 instances".
func (a *Addresses) Allocate() (NamespaceIPs, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	slot, ok := a.firstFree(a.next)
	if !ok {
		if slot, ok = a.firstFree(0); !ok {
			return NamespaceIPs{}, fullError{a.subnet, a.slots}
		}
	}
	a.take(slot)
	a.next = slot + 1
	return a.pair(slot), nil
}

// Claim marks the pair holding ip (either family's address) as handed out, as a
// restarted node does for the instances it finds running, and returns the pair. It fails
// if ip cannot be an instance's address or the pair is already handed out.
func (a *Addresses) Claim(ip netip.Addr) (NamespaceIPs, error) {
	slot, err := a.slot(ip)
	if err != nil {
		return NamespaceIPs{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.isUsed(slot) {
		p := a.pair(slot)
		return NamespaceIPs{}, fmt.Errorf("netsetup: namespace IPs %s and %s are already handed out", p.V4, p.V6)
	}
	a.take(slot)
	return a.pair(slot), nil
}

// Release returns the pair holding ip (either family's address) to the table. Releasing
// a pair that is not handed out is an error: it means two owners thought they held it.
func (a *Addresses) Release(ip netip.Addr) error {
	slot, err := a.slot(ip)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.isUsed(slot) {
		p := a.pair(slot)
		return fmt.Errorf("netsetup: release namespace IPs %s and %s: not handed out", p.V4, p.V6)
	}
	a.used[slot/64] &^= 1 << (slot % 64)
	a.inUse--
	return nil
}

// InUse returns how many pairs are handed out.
func (a *Addresses) InUse() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inUse
}

// Cap returns how many pairs the subnets hold in all.
func (a *Addresses) Cap() int { return a.slots }

// slot maps an instance address of either family to its slot.
func (a *Addresses) slot(ip netip.Addr) (int, error) {
	ip = ip.Unmap()
	subnet := a.subnet
	if ip.Is6() {
		subnet = a.subnet6
	}
	if err := checkNamespaceIP(ip, subnet); err != nil {
		return 0, err
	}
	s := offset(subnet, ip) - firstOffset
	if s >= uint64(a.slots) {
		// Only in the larger subnet of the two: the offset has no partner in the other.
		return 0, fmt.Errorf("netsetup: %s has no partner address in worker subnet %s: %w", ip, a.subnet, errNotInstance)
	}
	return int(s), nil
}

func (a *Addresses) pair(slot int) NamespaceIPs {
	off := uint64(slot + firstOffset)
	return NamespaceIPs{V4: addOffset(a.subnet.Addr(), off), V6: addOffset(a.subnet6.Addr(), off)}
}

func (a *Addresses) isUsed(slot int) bool { return a.used[slot/64]&(1<<(slot%64)) != 0 }

func (a *Addresses) take(slot int) {
	a.used[slot/64] |= 1 << (slot % 64)
	a.inUse++
}

// firstFree returns the lowest free slot at or above from.
func (a *Addresses) firstFree(from int) (int, bool) {
	for w := from / 64; w < len(a.used); w++ {
		free := ^a.used[w]
		if w == from/64 {
			free &^= 1<<(from%64) - 1 // slots below from
		}
		if free != 0 {
			if s := w*64 + bits.TrailingZeros64(free); s < a.slots {
				return s, true
			}
			return 0, false // only padding beyond the last slot is free
		}
	}
	return 0, false
}

// subnetSize returns how many addresses p holds, at most 1<<32.
func subnetSize(p netip.Prefix) uint64 {
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits >= 32 {
		return 1 << 32
	}
	return 1 << hostBits
}

// offset returns ip's distance from subnet's first address; ip must lie in subnet, and
// only the low 64 bits count (a worker subnet is far smaller).
func offset(subnet netip.Prefix, ip netip.Addr) uint64 {
	return low64(ip) - low64(subnet.Addr())
}

func low64(ip netip.Addr) uint64 {
	b := ip.As16()
	var v uint64
	for _, x := range b[8:] {
		v = v<<8 | uint64(x)
	}
	return v
}

// addOffset returns base+off; base is a subnet's first address and off lies inside it,
// so no carry crosses the low 64 bits.
func addOffset(base netip.Addr, off uint64) netip.Addr {
	b := base.As16()
	v := low64(base) + off
	for i := 15; i >= 8; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	a := netip.AddrFrom16(b)
	if base.Is4() {
		return a.Unmap()
	}
	return a
}
