package datapath

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/packet"
)

// The gateway's NAPT (FLOWS.md, "External client to service, through the gateway").
//
// The node's firewall DNATs a client's packet for public_ip:public_port to the gateway's
// internal address (10.30.255.253:public_port), which the node routes into its TUN. Here
// the exposure of public_port gives the target (a Service or Instance IP and its port),
// and the packet becomes self:gateway_port -> target:service_port, self being the
// gateway's own Namespace IP (registered at root as an instance of the system gateway
// service, so it has an Instance IP like any replica). From there it is an ordinary
// outbound packet: balanced, rewritten and tunnelled. A reply comes back through the
// ordinary inbound path as target:service_port -> self:gateway_port and leaves as
// internal:public_port -> client:client_port; the firewall's connection tracking puts the
// public address back as its source.
//
// The reference keyed its forward table by the client's source port alone, so two
// clients with one source port collided. Here every flow gets its own gateway port, and
// a port belongs to one flow at a time whatever the target: the ordinary flow table keys
// replies by (instance, port), and two exposures of one service's RR and Closest IPs may
// pick one instance. The client's own port is tried first (traces stay readable), then
// random ones. That makes 64,512 ports per protocol and family the limit of concurrent
// flows, above the table's default bound.

// errNoPort: portTries ports were all held by live flows.
var errNoPort = errors.New("datapath: no free gateway port")

const (
	// firstGatewayPort: ports below it are never handed out (they are the ones services
	// listen on; keeping clear of them makes traces unambiguous).
	firstGatewayPort = 1024
	// portTries bounds the random ports tried for a new flow: at 90% of the port range
	// in use, 64 tries still find one with probability 99.9%.
	portTries = 64
)

// Exposure is one exposed port as the gateway applies it.
type Exposure struct {
	Proto       packet.Proto // TCP or UDP
	PublicPort  uint16
	ServicePort uint16
	// Target4 serves clients over IPv4, Target6 over IPv6; a zero one leaves that family
	// unserved.
	Target4, Target6 netip.Addr
}

// GatewayConfig configures a Gateway.
type GatewayConfig struct {
	// Internal4 and Internal6 are the addresses the firewall DNATs public traffic to
	// (addrplan: 10.30.255.253); a zero one disables that family.
	Internal4, Internal6 netip.Addr
	// Self4 and Self6 are the gateway's own Namespace IPs: the source of the flows it
	// opens to services, where the services' replies come back to.
	Self4, Self6 netip.Addr
	// Flows sizes the NAPT table (conntrack's defaults when zero): bounded, and a full
	// table refuses new flows without evicting live ones.
	Flows conntrack.Config
}

// Gateway is a gateway node's NAPT. It is safe for concurrent use; the path of an
// established flow takes no lock and allocates nothing.
type Gateway struct {
	cfg       GatewayConfig
	flows     *conntrack.Table
	frags     *fragments
	exposures atomic.Pointer[map[uint32]Exposure]
	noPort    atomic.Uint64
}

// NewGateway returns a gateway with no exposures.
func NewGateway(cfg GatewayConfig) (*Gateway, error) {
	if cfg.Internal4.IsValid() != cfg.Self4.IsValid() || cfg.Internal6.IsValid() != cfg.Self6.IsValid() {
		return nil, fmt.Errorf("datapath: gateway needs an internal and a self address in each family it serves (internal %v %v, self %v %v)",
			cfg.Internal4, cfg.Internal6, cfg.Self4, cfg.Self6)
	}
	if cfg.Internal4.IsValid() && !(cfg.Internal4.Is4() && cfg.Self4.Is4()) || cfg.Internal6.IsValid() && !(cfg.Internal6.Is6() && cfg.Self6.Is6()) {
		return nil, fmt.Errorf("datapath: gateway addresses of the wrong family (internal %v %v, self %v %v)", cfg.Internal4, cfg.Internal6, cfg.Self4, cfg.Self6)
	}
	flows, err := conntrack.New(cfg.Flows)
	if err != nil {
		return nil, fmt.Errorf("datapath: gateway flow table: %w", err)
	}
	g := &Gateway{cfg: cfg, flows: flows, frags: newFragments()}
	g.exposures.Store(&map[uint32]Exposure{})
	return g, nil
}

