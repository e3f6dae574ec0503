package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/shared/netnstest"
	"github.com/semnet/semnet/shared/testservers"
)

// outcome is one request of a load loop: when it started, how long it took, its status
// (0: no HTTP answer).
type outcome struct {
	at     time.Time
	took   time.Duration
	status int
}

// TestMongoRestartUnderLoad stops root's MongoDB-wire server (SIGKILL) in the middle of a
// stream of creates and starts it again: while it is down root answers 503 — never 500,
// never a hang — its /readyz says not ready, and once the server is back root serves
// again by itself; every acknowledged create survived, no address was handed out twice.
func TestMongoRestartUnderLoad(t *testing.T) {
	db := testservers.StartFerretDB(t)
	p := startRoot(t, "--mongo-uri", db.URI(), "--mongo-db", "faults")
	a := &acked{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}

	var (
		mu       sync.Mutex
		outcomes []outcome
		stop     = make(chan struct{})
	)
	wg := burst(context.Background(), p.url, 4, "m", stop, a, func(o outcome) {
		mu.Lock()
		outcomes = append(outcomes, o)
		mu.Unlock()
	})
	time.Sleep(time.Second)
	down := time.Now()
	db.Kill()
	waitUntil(t, 30*time.Second, "/readyz to say not ready", func() bool { return readyz(p.addr) == http.StatusServiceUnavailable })
	// Requests sent while the server is down must be answered while it is down, however
	// long the ones caught in flight by the kill take.
	time.Sleep(time.Second)
	waitUntil(t, 30*time.Second, "10 requests sent after the kill to be answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, o := range outcomes {
			if o.at.After(down) {
				n++
			}
		}
		return n >= 10
	})
	up := time.Now()
	db.Start()
	waitUntil(t, 60*time.Second, "/readyz to recover", func() bool { return readyz(p.addr) == http.StatusOK })
	var recovered time.Time
	waitUntil(t, 60*time.Second, "creates to succeed again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range outcomes {
			if o.at.After(up) && o.status == http.StatusCreated {
				recovered = o.at
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var during, other []outcome
	var slowest time.Duration
	counts := map[int]int{}
	for _, o := range outcomes {
		counts[o.status]++
		slowest = max(slowest, o.took)
		// A request that started after the kill and ended before the restart saw only
		// a dead server.
		if o.at.After(down) && o.at.Add(o.took).Before(up) {
			during = append(during, o)
		} else if o.status != http.StatusCreated {
			other = append(other, o)
		}
	}
	keys := make([]int, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %d×%d", counts[k], k)
	}
	var median time.Duration
	if len(during) > 0 {
		took := make([]time.Duration, len(during))
		for i, o := range during {
			took[i] = o.took
		}
		slices.Sort(took)
		median = took[len(took)/2]
	}
	t.Logf("statuses:%s; %d requests entirely during the %v outage (median %v); slowest request %v; creates succeeded again %v after the restart",
		summary, len(during), up.Sub(down).Round(time.Millisecond), median.Round(time.Microsecond), slowest.Round(time.Millisecond), recovered.Sub(up).Round(time.Millisecond))
	if len(during) == 0 {
		t.Fatal("no request ran entirely during the outage")
	}
	for _, o := range during {
		if o.status != http.StatusServiceUnavailable {
			t.Errorf("during the outage: status %d after %v, want 503", o.status, o.took)
		}
	}
	// Around the kill and the restart, a request may also fail in flight: still an
	// answer, never a 500. (Creates answer 201, so does placing their instance.)
	for _, o := range other {
		if o.status != http.StatusServiceUnavailable {
			t.Errorf("status %d (request at %v after the kill, took %v), want 201 or 503", o.status, o.at.Sub(down), o.took)
		}
	}
	verify(t, p, a)
}

// readyz returns root's /readyz status (0: no answer).
func readyz(addr string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}

var partitionFor = flag.Duration("partition", 60*time.Second, "TestRootPartition: how long root is cut off from the cluster")

// TestRootPartition takes root's link down (its host's interface: no FIN, no RST, packets
// just stop) for -partition (60 s) while the platform runs. Meanwhile the nodes keep
// resolving from the caches, a node reports an instance placed, removed and placed again
// (the cluster queues the reports), and root records a failure the cluster cannot hear
// of. Once the link is back: the reports arrived in order (the instance runs), the
// change stream resumed without a gap (the failed instance is no longer chosen), and the
// cluster's queue is empty.
func TestRootPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("partition: -short")
	}
	p := startPlatform(t, semnetBinary(t), platformSpec{nodes: 3, rootHost: true}) // Munich, Berlin, Paris
	ctx := t.Context()
	_, clients := p.deploy(t, "client", 0, 2)
	munich, paris := clients[0], clients[1]
	b, servers := p.deploy(t, "b", 1, 2) // b0 in Berlin, b1 in Paris
	serve(t, servers[0], "b0")
	serve(t, servers[1], "b1")
	eventually(t, munich, b.ClosestIP, oneOf("b0"))
	// c is cached by the cluster (Paris asked for it), not yet by the Munich node.
	c, cs := p.deploy(t, "c", 2)
	serve(t, cs[0], "c0")
	eventually(t, paris, c.RRIP, oneOf("c0"))
	if _, err := p.rc.CreateInstance(ctx, b.JobName, api.InstanceRequest{Number: ptr(2), ClusterID: "c1"}); err != nil {
		t.Fatal(err)
	}

	p.root.Run(t, "ip", "link", "set", "eth0", "down")
	cut := time.Now()
	// Root hears that b0 failed (from an operator, say); the cluster cannot.
	if _, err := p.rc.PlaceInstance(ctx, b.JobName, 0, api.Placement{Status: "failed", HostIP: nodeIP(2), HostPort: 50103}); err != nil {
		t.Fatal(err)
	}
	// Paris places b2, removes it, places it again: three reports that must arrive in
	// this order.
	p.attach(t, b, 2, 2)
	p.nodes[2].call(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: b.JobName, InstanceNumber: ptr(2)}, nil)
	serve(t, p.attach(t, b, 2, 2), "b2")
	checks := 0
	for time.Since(cut) < *partitionFor {
		eventually(t, munich, b.ClosestIP, oneOf("b0")) // the cached entry, as it was
		eventually(t, munich, b.RRIP, oneOf("b0", "b1"))
		eventually(t, munich, c.RRIPv6, oneOf("c0")) // a node's miss, answered from the cluster's cache
		checks++
		time.Sleep(5 * time.Second)
	}
	t.Logf("cut for %v; the nodes resolved from the caches throughout (%d rounds of checks)", time.Since(cut).Round(time.Second), checks)

	p.root.Run(t, "ip", "link", "set", "eth0", "up")
	healed := time.Now()
	waitUntil(t, 2*time.Minute, "b2's reports to reach root in order", func() bool {
		in, err := p.rc.Instance(ctx, b.JobName, 2)
		return err == nil && in.Status == "running" && in.HostIP == nodeIP(3)
	})
	delivered := time.Since(healed)
	// The change stream: b0's failure reaches the node; Closest from Munich takes Paris.
	eventually(t, munich, b.ClosestIP, oneOf("b1", "b2"))
	followed := time.Since(healed)
	if seen := spread(t, munich, netip.AddrPortFrom(b.RRIP, 80)); seen["b0"] > 0 || seen["b1"] == 0 || seen["b2"] == 0 {
		t.Errorf("RR from Munich after the partition spread %v, want b1 and b2 only", seen)
	}
	t.Logf("after the link came back: queued reports delivered within %v, root's change reached the node within %v",
		delivered.Round(time.Millisecond), followed.Round(time.Millisecond))
}

