// Package cachetest is the conformance suite of cache.Cache: the in-memory cache and the
// Redis one call Run with a factory, so both are held to the same documented semantics
// (every kind of key, revision ordering, reindexing, tombstones, the cursor, concurrency)
// rather than each to its own reading of them.
package cachetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/fakeclock"
	"github.com/semnet/semnet/shared/geo"
)

// Run runs the conformance suite. open returns a fresh, empty cache for each subtest, set
// up with opt (whose Now is a Clock the subtest controls); Run closes it when the subtest
// ends, before the cleanups open registered. The hold tests play several replicas on the
// one cache.
func Run(t *testing.T, open func(t *testing.T, opt cache.Options) cache.Cache) {
	tests := []struct {
		name string
		opt  cache.Options
		fn   func(t *testing.T, h *harness)
	}{
		{"Empty", cache.Options{}, testEmpty},
		{"Keys", cache.Options{}, testKeys},
		{"InvalidKeys", cache.Options{}, testInvalidKeys},
		{"InvalidWrites", cache.Options{}, testInvalidWrites},
		{"Revisions", cache.Options{}, testRevisions},
		{"Reindex", cache.Options{}, testReindex},
		{"KeyConflict", cache.Options{}, testKeyConflict},
		{"Delete", cache.Options{}, testDelete},
		{"TombstoneTTL", cache.Options{TombstoneTTL: time.Minute}, testTombstoneTTL},
		{"MaxTombstones", cache.Options{MaxTombstones: 3}, testMaxTombstones},
		{"Cursor", cache.Options{}, testCursor},
		{"JobsAndLen", cache.Options{}, testJobsAndLen},
		{"Concurrent", cache.Options{}, testConcurrent},
		{"Holds", cache.Options{}, testHolds},
		{"HoldExpiry", cache.Options{HoldTTL: time.Minute}, testHoldExpiry},
		{"Dropped", cache.Options{}, testDropped},
		{"ConcurrentHolds", cache.Options{}, testConcurrentHolds},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := fakeclock.New()
			opt := tc.opt
			opt.Now = clock.Now
			c := open(t, opt)
			t.Cleanup(func() {
				if err := c.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, &harness{Cache: c, clock: clock, ctx: t.Context()})
		})
	}
}

// harness bundles what a test needs.
type harness struct {
	cache.Cache
	clock *fakeclock.Clock
	ctx   context.Context
}

// Entry returns version rev of job j (below 65536): n instances, whose Instance IPs depend
// on variant, so that two variants share the Service IPs and no Instance IP. Its job name
// is JobName(j) and its service ID ServiceID(j); every address in it is unique to j.
func Entry(j int, rev uint64, n, variant int) *cache.Entry {
	created := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	name := fmt.Sprintf("svc%d", j)
	e := &cache.Entry{
		Table: api.TableEntry{Service: api.Service{
			ID: ServiceID(j), JobName: JobName(j),
			App: "app", AppNS: "ns", Service: name, ServiceNS: "ns",
			RRIP: v4(30, j), RRIPv6: v6(1, 0, j), ClosestIP: v4(31, j), ClosestIPv6: v6(2, 0, j),
			CreatedAt: created, Revision: rev,
		}},
		Revision: rev,
		Fetched:  created.Add(time.Duration(rev) * time.Second),
	}
	for i := range n {
		e.Table.Instances = append(e.Table.Instances, api.Instance{
			Number:       i,
			InstanceIP:   v4(byte(64+64*variant+i), j),
			InstanceIPv6: v6(3+variant, i, j),
			ClusterID:    "c1",
			NamespaceIP:  netip.AddrFrom4([4]byte{172, 16, byte(j), byte(i)}),
			HostIP:       netip.AddrFrom4([4]byte{192, 168, 0, byte(i)}),
			HostPort:     30000 + i,
			Location:     &geo.Point{Lat: 48.1, Lon: 11.5},
			Status:       "running",
			UpdatedAt:    created,
			Revision:     rev,
		})
	}
	return e
}

