package node

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/semnet/semnet/node/datapath"
	"github.com/semnet/semnet/node/firewall"
	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/addrplan"
)

// GatewayConfig makes a node a gateway (semnet node --gateway): clients outside the
// platform reach the exposed services through its public addresses (FLOWS.md).
type GatewayConfig struct {
	// PublicV4 and PublicV6 are the addresses clients connect to, configured on this
	// node's own interfaces by the operator; at least one.
	PublicV4, PublicV6 netip.Addr
	// InternalV4 and InternalV6 are where the firewall sends public traffic into the
	// datapath (defaults: the address plan's 10.30.255.253 and its IPv6 counterpart).
	InternalV4, InternalV6 netip.Addr
}

func (g *GatewayConfig) defaults() error {
	if !g.PublicV4.IsValid() && !g.PublicV6.IsValid() {
		return fmt.Errorf("node: a gateway needs a public address (--public-ip, IPv4, IPv6 or both)")
	}
	if g.PublicV4.IsValid() && !g.PublicV4.Is4() || g.PublicV6.IsValid() && !g.PublicV6.Is6() {
		return fmt.Errorf("node: public addresses %v, %v: want one IPv4 and one IPv6 at most", g.PublicV4, g.PublicV6)
	}
	plan := addrplan.Default()
	if !g.InternalV4.IsValid() {
		g.InternalV4 = plan.GatewayV4
	}
	if !g.InternalV6.IsValid() {
		g.InternalV6 = plan.GatewayV6
	}
	return nil
}

func newGatewayState(cfg GatewayConfig) *gatewayState {
	return &gatewayState{cfg: cfg, instance: -1, register: make(chan time.Duration, 1)}
}

// gatewayState is a gateway node's part of the Node.
type gatewayState struct {
	cfg      GatewayConfig
	self     datapath.GatewayConfig // its Self addresses are the gateway's Namespace IPs
	nat      *datapath.Gateway
	register chan time.Duration // to gatewayLoop: register after this delay
	// ready is set once self and nat are: the link delivers configurations on its own
	// goroutine, and may do so as soon as it connects.
	ready     atomic.Bool
	instance  int // its instance number of api.GatewayJobName; -1 until registered
	exposures int
}

// firewallConfig is the node's nftables configuration: masquerade for its instances
// on every node, and the public side on a gateway.
func (n *Node) firewallConfig(subnet4, subnet6 netip.Prefix) firewall.Config {
	fc := firewall.Config{InstancesV4: subnet4, InstancesV6: subnet6}
	if g := n.cfg.Gateway; g != nil {
		fc.PublicV4, fc.PublicV6 = g.PublicV4, g.PublicV6
		if g.PublicV4.IsValid() {
			fc.InternalV4 = g.InternalV4
		}
		if g.PublicV6.IsValid() {
			fc.InternalV6 = g.InternalV6
		}
	}
	return fc
}

// newGateway takes the gateway's own Namespace IP pair (the first of the subnet) and
// makes its NAPT.
func (n *Node) newGateway() (*datapath.Gateway, error) {
	ips, err := n.addrs.Allocate()
	if err != nil {
		return nil, fmt.Errorf("node: the gateway's own namespace IPs: %w", err)
	}
	g := n.cfg.Gateway
	dc := datapath.GatewayConfig{Self4: ips.V4, Self6: ips.V6}
	if g.PublicV4.IsValid() {
		dc.Internal4 = g.InternalV4
	} else {
		dc.Self4 = netip.Addr{}
	}
	if g.PublicV6.IsValid() {
		dc.Internal6 = g.InternalV6
	} else {
		dc.Self6 = netip.Addr{}
	}
	nat, err := datapath.NewGateway(dc)
	if err != nil {
		return nil, err
	}
	n.gw.self, n.gw.nat = datapath.GatewayConfig{Self4: ips.V4, Self6: ips.V6}, nat
	n.gw.ready.Store(true)
	return nat, nil
}

// registerGateway asks gatewayLoop to announce the gateway to the cluster after delay;
// the cluster answers on gateway/config (onGatewayConfig). It is asked at start, after
// every reconnection, and again after a failed registration.
func (n *Node) registerGateway(delay time.Duration) {
	if n.gw == nil {
		return
	}
	select {
	case n.gw.register <- delay:
	default: // a registration is already due
	}
}

// gatewayRetry is how long a gateway whose registration failed waits to try again.
const gatewayRetry = 5 * time.Second

