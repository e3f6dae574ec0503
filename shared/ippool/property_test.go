package ippool

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// model is the obvious allocator the Pool must behave exactly like: a map from each
// slot's first address to its state, scanned in full on every Allocate. Slots are found
// with netip's own prefix arithmetic, independent of the Pool's.
type model struct {
	prefix   netip.Prefix
	slotBits int
	window   []netip.Addr // the slots Allocate may hand out, lowest first
	inWin    map[netip.Addr]bool
	reserved []netip.Prefix
	q        time.Duration
	used     map[netip.Addr]bool
	quar     map[netip.Addr]time.Time // until
}

func (m *model) slot(a netip.Addr) netip.Addr {
	return netip.PrefixFrom(a, m.slotBits).Masked().Addr()
}

func (m *model) isReserved(s netip.Addr) bool {
	for _, r := range m.reserved {
		if r.Overlaps(netip.PrefixFrom(s, m.slotBits)) {
			return true
		}
	}
	return false
}

func (m *model) expire(now time.Time) {
	for s, until := range m.quar {
		if !until.After(now) {
			delete(m.quar, s)
		}
	}
}

// check is the error kind Claim and Release give before looking at a slot's state.
func (m *model) check(a netip.Addr) error {
	switch {
	case !m.prefix.Contains(a) || m.slot(a) != a:
		return ErrOutOfRange
	case m.isReserved(a):
		return ErrReserved
	}
	return nil
}

func (m *model) allocate() (netip.Addr, error) {
	for _, s := range m.window {
		if !m.isReserved(s) && !m.used[s] && m.quar[s].IsZero() {
			m.used[s] = true
			return s, nil
		}
	}
	return netip.Addr{}, ErrExhausted
}

func (m *model) claim(a netip.Addr) error {
	if err := m.check(a); err != nil {
		return err
	}
	switch {
	case !m.quar[a].IsZero():
		return ErrQuarantined
	case m.used[a]:
		return ErrInUse
	}
	m.used[a] = true
	return nil
}

func (m *model) release(a netip.Addr, now time.Time) error {
	if err := m.check(a); err != nil {
		return err
	}
	if !m.used[a] {
		return ErrNotInUse
	}
	delete(m.used, a)
	if m.q > 0 {
		m.quar[a] = now.Add(m.q)
	}
	return nil
}

func (m *model) unreserve(a netip.Addr) {
	if m.check(a) == nil {
		delete(m.used, a)
	}
}

func (m *model) markUsed(a netip.Addr) {
	if !m.prefix.Contains(a) || m.isReserved(m.slot(a)) {
		return
	}
	s := m.slot(a)
	delete(m.quar, s)
	m.used[s] = true
}

func (m *model) markQuarantined(a netip.Addr, releasedAt, now time.Time) {
	if !m.prefix.Contains(a) || m.isReserved(m.slot(a)) {
		return
	}
	s, until := m.slot(a), releasedAt.Add(m.q)
	if !until.After(now) || m.used[s] || m.quar[s].After(until) {
		return
	}
	m.quar[s] = until
}

func (m *model) stats() Stats {
	st := Stats{Used: uint64(len(m.used)), Quarantined: uint64(len(m.quar))}
	for _, s := range m.window {
		if !m.isReserved(s) {
			st.Size++
		}
	}
	return st
}

// kindOf returns the sentinel err wraps, for comparison with the model.
func kindOf(err error) error {
	for _, k := range []error{ErrExhausted, ErrOutOfRange, ErrReserved, ErrInUse, ErrQuarantined, ErrNotInUse} {
		if errors.Is(err, k) {
			return k
		}
	}
	return err
}

