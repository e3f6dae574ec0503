package cachetest

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/cache"
)

func testEmpty(t *testing.T, h *harness) {
	h.wantNotFound(t, JobName(1), ServiceID(1), v4(30, 1).String())
	h.wantJobs(t)
	h.wantLen(t, 0, 0)
	cur, err := h.Cursor(h.ctx)
	if err != nil || cur != 0 {
		t.Fatalf("Cursor of an empty cache = %d, %v; want 0", cur, err)
	}
}

func testKeys(t *testing.T, h *harness) {
	e := Entry(1, 5, 3, 0)
	other := Entry(2, 6, 2, 0)
	h.put(t, e, true)
	h.put(t, other, true)
	sv := e.Table.Service
	h.want(t, e, sv.JobName, sv.ID)
	h.want(t, e, sv.RRIP.String(), sv.RRIPv6.String(), sv.ClosestIP.String(), sv.ClosestIPv6.String())
	for _, in := range e.Table.Instances {
		h.want(t, e, in.InstanceIP.String(), in.InstanceIPv6.String())
	}
	h.want(t, other, keys(other)...)

	// Any valid spelling of an address is the same key.
	rr6 := sv.RRIPv6.String() // fdff:2000::1:0:1
	if rr6 != "fdff:2000::1:0:1" {
		t.Fatalf("fixture: RR IPv6 is %s", rr6)
	}
	h.want(t, e,
		"fdff:2000:0:0:0:1:0:1",
		"fdff:2000:0000::1:0:1",
		"FDFF:2000::1:0:1",
		"fdff:2000:0::0001:0000:0001",
		"::ffff:"+sv.RRIP.String(), // an IPv4-mapped IPv6 address is the IPv4 address
		"::ffff:"+e.Table.Instances[2].InstanceIP.String(),
	)
	// Addresses no cached entry has: a near miss, the other family's twin, and the
	// namespace and host addresses of an instance (which are not keys).
	in := e.Table.Instances[0]
	h.wantNotFound(t, "10.30.0.3", "fdff:2000::1:0:3", "::a1e:1", in.NamespaceIP.String(), in.HostIP.String())
}

func testInvalidKeys(t *testing.T, h *harness) {
	h.put(t, Entry(1, 5, 2, 0), true)
	garbage := []string{
		"", " ", ".", ":", "::", "0.0.0.0", "garbage", "app.ns.svc1", "APP.NS.SVC1.NS",
		" " + JobName(1), JobName(1) + " ", "sid-1 ", "10.30.0", "10.30.0.1.", "10.30.0.1/32",
		"10.30.0.256", "010.030.000.001", "fdff:2000::1:0:1/128", "fdff:2000:::1", "[fdff:2000::1:0:1]",
		"fdff:2000::1:0:1%eth0x", "\x00", "\xff\xfe", strings.Repeat("a", 1<<16), strings.Repeat("1.", 1000),
		"id:sid-1", "ip:10.30.0.1", "*", "?", "%", "\n",
	}
	h.wantNotFound(t, garbage...)
}

func testInvalidWrites(t *testing.T, h *harness) {
	if stored, err := h.Put(h.ctx, nil); err == nil || stored {
		t.Fatalf("Put(nil) = %v, %v; want an error", stored, err)
	}
	e := Entry(1, 5, 1, 0)
	e.Table.Service.JobName = ""
	stored, err := h.Put(h.ctx, e)
	if err == nil || stored || errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("Put of an entry without a job name = %v, %v; want an error", stored, err)
	}
	h.wantNotFound(t, keys(e)[1:]...)
	h.wantLen(t, 0, 0)
	if err := h.Delete(h.ctx, "", 5); err == nil {
		t.Fatal("Delete of an empty job name succeeded")
	}

	// An entry without addresses (not yet allocated) is found by name and ID.
	bare := Entry(2, 5, 0, 0)
	sv := &bare.Table.Service
	sv.RRIP, sv.RRIPv6, sv.ClosestIP, sv.ClosestIPv6 = netip.Addr{}, netip.Addr{}, netip.Addr{}, netip.Addr{}
	h.put(t, bare, true)
	h.want(t, bare, sv.JobName, sv.ID)
	h.wantNotFound(t, "0.0.0.0", "::", "invalid IP")
	h.wantLen(t, 1, 0)
}

