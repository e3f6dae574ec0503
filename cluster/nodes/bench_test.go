package nodes_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

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
	node := "n1"
	topic := mqttapi.NodeTopic(node, mqttapi.SuffixTableQuery)
	for _, c := range []struct{ name, payload string }{
		{"by-name", fmt.Sprintf(`{"sname":%q}`, j.Service.JobName)},
		{"by-ip", fmt.Sprintf(`{"sip":%q}`, j.Service.RRIP)},
	} {
		b.Run(c.name, func(b *testing.B) {
			payload := []byte(c.payload)
			// The first query may miss and be answered from root in a goroutine of its own.
			before := pub.n.Load()
			srv.Handle(node, topic, payload)
			for pub.n.Load() == before {
				time.Sleep(time.Millisecond)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				srv.Handle(node, topic, payload)
			}
		})
	}
}