// TestMatchesModel runs thousands of random operations on small pools and their models,
// in phases that alternately fill the pool (to exhaustion) and drain it, and requires the
// same answer from both every time: the same address from Allocate (so nothing used or
// quarantined is ever handed out, quarantined addresses come back only when their time is
// up, and exhaustion happens exactly when the model is full), the same error kinds, and
// the same Stats.
func TestMatchesModel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefix   string
		opt      Options
		extra    []string // addresses to try besides the window's slots
		beyondAt []string // starts of runs of slots beyond the window, for claims
	}{
		{
			name:   "v4 /24",
			prefix: "10.0.0.0/24",
			opt:    Options{Reserved: []netip.Prefix{mp("10.0.0.0/30"), mp("10.0.0.255/32")}, Quarantine: 10 * time.Second},
			extra:  []string{"10.0.1.0", "9.255.255.255", "::ffff:10.0.0.9", "fd00::9"},
		},
		{
			name:   "v4 /22 of /26 blocks",
			prefix: "10.18.0.0/22",
			opt:    Options{BlockBits: 26, Reserved: []netip.Prefix{mp("10.18.1.0/26"), mp("10.18.3.250/32")}, Quarantine: 10 * time.Second},
			extra:  []string{"10.18.0.1", "10.18.2.65", "10.18.4.0", "10.17.255.192"},
		},
		{
			name:     "v6 /64 with a window of 100",
			prefix:   "fd00::/64",
			opt:      Options{Window: 100, Reserved: []netip.Prefix{mp("fd00::/126"), mp("fd00::40/127")}, Quarantine: 10 * time.Second},
			extra:    []string{"fd00:0:0:1::", "fe80::1", "10.0.0.1"},
			beyondAt: []string{"fd00::64", "fd00::ffff:ffff:ffff:fff0"},
		},
		{
			name:     "v6 /8 of /120 blocks, window 70, no quarantine",
			prefix:   "fc00::/8",
			opt:      Options{BlockBits: 120, Window: 70, Reserved: []netip.Prefix{mp("fc00::1000/119"), mp("fc00::ff00:0/104")}},
			extra:    []string{"fc00::1", "fd00::", "fc00::4600:1", "fc00::ff00:0", "fc00::ff12:3400"},
			beyondAt: []string{"fc00::4600", "fcff:ffff:ffff:ffff:ffff:ffff:ffff:f000"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			tc.opt.Now = clk.Now
			p := mustNew(t, tc.prefix, tc.opt)
			slotBits := tc.opt.BlockBits
			if slotBits == 0 {
				slotBits = mp(tc.prefix).Addr().BitLen()
			}
			m := &model{prefix: mp(tc.prefix), slotBits: slotBits, inWin: map[netip.Addr]bool{},
				reserved: tc.opt.Reserved, q: tc.opt.Quarantine, used: map[netip.Addr]bool{}, quar: map[netip.Addr]time.Time{}}
			// The window's slots, by stepping one slot at a time with netip.
			step := func(a netip.Addr, k int) netip.Addr {
				for range k << (a.BitLen() - slotBits) {
					a = a.Next()
				}
				return a
			}
			win := tc.opt.Window
			if win == 0 {
				win = 1 << (slotBits - m.prefix.Bits())
			}
			for s, i := m.prefix.Addr(), 0; i < win; s, i = step(s, 1), i+1 {
				m.window = append(m.window, s)
				m.inWin[s] = true
			}
			cands := append([]netip.Addr(nil), m.window...)
			for _, a := range tc.extra {
				cands = append(cands, ma(a))
			}
			for _, a := range tc.beyondAt {
				for s, i := ma(a), 0; i < 8; s, i = step(s, 1), i+1 {
					cands = append(cands, s)
				}
			}

			rng := rand.New(rand.NewPCG(1, uint64(len(tc.name))))
			pick := func() netip.Addr { return cands[rng.IntN(len(cands))] }
			// pickUsed mostly picks a used address (the next one from a random start, so
			// the run is reproducible from the seed), else any candidate.
			pickUsed := func() netip.Addr {
				if rng.IntN(4) != 0 {
					for i, k := rng.IntN(len(cands)), 0; k < len(cands); i, k = (i+1)%len(cands), k+1 {
						if m.used[cands[i]] {
							return cands[i]
						}
					}
				}
				return pick()
			}
			count := map[string]int{}
			const ops = 20000
			for op := range ops {
				filling := (op/1500)%2 == 0
				now := clk.Now()
				m.expire(now)
				r := rng.IntN(100)
				switch {
				case r < 30 && filling || r < 12:
					got, err := p.Allocate()
					want, wantErr := m.allocate()
					if kindOf(err) != wantErr || got != want {
						t.Fatalf("op %d: Allocate = %s, %v; model says %s, %v", op, got, err, want, wantErr)
					}
					if err != nil {
						count["exhausted"]++
					} else {
						count["allocated"]++
					}
				case r < 45:
					a := pick()
					err := p.Claim(a)
					if want := m.claim(a); kindOf(err) != want {
						t.Fatalf("op %d: Claim(%s) = %v; model says %v", op, a, err, want)
					}
					count["claim "+errString(err)]++
				case r < 60 || !filling && r < 85:
					a := pickUsed()
					err := p.Release(a)
					if want := m.release(a, now); kindOf(err) != want {
						t.Fatalf("op %d: Release(%s) = %v; model says %v", op, a, err, want)
					}
					count["release "+errString(err)]++
				case r < 68:
					a := pickUsed()
					p.Unreserve(a)
					m.unreserve(a)
					count["unreserve"]++
				case r < 71:
					a := pick()
					p.MarkUsed(a)
					m.markUsed(a)
					count["markUsed"]++
				case r < 74:
					a, at := pick(), now.Add(-time.Duration(rng.IntN(15))*time.Second)
					p.MarkQuarantined(a, at)
					m.markQuarantined(a, at, now)
					count["markQuarantined"]++
				default:
					clk.Add(time.Duration(rng.IntN(1500)) * time.Millisecond)
				}
				m.expire(clk.Now())
				if got, want := p.Stats(), m.stats(); got != want {
					t.Fatalf("op %d: Stats = %+v; model says %+v", op, got, want)
				}
			}
			t.Logf("%v", count)
			for _, k := range []string{"exhausted", "allocated", "claim ok", "claim address in use", "claim address reserved", "claim address out of range", "release ok", "release address not in use"} {
				if count[k] == 0 {
					t.Errorf("no %q in %d operations: the test does not reach it", k, ops)
				}
			}
			if tc.opt.Quarantine > 0 && count["claim address in quarantine"] == 0 {
				t.Errorf("no claim met a quarantine in %d operations", ops)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return kindOf(err).Error()
}
