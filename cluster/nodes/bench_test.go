package nodes_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/cluster/nodes"
	"github.com/semnet/semnet/cluster/subnets"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

// counter is a publisher that only counts what the server hands it.
type counter struct{ n atomic.Int64 }

func (c *counter) Publish(string, []byte) error { c.n.Add(1); return nil }

// BenchmarkQueryHit is the cluster's side of a table query answered from the cache, the
// bulk of its work: decode the node's request, look the key up, record the node's
// interest and hand the (memoised) answer to the broker. The broker's own cost is
// clusterload's to measure.
//
//	go test -run '^$' -bench QueryHit -benchmem ./cluster/nodes/
func BenchmarkQueryHit(b *testing.B) {
	j := clustertest.StartJob(b, "c1")
	tb := table.New(j.RC, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1"})
	pub := &counter{}
	loc := geo.Point{Lat: 48.14, Lon: 11.58}
	srv := nodes.New(b.Context(), tb, pub, &reports{}, subnets.New(j.RC, "c1", 0, nil), nodes.Options{Location: &loc, ClusterID: "c1"})
	for _, key := range []string{j.Service.JobName, j.Service.RRIP.String()} {
		b.Run(map[bool]string{true: "by-name", false: "by-ip"}[key == j.Service.JobName], func(b *testing.B) {
			node := "n1"
			topic := mqttapi.NodeTopic(node, mqttapi.SuffixTableQuery)
			payload := fmt.Appendf(nil, `{"sname":%q}`, key)
			if key != j.Service.JobName {
				payload = fmt.Appendf(nil, `{"sip":%q}`, key)
			}
			srv.Handle(node, topic, payload) // the miss that fills the cache
			for pub.n.Load() == 0 {
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				srv.Handle(node, topic, payload)
			}
		})
		pub.n.Store(0)
	}
}
