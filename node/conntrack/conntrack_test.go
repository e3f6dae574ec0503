package conntrack_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/node/conntrack"
)

const (
	tcp  = 6
	udp  = 17
	icmp = 1
)

var (
	t0 = time.Unix(1_700_000_000, 0) // tests run on their own clock
	ip = netip.MustParseAddr
)

func tuple(proto uint8, src string, sport uint16, dst string, dport uint16) conntrack.Tuple {
	return conntrack.Tuple{Proto: proto, Src: ip(src), SrcPort: sport, Dst: ip(dst), DstPort: dport}
}

func newTable(t testing.TB, cfg conntrack.Config) *conntrack.Table {
	t.Helper()
	tb, err := conntrack.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// The worked example: instance A1 (Namespace IP 10.18.0.2, Instance IP 10.30.0.2) dials
// service S's Round Robin IP 10.30.0.1:80; the node picks instance B1 (Namespace IP
// 10.18.30.65).
var (
	orig      = tuple(tcp, "10.18.0.2", 40000, "10.30.0.1", 80)
	rewritten = tuple(tcp, "10.30.0.2", 40000, "10.18.30.65", 80)
)

func mustAdd(t testing.TB, tb *conntrack.Table, orig, rw conntrack.Tuple, now time.Time) {
	t.Helper()
	got, err := tb.Add(orig, rw, rw.Reverse(), now)
	if err != nil {
		t.Fatalf("Add(%v, %v): %v", orig, rw, err)
	}
	if got != rw {
		t.Fatalf("Add(%v, %v) = %v", orig, rw, got)
	}
}

func TestStickiness(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	if _, ok := tb.Outbound(orig, t0); ok {
		t.Fatal("empty table has a flow")
	}
	mustAdd(t, tb, orig, rewritten, t0)
	if _, ok := tb.Reply(rewritten.Reverse(), t0); !ok { // answered: TCPTimeout applies
		t.Fatal("no reply mapping")
	}
	for i := range 5 {
		got, ok := tb.Outbound(orig, t0.Add(time.Duration(i)*4*time.Minute))
		if !ok || got != rewritten {
			t.Fatalf("Outbound #%d = %v, %v; want %v", i, got, ok, rewritten)
		}
	}
	// A second resolution of the same flow (another goroutine raced) keeps the first.
	other := tuple(tcp, "10.30.0.2", 40000, "10.18.30.66", 80)
	got, err := tb.Add(orig, other, other.Reverse(), t0.Add(16*time.Minute))
	if err != nil || got != rewritten {
		t.Fatalf("second Add = %v, %v; want the first flow's %v", got, err, rewritten)
	}
	if tb.Len() != 1 {
		t.Errorf("Len = %d, want 1", tb.Len())
	}
}

func TestReplyMapping(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	mustAdd(t, tb, orig, rewritten, t0)
	// The reply arrives from the tunnel: 10.18.30.65:80 -> 10.30.0.2:40000.
	reply := tuple(tcp, "10.18.30.65", 80, "10.30.0.2", 40000)
	got, ok := tb.Reply(reply, t0)
	want := tuple(tcp, "10.30.0.1", 80, "10.18.0.2", 40000) // what A1 must see
	if !ok || got != want {
		t.Fatalf("Reply(%v) = %v, %v; want %v", reply, got, ok, want)
	}
	if src, ok := tb.ReplySrc(&reply, t0); !ok || src != want.Src {
		t.Errorf("ReplySrc(%v) = %v, %v; want %v", reply, src, ok, want.Src)
	}
	if got != orig.Reverse() || reply != rewritten.Reverse() {
		t.Errorf("Reverse disagrees")
	}
	// Directions do not mix, and every field of the key counts.
	for _, k := range []conntrack.Tuple{
		tuple(udp, "10.18.30.65", 80, "10.30.0.2", 40000),
		tuple(tcp, "10.18.30.65", 81, "10.30.0.2", 40000),
		tuple(tcp, "10.18.30.65", 80, "10.30.0.2", 40001),
		tuple(tcp, "10.18.30.66", 80, "10.30.0.2", 40000),
		tuple(tcp, "10.18.30.65", 80, "10.30.0.3", 40000),
	} {
		if got, ok := tb.Reply(k, t0); ok {
			t.Errorf("Reply(%v) = %v, want a miss", k, got)
		}
		if src, ok := tb.ReplySrc(&k, t0); ok {
			t.Errorf("ReplySrc(%v) = %v, want a miss", k, src)
		}
	}
	if _, ok := tb.Outbound(reply, t0); ok {
		t.Errorf("a reply tuple found an outbound flow")
	}
	if _, ok := tb.Reply(orig, t0); ok {
		t.Errorf("an outbound tuple found a reply")
	}
}

// TestSameSourcePortNoCollision is the reference's bug: its table was keyed by source
// port alone, so two callers that happened to use the same port got each other's flows.
func TestSameSourcePortNoCollision(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	// A1 and A2 (two instances, same or different nodes) both use source port 40000 to
	// reach S 10.30.0.1:80, and both are balanced to B1.
	o1, r1 := orig, rewritten
	o2 := tuple(tcp, "10.18.0.3", 40000, "10.30.0.1", 80)
	r2 := tuple(tcp, "10.30.0.3", 40000, "10.18.30.65", 80)
	mustAdd(t, tb, o1, r1, t0)
	mustAdd(t, tb, o2, r2, t0)
	// And an external client through the gateway with the same port again, to another
	// instance (FLOWS.md's gateway flow).
	o3 := tuple(tcp, "10.30.255.253", 40000, "10.30.0.1", 80)
	r3 := tuple(tcp, "10.30.255.253", 40000, "10.18.0.1", 80)
	mustAdd(t, tb, o3, r3, t0)
	for _, f := range []struct{ o, r conntrack.Tuple }{{o1, r1}, {o2, r2}, {o3, r3}} {
		if got, ok := tb.Outbound(f.o, t0); !ok || got != f.r {
			t.Errorf("Outbound(%v) = %v, %v; want %v", f.o, got, ok, f.r)
		}
		if got, ok := tb.Reply(f.r.Reverse(), t0); !ok || got != f.o.Reverse() {
			t.Errorf("Reply(%v) = %v, %v; want %v", f.r.Reverse(), got, ok, f.o.Reverse())
		}
	}
}

func TestConflict(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	mustAdd(t, tb, orig, rewritten, t0)
	// A1 sends from the same port to S's Closest IP, and the node picks B1 again: the
	// replies of the two flows would be identical, so the second is refused.
	closest := tuple(tcp, "10.18.0.2", 40000, "10.30.0.9", 80)
	if _, err := tb.Add(closest, rewritten, rewritten.Reverse(), t0); !errors.Is(err, conntrack.ErrConflict) {
		t.Fatalf("Add = %v, want ErrConflict", err)
	}
	if tb.Conflicts() != 1 || tb.Refused() != 0 || tb.Len() != 1 {
		t.Errorf("Conflicts %d Refused %d Len %d", tb.Conflicts(), tb.Refused(), tb.Len())
	}
	if got, _ := tb.Reply(rewritten.Reverse(), t0); got != orig.Reverse() {
		t.Errorf("the refused flow took the reply: %v", got)
	}
	// Once the first (answered, above) flow is idle past TCPTimeout, the tuple is free.
	later := t0.Add(5*time.Minute + time.Second)
	mustAdd(t, tb, closest, rewritten, later)
	if got, _ := tb.Reply(rewritten.Reverse(), later); got != closest.Reverse() {
		t.Errorf("Reply = %v, want %v", got, closest.Reverse())
	}
	if _, ok := tb.Outbound(orig, later); ok {
		t.Errorf("the expired flow is still found")
	}
}

func TestExpiry(t *testing.T) {
	cfg := conntrack.DefaultConfig()
	for _, tc := range []struct {
		name      string
		proto     uint8
		answered  bool
		idleLimit time.Duration
	}{
		{"tcp answered", tcp, true, cfg.TCPTimeout},
		{"tcp unanswered", tcp, false, cfg.UnrepliedTimeout},
		{"udp answered", udp, true, cfg.UDPTimeout},
		{"udp unanswered", udp, false, cfg.UDPTimeout},
		{"icmp", icmp, true, cfg.ICMPTimeout},
		{"gre", 47, true, cfg.OtherTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := newTable(t, conntrack.Config{})
			o, r := orig, rewritten
			o.Proto, r.Proto = tc.proto, tc.proto
			mustAdd(t, tb, o, r, t0)
			now := t0
			if tc.answered {
				if _, ok := tb.Reply(r.Reverse(), now); !ok {
					t.Fatal("no reply mapping")
				}
			}
			// Activity keeps the flow: three idle gaps just under the limit.
			for range 3 {
				now = now.Add(tc.idleLimit - time.Second)
				if _, ok := tb.Outbound(o, now); !ok {
					t.Fatalf("flow expired after %v idle, limit %v", tc.idleLimit-time.Second, tc.idleLimit)
				}
			}
			// Idle for the limit: gone, in both directions, before any Sweep.
			now = now.Add(tc.idleLimit)
			if _, ok := tb.Outbound(o, now); ok {
				t.Errorf("Outbound found a flow idle for %v", tc.idleLimit)
			}
			if _, ok := tb.Reply(r.Reverse(), now); ok {
				t.Errorf("Reply found a flow idle for %v", tc.idleLimit)
			}
			if tb.Len() != 1 {
				t.Errorf("Len before Sweep = %d, want 1", tb.Len())
			}
			if n := tb.Sweep(now); n != 1 || tb.Len() != 0 {
				t.Errorf("Sweep = %d, Len %d; want 1, 0", n, tb.Len())
			}
		})
	}
}

