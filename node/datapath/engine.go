// Package datapath moves the node's packets: from the TUN (local instances dialling
// Service and Instance IPs) through translation to the tunnel or back to the local
// bridge, and from the tunnel to the local instances (FLOWS.md, service to service).
//
// Engine is the pure core: it decides and rewrites one decoded packet at a time, with
// no I/O, no lock and no allocation on the path of an established flow. Datapath wraps
// it with the batched TUN and UDP I/O (wireguard-go's tun and conn packages: TUN
// offloads, sendmmsg/recvmmsg, UDP GSO/GRO where the kernel has them).
package datapath

import (
	"net/netip"
	"time"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/node/table"
)

// Verdict says what to do with a packet the Engine has seen.
type Verdict uint8

const (
	// Drop: discard it; Result.Reason says why.
	Drop Verdict = iota
	// Tunnel: send it as the UDP payload to Result.Endpoint.
	Tunnel
	// Deliver: write it to the TUN; the node's kernel routes it to the instance on the
	// bridge.
	Deliver
	// Resolve: the destination (for a packet from the tunnel, the source) is unknown;
	// hold the packet, query the cluster and hand it to the Engine again once the answer
	// is applied.
	Resolve
	// Refresh: a packet from the tunnel whose source the table places elsewhere (another
	// host, or an instance that is not running). The table may be stale (the instance
	// just moved, and the push is on its way): query the cluster for the source and hand
	// the packet to the Engine again, at most once and as often as the caller allows;
	// otherwise drop it with Result.Reason.
	Refresh
)

// Reason is why a packet was dropped.
type Reason uint8

// Drop reasons, each counted in the node's metrics.
const (
	ReasonNone Reason = iota
	// Malformed: the packet does not parse.
	ReasonMalformed
	// NotService: an outbound packet to an address outside the Service/Instance ranges.
	ReasonNotService
	// UnknownSender: the sender is not a local instance whose Instance IP is known yet.
	ReasonUnknownSender
	// NoInstance: the service is known but has no usable instance (or the Instance IP's
	// instance is not running).
	ReasonNoInstance
	// FlowRefused: connection tracking refused the flow (table full or reply tuple
	// taken).
	ReasonFlowRefused
	// NotLocal: an inbound packet for a namespace IP that is not on this node.
	ReasonNotLocal
	// Fragment: a non-first fragment whose first fragment was not seen.
	ReasonFragment
	// Unresolved: the cluster did not resolve the destination (for a packet from the
	// tunnel, the source), or too many packets waited for it, or the node queried about
	// too many tunnel sources lately.
	ReasonUnresolved
	// Rewrite: the packet could not be rewritten (a truncated transport header).
	ReasonRewrite
	// NoExposure: a gateway packet for a public port (and protocol, and family) that no
	// exposure serves: the exposure was removed, or the packet is not TCP or UDP.
	ReasonNoExposure
	// NoGatewayFlow: a packet for the gateway's own address that answers none of its
	// flows (expired, or not sent by the flow's target).
	ReasonNoGatewayFlow
	// ICMPErrorNoFlow: an ICMP error about a packet with ports (or an echo) that belongs
	// to no flow: expired, forged, or sent to a Service IP without one (inboundError,
	// outboundError).
	ReasonICMPErrorNoFlow
	// Spoofed: a packet from the tunnel whose source is not the Instance IP of an
	// instance on the host that sent it: no Instance IP at all, or one of an instance
	// the table (refreshed) places on another host (FromTunnel).
	ReasonSpoofed
	reasonCount
)

var reasonNames = [reasonCount]string{"none", "malformed", "not_service", "unknown_sender", "no_instance",
	"flow_refused", "not_local", "fragment", "unresolved", "rewrite", "no_exposure", "no_gateway_flow",
	"icmp_error_no_flow", "spoofed"}

func (r Reason) String() string {
	if r < reasonCount {
		return reasonNames[r]
	}
	return "unknown"
}

// Result is the Engine's decision on one packet.
type Result struct {
	Verdict  Verdict
	Reason   Reason
	Endpoint netip.AddrPort // the tunnel destination, for Tunnel
}

// Engine translates packets. It is safe for concurrent use: each goroutine passes its
// own packet.Parsed.
type Engine struct {
	table    *table.Table
	flows    *conntrack.Table
	services []netip.Prefix
	outFrags *fragments
	inFrags  *fragments
	gateway  *Gateway // nil on an ordinary node
}

