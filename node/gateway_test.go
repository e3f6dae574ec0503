package node

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/semnet/semnet/node/packet"
	"github.com/semnet/semnet/proto/mqttapi"
)

// TestExposures feeds the gateway a configuration with every kind of exposure the
// datapath cannot apply between good ones: only the good ones reach the datapath and
// the firewall, and no port is truncated into another (70000 would be 4464 as uint16).
func TestExposures(t *testing.T) {
	v4, v6 := netip.MustParseAddr("10.30.0.7"), netip.MustParseAddr("fdff::7")
	good := func(id, proto string, public int) mqttapi.GatewayExposure {
		return mqttapi.GatewayExposure{ID: id, Protocol: proto, PublicPort: public, ServicePort: 80, TargetIP: v4, TargetIPv6: v6}
	}
	bad := func(id string, edit func(*mqttapi.GatewayExposure)) mqttapi.GatewayExposure {
		e := good(id, "tcp", 9000)
		edit(&e)
		return e
	}
	list := []mqttapi.GatewayExposure{
		good("web", "tcp", 8080),
		bad("public too big", func(e *mqttapi.GatewayExposure) { e.PublicPort = 70000 }),
		bad("public zero", func(e *mqttapi.GatewayExposure) { e.PublicPort = 0 }),
		bad("service negative", func(e *mqttapi.GatewayExposure) { e.ServicePort = -1 }),
		bad("service too big", func(e *mqttapi.GatewayExposure) { e.ServicePort = 65536 }),
		bad("no target", func(e *mqttapi.GatewayExposure) { e.TargetIP, e.TargetIPv6 = netip.Addr{}, netip.Addr{} }),
		bad("v6 as v4", func(e *mqttapi.GatewayExposure) { e.TargetIP = v6 }),
		bad("mapped v4 as v6", func(e *mqttapi.GatewayExposure) { e.TargetIPv6 = netip.AddrFrom16(v4.As16()) }),
		bad("sctp", func(e *mqttapi.GatewayExposure) { e.Protocol = "sctp" }),
		good("dns", "udp", 8080), // the same port in the other protocol is another exposure
		good("web again", "tcp", 8080),
		good("v6 only", "udp", 5353),
	}
	list[len(list)-1].TargetIP = netip.Addr{}
	n := &Node{log: slog.New(slog.DiscardHandler)}
	ex, tcp, udp := n.exposures(list)
	if !slices.Equal(tcp, []uint16{8080}) || !slices.Equal(udp, []uint16{8080, 5353}) {
		t.Errorf("ports opened: tcp %v udp %v, want tcp [8080] udp [8080 5353]", tcp, udp)
	}
	if len(ex) != 3 || ex[0].Proto != packet.TCP || ex[1].Proto != packet.UDP || ex[2].Target6 != v6 || ex[2].Target4.IsValid() {
		t.Errorf("exposures applied: %+v, want web (tcp), dns (udp), v6 only", ex)
	}
}