func TestSweepKeepsLive(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	for i := range 100 {
		o := tuple(udp, "10.18.0.2", uint16(1000+i), "10.30.0.1", 53)
		r := tuple(udp, "10.30.0.2", uint16(1000+i), "10.18.30.65", 53)
		mustAdd(t, tb, o, r, t0.Add(time.Duration(i)*time.Second))
	}
	// At t0+60s flows added at t0..t0+30s are idle for >= 30 s.
	if n := tb.Sweep(t0.Add(60 * time.Second)); n != 31 {
		t.Errorf("Sweep removed %d, want 31", n)
	}
	if tb.Len() != 69 {
		t.Errorf("Len = %d, want 69", tb.Len())
	}
	for i := range 100 {
		o := tuple(udp, "10.18.0.2", uint16(1000+i), "10.30.0.1", 53)
		if _, ok := tb.Outbound(o, t0.Add(60*time.Second)); ok != (i > 30) {
			t.Errorf("flow %d: found %v", i, ok)
		}
	}
}

func TestExpiredFlowReplaced(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	mustAdd(t, tb, orig, rewritten, t0)
	later := t0.Add(time.Hour)
	other := tuple(tcp, "10.30.0.2", 40000, "10.18.30.66", 80)
	mustAdd(t, tb, orig, other, later) // lazily replaces the expired flow
	if got, _ := tb.Outbound(orig, later); got != other {
		t.Errorf("Outbound = %v, want %v", got, other)
	}
	if _, ok := tb.Reply(rewritten.Reverse(), later); ok {
		t.Errorf("the old flow's reply still maps")
	}
	if tb.Len() != 1 {
		t.Errorf("Len = %d, want 1", tb.Len())
	}
	tb.Sweep(later)
	if got, ok := tb.Reply(other.Reverse(), later); !ok || got != orig.Reverse() || tb.Len() != 1 {
		t.Errorf("after Sweep: Reply = %v, %v; Len %d", got, ok, tb.Len())
	}
}