// NewEngine returns an engine resolving through tbl and tracking flows in flows;
// services are the ranges routed into the TUN (Service and Instance IPs). gw is the
// gateway's NAPT on a gateway node, nil elsewhere.
func NewEngine(tbl *table.Table, flows *conntrack.Table, services []netip.Prefix, gw *Gateway) *Engine {
	return &Engine{table: tbl, flows: flows, services: services, outFrags: newFragments(), inFrags: newFragments(), gateway: gw}
}

func (e *Engine) isService(a netip.Addr) bool {
	for _, p := range e.services {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func drop(r Reason) Result { return Result{Verdict: Drop, Reason: r} }

// Outbound translates a packet a local instance sent into the TUN: its destination is
// a Service or Instance IP. It picks the instance (an established flow keeps its own),
// rewrites src -> the sender's Instance IP and dst -> the chosen Namespace IP, and says
// where the packet goes. On a gateway, a client's packet for the internal address first
// becomes the gateway's own flow to the exposed service (Gateway.forward).
func (e *Engine) Outbound(p *packet.Parsed, now time.Time) Result {
	if e.gateway != nil && e.gateway.isInternal(p.Dst) {
		if r := e.gateway.forward(p, now); r != ReasonNone {
			return drop(r)
		}
	}
	if !e.isService(p.Dst) {
		return drop(ReasonNotService)
	}
	self, ok := e.table.Sender(p.Src)
	if !ok {
		return drop(ReasonUnknownSender)
	}
	if p.IsNonFirstFragment() {
		// No ports: the first fragment decided where the datagram goes.
		f, ok := e.outFrags.get(fragKeyOf(p), now)
		if !ok {
			return drop(ReasonFragment)
		}
		if p.SetAddrs(f.src, f.dst) != nil {
			return drop(ReasonRewrite)
		}
		return f.result
	}
	if p.IsICMPError() {
		return e.outboundError(p, self, now)
	}
	var r Result
	ns := e.choose(p, self, now, &r)
	if r.Verdict != Tunnel && r.Verdict != Deliver {
		return r
	}
	if p.IsFragment() {
		// Keyed by the addresses as sent, so taken before the rewrite; only fragments
		// pay for it.
		key := fragKeyOf(p)
		if p.SetAddrs(self, ns) != nil {
			return drop(ReasonRewrite)
		}
		e.outFrags.put(key, fragment{src: self, dst: ns, result: r}, now)
		return r
	}
	if p.SetAddrs(self, ns) != nil {
		return drop(ReasonRewrite)
	}
	return r
}

// choose finds the instance for an outbound packet: the flow's own while it lives,
// else a fresh choice by the destination's policy, recorded for the flow. It returns
// the instance's Namespace IP and sets r to where the packet goes. (It passes Targets by
// pointer: copying them was a fifth of the per-packet time. It fills the caller's r
// field by field, and builds orig so, because a struct built in a temporary is copied
// with wider loads than its stores, which the CPU cannot forward: ~8 ns a packet, found
// with pprof on BenchmarkTranslate.)
func (e *Engine) choose(p *packet.Parsed, self netip.Addr, now time.Time, r *Result) netip.Addr {
	sport, dport, tracked := p.FlowPorts()
	var orig conntrack.Tuple
	orig.Src, orig.Dst = p.Src, p.Dst
	orig.SrcPort, orig.DstPort, orig.Proto = sport, dport, uint8(p.Proto)
	if tracked {
		if dst, ok := e.flows.OutboundDst(&orig, now); ok {
			if tgt, ok := e.table.Established(dst, now); ok {
				setTarget(r, tgt)
				return dst
			}
			// The instance went away before its flows were forgotten: end them so this
			// packet resolves again.
			e.flows.Forget(dst)
		}
	}
	tgt, st := e.table.Lookup(p.Dst, now)
	switch st {
	case table.Unknown:
		r.Verdict = Resolve
		return netip.Addr{}
	case table.NoInstance:
		r.Verdict, r.Reason = Drop, ReasonNoInstance
		return netip.Addr{}
	}
	if !tracked {
		setTarget(r, &tgt)
		return tgt.NamespaceIP
	}
	rw := conntrack.Tuple{Src: self, Dst: tgt.NamespaceIP, SrcPort: sport, DstPort: dport, Proto: orig.Proto}
	// The answering node rewrites its reply like any outbound packet: from the chosen
	// instance's Instance IP to this sender's Namespace IP.
	reply := conntrack.Tuple{Src: tgt.InstanceIP, Dst: p.Src, SrcPort: dport, DstPort: sport, Proto: orig.Proto}
	got, err := e.flows.Add(orig, rw, reply, now)
	if err != nil {
		r.Verdict, r.Reason = Drop, ReasonFlowRefused
		return netip.Addr{}
	}
	if got.Dst != tgt.NamespaceIP { // another goroutine recorded the flow first
		t, ok := e.table.ByNamespace(got.Dst)
		if !ok {
			r.Verdict, r.Reason = Drop, ReasonNoInstance
			return netip.Addr{}
		}
		setTarget(r, &t)
		return got.Dst
	}
	setTarget(r, &tgt)
	return tgt.NamespaceIP
}

// target returns where a packet for t goes (setTarget, for the ICMP error paths).
func target(t *table.Target) Result {
	var r Result
	setTarget(&r, t)
	return r
}

// setTarget makes r say where a packet for t goes.
func setTarget(r *Result, t *table.Target) {
	if t.Local {
		r.Verdict = Deliver
		return
	}
	r.Verdict, r.Endpoint = Tunnel, t.Endpoint
}

// Inbound handles a packet for a local instance that an outbound packet of this node
// became (its instance runs here); packets from the tunnel go through FromTunnel. A reply
// to a flow this node started gets back the source its sender dialled (the Service IP);
// anything else passes unchanged.
func (e *Engine) Inbound(p *packet.Parsed, now time.Time) Result {
	if !e.table.IsLocalNamespace(p.Dst) {
		return drop(ReasonNotLocal)
	}
	return e.inbound(p, now)
}

// FromTunnel handles a packet that came through the tunnel from host from (the UDP
// sender's address, unmapped): Inbound, once the packet's source is known to be the
// Instance IP of a running instance on that host.
//
// Every node sends with the sender's Instance IP as source (Outbound; the reference node
// too: CONTRACT.md, "Rewrite outbound"; a gateway's flows take its own instance's), so
// anything else is forged: a source outside the Service and Instance ranges, or a
// Service IP, is dropped as Spoofed at once. An unknown Instance IP is resolved like an
// unknown destination (Resolve). One the table places on another host, or on an instance
// that is not running, asks for a Refresh: the instance may just have moved (or
// started) and the push not yet arrived.
//
// Only the host address is compared, not the port: the reference node sends from an
// ephemeral port (CONTRACT.md, "Tunnel"). The check costs one table read (Origin) per
// packet; it does not allocate.
func (e *Engine) FromTunnel(p *packet.Parsed, from netip.Addr, now time.Time) Result {
	if !e.table.IsLocalNamespace(p.Dst) {
		return drop(ReasonNotLocal)
	}
	if r, ok := e.checkSource(p.Src, from, now); !ok {
		return r
	}
	return e.inbound(p, now)
}

// checkSource checks a tunnelled packet's source src against the host it came from; when
// it does not pass, the Result says what to do.
func (e *Engine) checkSource(src, from netip.Addr, now time.Time) (Result, bool) {
	if !e.isService(src) {
		return drop(ReasonSpoofed), false
	}
	at, st := e.table.Origin(src, now)
	switch {
	case st == table.Unknown:
		return Result{Verdict: Resolve}, false
	case st == table.NotInstance:
		return drop(ReasonSpoofed), false
	case st == table.NoInstance:
		return Result{Verdict: Refresh, Reason: ReasonNoInstance}, false
	case at.Addr() != from:
		return Result{Verdict: Refresh, Reason: ReasonSpoofed}, false
	}
	return Result{}, true
}

// inbound is Inbound once the destination is known to be local.
func (e *Engine) inbound(p *packet.Parsed, now time.Time) Result {
	deliver := Result{Verdict: Deliver}
	if p.IsNonFirstFragment() {
		if f, ok := e.inFrags.get(fragKeyOf(p), now); ok && p.SetSrc(f.src) != nil {
			return drop(ReasonRewrite)
		}
		// For the gateway, its own fragment memory decides.
		return e.toGateway(p, true, now)
	}
	sport, dport, ok := p.FlowPorts()
	if !ok {
		if p.IsICMPError() {
			return e.inboundError(p, now)
		}
		return e.toGateway(p, false, now)
	}
	var reply conntrack.Tuple // field by field: see choose
	reply.Src, reply.Dst = p.Src, p.Dst
	reply.SrcPort, reply.DstPort, reply.Proto = sport, dport, uint8(p.Proto)
	src, ok := e.flows.ReplySrc(&reply, now)
	if !ok || src == p.Src {
		return e.toGateway(p, ok, now)
	}
	if p.IsFragment() {
		key := fragKeyOf(p) // as for outbound fragments: before the rewrite
		if p.SetSrc(src) != nil {
			return drop(ReasonRewrite)
		}
		e.inFrags.put(key, fragment{src: src, result: deliver}, now)
		return e.toGateway(p, true, now)
	}
	if p.SetSrc(src) != nil {
		return drop(ReasonRewrite)
	}
	return e.toGateway(p, true, now)
}

// toGateway finishes an inbound packet: one for the gateway's own address must answer a
// flow it opened (replied) and goes on to its client (Gateway.reverse); any other is
// delivered to the local instance it is for.
func (e *Engine) toGateway(p *packet.Parsed, replied bool, now time.Time) Result {
	if e.gateway == nil || !e.gateway.isSelf(p.Dst) {
		return Result{Verdict: Deliver}
	}
	if !replied {
		return drop(ReasonNoGatewayFlow)
	}
	var r Reason
	if p.IsICMPError() {
		r = e.gateway.reverseError(p, now)
	} else {
		r = e.gateway.reverse(p, now)
	}
	if r != ReasonNone {
		return drop(r)
	}
	return Result{Verdict: Deliver}
}

// ICMP errors: an error (unreachable, packet too big, time exceeded, parameter problem)
// carries the start of the packet it is about, and the sender's kernel matches it to a
// socket by that embedded packet. So the engine rewrites the embedded packet along with
// the error, as Linux NAT does for conntrack's "related" errors: the embedded packet went
// the other way, so it takes the error's translation reversed.
//
// Take A1 (namespace IP NS_A, Instance IP InstA) sending from port p to Svc:q, a Service
// IP; the flow is orig NS_A:p > Svc:q, rewritten InstA:p > NS_B:q, reply InstB:q > NS_A:p.
// Instance B's port unreachable about the datagram as it got it, NS_B > InstA embedding
// InstA:p > NS_B:q, leaves B's node like any packet to an Instance IP, as InstB > NS_A,
// embedding NS_A:p > InstB:q: the packet A1 would have sent had it dialled InstB (so
// even a node that passes errors unchanged, as the reference does, gets that case
// right). At A's node the embedded packet reversed is the flow's reply tuple; A1 gets
// Svc > NS_A embedding NS_A:p > Svc:q, the start of what it sent. A node that rewrites
// only the error (the reference's) sends the embedded packet as it went on the wire,
// InstA:p > NS_B:q; A's node recognises that too (replyOfRewritten).
//
// An error about a packet without ports or echo id passes unchanged, like any untracked
// packet: there is nothing to match it by. One about a flow that is not there is dropped
// and counted (ReasonICMPErrorNoFlow): it cannot be given what the sender sent, and
// passing it would let an instance aim errors at flows it has no part in.
//
// The flow lookup by reply tuple (ReplyFlow) marks the flow answered, which an error is
// not; that only lets a flow whose first packet drew an error keep its room for the
// protocol's idle timeout rather than UnrepliedTimeout (the same 30 s for UDP), not
// worth a lookup of its own in the shared connection tracker.

// outboundError translates an ICMP error a local instance sends about a packet it got.
// If that packet was a reply of one of the instance's own flows, the flow says where the
// error goes; otherwise it came from a remote sender's Instance IP, and the error goes
// back there like any packet to that Instance IP.
func (e *Engine) outboundError(p *packet.Parsed, self netip.Addr, now time.Time) Result {
	in, err := p.Embedded()
	if err != nil {
		return drop(ReasonMalformed)
	}
	if sport, dport, ok := in.FlowPorts(); ok {
		// The packet was a reply of a flow of this instance's (Svc:q > NS:p, as Inbound
		// restored it): reversed, it is the flow's orig.
		orig := conntrack.Tuple{Src: in.Dst(), Dst: in.Src(), SrcPort: dport, DstPort: sport, Proto: uint8(in.Proto())}
		if rw, ok := e.flows.Outbound(orig, now); ok {
			tgt, ok := e.table.ByNamespace(rw.Dst)
			if !ok {
				return drop(ReasonNoInstance)
			}
			return rewriteError(p, &in, rw.Src, rw.Dst, target(&tgt))
		}
	}
	// Errors answer the packet's source, and an instance only gets packets for itself.
	if in.Src() != p.Dst || in.Dst() != p.Src {
		return drop(ReasonICMPErrorNoFlow)
	}
	tgt, st := e.table.Lookup(p.Dst, now)
	switch st {
	case table.Unknown:
		return Result{Verdict: Resolve}
	case table.NoInstance:
		return drop(ReasonNoInstance)
	}
	if tgt.InstanceIP != p.Dst {
		// A Service IP that no flow of this instance explains: no telling which
		// instance sent the packet.
		return drop(ReasonICMPErrorNoFlow)
	}
	return rewriteError(p, &in, self, tgt.NamespaceIP, target(&tgt))
}

// rewriteError gives an ICMP error the addresses src > dst, and the packet it embeds,
// which went the other way, dst > src.
func rewriteError(p *packet.Parsed, in *packet.Embedded, src, dst netip.Addr, r Result) Result {
	if in.SetAddrs(dst, src) != nil || p.SetAddrs(src, dst) != nil {
		return drop(ReasonRewrite)
	}
	return r
}

// inboundError restores an ICMP error about a packet a local instance sent: the embedded
// packet becomes that packet as the instance sent it, and the error comes from the
// address the instance dialled (Linux does not care where an error comes from, but a
// person reading a trace does).
func (e *Engine) inboundError(p *packet.Parsed, now time.Time) Result {
	in, err := p.Embedded()
	if err != nil {
		return drop(ReasonMalformed)
	}
	sport, dport, ok := in.FlowPorts()
	if !ok {
		return e.toGateway(p, false, now)
	}
	reply := conntrack.Tuple{Src: in.Dst(), Dst: in.Src(), SrcPort: dport, DstPort: sport, Proto: uint8(in.Proto())}
	restored, _, ok := e.flows.ReplyFlow(reply, now)
	if !ok {
		restored, ok = e.replyOfRewritten(p.Dst, &in, sport, dport, now)
	}
	// The flow must be the receiver's own, or one instance could learn of another's.
	if !ok || restored.Dst != p.Dst {
		return drop(ReasonICMPErrorNoFlow)
	}
	if in.SetAddrs(restored.Dst, restored.Src) != nil || p.SetSrc(restored.Src) != nil {
		return drop(ReasonRewrite)
	}
	return e.toGateway(p, true, now)
}

// replyOfRewritten finds the flow of an error from a node that rewrote only the error
// (the reference's): its embedded packet is as it went on the wire, InstA:p > NS_B:q,
// the flow's rewritten tuple, which is not a key. The reply tuple is made from it
// (InstB:q > NS_A:p) and the flow found must have rewritten to exactly that packet.
func (e *Engine) replyOfRewritten(nsIP netip.Addr, in *packet.Embedded, sport, dport uint16, now time.Time) (conntrack.Tuple, bool) {
	self, ok := e.table.Sender(nsIP)
	if !ok || in.Src() != self {
		return conntrack.Tuple{}, false
	}
	tgt, ok := e.table.ByNamespace(in.Dst())
	if !ok {
		return conntrack.Tuple{}, false
	}
	sent := conntrack.Tuple{Src: self, Dst: in.Dst(), SrcPort: sport, DstPort: dport, Proto: uint8(in.Proto())}
	reply := conntrack.Tuple{Src: tgt.InstanceIP, Dst: nsIP, SrcPort: dport, DstPort: sport, Proto: sent.Proto}
	restored, rw, ok := e.flows.ReplyFlow(reply, now)
	return restored, ok && rw == sent
}

// Sweep ends idle flows and fragment records; the node calls it every few seconds.
func (e *Engine) Sweep(now time.Time) {
	e.flows.Sweep(now)
	e.outFrags.sweep(now)
	e.inFrags.sweep(now)
	if e.gateway != nil {
		e.gateway.Sweep(now)
	}
}

// Flows is the connection tracking table (for metrics and Forget).
func (e *Engine) Flows() *conntrack.Table { return e.flows }
