package cluster_test

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

var (
	munich = geo.Point{Lat: 48.14, Lon: 11.58}
	berlin = geo.Point{Lat: 52.52, Lon: 13.40}
)

// startDeathPlatform starts a platform whose cluster reports a node's instances failed
// grace after it went away, and whose broker lets nodes ask for a 1 s keepalive.
func startDeathPlatform(t *testing.T, grace time.Duration) *platform {
	return clustertest.StartWith(t, func(c *cluster.Config) {
		c.StaleAfter, c.NodeGrace, c.Broker.KeepAliveMin = time.Minute, grace, time.Second
	})
}

func deployedMsg(job string, n int, nsip, host string, at geo.Point) string {
	return fmt.Sprintf(`{"appname":%q,"status":"running","instance_number":%d,"nsip":%q,"host_ip":%q,"host_port":"50103","lat":%v,"lon":%v}`,
		job, n, nsip, host, at.Lat, at.Lon)
}

// blackhole is a TCP proxy to the broker that can fall silent: frozen, it drops every
// byte both ways and keeps both sockets open, which is how a node that lost power or its
// network looks to the broker (no FIN, no RST): only the keepalive can tell.
type blackhole struct {
	ln     net.Listener
	to     string
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newBlackhole(t *testing.T, to string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, to: to}
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	return b
}

func (b *blackhole) addr() string { return b.ln.Addr().String() }
func (b *blackhole) freeze()      { b.frozen.Store(true) }

func (b *blackhole) serve() {
	for {
		in, err := b.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", b.to)
		if err != nil {
			in.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, in, out)
		b.mu.Unlock()
		go b.pipe(out, in)
		go b.pipe(in, out)
	}
}

// pipe copies src to dst until src ends, dropping what arrives while frozen; a frozen
// pipe passes no close on either.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			if !b.frozen.Load() {
				dst.Close()
			}
			return
		}
		if !b.frozen.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}

// metric returns the value of the cluster's metric line that starts with prefix,
// failing the test when it has none.
func metric(t *testing.T, p *platform, prefix string) string {
	t.Helper()
	v := metricOr(t, p, prefix)
	if v == "" {
		t.Fatalf("no metric %s", prefix)
	}
	return v
}

func instanceStatus(t *testing.T, p *platform, svc api.Service, n int) string {
	t.Helper()
	in, err := p.RC.Instance(t.Context(), svc.ID, n)
	if err != nil {
		t.Fatal(err)
	}
	return in.Status
}

// closestFrom resolves svc's Closest IP in a node table in Munich filled with r, as a
// node does with a query result or a push, and returns the chosen instance's number.
func closestFrom(t *testing.T, r *mqttapi.TableQueryResult, svc api.Service) int {
	t.Helper()
	tb := table.New(table.Config{Location: &munich})
	if _, err := tb.Apply(r, time.Now()); err != nil {
		t.Fatalf("apply %+v: %v", r, err)
	}
	tg, st := tb.Lookup(svc.ClosestIP, time.Now())
	if st != table.Found {
		t.Fatalf("Closest lookup: %v", st)
	}
	return tg.InstanceNumber
}