func TestBoundRefusesNewFlows(t *testing.T) {
	tb := newTable(t, conntrack.Config{MaxFlows: 4})
	flow := func(i int) (conntrack.Tuple, conntrack.Tuple) {
		return tuple(udp, "10.18.0.2", uint16(2000+i), "10.30.0.1", 53),
			tuple(udp, "10.30.0.2", uint16(2000+i), "10.18.30.65", 53)
	}
	for i := range 4 {
		o, r := flow(i)
		mustAdd(t, tb, o, r, t0)
	}
	for i := 4; i < 7; i++ {
		o, r := flow(i)
		if _, err := tb.Add(o, r, r.Reverse(), t0.Add(time.Second)); !errors.Is(err, conntrack.ErrTableFull) {
			t.Fatalf("Add #%d = %v, want ErrTableFull", i, err)
		}
	}
	if tb.Refused() != 3 || tb.Len() != 4 {
		t.Errorf("Refused %d Len %d; want 3, 4", tb.Refused(), tb.Len())
	}
	for i := range 4 { // no live flow was evicted
		o, r := flow(i)
		if got, ok := tb.Outbound(o, t0.Add(time.Second)); !ok || got != r {
			t.Errorf("flow %d lost: %v %v", i, got, ok)
		}
	}
	// An existing flow is still found by Add, full or not.
	if o, r := flow(0); func() error { _, err := tb.Add(o, r, r.Reverse(), t0.Add(2*time.Second)); return err }() != nil {
		t.Errorf("Add of an existing flow on a full table failed")
	}
	// Once they expire, a full table sweeps itself rather than refuse (no Sweep call).
	o, r := flow(9)
	mustAdd(t, tb, o, r, t0.Add(time.Minute))
	if tb.Len() != 1 || tb.Refused() != 3 {
		t.Errorf("after expiry: Len %d Refused %d; want 1, 3", tb.Len(), tb.Refused())
	}
}