func testRevisions(t *testing.T, h *harness) {
	v5 := Entry(1, 5, 2, 0)
	h.put(t, v5, true)
	h.put(t, Entry(1, 3, 1, 1), false) // older: ignored, its keys never indexed
	h.want(t, v5, keys(v5)...)
	h.wantNotFound(t, keys(Entry(1, 3, 1, 1))[6:]...)

	// The same revision again replaces the entry (a re-fetch refreshes Fetched).
	again := Entry(1, 5, 2, 0)
	again.Fetched = v5.Fetched.Add(time.Hour)
	h.put(t, again, true)
	h.want(t, again, keys(again)...)
	h.wantLen(t, 1, 2)

	// Revisions compare as numbers: 10 is newer than 9 (not as strings), and revisions
	// beyond 2^53 (not as floating point) still differ in their last digit.
	h.put(t, Entry(1, 9, 1, 0), true)
	h.put(t, Entry(1, 10, 1, 0), true)
	h.put(t, Entry(1, 9, 2, 0), false)
	big := uint64(1)<<60 + 2
	h.put(t, Entry(1, big, 3, 0), true)
	h.put(t, Entry(1, big-1, 1, 0), false)
	h.put(t, Entry(1, math.MaxUint64, 2, 1), true)
	h.put(t, Entry(1, math.MaxUint64-1, 1, 0), false)
	last := Entry(1, math.MaxUint64, 2, 1)
	h.want(t, last, keys(last)...)
	h.wantLen(t, 1, 2)
}

func testReindex(t *testing.T, h *harness) {
	v1 := Entry(1, 10, 3, 0)
	h.put(t, v1, true)

	// v2: one instance fewer.
	v2 := Entry(1, 11, 2, 0)
	h.put(t, v2, true)
	h.want(t, v2, keys(v2)...)
	gone := v1.Table.Instances[2]
	h.wantNotFound(t, gone.InstanceIP.String(), gone.InstanceIPv6.String())
	h.wantLen(t, 1, 2)

	// v3: every Instance IP, the RR IPv6 and the service ID changed.
	v3 := Entry(1, 12, 2, 1)
	v3.Table.Service.RRIPv6 = netip.MustParseAddr("fdff:2000::99")
	v3.Table.Service.ID = "sid-renamed"
	h.put(t, v3, true)
	h.want(t, v3, keys(v3)...)
	h.wantNotFound(t, ServiceID(1), v2.Table.Service.RRIPv6.String())
	for _, in := range v2.Table.Instances {
		h.wantNotFound(t, in.InstanceIP.String(), in.InstanceIPv6.String())
	}

	// v4: no instances at all; the Service IPs still resolve.
	v4 := Entry(1, 13, 0, 1)
	h.put(t, v4, true)
	h.want(t, v4, keys(v4)...)
	for _, in := range v3.Table.Instances {
		h.wantNotFound(t, in.InstanceIP.String(), in.InstanceIPv6.String())
	}
	h.wantNotFound(t, "sid-renamed", "fdff:2000::99")
	h.wantLen(t, 1, 0)
}

func testKeyConflict(t *testing.T, h *harness) {
	// Root moved an address from job A to job B; the cache sees B's new version before
	// A's (stale or updated) ones.
	shared := netip.MustParseAddr("10.99.0.1")
	b := Entry(2, 20, 1, 0)
	b.Table.Service.ClosestIP = shared
	h.put(t, b, true)

	staleA := Entry(1, 10, 1, 0)
	staleA.Table.Service.RRIP = shared
	h.put(t, staleA, true)
	h.want(t, b, shared.String()) // B is newer: it keeps the address
	h.want(t, staleA, staleA.JobName(), staleA.Table.Instances[0].InstanceIP.String())

	newA := Entry(1, 30, 1, 0) // A let the address go; that must not unindex B's claim
	h.put(t, newA, true)
	h.want(t, b, shared.String())

	// A newer version of A claiming it again takes it over.
	takeA := Entry(1, 40, 1, 0)
	takeA.Table.Service.RRIP = shared
	h.put(t, takeA, true)
	h.want(t, takeA, shared.String())

	// B dropping the address (or being deleted) leaves A's claim alone.
	h.del(t, b.JobName(), 50)
	h.want(t, takeA, shared.String())
	h.wantNotFound(t, b.JobName(), b.Table.Service.ID, b.Table.Service.RRIP.String())

	// Service IDs follow the same rule.
	c := Entry(3, 60, 0, 0)
	c.Table.Service.ID = takeA.Table.Service.ID
	h.put(t, c, true)
	h.want(t, c, takeA.Table.Service.ID)
	h.want(t, takeA, takeA.JobName())
}

