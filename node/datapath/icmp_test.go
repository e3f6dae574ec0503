package datapath

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/node/packet/packettest"
)

// ICMP errors travel between two engines of the scene of engine_test.go: node A runs the
// client A1 (newTestEngine), node B runs the web instance A1's flow chose.

// a1At is A's tunnel endpoint (the client instance's host in the scene).
const a1At = "10.99.0.11:50103"

// newNodeB returns the engine of the node running the web instance whose namespace IP is
// ns (W0 or W1), in the same scene as newTestEngine but with A1 remote.
func newNodeB(t testing.TB, ns netip.Addr) *Engine {
	t.Helper()
	e := newTestEngine(t)
	e.table.RemoveLocal("client.test.client.dp", 0)
	switch ns {
	case ip(w0NS), ip(w0NS6):
		e.table.AddLocal("web.test.web.dp", 0, ip(w0NS), ip(w0NS6))
	case ip(w1NS):
		e.table.AddLocal("web.test.web.dp", 1, ip(w1NS), netip.Addr{})
	default:
		t.Fatalf("no web instance has namespace IP %v", ns)
	}
	return e
}

// instanceOf maps a web instance's namespace IP to its Instance IP.
func instanceOf(ns netip.Addr) netip.Addr {
	return map[netip.Addr]netip.Addr{ip(w0NS): ip(w0Inst), ip(w1NS): ip(w1Inst), ip(w0NS6): ip(w0Inst6)}[ns]
}

// icmpErr builds the ICMP error a kernel at from sends to to about pkt, quoting its first
// n bytes (all for 0).
func icmpErr(from, to netip.Addr, typ, code uint8, info uint32, pkt []byte, n int) []byte {
	if n == 0 {
		n = len(pkt)
	}
	msg := packettest.ICMPError(typ, code, info, pkt[:n])
	if from.Is4() {
		return packettest.IP4(from.String(), to.String(), packettest.ICMPv4, msg)
	}
	return packettest.IP6(from.String(), to.String(), packettest.ICMPv6, msg)
}

// embedded returns the packet an ICMP error in b quotes, having checked every checksum
// that can be checked: the error's, and the quoted IPv4 header's.
func embedded(t *testing.T, b []byte) []byte {
	t.Helper()
	if err := packet.VerifyChecksums(b); err != nil {
		t.Errorf("error's checksums: %v", err)
	}
	var p packet.Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	q := p.Buffer()[p.HeaderLen+8:]
	if p.Version == 4 && packettest.Checksum(q[:int(q[0]&0x0f)*4]) != 0 {
		t.Errorf("embedded IPv4 header checksum is wrong: %x", q[:20])
	}
	return q
}

// checkQuote asserts an error (after the engines had it) and the packet it embeds.
func checkQuote(t *testing.T, b []byte, src, dst string, ins, ind string, sport, dport uint16) {
	t.Helper()
	p := decode(t, b)
	if p.Src != ip(src) || p.Dst != ip(dst) {
		t.Errorf("error %v > %v, want %s > %s", p.Src, p.Dst, src, dst)
	}
	e, err := p.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	sp, dp, _ := e.FlowPorts()
	if e.Src() != ip(ins) || e.Dst() != ip(ind) || sp != sport || dp != dport {
		t.Errorf("embedded %v, want %s:%d > %s:%d", &e, ins, sport, ind, dport)
	}
	embedded(t, b)
}