func exposureKey(proto packet.Proto, port uint16) uint32 { return uint32(proto)<<16 | uint32(port) }

// SetExposures replaces the exposures. New flows see the new set at once; established
// flows keep their target until they end (an exposure removed lets its flows finish).
func (g *Gateway) SetExposures(ex []Exposure) {
	m := make(map[uint32]Exposure, len(ex))
	for _, e := range ex {
		m[exposureKey(e.Proto, e.PublicPort)] = e
	}
	g.exposures.Store(&m)
}

// Flows is the NAPT table (for metrics).
func (g *Gateway) Flows() *conntrack.Table { return g.flows }

// PortsExhausted counts new flows refused because every gateway port tried was taken.
func (g *Gateway) PortsExhausted() uint64 { return g.noPort.Load() }

// Sweep ends idle flows and fragment records.
func (g *Gateway) Sweep(now time.Time) {
	g.flows.Sweep(now)
	g.frags.sweep(now)
}

// isInternal reports whether a is the gateway's internal address: the packet came from
// a client through the firewall.
func (g *Gateway) isInternal(a netip.Addr) bool {
	return a.IsValid() && (a == g.cfg.Internal4 || a == g.cfg.Internal6)
}

// isSelf reports whether a is the gateway's own Namespace IP: the packet answers a
// client's flow.
func (g *Gateway) isSelf(a netip.Addr) bool {
	return a.IsValid() && (a == g.cfg.Self4 || a == g.cfg.Self6)
}

func (g *Gateway) self(a netip.Addr) netip.Addr {
	if a.Is4() {
		return g.cfg.Self4
	}
	return g.cfg.Self6
}

// forward rewrites a client's packet (client:port -> internal:public_port) into the
// gateway's flow to the exposed service (self:gateway_port -> target:service_port).
func (g *Gateway) forward(p *packet.Parsed, now time.Time) Reason {
	key := fragKeyOf(p)
	if p.IsNonFirstFragment() {
		return g.followFragment(p, key, now)
	}
	if !p.HasPorts() {
		return ReasonNoExposure
	}
	orig := conntrack.Tuple{Src: p.Src, Dst: p.Dst, SrcPort: p.SrcPort, DstPort: p.DstPort, Proto: uint8(p.Proto)}
	rw, ok := g.flows.Outbound(orig, now)
	if !ok {
		ex, found := (*g.exposures.Load())[exposureKey(p.Proto, p.DstPort)]
		target := ex.Target4
		if p.Dst.Is6() {
			target = ex.Target6
		}
		if !found || !target.IsValid() {
			return ReasonNoExposure
		}
		var err error
		if rw, err = g.open(orig, target, ex.ServicePort, now); err != nil {
			return ReasonFlowRefused
		}
	}
	if p.SetAddrs(rw.Src, rw.Dst) != nil || p.SetSrcPort(rw.SrcPort) != nil || p.SetDstPort(rw.DstPort) != nil {
		return ReasonRewrite
	}
	if tcpEnding(p) {
		g.flows.MarkClosing(orig, false, now)
	}
	if p.IsFragment() {
		g.frags.put(key, fragment{src: rw.Src, dst: rw.Dst}, now)
	}
	return ReasonNone
}

// open records a new flow from orig to target:port on a free gateway port.
func (g *Gateway) open(orig conntrack.Tuple, target netip.Addr, port uint16, now time.Time) (conntrack.Tuple, error) {
	self := g.self(target)
	gp := orig.SrcPort
	for range portTries {
		if gp >= firstGatewayPort {
			rw := conntrack.Tuple{Src: self, Dst: target, SrcPort: gp, DstPort: port, Proto: orig.Proto}
			got, err := g.flows.Add(orig, rw, portKey(self, gp, orig.Proto), now)
			if err == nil {
				return got, nil
			}
			if !errors.Is(err, conntrack.ErrConflict) {
				return conntrack.Tuple{}, err
			}
		}
		gp = uint16(firstGatewayPort + rand.N(65536-firstGatewayPort))
	}
	g.noPort.Add(1)
	return conntrack.Tuple{}, errNoPort
}

