package node

import (
	"context"
	"hash/maphash"
	"log/slog"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/refapi"
)

// TestExpiryRacingAResolve runs a node's table and cluster link (no datapath) against a
// real root and cluster. A job's entry expires, and before the expiry unfollows it a
// packet brings it back: the resolve finds the job still followed and does not
// subscribe again. The unfollow must then keep the subscription, or the entry would
// never hear of a change again while packets use it (it did not: a node of
// TestMultiCluster kept a service's first instance for good). An expiry that nothing
// raced does unsubscribe.
func TestExpiryRacingAResolve(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	ctx := t.Context()
	svc, err := p.RC.CreateService(ctx, api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	job := svc.JobName
	for range 2 {
		if _, err := p.RC.CreateInstance(ctx, svc.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}

	n := &Node{log: slog.New(slog.DiscardHandler), following: map[string]bool{}, instances: map[instanceKey]*instance{},
		table: table.New(table.Config{}), followSeed: maphash.MakeSeed(), changeDelay: newChangeDelay()}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if n.flows, err = conntrack.New(conntrack.Config{}); err != nil {
		t.Fatal(err)
	}
	dial := func(id string, onUpdate func(string, mqttapi.UpdatesAvailable)) *clusterlink.Link {
		l, err := clusterlink.Dial(ctx, clusterlink.Config{Broker: p.Cluster.MQTTAddr.String(), NodeID: id, OnUpdate: onUpdate})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Close)
		return l
	}
	n.link = dial("w1", n.onUpdate)
	t.Cleanup(func() { n.cancel(); n.wg.Wait() })
	other := dial("w2", nil) // where the instances run
	sn, err := other.Subnet(ctx)
	if err != nil {
		t.Fatal(err)
	}
	report := func(number int) {
		t.Helper()
		nsip := sn.Address.Next().Next()
		for range number {
			nsip = nsip.Next()
		}
		if err := other.Deployed(ctx, mqttapi.Deployed{AppName: job, Status: "running", InstanceNumber: refapi.FlexInt(number),
			NSIP: nsip.String(), HostIP: "127.0.0.1", HostPort: 50103}); err != nil {
			t.Fatal(err)
		}
	}
	running := func() int { return len(n.table.Candidates(svc.RRIP)) }
	resolve := func() {
		t.Helper()
		r, err := n.link.Query(ctx, svc.RRIP.String())
		if err != nil {
			t.Fatal(err)
		}
		n.apply(r)
		n.follow(r.AppName)
	}
	expire := func() table.Expired {
		t.Helper()
		for _, e := range n.table.Expire(time.Now().Add(time.Hour)) {
			if e.Job == job {
				return e
			}
		}
		t.Fatal("the entry did not expire")
		return table.Expired{}
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}

	first, err := n.link.Query(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	resolve()
	waitFor("the subscription", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return n.following[job]
	})
	if err := n.link.Follow(ctx, job); err != nil { // returns once the broker took the node's own
		t.Fatal(err)
	}
	report(0)
	waitFor("the push of instance 0", func() bool { return running() == 1 })
	if pushes, applied := n.updates.pushes.Load(), n.updates.applied.Load(); pushes == 0 || applied < 2 {
		t.Errorf("counted %d pushes and %d entries applied, want a push and the answers and the push applied", pushes, applied)
	}
	// The push said when root logged the change: the delay is recorded, and is short.
	var m dto.Metric
	if err := n.changeDelay.Write(&m); err != nil {
		t.Fatal(err)
	}
	if h := m.GetHistogram(); h.GetSampleCount() == 0 || h.GetSampleSum() <= 0 || h.GetSampleSum() > float64(h.GetSampleCount())*10 {
		t.Errorf("change delay histogram: %d samples summing to %v s, want the push's delay (root's change time carried)", h.GetSampleCount(), h.GetSampleSum())
	}
	n.apply(first) // older than the push: counted, not applied
	if got := n.updates.outdated.Load(); got != 1 || running() != 1 {
		t.Errorf("an answer older than the entry: %d counted outdated, %d running; want 1, 1", got, running())
	}

	// The race: expired, brought back by a packet, then unfollowed.
	e := expire()
	resolve()
	n.unfollow(e)
	report(1)
	waitFor("the push of instance 1 after the raced expiry", func() bool { return running() == 2 })

	// An expiry nothing raced unsubscribes: the next change is not pushed to the node,
	// which would put the job back in its table.
	n.unfollow(expire())
	if n.table.Known(job) {
		t.Fatal("the job is still in the table after its expiry")
	}
	if err := p.RC.DeleteInstance(ctx, svc.ID, 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if n.table.Known(job) {
		t.Error("a push reached the node after its expiry unfollowed the job")
	}
}