// TestICMPErrorRoundTrip: A1 sends to a Service IP; the chosen instance (on node B)
// answers with an ICMP error about the packet as it got it. B's node sends the error to
// A as it sends any packet to A1's Instance IP, rewriting the packet it embeds to match
// (NS_A:p > InstB:q); A's node finds the flow and A1 gets an error whose embedded packet
// is exactly the start of what it sent (NS_A:p > Service IP:q), from the Service IP.
func TestICMPErrorRoundTrip(t *testing.T) {
	big := packettest.Payload(1400)
	for _, c := range []struct {
		name      string
		pkt       []byte // what A1 sends
		typ, code uint8
		info      uint32
		quote     int  // bytes the error quotes (0: all)
		echo      bool // an echo: its id in both ports
		reference bool // B's node is the reference's: it leaves the embedded packet as it was
	}{
		{name: "udp4 port unreachable", typ: 3, code: 3, quote: 28,
			pkt: packettest.IP4(a1NS, rrIP, packettest.UDP, packettest.UDPDatagram(5000, 53, big[:100]))},
		{name: "udp4 port unreachable, all quoted", typ: 3, code: 3,
			pkt: packettest.IP4(a1NS, rrIP, packettest.UDP, packettest.UDPDatagram(5001, 53, big[:100]))},
		{name: "tcp4 fragmentation needed", typ: 3, code: 4, info: 1400, quote: 48,
			pkt: packettest.IP4(a1NS, closestIP, packettest.TCP, packettest.TCPSegment(40000, 80, big[:1400]))},
		{name: "icmp4 echo host unreachable", typ: 3, code: 1, quote: 28, echo: true,
			pkt: packettest.IP4(a1NS, closestIP, packettest.ICMPv4, packettest.ICMPEcho(8, 0x77, 1, big[:56]))},
		{name: "udp6 packet too big", typ: 2, info: 1280, quote: 1280 - 48, // as much as fits in 1280 bytes
			pkt: packettest.IP6(a1NS6, rrIP6, packettest.UDP, packettest.UDPDatagram(5000, 53, big[:1200]))},
		{name: "tcp6 port unreachable", typ: 1, code: 4, quote: 48,
			pkt: packettest.IP6(a1NS6, rrIP6, packettest.TCP, packettest.TCPSegment(40001, 443, big[:100]))},
		{name: "udp4 from a reference node", typ: 3, code: 3, quote: 28, reference: true,
			pkt: packettest.IP4(a1NS, rrIP, packettest.UDP, packettest.UDPDatagram(5002, 53, big[:100]))},
		{name: "udp6 from a reference node", typ: 1, code: 4, reference: true,
			pkt: packettest.IP6(a1NS6, rrIP6, packettest.UDP, packettest.UDPDatagram(5003, 53, big[:100]))},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newTestEngine(t)
			sent := bytes.Clone(c.pkt)
			out := decode(t, c.pkt)
			dialled, sport, dport := out.Dst, out.SrcPort, out.DstPort
			if c.echo {
				sport, dport = out.EchoID, out.EchoID
			}
			if r := a.Outbound(out, t0); r.Verdict != Tunnel {
				t.Fatalf("A: Outbound = %+v", r)
			}
			nsB, self := out.Dst, out.Src
			instB := instanceOf(nsB)
			b := newNodeB(t, nsB)
			if r := b.Inbound(out, t0); r.Verdict != Deliver || out.Src != self {
				t.Fatalf("B: Inbound = %+v, %v", r, out)
			}

			// B's instance answers with an error about the packet as it got it.
			var atA []byte
			if c.reference {
				// The reference rewrites only the error's own addresses.
				atA = icmpErr(instB, ip(a1For(nsB)), c.typ, c.code, c.info, out.Buffer(), c.quote)
			} else {
				pe := decode(t, icmpErr(nsB, self, c.typ, c.code, c.info, out.Buffer(), c.quote))
				if r := b.Outbound(pe, t0); r.Verdict != Tunnel || r.Endpoint != app(a1At) {
					t.Fatalf("B: Outbound of the error = %+v, want Tunnel to %s", r, a1At)
				}
				// The embedded packet reads as if A1 had dialled B's Instance IP.
				checkQuote(t, pe.Buffer(), instB.String(), a1For(nsB), a1For(nsB), instB.String(), sport, dport)
				atA = pe.Buffer()
			}

			pa := decode(t, atA)
			if r := a.Inbound(pa, t0); r.Verdict != Deliver {
				t.Fatalf("A: Inbound of the error = %+v", r)
			}
			checkQuote(t, pa.Buffer(), dialled.String(), a1For(nsB), a1For(nsB), dialled.String(), sport, dport)
			n := c.quote
			if n == 0 {
				n = len(sent)
			}
			if q := embedded(t, pa.Buffer()); !bytes.Equal(q, sent[:n]) {
				t.Errorf("A1 got an error about\n%x\nwant the start of what it sent\n%x", q, sent[:n])
			}
		})
	}
}