// JobName is the job name of Entry(j, ...).
func JobName(j int) string { return fmt.Sprintf("app.ns.svc%d.ns", j) }

// ServiceID is the service ID of Entry(j, ...).
func ServiceID(j int) string { return fmt.Sprintf("sid-%d", j) }

// v4 is 10.a.<j>; v6 is fdff:2000::a:b:<j>.
func v4(a byte, j int) netip.Addr { return netip.AddrFrom4([4]byte{10, a, byte(j >> 8), byte(j)}) }

func v6(a, b, j int) netip.Addr {
	return netip.AddrFrom16([16]byte{0: 0xfd, 1: 0xff, 2: 0x20, 10: byte(a >> 8), 11: byte(a),
		12: byte(b >> 8), 13: byte(b), 14: byte(j >> 8), 15: byte(j)})
}

// keys returns every key e is found by, in canonical text form.
func keys(e *cache.Entry) []string {
	ks := []string{e.JobName(), e.Table.Service.ID}
	for a := range e.Addrs() {
		ks = append(ks, a.String())
	}
	return ks
}

func (h *harness) put(t *testing.T, e *cache.Entry, wantStored bool) {
	t.Helper()
	stored, err := h.Put(h.ctx, e)
	if err != nil {
		t.Fatalf("Put(%s@%d): %v", e.JobName(), e.Revision, err)
	}
	if stored != wantStored {
		t.Fatalf("Put(%s@%d) stored = %v, want %v", e.JobName(), e.Revision, stored, wantStored)
	}
}

func (h *harness) del(t *testing.T, job string, rev uint64) {
	t.Helper()
	if err := h.Delete(h.ctx, job, rev); err != nil {
		t.Fatalf("Delete(%s, %d): %v", job, rev, err)
	}
}

// want fails unless every key resolves to an entry equal to e.
func (h *harness) want(t *testing.T, e *cache.Entry, keys ...string) {
	t.Helper()
	for _, k := range keys {
		got, err := h.Get(h.ctx, k)
		if err != nil {
			t.Fatalf("Get(%q): %v; want %s@%d", k, err, e.JobName(), e.Revision)
		}
		equal(t, fmt.Sprintf("Get(%q)", k), got, e)
	}
}

// wantNotFound fails unless every key is not found.
func (h *harness) wantNotFound(t *testing.T, keys ...string) {
	t.Helper()
	for _, k := range keys {
		got, err := h.Get(h.ctx, k)
		if !errors.Is(err, cache.ErrNotFound) {
			desc := "<nil>"
			if got != nil {
				desc = fmt.Sprintf("%s@%d", got.JobName(), got.Revision)
			}
			t.Fatalf("Get(%q) = %s, %v; want ErrNotFound", k, desc, err)
		}
	}
}

func (h *harness) wantLen(t *testing.T, jobs, instances int) {
	t.Helper()
	j, n, err := h.Len(h.ctx)
	if err != nil {
		t.Fatalf("Len: %v", err)
	}
	if j != jobs || n != instances {
		t.Fatalf("Len = %d jobs, %d instances; want %d, %d", j, n, jobs, instances)
	}
}

func (h *harness) wantJobs(t *testing.T, want ...string) {
	t.Helper()
	got, err := h.Jobs(h.ctx)
	if err != nil {
		t.Fatalf("Jobs: %v", err)
	}
	slices.Sort(want)
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Jobs = %q, want %q", got, want)
	}
}

// equal compares entries by their JSON form, which is what a backend that stores JSON
// preserves (times as instants, unset addresses as unset).
func equal(t *testing.T, what string, got, want *cache.Entry) {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("%s: marshal: %v", what, err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("%s: marshal: %v", what, err)
	}
	if string(g) != string(w) {
		t.Fatalf("%s:\n got %s\nwant %s", what, g, w)
	}
}
