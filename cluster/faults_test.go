package cluster_test

import (
	"encoding/json"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/testservers"
)

// TestRedisRestart kills the cluster's Redis and starts it again empty (no persistence):
// while it is down the cluster keeps answering table queries (from root) and pushing
// changes; once it is back the cache fills again from the queries and the change stream.
func TestRedisRestart(t *testing.T) {
	rs := testservers.StartRedis(t)
	p := clustertest.StartWith(t, func(c *cluster.Config) { c.RedisURL = rs.URL() })
	rdb := goredis.NewClient(&goredis.Options{Addr: rs.Addr()})
	defer rdb.Close()
	cached := func(job string) bool {
		ok, err := rdb.HExists(t.Context(), "semnet:c1:jobs", job).Result()
		return err == nil && ok
	}
	munich := geo.Point{Lat: 48.14, Lon: 11.58}

	svc := deploy(t, p, "rds", 3)
	w := connectNode(t, p, "w1")
	w.subscribe(mqttapi.UpdatesTopic(svc.JobName))
	if r := w.query(svc.JobName, ""); r.Error != "" { // the cluster follows the job from now on
		t.Fatal(r.Error)
	}
	w.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 0, "10.18.0.2", "127.0.0.1", munich))
	push := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
			var u mqttapi.UpdatesAvailable
			w.next(mqttapi.UpdatesTopic(svc.JobName), &u)
			if u.Table != nil && len(u.Table.InstanceList) == want {
				return
			}
		}
		t.Fatalf("no push with %d instances", want)
	}
	push(1)
	if r := w.query(svc.JobName, ""); r.Error != "" || len(r.InstanceList) != 1 {
		t.Fatalf("query before the restart: %+v", r)
	}
	waitFor(t, "the entry in Redis", func() bool { return cached(svc.JobName) })

	rs.Kill()
	for _, key := range []string{svc.JobName, svc.RRIP.String(), svc.ClosestIPv6.String()} {
		sname, sip := key, ""
		if key != svc.JobName {
			sname, sip = "", key
		}
		if r := w.query(sname, sip); r.Error != "" || r.AppName != svc.JobName || len(r.InstanceList) != 1 {
			t.Fatalf("query %s with Redis down: %+v", key, r)
		}
	}
	w.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 1, "10.18.0.3", "127.0.0.1", munich))
	push(2) // the change stream goes on without the cache

	rs.Start() // empty
	if cached(svc.JobName) {
		t.Fatal("Redis kept the entry across a restart without persistence: the test proves nothing")
	}
	w.publish(mqttapi.SuffixDeployed, deployedMsg(svc.JobName, 2, "10.18.0.4", "127.0.0.1", munich))
	push(3)
	// Misses fill it (a write failing while the client still reconnects is only logged).
	waitFor(t, "the cache to fill again", func() bool {
		if r := w.query(svc.JobName, ""); r.Error != "" {
			t.Fatalf("query after the restart: %+v", r)
		}
		return cached(svc.JobName)
	})
	waitFor(t, "the cached entry to be the fresh one", func() bool {
		var e cache.Entry
		b, err := rdb.HGet(t.Context(), "semnet:c1:jobs", svc.JobName).Bytes()
		return err == nil && json.Unmarshal(b, &e) == nil && len(e.Table.Instances) == 3
	})
	if r := w.query(svc.JobName, ""); r.Error != "" || len(r.InstanceList) != 3 {
		t.Fatalf("query after the restart: %+v", r)
	}
}
