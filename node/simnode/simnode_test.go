package simnode_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/node/simnode"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/geo"
)

// TestSimulatedNodes runs two simulated nodes against a real root and cluster: each takes
// a subnet of its own, reports an instance, and the cluster's answers show both where the
// nodes said they run; a stop takes one away.
func TestSimulatedNodes(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	ctx := t.Context()
	svc, err := p.RC.CreateService(ctx, api.ServiceRequest{App: "demo", AppNS: "app", Service: "web", ServiceNS: "default"})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*simnode.Node
	for i, loc := range []geo.Point{{Lat: 48.14, Lon: 11.58}, {Lat: 52.52, Lon: 13.40}} {
		if _, err := p.RC.CreateInstance(ctx, svc.JobName, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
		n, err := simnode.Start(ctx, simnode.Config{ID: []string{"sim1", "sim2"}[i], Broker: p.Cluster.MQTTAddr.String(),
			HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103 + i, Location: &loc})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		nodes = append(nodes, n)
	}
	a, _ := nodes[0].Subnet()
	b, _ := nodes[1].Subnet()
	if a == b {
		t.Fatalf("both nodes got subnet %s", a)
	}
	want := map[int]netip.Addr{}
	for i, n := range nodes {
		v4, v6, err := n.Deploy(ctx, svc.JobName, i)
		if err != nil {
			t.Fatal(err)
		}
		sub, sub6 := n.Subnet()
		if v4 != sub.Next().Next() || v6 != sub6.Next().Next() {
			t.Errorf("node %d: first instance got %s %s in subnet %s %s, want .2", i, v4, v6, sub, sub6)
		}
		want[i] = v4
	}
	running := func(count int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			e, err := p.RC.Resolve(ctx, svc.JobName, "")
			if err == nil && len(e.Instances) == count {
				for _, in := range e.Instances {
					if in.NamespaceIP != want[in.Number] || in.HostPort != 50103+in.Number {
						t.Fatalf("instance %d at %s:%d, want %s:%d", in.Number, in.NamespaceIP, in.HostPort, want[in.Number], 50103+in.Number)
					}
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("root has %+v, %v; want %d running", e.Instances, err, count)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	running(2)
	// The cluster's cache follows root's change stream, so its answer may lag root's
	// for a moment (a CI run saw one instance at the revision before the second ran).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, err := nodes[0].Query(ctx, svc.RRIP.String())
		if err == nil && len(r.InstanceList) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("query by RR IP: %+v, %v; want both instances", r, err)
		}
	}
	if err := nodes[1].Undeploy(ctx, svc.JobName, 1); err != nil {
		t.Fatal(err)
	}
	delete(want, 1)
	running(1)

	if _, err := simnode.Start(ctx, simnode.Config{ID: "sim3", Broker: p.Cluster.MQTTAddr.String()}); err == nil {
		t.Error("a node without a host address started")
	}
}