func TestForget(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	b1 := "10.18.30.65" // the instance that dies
	flows := []struct {
		o, r   conntrack.Tuple
		b1Gone bool
	}{
		{orig, rewritten, true}, // A1 -> S, balanced to B1
		{tuple(tcp, "10.18.0.3", 40000, "10.30.0.1", 80), tuple(tcp, "10.30.0.3", 40000, b1, 80), true},
		{tuple(tcp, "10.18.0.3", 40001, "10.30.0.1", 80), tuple(tcp, "10.30.0.3", 40001, "10.18.30.66", 80), false}, // to B2
		{tuple(udp, b1, 5000, "10.30.0.7", 53), tuple(udp, "10.30.0.4", 5000, "10.18.0.9", 53), true},               // B1 was local and sending
		{tuple(icmp, "10.18.0.2", 7, "10.30.0.1", 7), tuple(icmp, "10.30.0.2", 7, "10.18.30.66", 7), false},
	}
	for _, f := range flows {
		mustAdd(t, tb, f.o, f.r, t0)
	}
	if n := tb.Forget(ip(b1)); n != 3 {
		t.Errorf("Forget = %d, want 3", n)
	}
	for _, f := range flows {
		_, out := tb.Outbound(f.o, t0)
		_, rep := tb.Reply(f.r.Reverse(), t0)
		if out == f.b1Gone || rep == f.b1Gone {
			t.Errorf("%v: Outbound %v, Reply %v; want %v", f.o, out, rep, !f.b1Gone)
		}
	}
	if tb.Len() != 2 {
		t.Errorf("Len = %d, want 2", tb.Len())
	}
	// The next packet re-resolves: another instance is accepted at once.
	mustAdd(t, tb, orig, tuple(tcp, "10.30.0.2", 40000, "10.18.30.66", 80), t0)
	if n := tb.Forget(ip("10.99.0.1")); n != 0 {
		t.Errorf("Forget of an unknown address = %d", n)
	}
	// Forgetting a Service IP ends every flow dialled to it.
	if n := tb.Forget(ip("10.30.0.1")); n != 3 || tb.Len() != 0 {
		t.Errorf("Forget(service) = %d, Len %d; want 3, 0", n, tb.Len())
	}
}

func TestIPv6AndEcho(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	o := tuple(58, "fc00::2", 0x77, "fdff:2000::1", 0x77) // ICMPv6 echo: id as both ports
	r := tuple(58, "fdff::1e:2", 0x77, "fc00::1e41", 0x77)
	mustAdd(t, tb, o, r, t0)
	if got, ok := tb.Reply(r.Reverse(), t0.Add(9*time.Second)); !ok || got != o.Reverse() {
		t.Errorf("Reply = %v %v", got, ok)
	}
	if _, ok := tb.Outbound(o, t0.Add(20*time.Second)); ok {
		t.Errorf("ICMP flow outlived ICMPTimeout")
	}
}

