package integration

import (
	"context"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/netnstest"
)

// Node death, end to end: short heartbeats for a short test. The bound a caller of a
// Closest IP waits for the next nearest instance is 1.5 × keepalive (a node that stops
// answering; a killed one closes its connection at once) + the grace + the way down
// (root, change stream, push), and the sender's flows to the dead instance are dropped
// with it.
const (
	deathKeepAlive = 5 * time.Second // the broker's minimum
	deathGrace     = time.Second
	// deathBound is the bound above with room for the way down and a loaded machine.
	deathBound = deathKeepAlive*3/2 + deathGrace + 10*time.Second
)

// TestNodeDeathFailover: from node 1 in Munich, a Closest IP leads to the instance on
// node 4 (Munich too), then on node 2 (Berlin), then on node 3 (Paris). Node 4 hangs
// (SIGSTOP: its connection stays open, only the keepalive tells) and node 2 is killed
// (SIGKILL): each time, within the bound, Closest reaches the next nearest instance.
func TestNodeDeathFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("datapath suite: -short")
	}
	p := startPlatform(t, semnetBinary(t), platformSpec{
		nodes:       4,
		clusterArgs: []string{"--node-grace", deathGrace.String()},
		setup:       func(int, *netnstest.NS) []string { return []string{"--keepalive", deathKeepAlive.String()} },
	})
	_, clients := p.deploy(t, "client", 0)
	web, servers := p.deploy(t, "web", 1, 2, 3) // web0 Berlin, web1 Paris, web2 Munich
	for i, name := range []string{"web0", "web1", "web2"} {
		serve(t, servers[i], name)
	}
	a := clients[0]
	for _, ip := range []netip.Addr{web.ClosestIP, web.ClosestIPv6} {
		eventually(t, a, ip, func(s string) bool { return s == "web2" })
	}

	hung := p.nodes[3].proc.Process
	t.Cleanup(func() { hung.Kill() }) // a stopped process does not take SIGTERM
	if err := hung.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Logf("hung node (SIGSTOP, keepalive %v, grace %v): Closest reached the next nearest after %v",
		deathKeepAlive, deathGrace, failover(t, a, web.ClosestIP, "web0"))

	if err := p.nodes[1].proc.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed node (SIGKILL, grace %v): Closest reached the next nearest after %v",
		deathGrace, failover(t, a, web.ClosestIPv6, "web1"))
	for _, ip := range []netip.Addr{web.ClosestIP, web.ClosestIPv6} {
		if got, err := get(t.Context(), a, ip, "/"); err != nil || got != "web1" {
			t.Errorf("Closest %s after both deaths: %q, %v; want web1", ip, got, err)
		}
	}
	in, err := p.rc.Instance(t.Context(), web.JobName, 0)
	if err != nil || in.Status != "failed" {
		t.Errorf("web0 at root: %+v, %v; want failed", in, err)
	}
}

// failover asks ip from ns, each request on a fresh connection that gives up after half a
// second, until want answers; it fails the test past deathBound and returns how long it
// took.
func failover(t *testing.T, ns *netnstest.NS, ip netip.Addr, want string) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		got, err := get(ctx, ns, ip, "/")
		cancel()
		took := time.Since(start)
		if err == nil && got == want {
			return took.Round(100 * time.Millisecond)
		}
		if took > deathBound {
			t.Fatalf("Closest %s still answers %q (%v) %v after the death; want %s within %v", ip, got, err, took, want, deathBound)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