// a1For is A1's namespace IP of the family of addr.
func a1For(addr netip.Addr) string {
	if addr.Is4() {
		return a1NS
	}
	return a1NS6
}

// TestICMPErrorAboutAReply: A1's own error about a reply of its flow (its socket is gone)
// goes to the instance that sent the reply, through the flow, and that instance gets an
// error about exactly the reply it sent.
func TestICMPErrorAboutAReply(t *testing.T) {
	a := newTestEngine(t)
	out := decode(t, packettest.IP4(a1NS, closestIP, packettest.UDP, packettest.UDPDatagram(5000, 53, nil)))
	if r := a.Outbound(out, t0); r.Verdict != Tunnel || r.Endpoint != app(w0At) {
		t.Fatalf("A: Outbound = %+v", r)
	}
	b := newNodeB(t, ip(w0NS))
	b.Inbound(out, t0)
	// W0 answers; B rewrites the reply as an outbound packet, A restores the Closest IP.
	sentByW0 := packettest.IP4(w0NS, a1Inst, packettest.UDP, packettest.UDPDatagram(53, 5000, packettest.Payload(30)))
	reply := decode(t, bytes.Clone(sentByW0))
	if r := b.Outbound(reply, t0); r.Verdict != Tunnel || r.Endpoint != app(a1At) {
		t.Fatalf("B: Outbound of the reply = %+v", r)
	}
	if r := a.Inbound(reply, t0); r.Verdict != Deliver {
		t.Fatalf("A: Inbound of the reply = %+v", r)
	}
	check(t, reply, closestIP, a1NS)

	// A1's port is closed by now: its kernel sends a port unreachable to the Closest IP.
	pe := decode(t, icmpErr(ip(a1NS), ip(closestIP), 3, 3, 0, reply.Buffer(), 0))
	if r := a.Outbound(pe, t0); r.Verdict != Tunnel || r.Endpoint != app(w0At) {
		t.Fatalf("A: Outbound of the error = %+v, want Tunnel to %s", r, w0At)
	}
	checkQuote(t, pe.Buffer(), a1Inst, w0NS, w0NS, a1Inst, 53, 5000)
	if r := b.Inbound(pe, t0); r.Verdict != Deliver {
		t.Fatalf("B: Inbound of the error = %+v", r)
	}
	checkQuote(t, pe.Buffer(), a1Inst, w0NS, w0NS, a1Inst, 53, 5000)
	if q := embedded(t, pe.Buffer()); !bytes.Equal(q, sentByW0) {
		t.Errorf("W0 got an error about\n%x\nwant what it sent\n%x", q, sentByW0)
	}
}

// TestICMPErrorLocal: the instance is on A1's own node; the error goes out and straight
// back in through the bridge (Outbound, then Inbound on the same packet).
func TestICMPErrorLocal(t *testing.T) {
	e := newTestEngine(t)
	sent := packettest.IP4(a1NS, "10.30.0.1", packettest.UDP, packettest.UDPDatagram(5000, 53, nil)) // A1's own service
	out := decode(t, bytes.Clone(sent))
	if r := e.Outbound(out, t0); r.Verdict != Deliver {
		t.Fatalf("Outbound = %+v", r)
	}
	e.Inbound(out, t0)
	pe := decode(t, icmpErr(ip(a1NS), ip(a1Inst), 3, 3, 0, out.Buffer(), 28))
	if r := e.Outbound(pe, t0); r.Verdict != Deliver {
		t.Fatalf("Outbound of the error = %+v", r)
	}
	if r := e.Inbound(pe, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound of the error = %+v", r)
	}
	checkQuote(t, pe.Buffer(), "10.30.0.1", a1NS, a1NS, "10.30.0.1", 5000, 53)
	if q := embedded(t, pe.Buffer()); !bytes.Equal(q, sent[:28]) {
		t.Errorf("embedded %x, want %x", q, sent[:28])
	}
}

