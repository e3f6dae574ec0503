package cache_test

import (
	"encoding/json"
	"runtime"
	"testing"
	"unsafe"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/cache/cachetest"
	"github.com/semnet/semnet/proto/api"
)

func TestMemoryConformance(t *testing.T) {
	cachetest.Run(t, func(t *testing.T, opt cache.Options) cache.Cache {
		return cache.NewMemory(opt)
	})
}

// TestGetAllocs proves that a hit allocates nothing, by every kind of key.
func TestGetAllocs(t *testing.T) {
	m := cache.NewMemory(cache.Options{})
	e := cachetest.Entry(1, 1, 3, 0)
	if _, err := m.Put(t.Context(), e); err != nil {
		t.Fatal(err)
	}
	sv := e.Table.Service
	for _, key := range []string{
		sv.JobName, sv.ID, sv.RRIP.String(), sv.RRIPv6.String(), "FDFF:2000:0::1:0:1",
		e.Table.Instances[2].InstanceIP.String(), e.Table.Instances[2].InstanceIPv6.String(),
	} {
		ctx := t.Context()
		allocs := testing.AllocsPerRun(1000, func() {
			if got, err := m.Get(ctx, key); err != nil || got.Revision != e.Revision {
				t.Fatalf("Get(%q) = %v, %v", key, got, err)
			}
		})
		if allocs != 0 {
			t.Errorf("Get(%q) allocates %v times per call, want 0", key, allocs)
		}
	}
}

// fill puts jobs entries of n instances each into m, decoded from JSON as the cluster
// service receives them from root (so every string is its own allocation, as in
// production).
func fill(tb testing.TB, m cache.Cache, jobs, n int) {
	tb.Helper()
	for j := range jobs {
		b, err := json.Marshal(cachetest.Entry(j, uint64(j+1), n, 0))
		if err != nil {
			tb.Fatal(err)
		}
		var e cache.Entry
		if err := json.Unmarshal(b, &e); err != nil {
			tb.Fatal(err)
		}
		if _, err := m.Put(tb.Context(), &e); err != nil {
			tb.Fatal(err)
		}
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestHeap reports the heap a cache of 100,000 instances (10,000 jobs of 10) takes. It
// reports rather than asserts (the figure moves with the Go version), except for a bound
// ten times the expected size, which only a leak or an accidental copy would break.
//
//	go test -run TestHeap -v ./cluster/cache
func TestHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("fills 100,000 instances")
	}
	const jobs, n = 10000, 10
	before := heapInUse()
	m := cache.NewMemory(cache.Options{})
	fill(t, m, jobs, n)
	after := heapInUse()
	runtime.KeepAlive(m)
	used := float64(after-before) / (1 << 20)
	t.Logf("%d jobs x %d instances: heap %.1f MiB (%.0f bytes per instance; api.Instance is %d bytes, api.Service %d)",
		jobs, n, used, float64(after-before)/(jobs*n), unsafe.Sizeof(api.Instance{}), unsafe.Sizeof(api.Service{}))
	if used > 200 {
		t.Errorf("heap of %.1f MiB for %d instances: the cluster process must fit in 256 MiB", used, jobs*n)
	}
}

// Benchmarks; reproduce with
//
//	go test -run '^$' -bench . -benchmem ./cluster/cache
func benchCache(b *testing.B) (*cache.Memory, *cache.Entry) {
	m := cache.NewMemory(cache.Options{})
	fill(b, m, 10000, 10)
	e, err := m.Get(b.Context(), cachetest.JobName(4321))
	if err != nil {
		b.Fatal(err)
	}
	return m, e
}

func benchGet(b *testing.B, key string) {
	m, _ := benchCache(b)
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Get(ctx, key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGetJobName(b *testing.B) { benchGet(b, cachetest.JobName(4321)) }

func BenchmarkGetServiceID(b *testing.B) { benchGet(b, cachetest.ServiceID(4321)) }

func BenchmarkGetInstanceIPv4(b *testing.B) {
	_, e := benchCache(b)
	benchGet(b, e.Table.Instances[7].InstanceIP.String())
}

func BenchmarkGetInstanceIPv6(b *testing.B) {
	_, e := benchCache(b)
	benchGet(b, e.Table.Instances[7].InstanceIPv6.String())
}

// BenchmarkGetMiss looks up an address no entry has.
func BenchmarkGetMiss(b *testing.B) {
	m, _ := benchCache(b)
	const key = "10.200.0.1"
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := m.Get(ctx, key); err == nil {
			b.Fatal("hit")
		}
	}
}

// BenchmarkPut replaces entries of 10 instances with newer revisions whose Instance IPs
// all changed, so each Put reindexes 20 addresses.
func BenchmarkPut(b *testing.B) {
	m, _ := benchCache(b)
	ctx := b.Context()
	const jobs = 10000
	// Two versions per job, alternating: the one revised and put is never the one whose
	// keys the cache holds (an entry must not be modified after Put).
	entries := make([]*cache.Entry, 2*jobs)
	for j := range jobs {
		entries[j] = cachetest.Entry(j, 0, 10, 1)
		entries[jobs+j] = cachetest.Entry(j, 0, 10, 0)
	}
	rev := uint64(1 << 20)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		e := entries[i%len(entries)]
		rev++
		e.Revision = rev
		if _, err := m.Put(ctx, e); err != nil {
			b.Fatal(err)
		}
	}
}
