package ippool

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkAllocate measures one address's life in a pool holding `used` addresses: each
// iteration allocates an address and releases the oldest one it holds, and the clock moves
// so that quarantines expire at the rate they start. The fill level stays at `used` (plus
// 100 in quarantine), so ns/op at used=60000 against used=1000 is the per-address cost
// as the pool fills (target: within 1.2x).
func BenchmarkAllocate(b *testing.B) {
	const step, inQuarantine = time.Millisecond, 100
	for _, pc := range []struct {
		name     string
		prefix   string
		reserved []netip.Prefix
	}{
		{"", "10.30.0.0/16", []netip.Prefix{rsvNet, rsvGW}},
		{"v6/", "fdff:2000::/21", nil},
	} {
		for _, used := range []int{1000, 60000} {
			b.Run(fmt.Sprintf("%sused=%d", pc.name, used), func(b *testing.B) {
				now := newClock().Now() // a bare variable: the test clock's mutex would dominate
				p := mustNew(b, pc.prefix, Options{Reserved: pc.reserved, Quarantine: inQuarantine * step, Now: func() time.Time { return now }})
				held := make([]netip.Addr, used)
				for i := range held {
					held[i] = mustAlloc(b, p)
				}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					now = now.Add(step)
					a, err := p.Allocate()
					if err != nil {
						b.Fatal(err)
					}
					j := i % used
					if err := p.Release(held[j]); err != nil {
						b.Fatal(err)
					}
					held[j] = a
				}
				if s := p.Stats(); s.Used != uint64(used) || s.Quarantined > inQuarantine+1 {
					b.Fatalf("fill level drifted: %+v", s)
				}
			})
		}
	}
}