// TestICMPErrorVerdicts: errors the engine cannot relate to a flow.
func TestICMPErrorVerdicts(t *testing.T) {
	udp := func(src, dst string, sport, dport uint16) []byte {
		return packettest.IP4(src, dst, packettest.UDP, packettest.UDPDatagram(sport, dport, nil))
	}
	gre := packettest.IP4(a1Inst, w0NS, 47, make([]byte, 8))
	in, out := (*Engine).Inbound, (*Engine).Outbound
	for _, c := range []struct {
		name string
		pkt  []byte
		run  func(*Engine, *packet.Parsed, time.Time) Result
		want Result
	}{
		// Inbound: an error for A1 about a datagram of no flow (expired, or forged).
		{"inbound, no flow", icmpErr(ip(w0Inst), ip(a1NS), 3, 3, 0, udp(a1NS, w0Inst, 7777, 53), 0), in, drop(ReasonICMPErrorNoFlow)},
		{"inbound, no flow, reference form", icmpErr(ip(w0Inst), ip(a1NS), 3, 3, 0, udp(a1Inst, w0NS, 7777, 53), 0), in, drop(ReasonICMPErrorNoFlow)},
		// Nothing to match it by: it passes, as untracked packets do.
		{"inbound, no ports", icmpErr(ip(w0Inst), ip(a1NS), 3, 2, 0, gre, 0), in, Result{Verdict: Deliver}},
		{"inbound, embedded packet malformed", icmpErr(ip(w0Inst), ip(a1NS), 3, 3, 0, udp(a1NS, w0Inst, 1, 2), 27), in, drop(ReasonMalformed)},
		// Outbound: A1's error about a packet from a remote sender's Instance IP goes there.
		{"outbound, to an Instance IP", icmpErr(ip(a1NS), ip(w1Inst), 3, 3, 0, udp(w1Inst, a1NS, 6000, 53), 0), out, Result{Verdict: Tunnel, Endpoint: app(w1At)}},
		{"outbound, to an unknown Instance IP", icmpErr(ip(a1NS), ip("10.30.7.7"), 3, 3, 0, udp("10.30.7.7", a1NS, 6000, 53), 0), out, Result{Verdict: Resolve}},
		{"outbound, to a Service IP without a flow", icmpErr(ip(a1NS), ip(rrIP), 3, 3, 0, udp(rrIP, a1NS, 53, 6000), 0), out, drop(ReasonICMPErrorNoFlow)},
		{"outbound, about a packet for someone else", icmpErr(ip(a1NS), ip(w1Inst), 11, 0, 0, udp(w1Inst, "10.18.0.99", 6000, 53), 0), out, drop(ReasonICMPErrorNoFlow)},
		{"outbound, embedded packet malformed", icmpErr(ip(a1NS), ip(w1Inst), 3, 3, 0, udp(w1Inst, a1NS, 6000, 53), 24), out, drop(ReasonMalformed)},
	} {
		e := newTestEngine(t)
		p := decode(t, c.pkt)
		orig := bytes.Clone(p.Buffer())
		got := c.run(e, p, t0)
		if got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
		if got.Verdict == Deliver && !bytes.Equal(p.Buffer(), orig) {
			t.Errorf("%s: delivered changed", c.name)
		}
		if got.Verdict == Tunnel {
			checkQuote(t, p.Buffer(), a1Inst, w1NS, w1NS, a1Inst, 6000, 53)
		}
	}
	if got := ReasonICMPErrorNoFlow.String(); got != "icmp_error_no_flow" {
		t.Errorf("reason name %q", got)
	}
}

// TestICMPErrorAllocatesNothing: an error is translated without garbage, as any packet.
func TestICMPErrorAllocatesNothing(t *testing.T) {
	a := newTestEngine(t)
	out := decode(t, packettest.IP4(a1NS, closestIP, packettest.UDP, packettest.UDPDatagram(5000, 53, nil)))
	a.Outbound(out, t0)
	in := icmpErr(ip(w0Inst), ip(a1NS), 3, 3, 0, packettest.IP4(a1NS, w0Inst, packettest.UDP, packettest.UDPDatagram(5000, 53, nil)), 0)
	buf := make([]byte, len(in))
	var p packet.Parsed
	allocs := testing.AllocsPerRun(100, func() {
		copy(buf, in)
		p.Decode(buf)
		if r := a.Inbound(&p, t0); r.Verdict != Deliver {
			t.Fatalf("Inbound = %+v", r)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per error", allocs)
	}
}
