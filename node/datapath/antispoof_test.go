package datapath

import (
	"testing"
	"time"

	"github.com/semnet/semnet/node/packet/packettest"
	"github.com/semnet/semnet/proto/mqttapi"
)

// The tunnel's source check (FromTunnel), at node B of the scene (W0 local, A1 on node
// A at a1Host, W1 on w1Host).

// db is a job whose only instance has failed (on host 10.99.0.14).
const dbInst = "10.30.0.20"

func dbResult(status string, rev uint64) *mqttapi.TableQueryResult {
	return &mqttapi.TableQueryResult{AppName: "db.test.db.dp", Revision: rev, InstanceList: []mqttapi.TableInstance{{
		InstanceNumber: 0, InstanceIP: ip(dbInst), NamespaceIP: ip("10.18.0.194"), HostIP: ip("10.99.0.14"), HostPort: 50103,
		Status: status, ServiceIP: svcIPs("10.30.0.21", "fdff:2000::21", "10.30.0.22", dbInst, "fdff::20"),
	}}}
}

func TestFromTunnel(t *testing.T) {
	e := newNodeB(t, ip(w0NS))
	if _, err := e.table.Apply(dbResult("failed", 1), t0); err != nil {
		t.Fatal(err)
	}
	udp6 := func(src, dst string) []byte {
		return packettest.IP6(src, dst, packettest.UDP, packettest.UDPDatagram(5000, 53, packettest.Payload(20)))
	}
	for _, c := range []struct {
		name string
		pkt  []byte
		from string
		want Result
	}{
		{"A1 from its host", tcp4(a1Inst, w0NS, 40000, 80), a1Host, Result{Verdict: Deliver}},
		{"A1 over IPv6 from its host", udp6(a1Inst6, w0NS6), a1Host, Result{Verdict: Deliver}},
		{"A1's Instance IP from an unknown host", tcp4(a1Inst, w0NS, 40000, 80), "192.0.2.66", Result{Verdict: Refresh, Reason: ReasonSpoofed}},
		{"W1's Instance IP from A1's host", tcp4(w1Inst, w0NS, 40000, 80), a1Host, Result{Verdict: Refresh, Reason: ReasonSpoofed}},
		{"A1's Instance IP v6 from W1's host", udp6(a1Inst6, w0NS6), w1Host, Result{Verdict: Refresh, Reason: ReasonSpoofed}},
		{"an Instance IP not in the table", tcp4("10.30.7.7", w0NS, 40000, 80), "10.99.0.15", Result{Verdict: Resolve}},
		{"a failed instance's Instance IP", tcp4(dbInst, w0NS, 40000, 80), "10.99.0.14", Result{Verdict: Refresh, Reason: ReasonNoInstance}},
		{"a namespace IP", tcp4(a1NS, w0NS, 40000, 80), a1Host, drop(ReasonSpoofed)},
		{"an address outside the overlay", tcp4("192.168.1.7", w0NS, 40000, 80), a1Host, drop(ReasonSpoofed)},
		{"an RR Service IP", tcp4(rrIP, w0NS, 40000, 80), w0Host, drop(ReasonSpoofed)},
		{"a Closest Service IP v6", udp6("fdff:1000::11", w0NS6), w0Host, drop(ReasonSpoofed)},
		// Not for this node: dropped before anything about its source is looked up.
		{"for another node's instance", tcp4("192.168.1.7", "10.18.0.70", 40000, 80), a1Host, drop(ReasonNotLocal)},
		{"an echo from A1's host", packettest.IP4(a1Inst, w0NS, packettest.ICMPv4, packettest.ICMPEcho(8, 0x77, 1, nil)), a1Host, Result{Verdict: Deliver}},
		{"an echo from another host", packettest.IP4(a1Inst, w0NS, packettest.ICMPv4, packettest.ICMPEcho(8, 0x77, 1, nil)), w0Host, Result{Verdict: Refresh, Reason: ReasonSpoofed}},
	} {
		p := decode(t, c.pkt)
		if got := e.FromTunnel(p, ip(c.from), t0); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	// The reply half: node A checks W0's reply and restores the Service IP A1 dialled.
	a := newTestEngine(t)
	if r := a.Outbound(decode(t, tcp4(a1NS, closestIP, 40000, 80)), t0); r.Verdict != Tunnel {
		t.Fatalf("Outbound: %+v", r)
	}
	forged := decode(t, tcp4(w0Inst, a1NS, 80, 40000))
	if r := a.FromTunnel(forged, ip(w1Host), t0); r != (Result{Verdict: Refresh, Reason: ReasonSpoofed}) {
		t.Errorf("reply from the wrong host: %+v", r)
	}
	reply := decode(t, tcp4(w0Inst, a1NS, 80, 40000))
	if r := a.FromTunnel(reply, ip(w0Host), t0); r.Verdict != Deliver {
		t.Fatalf("reply: %+v", r)
	}
	check(t, reply, closestIP, a1NS)
}

// TestFromTunnelAfterAnswer: what the datapath does with Resolve and Refresh: the
// packet waits for the cluster's answer and is checked again.
func TestFromTunnelAfterAnswer(t *testing.T) {
	e := newNodeB(t, ip(w0NS))
	// An instance of a job the node never heard of: resolved, then delivered.
	const cacheInst, cacheHost = "10.30.0.30", "10.99.0.16"
	cache := &mqttapi.TableQueryResult{AppName: "cache.test.cache.dp", QueryKey: cacheInst, Revision: 1, InstanceList: []mqttapi.TableInstance{{
		InstanceNumber: 0, InstanceIP: ip(cacheInst), NamespaceIP: ip("10.18.1.2"), HostIP: ip(cacheHost), HostPort: 50103,
		Status: "running", ServiceIP: svcIPs("10.30.0.31", "fdff:2000::31", "10.30.0.32", cacheInst, "fdff::30"),
	}}}
	pkt := tcp4(cacheInst, w0NS, 40000, 80)
	if r := e.FromTunnel(decode(t, bytesOf(pkt)), ip(cacheHost), t0); r.Verdict != Resolve {
		t.Fatalf("unknown source: %+v, want Resolve", r)
	}
	if _, err := e.table.Apply(cache, t0); err != nil {
		t.Fatal(err)
	}
	if r := e.FromTunnel(decode(t, bytesOf(pkt)), ip(cacheHost), t0); r.Verdict != Deliver {
		t.Errorf("after the answer: %+v, want Deliver", r)
	}
	// The same job's instance on another host still does not pass.
	if r := e.FromTunnel(decode(t, bytesOf(pkt)), ip(w1Host), t0); r.Reason != ReasonSpoofed {
		t.Errorf("from another host after the answer: %+v, want Spoofed", r)
	}

	// A1 moves to a node at 10.99.0.17 and sends from there before the push arrives:
	// the table's answer is stale, the fresh one lets it pass, and its old host no longer.
	const newHost = "10.99.0.17"
	moved := decode(t, tcp4(a1Inst, w0NS, 40001, 80))
	if r := e.FromTunnel(moved, ip(newHost), t0); r != (Result{Verdict: Refresh, Reason: ReasonSpoofed}) {
		t.Fatalf("moved instance before the push: %+v", r)
	}
	if _, err := e.table.Apply(&mqttapi.TableQueryResult{AppName: "client.test.client.dp", Revision: 2, InstanceList: []mqttapi.TableInstance{{
		InstanceNumber: 0, InstanceIP: ip(a1Inst), InstanceIPv6: ip(a1Inst6), NamespaceIP: ip("10.18.2.2"), NamespaceIPv6: ip("fc00::2:2"),
		HostIP: ip(newHost), HostPort: 50103, Status: "running",
		ServiceIP: svcIPs("10.30.0.1", "fdff:2000::1", "10.30.0.3", a1Inst, a1Inst6),
	}}}, t0); err != nil {
		t.Fatal(err)
	}
	if r := e.FromTunnel(moved, ip(newHost), t0); r.Verdict != Deliver {
		t.Errorf("moved instance after the push: %+v", r)
	}
	if r := e.FromTunnel(decode(t, tcp4(a1Inst, w0NS, 40002, 80)), ip(a1Host), t0); r.Reason != ReasonSpoofed {
		t.Errorf("the old host after the move: %+v, want Spoofed", r)
	}

	// A stopped instance: after the refresh it is still not running, and its packets
	// are dropped as NoInstance; running again, they pass.
	if _, err := e.table.Apply(dbResult("stopped", 1), t0); err != nil {
		t.Fatal(err)
	}
	db := tcp4(dbInst, w0NS, 40000, 5432)
	if r := e.FromTunnel(decode(t, bytesOf(db)), ip("10.99.0.14"), t0); r != (Result{Verdict: Refresh, Reason: ReasonNoInstance}) {
		t.Errorf("stopped instance: %+v", r)
	}
	if _, err := e.table.Apply(dbResult("running", 2), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if r := e.FromTunnel(decode(t, bytesOf(db)), ip("10.99.0.14"), t0); r.Verdict != Deliver {
		t.Errorf("running again: %+v", r)
	}
}

// bytesOf returns a copy of b: decode works in place, and the engine rewrites.
func bytesOf(b []byte) []byte { return append([]byte(nil), b...) }
