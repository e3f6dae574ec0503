package conntrack

import (
	"net/netip"
	"testing"
	"time"
	"unsafe"
)

// checkIndexes verifies every index of tb: the writers' counts match the slots, the load
// stays at most half, and every entry that is not dead is found by get under its key.
func checkIndexes(t *testing.T, tb *Table) (live int) {
	t.Helper()
	for si := range tb.shards {
		s := &tb.shards[si]
		for dir := range s.idx {
			a := s.idx[dir].Load()
			used, tombs := 0, 0
			for i := range a.s {
				e := a.s[i].Load()
				switch {
				case e == nil:
					continue
				case e == tb.tomb:
					tombs++
				case !e.dead.Load():
					k := e.key[dir]
					h := tb.hash(&k)
					if tb.shardOf(h) != s {
						t.Fatalf("entry %v in shard %d, hashes elsewhere", k, si)
					}
					if get(a, &k, h, dir, tb.tomb) != e {
						t.Fatalf("entry %v not found under its own key", k)
					}
					if dir == byOrig {
						live++
					}
				}
				used++
			}
			if used != s.w.used[dir] || tombs != s.w.tombs[dir] {
				t.Fatalf("shard %d dir %d: used %d tombs %d, counted %d %d", si, dir, s.w.used[dir], s.w.tombs[dir], used, tombs)
			}
			if used*2 > len(a.s) {
				t.Fatalf("shard %d dir %d: %d of %d slots used", si, dir, used, len(a.s))
			}
		}
	}
	return live
}

func flowN(i int) (orig, rewritten Tuple) {
	src := netip.AddrFrom4([4]byte{10, 18, byte(i >> 8), byte(i)})
	orig = Tuple{Proto: protoUDP, Src: src, SrcPort: 5353, Dst: netip.MustParseAddr("10.30.0.1"), DstPort: 53}
	rewritten = Tuple{Proto: protoUDP, Src: netip.AddrFrom4([4]byte{10, 30, 1 + byte(i>>8), byte(i)}), SrcPort: 5353,
		Dst: netip.AddrFrom4([4]byte{10, 18, 30, byte(2 + i%61)}), DstPort: 53}
	return orig, rewritten
}

// TestIndexGrowShrink fills, thins and refills a table with few shards so that every
// index grows, collects tombstones and shrinks, checking the invariants throughout. The
// flows differ only in their source address (ports are equal), as NTP's or DNS's can.
func TestIndexGrowShrink(t *testing.T) {
	tb, err := New(Config{MaxFlows: 5000, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 4000 {
		o, r := flowN(i)
		if _, err := tb.Add(o, r, r.Reverse(), t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if got := checkIndexes(t, tb); got != 4000 {
		t.Fatalf("%d live entries, want 4000", got)
	}
	for s := range tb.shards { // the hash spreads equal-port flows evenly
		if n := tb.shards[s].w.used[byOrig]; n < 700 || n > 1300 {
			t.Errorf("shard %d holds %d of 4000 flows", s, n)
		}
	}
	// Flow i was added at t0+i ms; just before t0+33s those below 3000 are idle for 30 s.
	now := t0.Add(33*time.Second - 500*time.Microsecond)
	if n := tb.Sweep(now); n != 3000 {
		t.Fatalf("Sweep removed %d, want 3000", n)
	}
	if got := checkIndexes(t, tb); got != 1000 {
		t.Fatalf("%d live entries, want 1000", got)
	}
	for s := range tb.shards {
		if n := len(tb.shards[s].idx[byOrig].Load().s); n > 2048 {
			t.Errorf("shard %d index did not shrink: %d slots for ~250 flows", s, n)
		}
	}
	for i := range 4000 {
		o, r := flowN(i)
		got, ok := tb.Outbound(o, now)
		if ok != (i >= 3000) || ok && got != r {
			t.Fatalf("flow %d: %v %v", i, got, ok)
		}
	}
	// Forget one instance (every 61st flow), then refill: replaces in place and reuses
	// tombstones.
	forgot := tb.Forget(netip.AddrFrom4([4]byte{10, 18, 30, 2}))
	checkIndexes(t, tb)
	for i := range 4000 {
		o, r := flowN(i)
		if _, err := tb.Add(o, r, r.Reverse(), now); err != nil {
			t.Fatal(err)
		}
	}
	if got := checkIndexes(t, tb); got != 4000 || tb.Len() != 4000 {
		t.Fatalf("%d live entries, Len %d, want 4000 (forgot %d)", got, tb.Len(), forgot)
	}
}

func TestShardLayout(t *testing.T) {
	var s shard
	if size := unsafe.Sizeof(s); size%64 != 0 {
		t.Errorf("shard is %d bytes, not whole cache lines", size)
	}
}
