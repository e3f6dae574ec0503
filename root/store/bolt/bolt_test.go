package bolt_test

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/root/store/storetest"
)

func open(t testing.TB, path string, opt store.Options) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(path, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, opt store.Options) store.Store {
		s := open(t, filepath.Join(t.TempDir(), "semnet.db"), opt)
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestDurability(t *testing.T) {
	path := filepath.Join(t.TempDir(), "semnet.db")
	storetest.Durability(t, func(opt store.Options) store.Store { return open(t, path, opt) })
}

// BenchmarkCreateService creates services from many goroutines at once (32 per CPU),
// as concurrent API requests do; creates/s is the figure to compare with the target.
func BenchmarkCreateService(b *testing.B) {
	s := open(b, filepath.Join(b.TempDir(), "semnet.db"), store.Options{Quarantine: time.Hour})
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
