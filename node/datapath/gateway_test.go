package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/node/packet/packettest"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
)

// The gateway scene adds to newTestEngine's: this node is also a gateway, instance 0 of
// the system gateway service with Namespace IPs 10.18.0.3 / fc00::3 and Instance IPs
// 10.30.0.4 / fdff::4. It exposes TCP 8080 -> web's RR IP port 80 and UDP 5353 -> port 53.
const (
	gwInternal, gwInternal6 = "10.30.255.253", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"
	gwSelf, gwSelf6         = "10.18.0.3", "fc00::3"
	gwInst, gwInst6         = "10.30.0.4", "fdff::4"
	client1, client2        = "198.51.100.7", "198.51.100.8"
	client6                 = "2001:db8::7"
)

func newGatewayEngine(t testing.TB, flows conntrack.Config) (*Engine, *Gateway) {
	t.Helper()
	e := newTestEngine(t)
	gw, err := NewGateway(GatewayConfig{Internal4: ip(gwInternal), Internal6: ip(gwInternal6), Self4: ip(gwSelf), Self6: ip(gwSelf6), Flows: flows})
	if err != nil {
		t.Fatal(err)
	}
	e.gateway = gw
	e.table.AddLocal(api.GatewayJobName, 0, ip(gwSelf), ip(gwSelf6))
	if _, err := e.table.Apply(&mqttapi.TableQueryResult{AppName: api.GatewayJobName, Revision: 1, InstanceList: []mqttapi.TableInstance{{
		InstanceNumber: 0, InstanceIP: ip(gwInst), InstanceIPv6: ip(gwInst6), NamespaceIP: ip(gwSelf), NamespaceIPv6: ip(gwSelf6),
		HostIP: ip("10.99.0.11"), HostPort: 50103, Status: "running",
		ServiceIP: svcIPs("10.30.0.5", "fdff:2000::5", "10.30.0.6", gwInst, gwInst6),
	}}}, t0); err != nil {
		t.Fatal(err)
	}
	gw.SetExposures([]Exposure{
		{Proto: packet.TCP, PublicPort: 8080, ServicePort: 80, Target4: ip(rrIP), Target6: ip(rrIP6)},
		{Proto: packet.UDP, PublicPort: 5353, ServicePort: 53, Target4: ip(rrIP)},
	})
	return e, gw
}

func tcpFlags(src, dst string, sport, dport uint16, flags byte) []byte {
	seg := packettest.TCPSegment(sport, dport, packettest.Payload(20))
	seg[13] = flags
	return packettest.IP4(src, dst, packettest.TCP, seg) // checksums filled in
}

func tcp6(src, dst string, sport, dport uint16) []byte {
	return packettest.IP6(src, dst, packettest.TCP, packettest.TCPSegment(sport, dport, packettest.Payload(100)))
}

// ports asserts a packet's ports.
func ports(t *testing.T, p *packet.Parsed, sport, dport uint16) {
	t.Helper()
	if p.SrcPort != sport || p.DstPort != dport {
		t.Errorf("ports %d -> %d, want %d -> %d", p.SrcPort, p.DstPort, sport, dport)
	}
}

// endpointNS maps a tunnel endpoint of the scene to its instance's Namespace and Instance IPs.
func endpointNS(t *testing.T, ep netip.AddrPort) (ns, inst string) {
	t.Helper()
	switch ep {
	case app(w0At):
		return w0NS, w0Inst
	case app(w1At):
		return w1NS, w1Inst
	}
	t.Fatalf("tunnelled to %v, not to a web instance", ep)
	return "", ""
}