// portKey is the NAPT table's reply key: the gateway port alone (with the protocol and
// family), so that one port belongs to one flow whatever its target (see above).
func portKey(self netip.Addr, port uint16, proto uint8) conntrack.Tuple {
	return conntrack.Tuple{Src: self, Dst: self, DstPort: port, Proto: proto}
}

// reverse rewrites a service's reply (target:service_port -> self:gateway_port, its
// source already restored by the ordinary inbound path) into the client's flow
// (internal:public_port -> client:port).
func (g *Gateway) reverse(p *packet.Parsed, now time.Time) Reason {
	key := fragKeyOf(p)
	if p.IsNonFirstFragment() {
		return g.followFragment(p, key, now)
	}
	if !p.HasPorts() {
		return ReasonNoGatewayFlow
	}
	rk := portKey(p.Dst, p.DstPort, uint8(p.Proto))
	restored, rw, ok := g.flows.ReplyFlow(rk, now)
	// The port's flow must be the one this packet answers: the gateway port alone
	// would let any instance that learnt it write into a client's connection.
	if !ok || rw.Dst != p.Src || rw.DstPort != p.SrcPort {
		return ReasonNoGatewayFlow
	}
	if p.SetAddrs(restored.Src, restored.Dst) != nil || p.SetSrcPort(restored.SrcPort) != nil || p.SetDstPort(restored.DstPort) != nil {
		return ReasonRewrite
	}
	if tcpEnding(p) {
		g.flows.MarkClosing(rk, true, now)
	}
	if p.IsFragment() {
		g.frags.put(key, fragment{src: restored.Src, dst: restored.Dst}, now)
	}
	return ReasonNone
}

// reverseError sends on to the client an ICMP error about one of its flows (port
// unreachable from a UDP service, packet too big on the way): the inbound path restored
// its quote to the gateway's own packet (self:gateway_port -> target:service_port); the
// client must see an error quoting what it sent (client:port -> internal:public_port),
// which the firewall's connection tracking then maps to the public address as a related
// packet.
func (g *Gateway) reverseError(p *packet.Parsed, now time.Time) Reason {
	in, err := p.Embedded()
	if err != nil {
		return ReasonMalformed
	}
	sport, dport, ok := in.FlowPorts()
	if !ok || in.Proto() != packet.TCP && in.Proto() != packet.UDP {
		return ReasonNoGatewayFlow
	}
	restored, rw, ok := g.flows.ReplyFlow(portKey(in.Src(), sport, uint8(in.Proto())), now)
	if !ok || rw.Src != in.Src() || rw.Dst != in.Dst() || rw.DstPort != dport {
		return ReasonNoGatewayFlow
	}
	if in.SetAddrs(restored.Dst, restored.Src) != nil || in.SetPorts(restored.DstPort, restored.SrcPort) != nil ||
		p.SetAddrs(restored.Src, restored.Dst) != nil {
		return ReasonRewrite
	}
	return ReasonNone
}

// followFragment rewrites a later fragment as its datagram's first fragment was: it has
// no ports to look up.
func (g *Gateway) followFragment(p *packet.Parsed, key fragKey, now time.Time) Reason {
	f, ok := g.frags.get(key, now)
	if !ok {
		return ReasonFragment
	}
	if p.SetAddrs(f.src, f.dst) != nil {
		return ReasonRewrite
	}
	return ReasonNone
}

// tcpEnding reports a TCP segment with FIN or RST set: its connection is ending, so its
// gateway flow may expire soon (conntrack's ClosingTimeout) instead of after the TCP
// idle timeout.
func tcpEnding(p *packet.Parsed) bool {
	const fin, rst = 0x01, 0x04
	if p.Proto != packet.TCP {
		return false
	}
	tr := p.Transport()
	return len(tr) > 13 && tr[13]&(fin|rst) != 0
}
