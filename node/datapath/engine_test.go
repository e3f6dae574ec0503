package datapath

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/node/packet/packettest"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

var (
	t0  = time.Unix(1_700_000_000, 0)
	ip  = netip.MustParseAddr
	app = netip.MustParseAddrPort
)

// The scene, as in FLOWS.md: client instance A1 runs on this node (namespace IP
// 10.18.0.2, Instance IP 10.30.0.2); service web has RR 10.30.0.10 and Closest 10.30.0.11
// with instances W0 on node 10.99.0.12 (namespace 10.18.0.66, Instance IP 10.30.0.12)
// and W1 on node 10.99.0.13 (namespace 10.18.0.130, Instance IP 10.30.0.13).
const (
	a1NS, a1Inst       = "10.18.0.2", "10.30.0.2"
	rrIP, closestIP    = "10.30.0.10", "10.30.0.11"
	w0NS, w0Inst, w0At = "10.18.0.66", "10.30.0.12", "10.99.0.12:50103"
	w1NS, w1Inst, w1At = "10.18.0.130", "10.30.0.13", "10.99.0.13:50103"
	a1NS6, a1Inst6     = "fc00::2", "fdff::2"
	rrIP6              = "fdff:2000::10"
	w0NS6, w0Inst6     = "fc00::1:2", "fdff::12"
	// The nodes' hosts: the UDP source of their tunnelled packets.
	a1Host, w0Host, w1Host = "10.99.0.11", "10.99.0.12", "10.99.0.13"
)

func svcIPs(rr, rr6, closest, inst, inst6 string) []mqttapi.ServiceIP {
	return []mqttapi.ServiceIP{
		{IPType: mqttapi.IPTypeRR, Address: ip(rr), AddressV6: ip(rr6)},
		{IPType: mqttapi.IPTypeClosest, Address: ip(closest), AddressV6: ip("fdff:1000::11")},
		{IPType: mqttapi.IPTypeInstanceIP, Address: ip(inst), AddressV6: ip(inst6)},
	}
}