func TestGatewayForwardAndReply(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	// The firewall turned 198.51.100.7:51671 -> public:8080 into -> internal:8080.
	p := decode(t, tcp4(client1, gwInternal, 51671, 8080))
	r := e.Outbound(p, t0)
	if r.Verdict != Tunnel {
		t.Fatalf("Outbound = %+v, want Tunnel", r)
	}
	ns, inst := endpointNS(t, r.Endpoint)
	// On the wire: from the gateway's Instance IP, the client's port kept (it was free).
	check(t, p, gwInst, ns)
	ports(t, p, 51671, 80)

	// The instance's node rewrote its reply: instance IP -> the gateway's Namespace IP.
	reply := decode(t, tcp4(inst, gwSelf, 80, 51671))
	if r := e.Inbound(reply, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound = %+v, want Deliver", r)
	}
	// Back to the client from the internal address and the public port: the
	// firewall's connection tracking puts the public address back.
	check(t, reply, gwInternal, client1)
	ports(t, reply, 8080, 51671)

	// Later packets of the flow go to the same instance.
	p = decode(t, tcp4(client1, gwInternal, 51671, 8080))
	if r2 := e.Outbound(p, t0.Add(time.Second)); r2.Endpoint != r.Endpoint {
		t.Errorf("established gateway flow moved from %v to %v", r.Endpoint, r2.Endpoint)
	}
}

// Two clients with one source port: the reference's forward table, keyed by that port
// alone, mixed them up. Each must get its own gateway port and its own replies.
func TestGatewaySameClientPort(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	type sent struct {
		client   string
		gp       uint16
		ns, inst string
	}
	var flows []sent
	for _, c := range []string{client1, client2} {
		p := decode(t, tcp4(c, gwInternal, 40000, 8080))
		r := e.Outbound(p, t0)
		if r.Verdict != Tunnel {
			t.Fatalf("client %s: Outbound = %+v", c, r)
		}
		ns, inst := endpointNS(t, r.Endpoint)
		flows = append(flows, sent{c, p.SrcPort, ns, inst})
	}
	if flows[0].gp == flows[1].gp {
		t.Fatalf("both clients got gateway port %d", flows[0].gp)
	}
	if flows[0].gp != 40000 || flows[1].gp < firstGatewayPort {
		t.Errorf("gateway ports %d, %d: want the first client's own port, then one >= %d", flows[0].gp, flows[1].gp, firstGatewayPort)
	}
	for _, f := range flows {
		reply := decode(t, tcp4(f.inst, gwSelf, 80, f.gp))
		if r := e.Inbound(reply, t0); r.Verdict != Deliver {
			t.Fatalf("reply for %s: %+v", f.client, r)
		}
		check(t, reply, gwInternal, f.client)
		ports(t, reply, 8080, 40000)
	}
}

func TestGatewayIPv6AndUDP(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	p := decode(t, tcp6(client6, gwInternal6, 51000, 8080))
	r := e.Outbound(p, t0)
	if r.Verdict != Tunnel || r.Endpoint != app(w0At) { // only W0 has an IPv6 address
		t.Fatalf("Outbound v6 = %+v, want Tunnel to %s", r, w0At)
	}
	check(t, p, gwInst6, w0NS6)
	reply := decode(t, tcp6(w0Inst6, gwSelf6, 80, 51000))
	if r := e.Inbound(reply, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound v6 = %+v", r)
	}
	check(t, reply, gwInternal6, client6)
	ports(t, reply, 8080, 51000)

	// UDP 5353 is exposed for IPv4 only.
	u := decode(t, packettest.IP4(client1, gwInternal, packettest.UDP, packettest.UDPDatagram(33000, 5353, packettest.Payload(40))))
	if r := e.Outbound(u, t0); r.Verdict != Tunnel {
		t.Fatalf("UDP Outbound = %+v", r)
	}
	ports(t, u, 33000, 53)
	u6 := decode(t, packettest.IP6(client6, gwInternal6, packettest.UDP, packettest.UDPDatagram(33000, 5353, packettest.Payload(40))))
	if r := e.Outbound(u6, t0); r.Verdict != Drop || r.Reason != ReasonNoExposure {
		t.Errorf("UDP over IPv6 to a v4-only exposure = %+v, want drop no_exposure", r)
	}
}