// TestNodeDeath: a node whose connection falls silent is dropped by the broker after
// 1.5 × its keepalive; after the grace its instance is reported failed, root takes it
// out of the entry, and the push takes it out of the other nodes' choices: Closest goes
// to the next nearest. The node coming back later re-announces it and it runs again.
func TestNodeDeath(t *testing.T) {
	p := startDeathPlatform(t, 300*time.Millisecond)
	ctx := t.Context()
	svc := deploy(t, p, "shop", 2)
	hole := newBlackhole(t, p.Cluster.MQTTAddr.String())
	w1 := dialNode(t, hole.addr(), "w1", time.Second)
	w2 := connectNode(t, p, "w2")
	w1.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	w2.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 1, "10.18.0.66", "127.0.0.2", berlin))
	waitFor(t, "both instances running", func() bool {
		e, err := p.RC.Resolve(ctx, svc.JobName, "")
		return err == nil && len(e.Instances) == 2
	})
	// w2, in Munich, sends to the Closest IP: Munich's instance 0 before the death. The
	// cluster follows the job since w1 announced its instance, so its cache has the
	// second one once root's change stream brought it.
	key := svc.ClosestIP.String()
	w2.subscribe(mqttapi.UpdatesTopic(key))
	var r mqttapi.TableQueryResult
	waitFor(t, "the cluster to answer both instances", func() bool {
		r = w2.query("", key)
		return len(r.InstanceList) == 2
	})
	if closestFrom(t, &r, svc) != 0 {
		t.Fatalf("before the death: %+v, want Munich's chosen", r)
	}

	hole.freeze()
	frozen := time.Now()
	deadline := frozen.Add(20 * time.Second)
	for {
		var up mqttapi.UpdatesAvailable
		w2.next(mqttapi.UpdatesTopic(key), &up)
		if up.Table != nil && len(up.Table.InstanceList) == 1 {
			if n := closestFrom(t, up.Table, svc); n != 1 {
				t.Fatalf("after the death Closest chose instance %d, want 1 (Berlin)", n)
			}
			t.Logf("silent node out of the choices %v after it fell silent (keepalive 1 s, grace 300 ms)", time.Since(frozen).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no push without the dead node's instance")
		}
	}
	if st := instanceStatus(t, p, svc, 0); st != "failed" {
		t.Errorf("instance 0 at root: %s, want failed", st)
	}
	if r := w2.query(svc.JobName, ""); len(r.InstanceList) != 1 || r.InstanceList[0].InstanceNumber != 1 {
		t.Errorf("query after the death: %+v, want instance 1 only", r.InstanceList)
	}
	if v := metric(t, p, "semnet_cluster_node_deaths_total"); v != "1" {
		t.Errorf("node deaths: %s, want 1", v)
	}
	if v := metric(t, p, `semnet_cluster_instances_reported_failed_total{cause="node_death"}`); v != "1" {
		t.Errorf("instances reported failed: %s, want 1", v)
	}

	// Back after the grace: its re-announce makes the instance run again.
	w1 = connectNode(t, p, "w1")
	w1.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	waitFor(t, "instance 0 running again", func() bool { return instanceStatus(t, p, svc, 0) == "running" })
}

// TestNodeBackWithinGrace: a node that reconnects within the grace has nothing reported,
// even before it says a word; its instances stay tracked, so when it goes for good they
// are reported failed.
func TestNodeBackWithinGrace(t *testing.T) {
	const grace = 1500 * time.Millisecond
	p := startDeathPlatform(t, grace)
	svc := deploy(t, p, "shop", 1)
	w1 := connectNode(t, p, "w1")
	w1.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	waitFor(t, "instance 0 running", func() bool { return instanceStatus(t, p, svc, 0) == "running" })

	w1.c.Disconnect(0)
	w1 = connectNode(t, p, "w1")
	time.Sleep(grace + time.Second) // past the grace (asserting nothing happened)
	if st := instanceStatus(t, p, svc, 0); st != "running" {
		t.Errorf("instance 0 after a reconnect within the grace: %s, want running", st)
	}
	if v := metric(t, p, "semnet_cluster_node_deaths_total"); v != "0" {
		t.Errorf("node deaths: %s, want 0", v)
	}

	w1.c.Disconnect(0)
	waitFor(t, "instance 0 failed once its node left for good", func() bool { return instanceStatus(t, p, svc, 0) == "failed" })
}

