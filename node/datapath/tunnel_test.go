package datapath

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/mqttapi"
)

// tunnelRig is a Datapath on real UDP sockets on the loopback, with an in-memory TUN
// (wireguard-go's tuntest): it runs the web instance W0; A1 runs on "host" 127.0.0.2.
// Its Resolve applies the answer the test prepared for an address (if any) and calls
// Resolved, as the node does after its cluster query.
type tunnelRig struct {
	dp        *Datapath
	tbl       *table.Table
	port      uint16
	delivered chan []byte
	queries   chan netip.Addr

	mu      sync.Mutex
	answers map[netip.Addr]*mqttapi.TableQueryResult
}

const a1Loop = "127.0.0.2"

func newTunnelRig(t *testing.T) *tunnelRig {
	t.Helper()
	tbl := table.New(table.Config{})
	tbl.AddLocal("web.test.web.dp", 0, ip(w0NS), ip(w0NS6))
	for _, r := range []*mqttapi.TableQueryResult{
		{AppName: "client.test.client.dp", Revision: 1, InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 0, InstanceIP: ip(a1Inst), InstanceIPv6: ip(a1Inst6), NamespaceIP: ip(a1NS), NamespaceIPv6: ip(a1NS6),
			HostIP: ip(a1Loop), HostPort: 50103, Status: "running",
			ServiceIP: svcIPs("10.30.0.1", "fdff:2000::1", "10.30.0.3", a1Inst, a1Inst6),
		}}},
		{AppName: "web.test.web.dp", Revision: 1, InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 0, InstanceIP: ip(w0Inst), InstanceIPv6: ip(w0Inst6), NamespaceIP: ip(w0NS), NamespaceIPv6: ip(w0NS6),
			HostIP: ip("127.0.0.1"), HostPort: 50103, Status: "running",
			ServiceIP: svcIPs(rrIP, rrIP6, closestIP, w0Inst, w0Inst6),
		}}},
	} {
		if _, err := tbl.Apply(r, t0); err != nil {
			t.Fatal(err)
		}
	}
	flows, err := conntrack.New(conntrack.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// A free port: the bind opens it on every address, IPv4 and IPv6.
	l, err := net.ListenUDP("udp", &net.UDPAddr{})
	if err != nil {
		t.Fatal(err)
	}
	rig := &tunnelRig{tbl: tbl, port: uint16(l.LocalAddr().(*net.UDPAddr).Port), delivered: make(chan []byte, 16),
		queries: make(chan netip.Addr, 16), answers: map[netip.Addr]*mqttapi.TableQueryResult{}}
	l.Close()
	dev := tuntest.NewChannelTUN()
	rig.dp = New(Config{TUN: dev.TUN(), Bind: conn.NewStdNetBind(), Port: rig.port,
		Engine: NewEngine(tbl, flows, []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16"), netip.MustParsePrefix("fdff::/16")}, nil),
		Resolve: func(a netip.Addr) {
			rig.queries <- a
			rig.mu.Lock()
			r := rig.answers[a]
			rig.mu.Unlock()
			go func() {
				if r != nil {
					if _, err := tbl.Apply(r, time.Now()); err != nil {
						t.Errorf("apply the answer for %v: %v", a, err)
					}
				}
				rig.dp.Resolved(a)
			}()
		}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rig.dp.Run(ctx) }()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case b := <-dev.Inbound:
				rig.delivered <- b
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	// Run opens the socket in the background: probe with frames too short to be a
	// packet until one arrives.
	waitFor(t, "the datapath's tunnel socket", func() bool {
		if rig.dp.Stats().TunnelRxPackets.Load() > 0 {
			return true
		}
		rig.send(t, "127.0.0.1", []byte{0})
		return false
	})
	return rig
}

// send sends pkt as a tunnel frame from a socket bound to host.
func (r *tunnelRig) send(t *testing.T, host string, pkt []byte) {
	t.Helper()
	c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip(host), 0)),
		net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip("127.0.0.1"), r.port)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(pkt); err != nil {
		t.Fatal(err)
	}
}

