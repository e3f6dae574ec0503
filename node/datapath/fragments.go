package datapath

import (
	"net/netip"
	"sync"
	"time"

	"github.com/semnet/semnet/node/packet"
)

// Fragmented datagrams: only the first fragment carries ports, so it alone can be
// matched to a flow. The decision taken for it is remembered under the datagram's
// identity (addresses, protocol, IP identification) and applied to the fragments that
// follow. Linux sends a datagram's fragments first to last; a non-first fragment that
// arrives before its head is dropped and counted (ReasonFragment), and the sender's
// retransmission recovers, as it would from any loss. Fragments are rare, so a mutex
// here costs nothing on the common path, which never takes it.

const (
	// fragmentTTL: Linux's ipfrag_time (reassembly gives up after 30 s).
	fragmentTTL = 30 * time.Second
	// maxFragments bounds the datagrams remembered at once; past it a new fragmented
	// datagram is not remembered and its later fragments are dropped.
	maxFragments = 4096
)

type fragKey struct {
	src, dst netip.Addr
	id       uint32
	proto    packet.Proto
}

func fragKeyOf(p *packet.Parsed) fragKey {
	return fragKey{src: p.Src, dst: p.Dst, id: p.FragID, proto: p.Proto}
}

type fragment struct {
	src, dst netip.Addr // the addresses the datagram is rewritten to (dst unused inbound)
	result   Result
	expires  time.Time
}

type fragments struct {
	mu sync.Mutex
	m  map[fragKey]fragment
}

func newFragments() *fragments { return &fragments{m: map[fragKey]fragment{}} }

func (f *fragments) put(k fragKey, v fragment, now time.Time) {
	v.expires = now.Add(fragmentTTL)
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.m) >= maxFragments {
		f.sweepLocked(now)
		if len(f.m) >= maxFragments {
			return
		}
	}
	f.m[k] = v
}

func (f *fragments) get(k fragKey, now time.Time) (fragment, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.m[k]
	if !ok || now.After(v.expires) {
		return fragment{}, false
	}
	return v, true
}

func (f *fragments) sweep(now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweepLocked(now)
}

func (f *fragments) sweepLocked(now time.Time) {
	for k, v := range f.m {
		if now.After(v.expires) {
			delete(f.m, k)
		}
	}
}