func TestAddRejectsBadTuples(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	v6 := tuple(tcp, "fc00::1", 1, "fdff::1", 2)
	zoned := rewritten
	zoned.Dst = ip("fe80::1%eth0")
	for _, tc := range []struct{ o, r conntrack.Tuple }{
		{orig, v6},
		{conntrack.Tuple{Proto: tcp}, rewritten},
		{orig, tuple(udp, "10.30.0.2", 40000, "10.18.30.65", 80)},
		{v6, zoned},
		{orig, conntrack.Tuple{Proto: tcp, Src: ip("10.30.0.2"), Dst: ip("::ffff:10.18.30.65")}},
	} {
		if _, err := tb.Add(tc.o, tc.r, tc.r.Reverse(), t0); err == nil {
			t.Errorf("Add(%v, %v) accepted", tc.o, tc.r)
		}
	}
	if tb.Len() != 0 {
		t.Errorf("Len = %d", tb.Len())
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []conntrack.Config{
		{MaxFlows: -1}, {Shards: 3}, {Shards: -4}, {Shards: 1 << 17}, {UDPTimeout: -time.Second}, {UnrepliedTimeout: -1},
	} {
		if _, err := conntrack.New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
	if _, err := conntrack.New(conntrack.Config{Shards: 1}); err != nil {
		t.Error(err)
	}
}

func TestTupleString(t *testing.T) {
	if s := orig.String(); s != "TCP 10.18.0.2:40000 > 10.30.0.1:80" {
		t.Errorf("String = %q", s)
	}
	if s := tuple(47, "fc00::1", 0, "fc00::2", 0).String(); s != "proto-47 [fc00::1]:0 > [fc00::2]:0" {
		t.Errorf("String = %q", s)
	}
}

func TestLookupAllocs(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	mustAdd(t, tb, orig, rewritten, t0)
	o6 := tuple(tcp, "fc00::2", 1, "fdff:2000::1", 80)
	r6 := tuple(tcp, "fdff::1e:2", 1, "fc00::1e41", 80)
	mustAdd(t, tb, o6, r6, t0)
	miss := tuple(tcp, "10.18.0.2", 1, "10.30.0.1", 80)
	now := t0
	got := testing.AllocsPerRun(1000, func() {
		now = now.Add(time.Millisecond * 150) // lookups store last-seen too
		tb.Outbound(orig, now)
		tb.Reply(rewritten.Reverse(), now)
		tb.Outbound(o6, now)
		tb.Reply(r6.Reverse(), now)
		tb.Outbound(miss, now)
		tb.Reply(miss, now)
	})
	if got != 0 {
		t.Errorf("lookups: %v allocs per run, want 0", got)
	}
}

// TestConcurrent runs lookups, new flows, sweeps and forgets at once (go test -race).
// Every flow's rewritten tuple is a function of its orig, so any answer can be checked.
func TestConcurrent(t *testing.T) {
	tb := newTable(t, conntrack.Config{MaxFlows: 300, Shards: 8})
	instances := []netip.Addr{ip("10.18.30.65"), ip("10.18.30.66"), ip("10.18.30.67")}
	flow := func(i int) (conntrack.Tuple, conntrack.Tuple) {
		o := conntrack.Tuple{Proto: udp, Src: ip("10.18.0.2"), SrcPort: uint16(i), Dst: ip("10.30.0.1"), DstPort: 53}
		r := conntrack.Tuple{Proto: udp, Src: ip("10.30.0.2"), SrcPort: uint16(i), Dst: instances[i%3], DstPort: 53}
		return o, r
	}
	const workers, rounds, flows = 8, 3000, 400
	var clock sync.Mutex
	now := t0
	tick := func() time.Time {
		clock.Lock()
		defer clock.Unlock()
		now = now.Add(time.Millisecond)
		return now
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				n := tick()
				o, r := flow((i*7 + w*13) % flows)
				switch {
				case w == 0 && i%500 == 0:
					tb.Sweep(n)
				case w == 1 && i%700 == 0:
					tb.Forget(instances[i%3])
				}
				if got, ok := tb.Outbound(o, n); ok && got != r {
					errs <- fmt.Errorf("Outbound(%v) = %v, want %v", o, got, r)
					return
				}
				got, err := tb.Add(o, r, r.Reverse(), n)
				if err == nil && got != r {
					errs <- fmt.Errorf("Add(%v) = %v, want %v", o, got, r)
					return
				}
				if err != nil && !errors.Is(err, conntrack.ErrTableFull) {
					errs <- err
					return
				}
				if got, ok := tb.Reply(r.Reverse(), n); ok && got != o.Reverse() {
					errs <- fmt.Errorf("Reply(%v) = %v, want %v", r.Reverse(), got, o.Reverse())
					return
				}
				if l := tb.Len(); l > 300 {
					errs <- fmt.Errorf("Len %d above MaxFlows 300", l)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	tb.Sweep(now.Add(time.Hour))
	if tb.Len() != 0 {
		t.Errorf("Len after a final Sweep = %d, want 0", tb.Len())
	}
}

// TestAddRace: goroutines that resolved the same new flow differently all end up with
// one answer.
func TestAddRace(t *testing.T) {
	for range 50 {
		tb := newTable(t, conntrack.Config{})
		results := make([]conntrack.Tuple, 8)
		var wg sync.WaitGroup
		for i := range results {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rewritten
				r.Dst = netip.AddrFrom4([4]byte{10, 18, 30, byte(64 + i)})
				got, err := tb.Add(orig, r, r.Reverse(), t0)
				if err != nil {
					t.Error(err)
				}
				results[i] = got
			}()
		}
		wg.Wait()
		for _, r := range results {
			if r != results[0] {
				t.Fatalf("racing Adds disagree: %v", results)
			}
		}
		if tb.Len() != 1 {
			t.Fatalf("Len = %d", tb.Len())
		}
	}
}

// TestLiveFlowsNeverMissUnderChurn: lookups take no lock, so they must find every live
// flow while other flows are added, forgotten and swept around them (index rebuilds,
// tombstones, slots reused).
func TestLiveFlowsNeverMissUnderChurn(t *testing.T) {
	tb := newTable(t, conntrack.Config{Shards: 2})
	type flow struct{ o, r conntrack.Tuple }
	var stable []flow
	for i := range 50 {
		o := tuple(udp, "10.18.0.2", uint16(10000+i), "10.30.0.1", 53)
		r := tuple(udp, "10.30.0.2", uint16(10000+i), "10.18.30.65", 53)
		mustAdd(t, tb, o, r, t0)
		stable = append(stable, flow{o, r})
	}
	now := t0.Add(time.Second)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				f := stable[i%len(stable)]
				if got, ok := tb.Outbound(f.o, now); !ok || got != f.r {
					t.Errorf("Outbound(%v) = %v, %v during churn", f.o, got, ok)
					return
				}
				if got, ok := tb.Reply(f.r.Reverse(), now); !ok || got != f.o.Reverse() {
					t.Errorf("Reply(%v) = %v, %v during churn", f.r.Reverse(), got, ok)
					return
				}
			}
		}()
	}
	churnDst := []netip.Addr{ip("10.18.31.1"), ip("10.18.31.2")}
	for round := range 20 {
		for i := range 500 {
			o := conntrack.Tuple{Proto: udp, Src: netip.AddrFrom4([4]byte{10, 18, 1, byte(i)}), SrcPort: uint16(i), Dst: ip("10.30.0.1"), DstPort: 53}
			r := conntrack.Tuple{Proto: udp, Src: netip.AddrFrom4([4]byte{10, 30, 1, byte(i)}), SrcPort: uint16(i), Dst: churnDst[i%2], DstPort: 53}
			if _, err := tb.Add(o, r, r.Reverse(), now); err != nil {
				t.Fatal(err)
			}
		}
		tb.Forget(churnDst[round%2])
		if round%5 == 4 {
			tb.Forget(churnDst[(round+1)%2])
			tb.Sweep(now)
		}
	}
	close(stop)
	wg.Wait()
}