func TestGatewayRemovedExposure(t *testing.T) {
	e, gw := newGatewayEngine(t, conntrack.Config{})
	est := decode(t, tcp4(client1, gwInternal, 51671, 8080))
	r := e.Outbound(est, t0)
	if r.Verdict != Tunnel {
		t.Fatalf("Outbound = %+v", r)
	}
	gw.SetExposures(nil)
	// New flows are refused at once...
	p := decode(t, tcp4(client2, gwInternal, 51671, 8080))
	if r := e.Outbound(p, t0); r.Verdict != Drop || r.Reason != ReasonNoExposure {
		t.Errorf("new flow after removal = %+v, want drop no_exposure", r)
	}
	// ...the established one goes on.
	p = decode(t, tcp4(client1, gwInternal, 51671, 8080))
	if r2 := e.Outbound(p, t0.Add(time.Second)); r2.Verdict != Tunnel || r2.Endpoint != r.Endpoint {
		t.Errorf("established flow after removal = %+v, want Tunnel to %v", r2, r.Endpoint)
	}
	// Not TCP or UDP: nothing to expose.
	icmp := decode(t, packettest.IP4(client1, gwInternal, packettest.ICMPv4, packettest.ICMPEcho(8, 7, 1, packettest.Payload(32))))
	if r := e.Outbound(icmp, t0); r.Reason != ReasonNoExposure {
		t.Errorf("ICMP to the internal address = %+v, want drop no_exposure", r)
	}
}

// A packet for the gateway's own address that is not the reply of its flow's target is
// dropped: learning a gateway port must not let an instance write to a client.
func TestGatewayRefusesForeignReplies(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	p := decode(t, tcp4(client1, gwInternal, 51671, 8080))
	r := e.Outbound(p, t0)
	_, inst := endpointNS(t, r.Endpoint)
	other := w0Inst
	if inst == w0Inst {
		other = w1Inst
	}
	for _, b := range [][]byte{
		tcp4(other, gwSelf, 80, 51671), // another instance
		tcp4(inst, gwSelf, 81, 51671),  // another port of the right one
		tcp4(inst, gwSelf, 80, 51672),  // a port with no flow
		packettest.IP4(inst, gwSelf, packettest.ICMPv4, packettest.ICMPEcho(0, 9, 1, packettest.Payload(8))),
	} {
		q := decode(t, b)
		if r := e.Inbound(q, t0); r.Verdict != Drop || r.Reason != ReasonNoGatewayFlow {
			t.Errorf("Inbound %v = %+v, want drop no_gateway_flow", q, r)
		}
	}
}

// A TCP RST ends the flow after the closing timeout, not the 5-minute idle one; a
// bounded table refuses new flows and keeps live ones.
func TestGatewayFlowLifetime(t *testing.T) {
	e, gw := newGatewayEngine(t, conntrack.Config{MaxFlows: 2})
	for _, c := range []string{client1, client2} {
		if r := e.Outbound(decode(t, tcp4(c, gwInternal, 40000, 8080)), t0); r.Verdict != Tunnel {
			t.Fatalf("Outbound = %+v", r)
		}
	}
	if r := e.Outbound(decode(t, tcp4("198.51.100.9", gwInternal, 40000, 8080)), t0); r.Reason != ReasonFlowRefused {
		t.Errorf("third flow in a table of 2 = %+v, want drop flow_refused", r)
	}
	if n := gw.Flows().Refused(); n != 1 {
		t.Errorf("Refused = %d, want 1", n)
	}
	// client1 resets its connection; 11 s later its room is free, client2's is not.
	e.Outbound(decode(t, tcpFlags(client1, gwInternal, 40000, 8080, 0x14)), t0.Add(time.Second))
	later := t0.Add(12 * time.Second)
	gw.Sweep(later)
	if n := gw.Flows().Len(); n != 1 {
		t.Errorf("flows after a RST and 11 s = %d, want 1 (client2's)", n)
	}
	if r := e.Outbound(decode(t, tcp4("198.51.100.9", gwInternal, 40000, 8080)), later); r.Verdict != Tunnel {
		t.Errorf("new flow once the reset one expired = %+v", r)
	}
}

