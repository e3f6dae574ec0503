package clusterlink_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/refapi"
)

func dial(t *testing.T, p *clustertest.Platform, id string, cfg clusterlink.Config) *clusterlink.Link {
	t.Helper()
	cfg.Broker, cfg.NodeID = p.Cluster.MQTTAddr.String(), id
	l, err := clusterlink.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// TestContract drives the node's side of the MQTT contract against a real root and
// cluster: a subnet, queries by name and IP (concurrent ones share a request), an
// unknown service, a deployment that comes back as a push with the entry, and interest
// removal.
func TestContract(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	ctx := t.Context()
	svc, err := p.RC.CreateService(ctx, api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.RC.CreateInstance(ctx, svc.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
		t.Fatal(err)
	}

	pushes := make(chan mqttapi.UpdatesAvailable, 10)
	connects := make(chan struct{}, 10)
	w1 := dial(t, p, "w1", clusterlink.Config{})
	w2 := dial(t, p, "w2", clusterlink.Config{
		OnUpdate:  func(key string, u mqttapi.UpdatesAvailable) { pushes <- u },
		OnConnect: func() { connects <- struct{}{} },
	})
	select {
	case <-connects:
	case <-time.After(10 * time.Second):
		t.Fatal("OnConnect not called")
	}

	sn, err := w1.Subnet(ctx)
	if err != nil || !sn.Address.Is4() || !sn.AddressV6.Is6() {
		t.Fatalf("Subnet = %+v, %v", sn, err)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			r, err := w2.Query(ctx, svc.RRIP.String())
			if err == nil && r.AppName != svc.JobName {
				err = errors.New("answer for " + r.AppName)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent query by RR IP: %v", err)
		}
	}
	if _, err := w1.Query(ctx, "no.such.service.here"); !errors.Is(err, clusterlink.ErrUnknown) {
		t.Errorf("unknown service: err = %v, want ErrUnknown", err)
	}

	if err := w2.Follow(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	nsip := sn.Address.Next().Next()
	if err := w1.Deployed(ctx, mqttapi.Deployed{
		AppName: svc.JobName, Status: "DEPLOYED", InstanceNumber: 0,
		NSIP: nsip.String(), NSIPv6: sn.AddressV6.Next().Next().String(), HostIP: "127.0.0.1", HostPort: refapi.FlexInt(50103),
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case u := <-pushes:
		if u.Table == nil || len(u.Table.InstanceList) != 1 || u.Table.InstanceList[0].NamespaceIP != nsip {
			t.Fatalf("push after deployment: %+v", u)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no push after the deployment")
	}
	r, err := w1.Query(ctx, svc.JobName)
	if err != nil || len(r.InstanceList) != 1 {
		t.Fatalf("query by name after deployment: %+v, %v", r, err)
	}
	in := r.InstanceList[0]
	if got, err := w1.Query(ctx, in.InstanceIPv6.String()); err != nil || got.AppName != svc.JobName {
		t.Errorf("query by Instance IPv6: %+v, %v", got, err)
	}

	// w2 stops following: no more pushes reach it; root keeps the cluster's interest
	// while w1 runs the instance.
	if err := w2.Unfollow(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	if err := w1.Undeployed(ctx, mqttapi.Undeployed{AppName: svc.JobName, InstanceNumber: 0}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e, err := p.RC.Resolve(ctx, svc.JobName, "")
		if err == nil && len(e.Instances) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("root still lists the undeployed instance: %+v, %v", e, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case u := <-pushes:
		t.Errorf("push after Unfollow: %+v", u)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestQueryTimeout: a query nobody answers fails after QueryTimeout instead of hanging.
func TestQueryTimeout(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	l := dial(t, p, "w1", clusterlink.Config{QueryTimeout: 300 * time.Millisecond})
	p.Cluster.Close() // the broker goes with it
	start := time.Now()
	if _, err := l.Query(t.Context(), netip.MustParseAddr("10.30.0.1").String()); err == nil {
		t.Fatal("query answered with the cluster down")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("query took %v to fail", d)
	}
}

// TestKeepAliveWholeSeconds: MQTT counts the keepalive in seconds; a keepalive it cannot
// carry is refused before connecting, not rounded.
func TestKeepAliveWholeSeconds(t *testing.T) {
	for _, ka := range []time.Duration{1500 * time.Millisecond, -time.Second, 65536 * time.Second} {
		_, err := clusterlink.Dial(t.Context(), clusterlink.Config{Broker: "127.0.0.1:1", NodeID: "w1", KeepAlive: ka})
		if err == nil || !strings.Contains(err.Error(), "keepalive") {
			t.Errorf("keepalive %v: %v, want an error naming the keepalive", ka, err)
		}
	}
}

// TestQueryWhileRootIsDown: a key the cluster cannot look up because root is down fails
// the query without ErrUnknown, which would make a node drop a job that still exists.
func TestQueryWhileRootIsDown(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	w := dial(t, p, "w1", clusterlink.Config{})
	p.Root.Close()
	_, err := w.Query(t.Context(), "not.cached.here")
	if err == nil || errors.Is(err, clusterlink.ErrUnknown) || !strings.Contains(err.Error(), mqttapi.QueryErrUnavailable) {
		t.Fatalf("query while root is down: err = %v, want an %q answer that is not ErrUnknown", err, mqttapi.QueryErrUnavailable)
	}
}