func (n *Node) gatewayLoop() {
	r := mqttapi.GatewayRegister{PublicIP: n.gw.cfg.PublicV4, PublicIPv6: n.gw.cfg.PublicV6,
		NamespaceIP: n.gw.self.Self4, NamespaceIPv6: n.gw.self.Self6, HostIP: n.cfg.HostIP, HostPort: int(n.cfg.TunnelPort)}
	if n.cfg.Location != nil {
		r.Lat, r.Lon = &n.cfg.Location.Lat, &n.cfg.Location.Lon
	}
	for {
		var delay time.Duration
		select {
		case <-n.ctx.Done():
			return
		case delay = <-n.gw.register:
		}
		if delay > 0 {
			select {
			case <-n.ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		if err := n.link.RegisterGateway(n.ctx, r); err != nil {
			n.log.Warn("gateway registration not sent; retrying on reconnection", "err", err)
		}
	}
}

// onGatewayConfig applies the configuration the cluster sent (on the link's
// goroutine): the gateway's instance, so flows get its Instance IP as their source, and
// the exposures, in the NAPT first and then in the firewall, so that a port is never
// let in before the NAPT knows where it goes.
func (n *Node) onGatewayConfig(c mqttapi.GatewayConfig) {
	if n.gw == nil || !n.gw.ready.Load() || n.ctx.Err() != nil {
		return
	}
	if c.Error != "" || c.JobName == "" {
		n.log.Warn("gateway not configured; registering again", "err", c.Error, "in", gatewayRetry)
		n.registerGateway(gatewayRetry)
		return
	}
	ex, tcp, udp := n.exposures(c.Exposures)
	n.mu.Lock()
	prev := n.gw.instance
	n.gw.instance, n.gw.exposures = c.InstanceNumber, len(ex)
	n.mu.Unlock()
	if prev != c.InstanceNumber {
		if prev >= 0 {
			n.table.RemoveLocal(c.JobName, prev)
		}
		n.table.AddLocal(c.JobName, c.InstanceNumber, n.gw.self.Self4, n.gw.self.Self6)
	}
	n.follow(c.JobName)
	n.gw.nat.SetExposures(ex)
	if err := n.fw.SetPorts(tcp, udp); err != nil {
		n.log.Error("firewall: setting the exposed ports failed", "err", err)
	}
	n.log.Info("gateway configured", "instance", c.InstanceNumber, "instance_ip", c.InstanceIP, "instance_ip_v6", c.InstanceIPv6,
		"exposures", len(ex), "revision", c.Revision)
}

// exposures turns the cluster's exposures into the datapath's, with the public ports to
// open per protocol. An exposure the datapath could not apply (a port outside 1..65535,
// no target address or one of the wrong family, an unknown protocol, a public port taken
// by an earlier exposure of the same protocol) is left out and logged: the others still
// apply, and a truncated port must never open a port nobody exposed.
func (n *Node) exposures(list []mqttapi.GatewayExposure) (ex []datapath.Exposure, tcp, udp []uint16) {
	type portKey struct {
		proto packet.Proto
		port  uint16
	}
	taken := map[portKey]bool{}
	for _, e := range list {
		if err := checkExposure(e); err != nil {
			n.log.Warn("exposure ignored", "id", e.ID, "err", err)
			continue
		}
		x := datapath.Exposure{PublicPort: uint16(e.PublicPort), ServicePort: uint16(e.ServicePort), Target4: e.TargetIP, Target6: e.TargetIPv6}
		switch e.Protocol {
		case api.ProtocolTCP:
			x.Proto = packet.TCP
		case api.ProtocolUDP:
			x.Proto = packet.UDP
		}
		k := portKey{x.Proto, x.PublicPort}
		if taken[k] {
			n.log.Warn("exposure ignored: its public port is exposed already", "id", e.ID, "protocol", e.Protocol, "public_port", e.PublicPort)
			continue
		}
		taken[k] = true
		if x.Proto == packet.TCP {
			tcp = append(tcp, x.PublicPort)
		} else {
			udp = append(udp, x.PublicPort)
		}
		ex = append(ex, x)
	}
	return ex, tcp, udp
}

// checkExposure says why the datapath cannot apply e, if it cannot.
func checkExposure(e mqttapi.GatewayExposure) error {
	switch {
	case e.Protocol != api.ProtocolTCP && e.Protocol != api.ProtocolUDP:
		return fmt.Errorf("protocol %q is neither %q nor %q", e.Protocol, api.ProtocolTCP, api.ProtocolUDP)
	case e.PublicPort < 1 || e.PublicPort > 65535:
		return fmt.Errorf("public_port %d is outside 1..65535", e.PublicPort)
	case e.ServicePort < 1 || e.ServicePort > 65535:
		return fmt.Errorf("service_port %d is outside 1..65535", e.ServicePort)
	case !e.TargetIP.IsValid() && !e.TargetIPv6.IsValid():
		return errors.New("no target_ip nor target_ip_v6")
	case e.TargetIP.IsValid() && !e.TargetIP.Is4():
		return fmt.Errorf("target_ip %s is not IPv4", e.TargetIP)
	case e.TargetIPv6.IsValid() && (!e.TargetIPv6.Is6() || e.TargetIPv6.Is4In6()):
		return fmt.Errorf("target_ip_v6 %s is not IPv6", e.TargetIPv6)
	}
	return nil
}