func testDelete(t *testing.T, h *harness) {
	e := Entry(1, 5, 2, 0)
	h.put(t, e, true)
	h.del(t, e.JobName(), 4) // older than the cached entry: ignored
	h.want(t, e, keys(e)...)

	h.del(t, e.JobName(), 5)
	h.wantNotFound(t, keys(e)...)
	h.wantJobs(t)
	h.wantLen(t, 0, 0)
	// The tombstone keeps late fetches out ...
	h.put(t, Entry(1, 5, 2, 0), false)
	h.put(t, Entry(1, 4, 2, 0), false)
	h.wantNotFound(t, keys(e)...)
	// ... but not a newer version.
	e6 := Entry(1, 6, 1, 1)
	h.put(t, e6, true)
	h.want(t, e6, keys(e6)...)
	h.wantLen(t, 1, 1)

	// A delete that overtook the fetch of the job it deletes.
	h.del(t, JobName(2), 10)
	h.put(t, Entry(2, 9, 1, 0), false)
	h.put(t, Entry(2, 10, 1, 0), false)
	h.wantNotFound(t, keys(Entry(2, 10, 1, 0))...)
	// An older delete arriving late does not lower the tombstone.
	h.del(t, JobName(2), 7)
	h.put(t, Entry(2, 8, 1, 0), false)
	e11 := Entry(2, 11, 1, 0)
	h.put(t, e11, true)
	h.want(t, e11, keys(e11)...)

	// Deleting twice, and deleting an unknown job, are not errors.
	h.del(t, JobName(2), 12)
	h.del(t, JobName(2), 12)
	h.del(t, "app.ns.never.ns", 1)
	h.wantJobs(t, JobName(1))
	h.wantLen(t, 1, 1)

	// A job without instances (a service just created) is deleted like any other.
	empty := Entry(3, 5, 0, 0)
	h.put(t, empty, true)
	h.del(t, empty.JobName(), 6)
	h.wantNotFound(t, keys(empty)...)
	h.wantJobs(t, JobName(1))
	h.wantLen(t, 1, 1)
}

func testTombstoneTTL(t *testing.T, h *harness) {
	h.del(t, JobName(1), 10)
	h.clock.Advance(30 * time.Second)
	h.put(t, Entry(1, 9, 1, 0), false)
	h.clock.Advance(31 * time.Second) // the tombstone is a minute and a second old
	late := Entry(1, 9, 1, 0)
	h.put(t, late, true)
	h.want(t, late, keys(late)...)

	// A tombstone renewed by a later delete ages from then.
	h.del(t, JobName(2), 10)
	h.clock.Advance(50 * time.Second)
	h.del(t, JobName(2), 11)
	h.clock.Advance(50 * time.Second)
	h.put(t, Entry(2, 10, 1, 0), false)
}

func testMaxTombstones(t *testing.T, h *harness) {
	for j := 1; j <= 4; j++ { // the suite opened this cache with MaxTombstones: 3
		h.del(t, JobName(j), 10)
		h.clock.Advance(time.Second)
	}
	oldest := Entry(1, 9, 1, 0)
	h.put(t, oldest, true)
	h.want(t, oldest, keys(oldest)...)
	for j := 2; j <= 4; j++ {
		h.put(t, Entry(j, 9, 1, 0), false)
	}
}

func testCursor(t *testing.T, h *harness) {
	steps := []struct{ set, want uint64 }{
		{5, 5}, {3, 5}, {5, 5}, {9, 9}, {10, 10}, {9, 10},
		{1<<60 + 2, 1<<60 + 2}, {1<<60 + 1, 1<<60 + 2}, {0, 1<<60 + 2},
		{math.MaxUint64, math.MaxUint64}, {math.MaxUint64 - 1, math.MaxUint64},
	}
	for _, s := range steps {
		if err := h.SetCursor(h.ctx, s.set); err != nil {
			t.Fatalf("SetCursor(%d): %v", s.set, err)
		}
		got, err := h.Cursor(h.ctx)
		if err != nil {
			t.Fatalf("Cursor: %v", err)
		}
		if got != s.want {
			t.Fatalf("after SetCursor(%d): Cursor = %d, want %d", s.set, got, s.want)
		}
	}
}

