package integration

import (
	"net/http"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/shared/netnstest"
)

// restartNode stops node i with sig, waits for it to exit, and starts it again in the
// same namespace with the same command line.
func (p *dpPlatform) restartNode(t *testing.T, i int, sig syscall.Signal, whileDown func()) {
	t.Helper()
	n := p.nodes[i]
	if err := n.proc.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-n.exited:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s did not exit on %v", n.name, sig)
	}
	whileDown()
	n.proc, n.exited = startWatched(t, n.ns, p.bin, n.name, n.args...)
	waitReady(t, n.api, "http://node/readyz", n.name)
}

// TestNodeRestart: a node agent that stops, by a crash or to restart, leaves its
// instances attached, and the next agent in the same namespace takes them over: same
// worker subnet, same Namespace IPs, reported running again, reachable through the
// Service IPs; a new instance gets other addresses, and a taken-over one can be
// undeployed. Node 2's cluster reports instances of a vanished node failed after 1 s,
// so the crash shows at root before the restart mends it.
func TestNodeRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("datapath suite: -short")
	}
	p := startPlatform(t, semnetBinary(t), platformSpec{nodes: 2, clusterArgs: []string{"--node-grace", "1s"}})
	ctx := t.Context()
	_, clients := p.deploy(t, "client", 0)
	web, servers := p.deploy(t, "web", 1)
	serve(t, servers[0], "web0")
	a := clients[0]
	eventually(t, a, web.RRIP, oneOf("web0"))
	before, err := p.rc.Instance(ctx, web.JobName, 0)
	if err != nil {
		t.Fatal(err)
	}
	status := func(want string) func() bool {
		return func() bool {
			in, err := p.rc.Instance(ctx, web.JobName, 0)
			return err == nil && in.Status == want
		}
	}

	p.restartNode(t, 1, syscall.SIGKILL, func() {
		waitUntil(t, 30*time.Second, "root to hear web0 failed", status("failed"))
	})
	waitUntil(t, 30*time.Second, "root to hear web0 runs again", status("running"))
	after, err := p.rc.Instance(ctx, web.JobName, 0)
	if err != nil {
		t.Fatal(err)
	}
	if after.NamespaceIP != before.NamespaceIP || after.NamespaceIPv6 != before.NamespaceIPv6 || after.HostIP != before.HostIP {
		t.Errorf("web0 after the restart: namespace IPs %s %s on %s, want %s %s on %s (unchanged)",
			after.NamespaceIP, after.NamespaceIPv6, after.HostIP, before.NamespaceIP, before.NamespaceIPv6, before.HostIP)
	}
	eventually(t, a, web.RRIP, oneOf("web0"))
	eventually(t, a, web.ClosestIPv6, oneOf("web0"))

	// A new instance on the restarted node: other addresses, in the same worker subnet.
	if _, err := p.rc.CreateInstance(ctx, web.JobName, api.InstanceRequest{Number: new(1), ClusterID: p.nodes[1].cluster}); err != nil {
		t.Fatal(err)
	}
	ns1 := netnstest.New(t, "web1")
	var resp nodeapi.DeployResponse
	p.nodes[1].call(t, nodeapi.PathDeploy, nodeapi.DeployRequest{NetNS: ns1.Path, ServiceName: web.JobName, InstanceNumber: 1}, &resp)
	ip1 := netip.MustParseAddr(resp.NsAddress)
	if ip1 == before.NamespaceIP || !netip.PrefixFrom(before.NamespaceIP, 26).Masked().Contains(ip1) {
		t.Errorf("web1 got %s; web0 holds %s: want another address in web0's /26", ip1, before.NamespaceIP)
	}
	serve(t, ns1, "web1")
	eventually(t, a, web.RRIP, oneOf("web1"))

	// A graceful restart: the same, without the failure in between.
	p.restartNode(t, 1, syscall.SIGTERM, func() {})
	for _, name := range []string{"web0", "web1"} {
		eventually(t, a, web.RRIP, oneOf(name))
	}

	// The taken-over instance undeploys like any other: its link goes.
	if code := p.nodes[1].post(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: web.JobName, InstanceNumber: new(0)}); code != http.StatusOK {
		t.Fatalf("undeploy web0 after the restarts: %d", code)
	}
	if _, err := servers[0].Handle().LinkByName("eth0"); err == nil {
		t.Error("web0's eth0 outlived its undeploy")
	}
	waitUntil(t, 30*time.Second, "RR to lead only to web1", func() bool {
		for range 10 {
			if got, err := get(ctx, a, web.RRIP, "/"); err != nil || got != "web1" {
				return false
			}
		}
		return true
	})
}