// A reply from another node arrives rewritten by that node: from the answering instance's
// Instance IP to the caller's Namespace IP, not as the outbound tuple reversed.
func TestReplyAsRewrittenByTheAnsweringNode(t *testing.T) {
	tb := newTable(t, conntrack.Config{})
	reply := tuple(tcp, "10.30.0.9", 80, "10.18.0.2", 40000) // B1's Instance IP -> A1
	if got, err := tb.Add(orig, rewritten, reply, t0); err != nil || got != rewritten {
		t.Fatalf("Add = %v, %v", got, err)
	}
	if _, ok := tb.Reply(rewritten.Reverse(), t0); ok {
		t.Error("the reversed outbound tuple matched; only the given reply tuple may")
	}
	if got, ok := tb.Reply(reply, t0); !ok || got != orig.Reverse() {
		t.Errorf("Reply(%v) = %v, %v; want %v", reply, got, ok, orig.Reverse())
	}
	other := tuple(tcp, "10.18.0.3", 40000, "10.30.0.1", 80)
	if _, err := tb.Add(other, rewritten, reply, t0); !errors.Is(err, conntrack.ErrConflict) {
		t.Errorf("second flow owning the same reply tuple: err = %v, want ErrConflict", err)
	}
	if n := tb.Forget(ip("10.18.30.65")); n != 1 { // only in the rewritten tuple
		t.Errorf("Forget(chosen Namespace IP) removed %d flows, want 1", n)
	}
}