func testJobsAndLen(t *testing.T, h *harness) {
	var names []string
	total := 0
	for j := 1; j <= 5; j++ {
		h.put(t, Entry(j, uint64(j), j, 0), true)
		names = append(names, JobName(j))
		total += j
	}
	h.wantJobs(t, names...)
	h.wantLen(t, 5, total)

	h.put(t, Entry(3, 100, 1, 1), true) // 3 instances become 1
	h.del(t, JobName(5), 100)
	h.put(t, Entry(1, 0, 9, 0), false) // older: nothing counted
	h.wantJobs(t, JobName(1), JobName(2), JobName(3), JobName(4))
	h.wantLen(t, 4, 1+2+1+4)
}

// testConcurrent applies every revision of a set of jobs, and deletes of some, in random
// order from several goroutines while others read, then checks that the cache holds
// exactly the newest state of each job: the order of arrival must not matter.
func testConcurrent(t *testing.T, h *harness) {
	const (
		workers = 8
		jobs    = 16
		revs    = 12 // revisions 1..revs of every job
	)
	// Version r of a job has 1+r%3 instances of variant r%2, so consecutive versions
	// differ in both instance count and Instance IPs.
	version := func(j int, r uint64) *cache.Entry { return Entry(j, r, 1+int(r%3), int(r%2)) }
	type op struct {
		j   int
		rev uint64
		del bool
	}
	var ops []op
	for j := range jobs {
		for r := uint64(1); r <= revs; r++ {
			ops = append(ops, op{j: j, rev: r})
		}
		switch j % 4 {
		case 0: // deleted after its last version
			ops = append(ops, op{j: j, rev: revs + 1, del: true})
		case 1: // deleted, then deployed again
			ops = append(ops, op{j: j, rev: revs / 2, del: true})
		}
	}
	rand.Shuffle(len(ops), func(a, b int) { ops[a], ops[b] = ops[b], ops[a] })

	// Every key any version of any job ever had.
	var allKeys []string
	for j := range jobs {
		for variant := range 2 {
			allKeys = append(allKeys, keys(Entry(j, 1, 3, variant))...)
		}
	}

	var wg sync.WaitGroup
	var maxCursor uint64
	for w := range workers {
		cursor := uint64(w)*1000 + 7
		maxCursor = max(maxCursor, cursor)
		wg.Go(func() {
			for i := w; i < len(ops); i += workers {
				o := ops[i]
				var err error
				if o.del {
					err = h.Delete(h.ctx, JobName(o.j), o.rev)
				} else {
					_, err = h.Put(h.ctx, version(o.j, o.rev))
				}
				if err != nil {
					t.Errorf("op %+v: %v", o, err)
					return
				}
				// Whatever a read finds must be found by the key it was read by.
				k := allKeys[rand.IntN(len(allKeys))]
				e, err := h.Get(h.ctx, k)
				switch {
				case errors.Is(err, cache.ErrNotFound):
				case err != nil:
					t.Errorf("Get(%q): %v", k, err)
					return
				case !slices.Contains(keys(e), k):
					t.Errorf("Get(%q) = %s@%d, which has no such key", k, e.JobName(), e.Revision)
					return
				}
			}
			if err := h.SetCursor(h.ctx, cursor); err != nil {
				t.Errorf("SetCursor(%d): %v", cursor, err)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}

	var live []string
	instances := 0
	want := map[string]*cache.Entry{} // key → the entry it must resolve to
	for j := range jobs {
		if j%4 == 0 {
			continue
		}
		e := version(j, revs)
		live = append(live, e.JobName())
		instances += len(e.Table.Instances)
		for _, k := range keys(e) {
			want[k] = e
		}
	}
	for _, k := range allKeys {
		if e := want[k]; e != nil {
			h.want(t, e, k)
		} else {
			h.wantNotFound(t, k)
		}
	}
	h.wantJobs(t, live...)
	h.wantLen(t, len(live), instances)
	if got, err := h.Cursor(h.ctx); err != nil || got != maxCursor {
		t.Fatalf("Cursor = %d, %v; want %d", got, err, maxCursor)
	}
}