// TestRestartSweep: a cluster that restarts lost what its nodes run; the nodes that are
// alive reconnect and re-announce, and once the grace after its start is over the
// instances root still has running here that no node announced are reported failed, and
// so are the gateways no node registered again. The cluster's own shutdown reports
// nothing.
func TestRestartSweep(t *testing.T) {
	const grace = 200 * time.Millisecond
	p := startDeathPlatform(t, grace)
	ctx := t.Context()
	svc := deploy(t, p, "shop", 2)
	w1, w2 := connectNode(t, p, "w1"), connectNode(t, p, "w2")
	w1.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	w2.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 1, "10.18.0.66", "127.0.0.2", berlin))
	waitFor(t, "both instances running", func() bool {
		e, err := p.RC.Resolve(ctx, svc.JobName, "")
		return err == nil && len(e.Instances) == 2
	})
	gateway := func(id, nsip string) {
		gw := connectNode(t, p, id)
		gw.subscribe(mqttapi.NodeTopic(id, mqttapi.SuffixGatewayConfig))
		gw.publish(mqttapi.SuffixGatewayRegister, register("198.51.100.1", nsip))
		if c := gw.gatewayConfig(func(mqttapi.GatewayConfig) bool { return true }); c.Error != "" {
			t.Fatalf("registration of %s: %s", id, c.Error)
		}
	}
	gatewayStatus := func(id string) string {
		g, err := p.RC.Gateway(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return g.Status
	}
	gateway("gw1", "10.18.0.3")
	gateway("gw2", "10.18.0.4")

	// The cluster goes down; w1 dies meanwhile. The restarted cluster sees only w2.
	if err := p.Cluster.Close(); err != nil {
		t.Fatal(err)
	}
	restarted, err := cluster.Start(ctx, cluster.Config{
		ID: "c1", Name: "c1", RootURL: "http://" + p.Root.Addr.String(), Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0",
		Insecure: true, Location: munich, NodeGrace: grace,
	})
	if err != nil {
		t.Fatal(err)
	}
	p.Cluster = restarted // closed by the platform's cleanup
	<-restarted.Registered()
	w2 = connectNode(t, p, "w2")
	w2.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 1, "10.18.0.66", "127.0.0.2", berlin))
	gateway("gw2", "10.18.0.4") // gw1 died with w1
	if st := instanceStatus(t, p, svc, 0); st != "running" {
		t.Fatalf("instance 0 right after the restart: %s; the cluster's shutdown must report nothing", st)
	}
	if st := gatewayStatus("gw1"); st != "running" {
		t.Fatalf("gateway gw1 right after the restart: %s; the cluster's shutdown must report nothing", st)
	}

	deadline := time.Now().Add(30 * time.Second)
	for instanceStatus(t, p, svc, 0) != "failed" {
		if time.Now().After(deadline) {
			t.Fatal("instance 0, whose node did not come back, was not reported failed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if st := instanceStatus(t, p, svc, 1); st != "running" {
		t.Errorf("instance 1, re-announced: %s, want running", st)
	}
	waitFor(t, "gateway gw1 failed", func() bool { return gatewayStatus("gw1") == "failed" })
	if st := gatewayStatus("gw2"); st != "running" {
		t.Errorf("gateway gw2, registered again: %s, want running", st)
	}
	if v := metric(t, p, `semnet_cluster_instances_reported_failed_total{cause="restart_sweep"}`); v != "2" {
		t.Errorf("instances failed by the sweep: %s, want 2 (instance 0 and gateway gw1)", v)
	}
	if r, err := p.RC.Resolve(ctx, svc.JobName, ""); err != nil || len(r.Instances) != 1 || r.Instances[0].HostIP != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("entry after the sweep: %+v, %v", r.Instances, err)
	}
}

// TestReannounceKeepsInterestCount: a node re-announcing its instance after a reconnect
// is no second deployment: once it undeploys, no node needs the job and root forgets the
// cluster's interest.
func TestReannounceKeepsInterestCount(t *testing.T) {
	p := startDeathPlatform(t, time.Minute)
	ctx := t.Context()
	svc := deploy(t, p, "shop", 1)
	w1 := connectNode(t, p, "w1")
	if r := w1.query(svc.JobName, ""); r.Error != "" {
		t.Fatal(r.Error)
	}
	for range 2 {
		w1.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	}
	w1.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, svc.JobName))
	waitFor(t, "instance 0 running", func() bool { return instanceStatus(t, p, svc, 0) == "running" })
	time.Sleep(200 * time.Millisecond) // let a wrong drop happen (asserting it did not)
	if ids, err := p.RC.Interests(ctx, "c1"); err != nil || len(ids) != 1 {
		t.Fatalf("interests while w1 runs the job: %v, %v", ids, err)
	}
	w1.publish(mqttapi.SuffixUndeployed, fmt.Sprintf(`{"appname":%q,"instance_number":0,"host_ip":"127.0.0.1","host_port":50103}`, svc.JobName))
	waitFor(t, "root to drop the cluster's interest", func() bool {
		ids, err := p.RC.Interests(ctx, "c1")
		return err == nil && len(ids) == 0
	})
}
