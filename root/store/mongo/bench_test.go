package mongo_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/mongo"
	"github.com/semnet/semnet/root/store/storetest"
)

// BenchmarkCreateService creates services from many goroutines at once (32 per CPU),
// as concurrent API requests do.
func BenchmarkCreateService(b *testing.B) {
	uri := testURI(b)
	s := open(b, uri, freshDB(b, uri), mongo.Options{Options: store.Options{Quarantine: time.Hour}})
	defer s.Close()
	var n atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.CreateService(b.Context(), storetest.BenchService(n.Add(1))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
}

// BenchmarkInsertBare inserts the same service documents with no leases, revision or
// change: the floor CreateService is measured against (time and allocations).
func BenchmarkInsertBare(b *testing.B) {
	uri := testURI(b)
	coll := rawClient(b, uri).Database(freshDB(b, uri)).Collection("scratch")
	var n atomic.Uint64
	b.ReportAllocs()
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := coll.InsertOne(b.Context(), mongo.ServiceDoc(storetest.BenchService(n.Add(1)))); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "inserts/s")
}

// BenchmarkDeleteServiceForced undeploys a service with its instances in one call
// (DELETE with force), one at a time: the latency a deployment tool sees. The service
// and its instances are created outside the timing.
func BenchmarkDeleteServiceForced(b *testing.B) {
	for _, instances := range []int{1, 8} {
		b.Run(fmt.Sprintf("instances=%d", instances), func(b *testing.B) {
			uri := testURI(b)
			s := open(b, uri, freshDB(b, uri), mongo.Options{Options: store.Options{Quarantine: time.Hour}})
			defer s.Close()
			var k uint64
			for i := range b.N {
				b.StopTimer()
				sv, err := s.CreateService(b.Context(), storetest.BenchService(uint64(i)))
				if err != nil {
					b.Fatal(err)
				}
				for n := range instances {
					k++
					if _, err := s.CreateInstance(b.Context(), storetest.BenchInstance(sv.ID, n, k)); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				if _, err := s.DeleteService(b.Context(), sv.ID, true); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
