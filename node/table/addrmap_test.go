package table

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"unsafe"
)

// TestIndex6 checks index6 against a Go map over random inserts, updates and deletes: at
// up to half load, probe runs form, wrap around the end of the table, and deletions shift
// entries back across it.
func TestIndex6(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		x := index6[int]{seed: rng.Uint64()}
		ref := map[netip.Addr]int{}
		keys := make([]netip.Addr, 40+round*10)
		for i := range keys {
			keys[i] = netip.AddrFrom16([16]byte{0xfd, 0xff, 8: byte(rng.IntN(4)), 14: byte(i >> 8), 15: byte(i)})
		}
		for op := range 5000 {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(3) == 0 {
				x.del(k)
				delete(ref, k)
			} else {
				x.set(k, op)
				ref[k] = op
			}
			if x.n != len(ref) || 2*x.n > len(x.slots) {
				t.Fatalf("round %d op %d: n = %d, want %d, %d slots", round, op, x.n, len(ref), len(x.slots))
			}
			if op%50 == 0 {
				for _, k := range keys {
					v, ok := x.get(k)
					if w, wok := ref[k]; ok != wok || v != w {
						t.Fatalf("round %d op %d: get(%v) = %d, %v; want %d, %v", round, op, k, v, ok, w, wok)
					}
				}
			}
		}
		c := x.clone()
		for k := range ref {
			c.del(k)
		}
		if c.n != 0 || x.n != len(ref) {
			t.Fatalf("clone shares state: clone n %d, original n %d", c.n, x.n)
		}
	}
}

func TestAddrMap(t *testing.T) {
	m := newAddrMap[int](7)
	for i, a := range []string{"10.30.0.1", "fdff:2000::1", "::ffff:10.30.0.2"} {
		m.set(netip.MustParseAddr(a), i+1)
	}
	for _, c := range []struct {
		a  string
		v  int
		ok bool
	}{
		{"10.30.0.1", 1, true}, {"fdff:2000::1", 2, true}, {"::ffff:10.30.0.2", 3, true},
		{"::ffff:10.30.0.1", 0, false}, {"10.30.0.2", 0, false}, {"::", 0, false}, {"fdff::1", 0, false},
	} {
		v, ok := m.get(netip.MustParseAddr(c.a))
		if v != c.v || ok != c.ok {
			t.Errorf("get(%s) = %d, %v; want %d, %v", c.a, v, ok, c.v, c.ok)
		}
	}
	if _, ok := m.get(netip.Addr{}); ok {
		t.Error("the zero address found")
	}
	m.del(netip.MustParseAddr("fdff:2000::1"))
	m.del(netip.MustParseAddr("10.30.0.1"))
	if _, ok := m.get(netip.MustParseAddr("fdff:2000::1")); ok || len(m.v4) != 0 || m.v6.n != 1 {
		t.Error("del left keys")
	}
	defer func() {
		if recover() == nil {
			t.Error("set(::) did not panic")
		}
	}()
	m.set(netip.IPv6Unspecified(), 1)
}

func TestJobStateLayout(t *testing.T) {
	var st jobState
	if unsafe.Sizeof(st) != 128 || unsafe.Offsetof(st.rr)-unsafe.Offsetof(st.used) != 64 {
		t.Errorf("jobState: size %d, rr at %d: want a cache line per field", unsafe.Sizeof(st), unsafe.Offsetof(st.rr))
	}
}