// waitFor waits until cond holds (the datapath runs on its own goroutines).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// expectDelivered waits for pkt on the TUN.
func (r *tunnelRig) expectDelivered(t *testing.T, what string, pkt []byte) {
	t.Helper()
	select {
	case got := <-r.delivered:
		if !bytes.Equal(got, pkt) {
			t.Errorf("%s: delivered %x, want %x", what, got, pkt)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: not delivered (rx %d, drops %v, send errors %d)", what, r.dp.Stats().TunnelRxPackets.Load(), dropCounts(r.dp), r.dp.Stats().SendErrors.Load())
	}
}

// expectDropped waits until the drops of reason reach n, and checks that nothing was
// delivered and which address (if any) the datapath asked the cluster about.
func (r *tunnelRig) expectDropped(t *testing.T, what string, reason Reason, n uint64, query netip.Addr) {
	t.Helper()
	waitFor(t, what+" dropped as "+reason.String(), func() bool { return r.dp.Stats().Drops[reason].Load() >= n })
	if got := r.dp.Stats().Drops[reason].Load(); got != n {
		t.Errorf("%s: %d drops as %v, want %d", what, got, reason, n)
	}
	select {
	case b := <-r.delivered:
		t.Errorf("%s: delivered %x", what, b)
	default:
	}
	r.expectQuery(t, what, query)
}

// expectQuery checks that the datapath asked about want since the last check (or about
// nothing, for a zero want).
func (r *tunnelRig) expectQuery(t *testing.T, what string, want netip.Addr) {
	t.Helper()
	var got netip.Addr
	select {
	case got = <-r.queries:
	default:
	}
	if got != want {
		t.Errorf("%s: queried %v, want %v", what, got, want)
	}
}

// TestTunnelSourceCheck runs the source check through the datapath's own sockets: the
// sender's address is the one the kernel reports.
func TestTunnelSourceCheck(t *testing.T) {
	r := newTunnelRig(t)

	legit := tcp4(a1Inst, w0NS, 40000, 80)
	r.send(t, a1Loop, legit)
	r.expectDelivered(t, "A1 from its host", legit)
	r.expectQuery(t, "A1 from its host", netip.Addr{})

	// A1's Instance IP from another host: the table is asked to refresh once, and the
	// fresh answer (the same) still places A1 elsewhere.
	r.send(t, "127.0.0.3", tcp4(a1Inst, w0NS, 40001, 80))
	r.expectDropped(t, "A1's Instance IP from another host", ReasonSpoofed, 1, ip(a1Inst))
	// Again at once: no second query for the same source, dropped straight away.
	r.send(t, "127.0.0.3", tcp4(a1Inst, w0NS, 40002, 80))
	r.expectDropped(t, "the forgery again", ReasonSpoofed, 2, netip.Addr{})
	// A source that is no Instance IP: dropped without a query.
	r.send(t, a1Loop, tcp4("192.168.7.7", w0NS, 40003, 80))
	r.expectDropped(t, "a source outside the overlay", ReasonSpoofed, 3, netip.Addr{})

	// An instance of a job this node does not know yet, on host 127.0.0.4: its first
	// packet waits for the answer, then is delivered.
	const cacheInst, cacheLoop = "10.30.0.30", "127.0.0.4"
	r.mu.Lock()
	r.answers[ip(cacheInst)] = &mqttapi.TableQueryResult{AppName: "cache.test.cache.dp", QueryKey: cacheInst, Revision: 1,
		InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 0, InstanceIP: ip(cacheInst), NamespaceIP: ip("10.18.1.2"), HostIP: ip(cacheLoop), HostPort: 50103,
			Status: "running", ServiceIP: svcIPs("10.30.0.31", "fdff:2000::31", "10.30.0.32", cacheInst, "fdff::30"),
		}}}
	r.mu.Unlock()
	first := tcp4(cacheInst, w0NS, 40004, 80)
	r.send(t, cacheLoop, first)
	r.expectDelivered(t, "an unknown instance's first packet", first)
	r.expectQuery(t, "an unknown instance's first packet", ip(cacheInst))

	// An unknown source the cluster does not know either: dropped as unresolved.
	r.send(t, cacheLoop, tcp4("10.30.0.40", w0NS, 40005, 80))
	r.expectDropped(t, "a source the cluster does not know", ReasonUnresolved, 1, ip("10.30.0.40"))

	if got := r.dp.Stats().DeliveredPackets.Load(); got != 2 {
		t.Errorf("%d packets delivered, want 2", got)
	}
}

// dropCounts lists the non-zero drop counters, for failure messages.
func dropCounts(d *Datapath) map[string]uint64 {
	m := map[string]uint64{}
	for i := range d.Stats().Drops {
		if n := d.Stats().Drops[i].Load(); n != 0 {
			m[Reason(i).String()] = n
		}
	}
	return m
}

// TestSourceQueryBounds: forged sources cannot make the node query the cluster without
// bound: one query per source per requeryAfter, sourceQueries a second in all.
func TestSourceQueryBounds(t *testing.T) {
	q := pending{m: map[netip.Addr][]held{}, queried: map[netip.Addr]time.Time{}}
	src := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 30, byte(i >> 8), byte(i)}) }
	for i := range sourceQueries {
		if !q.mayQuery(src(i), t0) {
			t.Fatalf("query %d refused within the budget", i)
		}
	}
	if q.mayQuery(src(sourceQueries), t0.Add(999*time.Millisecond)) {
		t.Error("a query beyond the second's budget was allowed")
	}
	now := t0.Add(time.Second)
	if !q.mayQuery(src(sourceQueries), now) {
		t.Error("the next second's first query was refused")
	}
	if q.mayQuery(src(0), now) {
		t.Errorf("source %v queried again within %v", src(0), requeryAfter)
	}
	q.sweep(t0.Add(requeryAfter))
	if len(q.queried) != 1 {
		t.Errorf("after the sweep %d sources remembered, want 1", len(q.queried))
	}
	if !q.mayQuery(src(0), t0.Add(requeryAfter)) {
		t.Errorf("source %v refused after %v", src(0), requeryAfter)
	}
}