func ptr[T any](v T) *T { return &v }

// TestClusterRestart kills a cluster service (SIGKILL) under a running platform and
// starts it again (in-memory cache: it comes back empty). Meanwhile the nodes keep
// forwarding from their tables, and a service they use scales up in the other cluster.
// Once back, the nodes have reconnected, resubscribed and re-announced: root has every
// instance once and running (the restarted cluster's sweep failed none of them), and the
// change made while the cluster was down reached the node (it re-reads its table after a
// reconnection: the pushes of that time are lost).
func TestClusterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster restart: -short")
	}
	p := startPlatform(t, semnetBinary(t), platformSpec{
		clusters:  []clusterSpec{{id: "c1", lat: 48.14, lon: 11.58}, {id: "c2", lat: 48.86, lon: 2.35}},
		nodes:     3,
		clusterOf: func(i int) int { return i / 2 }, // Munich and Berlin in c1, Paris in c2
	})
	ctx := t.Context()
	munich, b := clientAndServer(t, p)
	// d runs in Berlin and stays in use from Munich; it is deleted while c1 is down, so
	// its "deleted" push never reaches either node (c1, caching in memory, restarts at
	// root's current revision and never sees the change). With no orchestrator here, d0
	// keeps serving in Berlin, so an entry Munich kept would keep answering.
	d, dServers := p.deploy(t, "d", 1)
	serve(t, dServers[0], "d0")
	eventually(t, munich, d.RRIP, oneOf("d0"))
	defer keepGetting(ctx, munich, d.RRIP, 300*time.Millisecond, time.Second, func(string, error) {})()

	var ok, failed atomic.Int64
	stop := keepGetting(ctx, munich, b.RRIP, 200*time.Millisecond, time.Minute, func(got string, err error) {
		if err == nil && got == "b0" {
			ok.Add(1)
		} else {
			failed.Add(1)
		}
	})
	p.restartCluster(t, 0, func() {
		// c1 is down: b scales up in c2, d is deleted.
		serve(t, p.addInstance(t, b, 1, 2), "b1")
		if err := p.rc.DeleteService(ctx, d.ID, true); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
	})
	stop()
	t.Logf("while c1 was down and restarting: %d requests through the node's table answered, %d failed", ok.Load(), failed.Load())
	if ok.Load() == 0 || failed.Load() > 0 {
		t.Errorf("requests from Munich to b's RR IP while c1 restarted: %d answered, %d failed; want all answered from the node's table", ok.Load(), failed.Load())
	}

	eventually(t, munich, b.RRIP, oneOf("b1")) // learnt after the reconnection
	// The node's re-read after the reconnection finds d unknown and drops it, though its
	// traffic keeps it in use: d's address stops answering, though d0 still serves (no
	// orchestrator here stops it), as it would answer forever from a kept entry.
	waitUntil(t, 30*time.Second, "d's RR IP to stop answering from Munich", func() bool {
		short, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := get(short, munich, d.RRIP, "/")
		return err != nil
	})
	if seen := spread(t, munich, netip.AddrPortFrom(b.RRIP, 80)); seen["b0"] == 0 || seen["b1"] == 0 {
		t.Errorf("RR from Munich after the restart spread %v, want b0 and b1", seen)
	}
	// Past the restarted cluster's sweep (the node grace, 10 s, after its start): every
	// instance is still running, once.
	time.Sleep(12 * time.Second)
	for svc, want := range map[string]int{b.JobName: 2, "client.test.client.dp": 1} {
		ins, err := p.rc.Instances(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, in := range ins {
			if in.Status == "running" {
				running++
			}
		}
		if len(ins) != want || running != want {
			t.Errorf("%s: %d instances, %d running; want %d running: %+v", svc, len(ins), running, want, ins)
		}
	}
}

