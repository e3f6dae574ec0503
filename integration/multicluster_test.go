package integration

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/shared/netnstest"
)

// The multi-cluster suite runs two cluster services in different places: c1 in Munich
// with node 1 (Munich, also the gateway) and node 2 (Berlin), c2 in Paris with node 3
// (Paris). A client instance runs on node 1 and another on node 3, so every change must
// reach an interested node in each cluster.
func TestMultiCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-cluster suite: -short")
	}
	p := startGatewayPlatform(t, semnetBinary(t), platformSpec{
		clusters:  []clusterSpec{{id: "c1", lat: 48.14, lon: 11.58}, {id: "c2", lat: 48.86, lon: 2.35}},
		nodes:     3,
		clusterOf: func(i int) int { return i / 2 }, // nodes 1, 2 in c1; node 3 in c2
	})
	_, clients := p.deploy(t, "client", 0, 2)
	munich, paris := clients[0], clients[1]
	outside := p.clients[0]

	// web starts with one instance, web0, in Paris: only in cluster c2.
	web, servers := p.deploy(t, "web", 2)
	serve(t, servers[0], "web0")
	p.expose(t, web, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: 8080, ServicePort: 80})
	p.expose(t, web, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: 8081, ServicePort: 80, Policy: api.PolicyClosest})
	rr, closest := netip.AddrPortFrom(gwPublic, 8080), netip.AddrPortFrom(gwPublic, 8081)
	only := func(name string) func(string) bool { return func(s string) bool { return s == name } }

	t.Run("OtherCluster", func(t *testing.T) {
		// A node of c1 reaches a service running only in c2: c1 asks root for it.
		for _, ip := range []netip.Addr{web.RRIP, web.ClosestIPv6} {
			eventually(t, munich, ip, only("web0"))
		}
		eventually(t, paris, web.RRIP, only("web0"))
		interests, err := p.rc.Interests(t.Context(), "c1")
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(interests, web.ID) {
			t.Errorf("c1's interests at root: %v, want %s (%s)", interests, web.ID, web.JobName)
		}
		// The gateway (node 1, c1) exposes it too.
		eventuallyAt(t, outside, rr, only("web0"))
	})

	// Scaling up: web1 in Berlin (c1). Every interested node, in both clusters, learns it.
	servers = append(servers, p.addInstance(t, web, 1, 1))
	serve(t, servers[1], "web1")

	// On a failure (a node that never hears of a change), show what root and the nodes
	// held: the clusters' interests, web's instances, and each node's table and lookups.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, c := range []string{"c1", "c2"} {
			in, err := p.rc.Interests(context.Background(), c)
			t.Logf("interests of %s at root: %v %v (web is %s)", c, in, err, web.ID)
		}
		ins, err := p.rc.Instances(context.Background(), web.JobName)
		for _, in := range ins {
			t.Logf("web instance %d at root: %s on %s:%d in %s, revision %d", in.Number, in.Status, in.HostIP, in.HostPort, in.ClusterID, in.Revision)
		}
		if err != nil {
			t.Logf("web's instances at root: %v", err)
		}
		for i := range p.nodes {
			t.Logf("node %d:\n%s", i, nodeMetrics(t, p.nodes[i], "semnet_node_table", "semnet_node_pushes", "semnet_node_lookups", "semnet_node_drops"))
		}
		for _, c := range p.clusters {
			resp, err := p.inCtrl.Get("http://" + c.rest + "/metrics")
			if err != nil {
				t.Logf("cluster %s metrics: %v", c.name, err)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "semnet_cluster_") && !strings.Contains(l, "_bucket") {
					lines = append(lines, l)
				}
			}
			t.Logf("cluster %s:\n%s", c.name, strings.Join(lines, "\n"))
		}
	})
	t.Run("ScaleUp", func(t *testing.T) {
		for _, c := range []*nodeClient{{"munich", munich}, {"paris", paris}} {
			for _, ip := range []netip.Addr{web.RRIP, web.RRIPv6} {
				eventually(t, c.ns, ip, only("web1")) // the push arrived
				if seen := spread(t, c.ns, netip.AddrPortFrom(ip, 80)); seen["web0"] == 0 || seen["web1"] == 0 {
					t.Errorf("RR %s from %s spread %v, want both instances", ip, c.name, seen)
				}
			}
		}
		eventuallyAt(t, outside, rr, only("web1"))
	})
	t.Run("ClosestAcrossClusters", func(t *testing.T) {
		// From Munich, Berlin (504 km, c1) is nearer than Paris (685 km, c2); from
		// Paris, its own web0. Through the Munich gateway, Berlin.
		for _, ip := range []netip.Addr{web.ClosestIP, web.ClosestIPv6} {
			eventually(t, munich, ip, only("web1"))
			eventually(t, paris, ip, only("web0"))
		}
		eventuallyAt(t, outside, closest, only("web1"))
	})

	// Migration: web0 moves from Paris (c2) to Munich (c1), keeping its Instance IPs.
	zero := 0
	p.nodes[2].call(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: web.JobName, InstanceNumber: &zero}, nil)
	moved := p.attach(t, web, 0, 0)
	serve(t, moved, "web0")

	t.Run("Migrate", func(t *testing.T) {
		// Closest from Paris now picks Munich (685 km) over Berlin (878 km); from Munich,
		// the local web0.
		for _, ip := range []netip.Addr{web.ClosestIP, web.ClosestIPv6} {
			eventually(t, paris, ip, only("web0"))
			eventually(t, munich, ip, only("web0"))
		}
		in := instance(t, p.dpPlatform, web, 0)
		for _, c := range []*nodeClient{{"munich", munich}, {"paris", paris}} {
			for _, ip := range []netip.Addr{in.InstanceIP, in.InstanceIPv6} {
				eventually(t, c.ns, ip, only("web0"))
			}
		}
		if in.Status != "running" || in.HostIP != nodeIP(1) || in.ClusterID != "c1" {
			t.Errorf("root has web0 %s on %s in cluster %s, want running on %s in c1", in.Status, in.HostIP, in.ClusterID, nodeIP(1))
		}
		eventuallyAt(t, outside, closest, only("web0"))
	})

	// Scaling down: web1 goes; only web0 is left, everywhere.
	one := 1
	p.nodes[1].call(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: web.JobName, InstanceNumber: &one}, nil)
	if err := p.rc.DeleteInstance(t.Context(), web.JobName, 1); err != nil {
		t.Fatal(err)
	}

	t.Run("ScaleDown", func(t *testing.T) {
		for _, c := range []*nodeClient{{"munich", munich}, {"paris", paris}} {
			eventually(t, c.ns, web.RRIP, only("web0"))
			eventually(t, c.ns, web.RRIPv6, only("web0"))
			if seen := spread(t, c.ns, netip.AddrPortFrom(web.RRIP, 80)); seen["web0"] != 20 {
				t.Errorf("RR from %s after scale-down: %v, want web0 only", c.name, seen)
			}
		}
		eventuallyAt(t, outside, rr, only("web0"))
	})
}

// nodeClient is a client instance namespace with a name for messages.
type nodeClient struct {
	name string
	ns   *netnstest.NS
}

// instance returns root's record of instance n of svc.
func instance(t *testing.T, p *dpPlatform, svc api.Service, n int) api.Instance {
	t.Helper()
	e, err := p.rc.Resolve(t.Context(), svc.JobName, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range e.Instances {
		if in.Number == n {
			return in
		}
	}
	t.Fatalf("%s has no instance %d: %+v", svc.JobName, n, e.Instances)
	return api.Instance{}
}
