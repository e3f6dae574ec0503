package integration

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/node/packet/packettest"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/netnstest"
)

// tunnelSpoofing sends hand-made tunnel frames to the node running instance 0 of web
// (whose namespace is webNS): one from the host of client's instance 0 with that
// instance's Instance IP as source, which is delivered, and the same forged from the host
// of another node and from a host that is no node, which are dropped and counted as
// spoofed. The frames are sent from ephemeral ports, as the reference node sends.
func tunnelSpoofing(t *testing.T, p *dpPlatform, client, web api.Service, webNS *netnstest.NS, clientHost, otherHost *netnstest.NS) {
	a, w := instance(t, p, client, 0), instance(t, p, web, 0)
	var target *dpNode
	for i, n := range p.nodes {
		if nodeIP(i+1) == w.HostIP {
			target = n
		}
	}
	if target == nil {
		t.Fatalf("no node has host IP %v", w.HostIP)
	}
	tunnel := netip.AddrPortFrom(w.HostIP, uint16(w.HostPort))
	pc, err := webNS.ListenPacket("udp", "0.0.0.0:9999")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	frame := func(payload string) []byte {
		return packettest.IP4(a.InstanceIP.String(), w.NamespaceIP.String(), packettest.UDP, packettest.UDPDatagram(40000, 9999, []byte(payload)))
	}
	send := func(from *netnstest.NS, b []byte) {
		t.Helper()
		c, err := from.Dial("udp", tunnel.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 2048)

	// The genuine frame (its first may wait for the node to learn client's instance).
	delivered := ""
	for range 20 {
		send(clientHost, frame("genuine"))
		pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, from, err := pc.ReadFrom(buf)
		if err == nil {
			delivered = string(buf[:n])
			if got := from.(*net.UDPAddr).AddrPort().Addr().Unmap(); got != a.InstanceIP {
				t.Errorf("the genuine frame arrived from %v, want %v", got, a.InstanceIP)
			}
			break
		}
	}
	if delivered != "genuine" {
		t.Fatalf("the genuine frame from %s was not delivered (%q)", clientHost, delivered)
	}

	// Nothing genuine was taken for a forgery, on any node, in all the traffic so far.
	for i, n := range p.nodes {
		if got := spoofedDrops(t, n); got != 0 {
			t.Errorf("node %d dropped %d genuine packets as spoofed", i+1, got)
		}
	}
	spoofed := func() int { return spoofedDrops(t, target) }
	before := spoofed()
	for _, from := range []*netnstest.NS{otherHost, p.ctrl} {
		for range 3 {
			send(from, frame("forged"))
		}
	}
	for deadline := time.Now().Add(15 * time.Second); spoofed() < before+6; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("spoofed drops went from %d to %d, want %d\n%s", before, spoofed(), before+6, nodeMetrics(t, target, "semnet_node_drops_total"))
		}
	}
	// Every forged frame is accounted for; none may have reached the instance.
	pc.SetReadDeadline(time.Now().Add(time.Second))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			break
		}
		if got := string(buf[:n]); got == "forged" {
			t.Errorf("a forged frame was delivered")
		}
	}
}

// spoofedDrops reads n's count of packets dropped as spoofed.
func spoofedDrops(t *testing.T, n *dpNode) int {
	t.Helper()
	line := strings.TrimSpace(nodeMetrics(t, n, `semnet_node_drops_total{reason="spoofed"}`))
	v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
	if err != nil {
		t.Fatalf("spoofed drops: %q: %v", line, err)
	}
	return int(v)
}