func newTestEngine(t testing.TB) *Engine {
	t.Helper()
	tbl := table.New(table.Config{Location: &geo.Point{Lat: 48.14, Lon: 11.58}}) // Munich
	tbl.AddLocal("client.test.client.dp", 0, ip(a1NS), ip(a1NS6))
	lat, lon := 52.52, 13.40 // W0 in Berlin, W1 in Paris
	lat1, lon1 := 48.86, 2.35
	for _, r := range []*mqttapi.TableQueryResult{
		{AppName: "client.test.client.dp", Revision: 1, InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 0, InstanceIP: ip(a1Inst), InstanceIPv6: ip(a1Inst6), NamespaceIP: ip(a1NS), NamespaceIPv6: ip(a1NS6),
			HostIP: ip("10.99.0.11"), HostPort: 50103, Status: "running",
			ServiceIP: svcIPs("10.30.0.1", "fdff:2000::1", "10.30.0.3", a1Inst, a1Inst6),
		}}},
		{AppName: "web.test.web.dp", Revision: 1, InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 0, InstanceIP: ip(w0Inst), InstanceIPv6: ip(w0Inst6), NamespaceIP: ip(w0NS), NamespaceIPv6: ip(w0NS6),
			HostIP: ip("10.99.0.12"), HostPort: 50103, Status: "running", Lat: &lat, Lon: &lon,
			ServiceIP: svcIPs(rrIP, rrIP6, closestIP, w0Inst, w0Inst6),
		}, {
			InstanceNumber: 1, InstanceIP: ip(w1Inst), InstanceIPv6: ip("fdff::13"), NamespaceIP: ip(w1NS),
			HostIP: ip("10.99.0.13"), HostPort: 50103, Status: "running", Lat: &lat1, Lon: &lon1,
			ServiceIP: svcIPs(rrIP, rrIP6, closestIP, w1Inst, "fdff::13"),
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
	return NewEngine(tbl, flows, []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16"), netip.MustParsePrefix("fdff::/16")}, nil)
}

func tcp4(src, dst string, sport, dport uint16) []byte {
	return packettest.IP4(src, dst, packettest.TCP, packettest.TCPSegment(sport, dport, packettest.Payload(100)))
}

func decode(t testing.TB, b []byte) *packet.Parsed {
	t.Helper()
	var p packet.Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	return &p
}

// check asserts a rewritten packet's addresses and that every checksum is valid.
func check(t *testing.T, p *packet.Parsed, src, dst string) {
	t.Helper()
	if p.Src != ip(src) || p.Dst != ip(dst) {
		t.Errorf("packet %v -> %v, want %s -> %s", p.Src, p.Dst, src, dst)
	}
	if err := packet.VerifyChecksums(p.Buffer()); err != nil {
		t.Errorf("checksums after rewrite: %v", err)
	}
}

func TestOutboundAndReply(t *testing.T) {
	e := newTestEngine(t)
	// A1 (in Munich) dials the Closest IP: W0 in Berlin, not W1 in Paris.
	p := decode(t, tcp4(a1NS, closestIP, 40000, 80))
	r := e.Outbound(p, t0)
	if r.Verdict != Tunnel || r.Endpoint != app(w0At) {
		t.Fatalf("Outbound = %+v, want Tunnel to %s", r, w0At)
	}
	check(t, p, a1Inst, w0NS)

	// W0's reply arrives rewritten by its node: from W0's Instance IP to A1's
	// namespace IP. A1 must see the Closest IP it dialled.
	reply := decode(t, tcp4(w0Inst, a1NS, 80, 40000))
	if r := e.Inbound(reply, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound = %+v", r)
	}
	check(t, reply, closestIP, a1NS)

	// Later packets of the flow stick to W0 even though RR state moves on.
	for range 3 {
		p := decode(t, tcp4(a1NS, closestIP, 40000, 80))
		if r := e.Outbound(p, t0.Add(time.Second)); r.Endpoint != app(w0At) {
			t.Fatalf("established flow moved: %+v", r)
		}
	}
}

func TestRoundRobinSpreadsFlows(t *testing.T) {
	e := newTestEngine(t)
	got := map[netip.AddrPort]int{}
	for port := range uint16(10) {
		p := decode(t, tcp4(a1NS, rrIP, 40000+port, 80))
		r := e.Outbound(p, t0)
		got[r.Endpoint]++
	}
	if got[app(w0At)] != 5 || got[app(w1At)] != 5 {
		t.Errorf("10 flows to RR went %v, want 5 to each node", got)
	}
}

// TestLocalDelivery: an instance on this node is reached through the bridge, and the
// local path runs Inbound on the same packet, as a packet from the tunnel would.
func TestLocalDelivery(t *testing.T) {
	e := newTestEngine(t)
	p := decode(t, tcp4(a1NS, "10.30.0.1", 40000, 80)) // A1 dials its own service
	if r := e.Outbound(p, t0); r.Verdict != Deliver {
		t.Fatalf("Outbound = %+v, want Deliver", r)
	}
	check(t, p, a1Inst, a1NS)
	if r := e.Inbound(p, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound = %+v", r)
	}
	check(t, p, a1Inst, a1NS)
	// Its answer (from A1 to its own Instance IP) comes back with the Service IP.
	reply := decode(t, tcp4(a1NS, a1Inst, 80, 40000))
	if r := e.Outbound(reply, t0); r.Verdict != Deliver {
		t.Fatalf("Outbound reply = %+v", r)
	}
	e.Inbound(reply, t0)
	check(t, reply, "10.30.0.1", a1NS)
}

func TestIPv6AndInstanceIP(t *testing.T) {
	e := newTestEngine(t)
	seg := packettest.UDPDatagram(5000, 53, packettest.Payload(64))
	p := decode(t, packettest.IP6(a1NS6, w0Inst6, packettest.UDP, seg))
	if r := e.Outbound(p, t0); r.Verdict != Tunnel || r.Endpoint != app(w0At) {
		t.Fatalf("Outbound v6 = %+v", r)
	}
	check(t, p, a1Inst6, w0NS6)
	reply := decode(t, packettest.IP6(w0Inst6, a1NS6, packettest.UDP, packettest.UDPDatagram(53, 5000, nil)))
	e.Inbound(reply, t0)
	check(t, reply, w0Inst6, a1NS6) // dialled by Instance IP: the source stays
	// Another port: the same port to another Service IP choosing the same instance would
	// give replies the same tuple, which connection tracking refuses.
	p = decode(t, packettest.IP6(a1NS6, rrIP6, packettest.UDP, packettest.UDPDatagram(5001, 53, nil)))
	if r := e.Outbound(p, t0); r.Verdict != Tunnel { // W1 has no IPv6 namespace IP: W0 only
		t.Fatalf("Outbound v6 RR = %+v", r)
	}
	check(t, p, a1Inst6, w0NS6)
}

func TestVerdicts(t *testing.T) {
	e := newTestEngine(t)
	for _, c := range []struct {
		name string
		pkt  []byte
		in   bool
		want Result
	}{
		{"not a service address", tcp4(a1NS, "10.18.0.66", 1, 80), false, drop(ReasonNotService)},
		{"unknown sender", tcp4("10.18.0.9", rrIP, 1, 80), false, drop(ReasonUnknownSender)},
		{"unknown service", tcp4(a1NS, "10.30.9.9", 1, 80), false, Result{Verdict: Resolve}},
		{"inbound for another node", tcp4(w0Inst, "10.18.0.70", 80, 1), true, drop(ReasonNotLocal)},
		{"inbound, no flow", tcp4(w0Inst, a1NS, 80, 1), true, Result{Verdict: Deliver}},
	} {
		p := decode(t, c.pkt)
		var got Result
		if c.in {
			got = e.Inbound(p, t0)
		} else {
			got = e.Outbound(p, t0)
		}
		if got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestFragments: the first fragment picks the instance; the rest follow it, and the
// reassembled datagram's checksum is valid after the rewrite.
func TestFragments(t *testing.T) {
	e := newTestEngine(t)
	whole := packettest.IP4(a1NS, closestIP, packettest.UDP, packettest.UDPDatagram(7000, 7, packettest.Payload(3000)))
	frags := packettest.Fragment4(t, whole, 1200)
	if len(frags) < 3 {
		t.Fatalf("%d fragments", len(frags))
	}
	for i, f := range frags {
		p := decode(t, f)
		if r := e.Outbound(p, t0); r.Verdict != Tunnel || r.Endpoint != app(w0At) {
			t.Fatalf("fragment %d: %+v", i, r)
		}
	}
	if err := packet.VerifyChecksums(packettest.Reassemble4(frags)); err != nil {
		t.Errorf("reassembled datagram: %v", err)
	}
	// A non-first fragment of a datagram whose head was never seen is dropped.
	orphan := packettest.Fragment4(t, packettest.IP4(a1NS, closestIP, packettest.UDP, packettest.UDPDatagram(7001, 7, packettest.Payload(3000))), 1200)[1]
	orphan[4] = 0x99 // another datagram id
	packettest.FillChecksums(orphan, 20, 0)
	if r := e.Outbound(decode(t, orphan), t0); r != drop(ReasonFragment) {
		t.Errorf("orphan fragment: %+v", r)
	}
}

// TestEstablishedFlowAllocatesNothing: the per-packet path of a known flow, both ways
// (the reply through the tunnel, its source checked).
func TestEstablishedFlowAllocatesNothing(t *testing.T) {
	e := newTestEngine(t)
	out, in := tcp4(a1NS, closestIP, 40000, 80), tcp4(w0Inst, a1NS, 80, 40000)
	var p packet.Parsed
	var rOut, rIn Result
	outBuf, inBuf, from := make([]byte, len(out)), make([]byte, len(in)), ip(w0Host)
	allocs := testing.AllocsPerRun(100, func() {
		copy(outBuf, out)
		p.Decode(outBuf)
		rOut = e.Outbound(&p, t0)
		copy(inBuf, in)
		p.Decode(inBuf)
		rIn = e.FromTunnel(&p, from, t0)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet pair", allocs)
	}
	if rOut.Verdict != Tunnel || rIn.Verdict != Deliver {
		t.Errorf("the flow did not pass: out %+v, in %+v", rOut, rIn)
	}
}

// BenchmarkTranslate is the node's per-packet work on an established flow: decode,
// flow lookup, endpoint lookup, rewrite with checksums. Target (PERFORMANCE.md): <= 150
// ns and 0 allocations. Run:
//
//	go test -run '^$' -bench Translate -benchmem ./node/datapath/
func BenchmarkTranslate(b *testing.B) {
	for _, c := range []struct {
		name     string
		pkt      []byte
		src, dst string
	}{
		{"tcp4-1400", packettest.IP4(a1NS, closestIP, packettest.TCP, packettest.TCPSegment(40000, 80, packettest.Payload(1360))), a1NS, closestIP},
		{"tcp6-1400", packettest.IP6(a1NS6, rrIP6, packettest.TCP, packettest.TCPSegment(40000, 80, packettest.Payload(1340))), a1NS6, rrIP6},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newTestEngine(b)
			// A clock reading as the datapath takes it (time.Now, with its monotonic
			// part): t0 has only a wall clock, which makes every time subtraction in
			// the flow table take its slow path.
			now := time.Now()
			benchPacket(b, c.pkt, Tunnel, func(p *packet.Parsed) Result { return e.Outbound(p, now) })
		})
	}
}

// benchPacket decodes pkt and hands it to translate once per iteration, and fails
// unless the verdict is want.
func benchPacket(b *testing.B, pkt []byte, want Verdict, translate func(*packet.Parsed) Result) {
	buf := make([]byte, len(pkt))
	var p packet.Parsed
	b.ReportAllocs()
	b.SetBytes(int64(len(pkt)))
	for b.Loop() {
		copy(buf[:60], pkt[:60]) // restore the headers the last rewrite changed
		if err := p.Decode(buf); err != nil {
			b.Fatal(err)
		}
		if r := translate(&p); r.Verdict != want {
			b.Fatalf("%+v", r)
		}
	}
}

// BenchmarkReceive is the node's per-packet work on a packet from the tunnel: decode,
// source check, reply flow lookup and source restore. reply-*: at the client's node, a
// reply of an established flow; request-*: at the server's node, a request that is no
// reply and passes unchanged. Run:
//
//	go test -run '^$' -bench Receive -benchmem ./node/datapath/
func BenchmarkReceive(b *testing.B) {
	for _, c := range []struct {
		name   string
		server bool
		open   []byte // the client's packet that opens the flow (client's node only)
		pkt    []byte
		from   string // the sending host
	}{
		{name: "reply-tcp4-1400", open: tcp4(a1NS, closestIP, 40000, 80), from: w0Host,
			pkt: packettest.IP4(w0Inst, a1NS, packettest.TCP, packettest.TCPSegment(80, 40000, packettest.Payload(1360)))},
		{name: "reply-tcp6-1400", open: tcp6(a1NS6, rrIP6, 40000, 80), from: w0Host,
			pkt: packettest.IP6(w0Inst6, a1NS6, packettest.TCP, packettest.TCPSegment(80, 40000, packettest.Payload(1340)))},
		{name: "request-tcp4-1400", server: true, from: a1Host,
			pkt: packettest.IP4(a1Inst, w0NS, packettest.TCP, packettest.TCPSegment(40000, 80, packettest.Payload(1360)))},
	} {
		b.Run(c.name, func(b *testing.B) {
			now := time.Now() // as the datapath reads it (see BenchmarkTranslate)
			var e *Engine
			if c.server {
				e = newNodeB(b, ip(w0NS))
			} else {
				e = newTestEngine(b)
				if r := e.Outbound(decode(b, bytes.Clone(c.open)), now); r.Verdict != Tunnel {
					b.Fatalf("open the flow: %+v", r)
				}
			}
			from := ip(c.from)
			benchPacket(b, c.pkt, Deliver, func(p *packet.Parsed) Result { return e.FromTunnel(p, from, now) })
		})
	}
}