func TestGatewayConfigChecks(t *testing.T) {
	for _, c := range []GatewayConfig{
		{Internal4: ip(gwInternal)},                      // no self address
		{Internal4: ip(gwInternal6), Self4: ip(gwSelf6)}, // wrong family
		{Self6: ip(gwSelf6)},                             // self without internal
	} {
		if _, err := NewGateway(c); err == nil {
			t.Errorf("NewGateway(%+v) succeeded", c)
		}
	}
}

// The established forward and reply paths allocate nothing.
func TestGatewayAllocations(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	fwd := tcp4(client1, gwInternal, 51671, 8080)
	var p packet.Parsed
	_ = p.Decode(append([]byte(nil), fwd...))
	r := e.Outbound(&p, t0)
	_, inst := endpointNS(t, r.Endpoint)
	rep := tcp4(inst, gwSelf, 80, 51671)
	buf := make([]byte, max(len(fwd), len(rep)))
	allocs := testing.AllocsPerRun(200, func() {
		n := copy(buf, fwd)
		if p.Decode(buf[:n]) != nil || e.Outbound(&p, t0).Verdict != Tunnel {
			t.Fatal("forward failed")
		}
		n = copy(buf, rep)
		if p.Decode(buf[:n]) != nil || e.Inbound(&p, t0).Verdict != Deliver {
			t.Fatal("reply failed")
		}
	})
	if allocs != 0 {
		t.Errorf("gateway forward+reply: %v allocations per packet pair, want 0", allocs)
	}
}

// A service's ICMP error about a client's flow reaches the client quoting the packet the
// client sent: a UDP client behind the gateway sees its port unreachable.
func TestGatewayICMPError(t *testing.T) {
	e, _ := newGatewayEngine(t, conntrack.Config{})
	sent := packettest.IP4(client1, gwInternal, packettest.UDP, packettest.UDPDatagram(33000, 5353, packettest.Payload(40)))
	p := decode(t, append([]byte(nil), sent...))
	r := e.Outbound(p, t0)
	if r.Verdict != Tunnel {
		t.Fatalf("Outbound = %+v", r)
	}
	_, inst := endpointNS(t, r.Endpoint)
	gp := p.SrcPort
	// The instance's node answers with a port unreachable as it translates errors: from
	// the instance's Instance IP, quoting the datagram as the gateway's Namespace IP sent
	// it to the instance's Instance IP.
	quoted := packettest.IP4(gwSelf, inst, packettest.UDP, packettest.UDPDatagram(gp, 53, packettest.Payload(40)))
	errPkt := decode(t, packettest.IP4(inst, gwSelf, packettest.ICMPv4, packettest.ICMPError(3, 3, 0, quoted[:28])))
	if r := e.Inbound(errPkt, t0); r.Verdict != Deliver {
		t.Fatalf("Inbound error = %+v, want Deliver", r)
	}
	check(t, errPkt, gwInternal, client1)
	in, err := errPkt.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	sp, dp, _ := in.FlowPorts()
	if in.Src() != ip(client1) || in.Dst() != ip(gwInternal) || sp != 33000 || dp != 5353 {
		t.Errorf("the client's error quotes %v, want its own datagram %s:33000 > %s:5353", &in, client1, gwInternal)
	}
	// An error quoting a gateway port of no flow is dropped.
	stray := packettest.IP4(gwSelf, inst, packettest.UDP, packettest.UDPDatagram(gp+1, 53, packettest.Payload(40)))
	q := decode(t, packettest.IP4(inst, gwSelf, packettest.ICMPv4, packettest.ICMPError(3, 3, 0, stray[:28])))
	if r := e.Inbound(q, t0); r.Verdict != Drop {
		t.Errorf("an error about no flow = %+v, want Drop", r)
	}
}