// TestNodeReconnect drops one node's connection to its cluster (its link goes down past
// the keepalive, so the broker drops it) while the cluster stays up, and keeps the node
// using a service that only runs in another cluster. The cluster forgets the node's
// interest when it goes, so nothing but the node re-reading its table after the
// reconnection tells the cluster to follow that service again: a change made after it
// must still reach the node.
func TestNodeReconnect(t *testing.T) {
	if testing.Short() {
		t.Skip("node reconnect: -short")
	}
	p := startPlatform(t, semnetBinary(t), platformSpec{
		clusters:  []clusterSpec{{id: "c1", lat: 48.14, lon: 11.58}, {id: "c2", lat: 48.86, lon: 2.35}},
		nodes:     2,
		clusterOf: func(i int) int { return i }, // Munich in c1, Berlin in c2
		setup:     func(int, *netnstest.NS) []string { return []string{"--keepalive", "5s"} },
	})
	ctx := t.Context()
	munich, b := clientAndServer(t, p) // b only in c2
	connected := func() string {
		resp, err := p.inCtrl.Get("http://" + p.clusters[0].rest + "/metrics")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, "semnet_cluster_mqtt_clients_connected "); ok {
				return v
			}
		}
		return ""
	}

	// Keep b's entry in use on the node throughout, so it never expires.
	defer keepGetting(ctx, munich, b.RRIP, 300*time.Millisecond, time.Second, func(string, error) {})()

	p.nodes[0].ns.Run(t, "ip", "link", "set", "eth0", "down")
	waitUntil(t, 30*time.Second, "c1's broker to drop the node", func() bool { return connected() == "0" })
	p.nodes[0].ns.Run(t, "ip", "link", "set", "eth0", "up")
	waitUntil(t, 30*time.Second, "the node to reconnect", func() bool { return connected() == "1" })
	time.Sleep(2 * time.Second) // its re-read of the table

	serve(t, p.addInstance(t, b, 1, 1), "b1") // b scales up in c2
	eventually(t, munich, b.RRIP, oneOf("b1"))
	if seen := spread(t, munich, netip.AddrPortFrom(b.RRIP, 80)); seen["b0"] == 0 || seen["b1"] == 0 {
		t.Errorf("RR from Munich after the reconnection spread %v, want b0 and b1", seen)
	}
}

// oneOf accepts any of the given answers.
func oneOf(names ...string) func(string) bool {
	return func(s string) bool { return slices.Contains(names, s) }
}

// clientAndServer deploys a client instance on node 1 and service b with instance b0 on
// node 2, and waits until the client reaches b0 through b's RR IP.
func clientAndServer(t *testing.T, p *dpPlatform) (*netnstest.NS, api.Service) {
	t.Helper()
	_, clients := p.deploy(t, "client", 0)
	b, servers := p.deploy(t, "b", 1)
	serve(t, servers[0], "b0")
	eventually(t, clients[0], b.RRIP, oneOf("b0"))
	return clients[0], b
}

// keepGetting fetches http://addr/ from ns every interval (each attempt bounded by
// timeout) and tells seen how it went, until the function it returns is called.
func keepGetting(ctx context.Context, ns *netnstest.NS, addr netip.Addr, every, timeout time.Duration, seen func(string, error)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(every):
			}
			short, cancel := context.WithTimeout(ctx, timeout)
			seen(get(short, ns, addr, "/"))
			cancel()
		}
	})
	return func() { close(done); wg.Wait() }
}
