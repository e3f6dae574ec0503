package cluster_test

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/testservers"
)

// replicas is a root and the replicas of one cluster sharing a Redis cache.
type replicas struct {
	t     *testing.T
	root  string // root's address
	rc    *client.Client
	id    string // the cluster's id, also its key prefix in Redis
	redis string
}

func newReplicas(t *testing.T) *replicas {
	url := testservers.RedisURL(t)
	rsrv := startRoot(t, "127.0.0.1:0", t.TempDir())
	t.Cleanup(func() { rsrv.Close() })
	rc, err := client.New("http://"+rsrv.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("rep%d", time.Now().UnixNano()%1e9) // the key prefix: runs don't share
	if _, err := rc.RegisterCluster(t.Context(), api.ClusterRequest{ID: id, Name: id, Address: "127.0.0.1", Port: 10100}); err != nil {
		t.Fatal(err)
	}
	return &replicas{t: t, root: rsrv.Addr.String(), rc: rc, id: id, redis: url}
}

// start starts a replica; edit changes its configuration first.
func (r *replicas) start(edit func(*cluster.Config)) *platform {
	r.t.Helper()
	c := cluster.Config{
		ID: r.id, RootURL: "http://" + r.root, Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0",
		Insecure: true, RedisURL: r.redis, StaleAfter: time.Minute,
	}
	edit(&c)
	cl, err := cluster.Start(r.t.Context(), c)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { cl.Close() })
	select {
	case <-cl.Registered():
	case <-time.After(10 * time.Second):
		r.t.Fatal("replica did not register with root")
	}
	return &platform{Cluster: cl, RC: r.rc}
}

// interested reports whether root sends the cluster changes of svc.
func (r *replicas) interested(svc api.Service) bool {
	r.t.Helper()
	ids, err := r.rc.Interests(r.t.Context(), r.id)
	if err != nil {
		r.t.Fatal(err)
	}
	return slices.Contains(ids, svc.ID)
}

// place runs instance n of svc in the cluster, at root.
func (r *replicas) place(svc api.Service, n int) {
	r.t.Helper()
	ctx := r.t.Context()
	if _, err := r.rc.CreateInstance(ctx, svc.ID, api.InstanceRequest{ClusterID: r.id}); err != nil {
		r.t.Fatal(err)
	}
	if _, err := r.rc.PlaceInstance(ctx, svc.ID, n, api.Placement{Status: "running", ClusterID: r.id,
		NamespaceIP: netip.AddrFrom4([4]byte{10, 18, 0, byte(2 + n)}), HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50100 + n}); err != nil {
		r.t.Fatal(err)
	}
}

// rawRedis is a client for looking at the shared cache behind the replicas' backs.
func rawRedis(t *testing.T, url string) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

// metricOr returns the value of the replica's metric line that starts with prefix, or
// "" when it has none.
func metricOr(t *testing.T, p *platform, prefix string) string {
	t.Helper()
	resp, err := http.Get("http://" + p.Cluster.Addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, prefix+" "); ok {
			return v
		}
	}
	return ""
}

// waitPush waits for a push of svc's entry with want instances on the node.
func waitPush(t *testing.T, n *node, svc api.Service, want int) {
	t.Helper()
	for {
		var u mqttapi.UpdatesAvailable
		n.next(mqttapi.UpdatesTopic(svc.JobName), &u) // fails the test after 10 s without one
		if u.Table != nil && len(u.Table.InstanceList) == want {
			return
		}
	}
}

// TestReplicasShareInterests: replicas sharing a Redis cache share the cluster's
// interest at root. A node on replica a dropping a job that a node on replica b still
// uses must not drop the interest (root would send no more changes, and b's node and
// cache would stay stale for good); once b's node drops it too, root forgets it.
func TestReplicasShareInterests(t *testing.T) {
	r := newReplicas(t)
	a, b := r.start(func(*cluster.Config) {}), r.start(func(*cluster.Config) {})
	svc, err := r.rc.CreateService(t.Context(), api.ServiceRequest{App: "share", AppNS: "b", Service: "c", ServiceNS: "d"})
	if err != nil {
		t.Fatal(err)
	}
	wa, wb := connectNode(t, a, "wa"), connectNode(t, b, "wb")
	wb.subscribe(mqttapi.UpdatesTopic(svc.JobName))
	if q := wa.query(svc.JobName, ""); q.Error != "" {
		t.Fatal(q.Error)
	}
	if q := wb.query("", svc.RRIP.String()); q.Error != "" || q.AppName != svc.JobName {
		t.Fatalf("query on b: %+v", q)
	}
	if !r.interested(svc) {
		t.Fatal("no interest at root after the queries")
	}

	wa.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, svc.JobName))
	// Wait until a has dealt with the removal: it either dropped the interest at root or
	// released its hold while b holds the job.
	waitFor(t, "replica a to settle the node's removal", func() bool {
		return !r.interested(svc) || metricOr(t, a, `semnet_cluster_interest_releases_total{outcome="shared"}`) == "1"
	})
	if !r.interested(svc) {
		t.Error("replica a dropped the cluster's interest at root while a node on replica b uses the job")
	}

	// A change at root reaches b's node as a push, and b answers it from the cache.
	r.place(svc, 0)
	waitPush(t, wb, svc, 1)
	if q := wb.query("", svc.RRIP.String()); q.Error != "" || len(q.InstanceList) != 1 {
		t.Fatalf("b's answer after the change: %+v", q)
	}

	wb.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, svc.RRIP))
	waitFor(t, "root to drop the cluster's interest once no replica needs the job", func() bool { return !r.interested(svc) })
}

// TestStoppedReplicaHoldsExpire: a replica that stops without releasing its holds (as
// one that crashed) holds its jobs only until they expire; then the other replica's
// release is the last, and root forgets the cluster's interest.
func TestStoppedReplicaHoldsExpire(t *testing.T) {
	r := newReplicas(t)
	short := func(c *cluster.Config) { c.HoldTTL = time.Second }
	a, b := r.start(short), r.start(short)
	svc, err := r.rc.CreateService(t.Context(), api.ServiceRequest{App: "gone", AppNS: "b", Service: "c", ServiceNS: "d"})
	if err != nil {
		t.Fatal(err)
	}
	wa, wb := connectNode(t, a, "wa"), connectNode(t, b, "wb")
	for _, w := range []*node{wa, wb} {
		if q := w.query(svc.JobName, ""); q.Error != "" {
			t.Fatal(q.Error)
		}
	}
	rdb := rawRedis(t, r.redis)
	holds := "semnet:" + r.id + ":holds:" + svc.JobName
	live := func() int64 {
		n, err := rdb.ZCount(t.Context(), holds, fmt.Sprint(time.Now().UnixMilli()), "+inf").Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := live(); n != 2 {
		t.Fatalf("%d replicas hold the job, want 2: %v", n, rdb.ZRangeWithScores(t.Context(), holds, 0, -1).Val())
	}

	a.Cluster.Close()
	waitFor(t, "replica a's hold to expire", func() bool { return live() == 1 })
	wb.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, svc.JobName))
	waitFor(t, "root to drop the cluster's interest", func() bool { return !r.interested(svc) })
}
