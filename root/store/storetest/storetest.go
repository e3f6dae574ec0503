// Package storetest is the conformance suite of store.Store: every backend's tests call
// Run with a factory, so the embedded store and MongoDB are held to the same documented
// semantics (address uniqueness across roles, quarantine, revisions and the change log,
// optimistic updates) rather than each to its own reading of them.
package storetest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/fakeclock"
)

// Quarantine is the quarantine the suite opens stores with.
const Quarantine = time.Hour

// Run runs the conformance suite. open returns a fresh, empty store for each subtest,
// opened with opt, and closes it in t.Cleanup.
func Run(t *testing.T, open func(t *testing.T, opt store.Options) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"Empty", testEmpty},
		{"NotFound", testNotFound},
		{"Clusters", testClusters},
		{"Services", testServices},
		{"ListServicesPagination", testListServicesPagination},
		{"AddressUniqueness", testAddressUniqueness},
		{"Quarantine", testQuarantine},
		{"DeleteService", testDeleteService},
		{"Instances", testInstances},
		{"UpdateInstance", testUpdateInstance},
		{"UpdateInstanceConcurrent", testUpdateInstanceConcurrent},
		{"Leases", testLeases},
		{"Subnets", testSubnets},
		{"Interests", testInterests},
		{"Changes", testChanges},
		{"CompactChanges", testCompactChanges},
		{"ConcurrentSameAddress", testConcurrentSameAddress},
		{"ConcurrentTakeover", testConcurrentTakeover},
		{"ConcurrentCreates", testConcurrentCreates},
		{"Gateways", testGateways},
		{"Exposures", testExposures},
		{"DeleteServiceWithExposures", testDeleteServiceWithExposures},
		{"ConcurrentExposures", testConcurrentExposures},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := fakeclock.New()
			s := open(t, store.Options{Quarantine: Quarantine, Now: clock.Now})
			tc.fn(t, &harness{Store: s, clock: clock, ctx: t.Context()})
		})
	}
}

// harness bundles what a test needs; its address generator hands out unique addresses.
type harness struct {
	store.Store
	clock *fakeclock.Clock
	ctx   context.Context
	n     atomic.Uint32
}

// addr4 and addr6 return addresses never returned before by this harness.
func (h *harness) addr4() netip.Addr {
	n := h.n.Add(1)
	return netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
}

func (h *harness) addr6() netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfd, 0x00
	binary.BigEndian.PutUint32(b[12:], h.n.Add(1))
	return netip.AddrFrom16(b)
}

func (h *harness) pair() store.AddrPair { return store.AddrPair{V4: h.addr4(), V6: h.addr6()} }

// service returns a service with fresh addresses; its job name is app.ns.<id>.ns.
func (h *harness) service(id string) store.Service {
	return store.Service{ID: id, App: "app", AppNS: "ns", Name: id, NS: "ns",
		RR: h.pair(), Closest: h.pair(), CreatedAt: h.clock.Now()}
}

func (h *harness) instance(serviceID string, number int) store.Instance {
	return store.Instance{ServiceID: serviceID, Number: number, IP: h.pair(),
		Status: store.StatusScheduled, UpdatedAt: h.clock.Now()}
}

// gateway returns a gateway record named id using instance number n of the gateway
// service (the store does not check that the instance exists).
func (h *harness) gateway(id string, n int) store.Gateway {
	return store.Gateway{ID: id, ClusterID: "c1", PublicV4: h.addr4(), PublicV6: h.addr6(), InstanceNumber: n,
		CreatedAt: h.clock.Now(), UpdatedAt: h.clock.Now()}
}

// exposure returns an exposure of a service's port 80 on publicPort, for every gateway.
func (h *harness) exposure(serviceID, protocol string, publicPort int) store.Exposure {
	return store.Exposure{ID: store.ExposureID(protocol, publicPort), ServiceID: serviceID, Protocol: protocol,
		PublicPort: publicPort, ServicePort: 80, Policy: "round_robin", InstanceNumber: -1, Target: h.pair(),
		CreatedAt: h.clock.Now()}
}

func (h *harness) mustService(t *testing.T, id string) store.Service {
	t.Helper()
	sv, err := h.CreateService(h.ctx, h.service(id))
	if err != nil {
		t.Fatalf("CreateService(%s): %v", id, err)
	}
	return sv
}

func (h *harness) mustInstance(t *testing.T, serviceID string, number int) store.Instance {
	t.Helper()
	in, err := h.CreateInstance(h.ctx, h.instance(serviceID, number))
	if err != nil {
		t.Fatalf("CreateInstance(%s, %d): %v", serviceID, number, err)
	}
	return in
}

// changesSince returns every change after since.
func (h *harness) changesSince(t *testing.T, since uint64) []store.Change {
	t.Helper()
	cs, err := h.Changes(h.ctx, since, 100000)
	if err != nil {
		t.Fatalf("Changes(%d): %v", since, err)
	}
	return cs
}

func (h *harness) revision(t *testing.T) uint64 {
	t.Helper()
	rev, err := h.Revision(h.ctx)
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return rev
}

// wantErr fails unless errors.Is(err, target).
func wantErr(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want %v", what, err, target)
	}
}

func noErr(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// wantTaken fails unless err is an *AddressTakenError for addr held by (role, owner).
func wantTaken(t *testing.T, what string, err error, addr netip.Addr, role, owner string, quarantined bool) *store.AddressTakenError {
	t.Helper()
	var taken *store.AddressTakenError
	if !errors.As(err, &taken) {
		t.Fatalf("%s: got error %v, want *store.AddressTakenError", what, err)
	}
	if !errors.Is(err, store.ErrAddressTaken) {
		t.Fatalf("%s: %v does not match store.ErrAddressTaken", what, err)
	}
	if taken.Addr != addr || taken.Lease.Addr != addr || taken.Lease.Role != role || taken.Lease.Owner != owner {
		t.Fatalf("%s: taken %s by %+v, want %s held by %s (%s)", what, taken.Addr, taken.Lease, addr, owner, role)
	}
	if quarantined == taken.Lease.ReleasedAt.IsZero() {
		t.Fatalf("%s: lease %+v, want quarantined=%v", what, taken.Lease, quarantined)
	}
	return taken
}

// wantFree fails unless no lease holds addr.
func (h *harness) wantFree(t *testing.T, addrs ...netip.Addr) {
	t.Helper()
	for _, a := range addrs {
		l, err := h.GetLease(h.ctx, a)
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetLease(%s) = %+v, %v; want ErrNotFound", a, l, err)
		}
	}
}

// wantLease fails unless addr is leased by (role, owner, instance), quarantined or not.
func (h *harness) wantLease(t *testing.T, addr netip.Addr, role, owner string, instance int, quarantined bool) store.Lease {
	t.Helper()
	l, err := h.GetLease(h.ctx, addr)
	if err != nil {
		t.Fatalf("GetLease(%s): %v", addr, err)
	}
	if l.Addr != addr || l.Role != role || l.Owner != owner || l.Instance != instance {
		t.Fatalf("GetLease(%s) = %+v, want role %s owner %s instance %d", addr, l, role, owner, instance)
	}
	if quarantined == l.ReleasedAt.IsZero() {
		t.Fatalf("GetLease(%s) = %+v, want quarantined=%v", addr, l, quarantined)
	}
	if l.CreatedAt.IsZero() {
		t.Fatalf("GetLease(%s) = %+v: CreatedAt is not set", addr, l)
	}
	return l
}

// equal compares records after putting their times in UTC (backends may hand times
// back in another zone; the instant is what must survive).
func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	g, w := normalize(got), normalize(want)
	if !reflect.DeepEqual(g, w) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, g, w)
	}
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Round(0)
}

func normalize(v any) any {
	switch v := v.(type) {
	case store.Service:
		v.CreatedAt = utc(v.CreatedAt)
		return v
	case store.Instance:
		v.UpdatedAt = utc(v.UpdatedAt)
		return v
	case store.Cluster:
		v.CreatedAt, v.LastSeen = utc(v.CreatedAt), utc(v.LastSeen)
		return v
	case store.Subnet:
		v.CreatedAt = utc(v.CreatedAt)
		return v
	case store.Lease:
		v.CreatedAt, v.ReleasedAt = utc(v.CreatedAt), utc(v.ReleasedAt)
		return v
	case store.Change:
		v.Time = utc(v.Time)
		return v
	case store.Gateway:
		v.CreatedAt, v.UpdatedAt = utc(v.CreatedAt), utc(v.UpdatedAt)
		return v
	case store.Exposure:
		v.CreatedAt = utc(v.CreatedAt)
		return v
	case []store.Gateway:
		return normalizeAll(v)
	case []store.Exposure:
		return normalizeAll(v)
	case []store.Service:
		return normalizeAll(v)
	case []store.Instance:
		return normalizeAll(v)
	case []store.Cluster:
		return normalizeAll(v)
	case []store.Subnet:
		return normalizeAll(v)
	case []string:
		if len(v) == 0 {
			return []string(nil)
		}
		return v
	}
	return v
}

func normalizeAll[T any](v []T) []any {
	out := make([]any, len(v))
	for i := range v {
		out[i] = normalize(v[i])
	}
	return out
}

func ids(ss []store.Service) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = s.ID
	}
	return out
}

func describe(cs []store.Change) string {
	s := ""
	for _, c := range cs {
		s += fmt.Sprintf("\n  %d %s %s %s %s %d %s", c.Revision, c.Kind, c.Op, c.ServiceID, c.JobName, c.Instance, c.Object)
	}
	return s
}

// BenchService returns service number i of a benchmark: its ID, job name and four
// addresses are unique for every i below 2^30.
func BenchService(i uint64) store.Service {
	v4 := func(n uint64) netip.Addr {
		return netip.AddrFrom4([4]byte{byte(10 + n>>24), byte(n >> 16), byte(n >> 8), byte(n)})
	}
	v6 := func(n uint64) netip.Addr {
		var b [16]byte
		b[0], b[1] = 0xfd, 0x00
		binary.BigEndian.PutUint64(b[8:], n)
		return netip.AddrFrom16(b)
	}
	id := fmt.Sprintf("bench%010d", i)
	return store.Service{ID: id, App: "app", AppNS: "ns", Name: id, NS: "ns",
		RR:        store.AddrPair{V4: v4(2 * i), V6: v6(2 * i)},
		Closest:   store.AddrPair{V4: v4(2*i + 1), V6: v6(2*i + 1)},
		CreatedAt: time.Now()}
}

// BenchInstance returns instance number of service serviceID in a benchmark, scheduled,
// with addresses that are unique for every i below 2^24 and apart from BenchService's.
func BenchInstance(serviceID string, number int, i uint64) store.Instance {
	var v6 [16]byte
	v6[0], v6[1] = 0xfd, 0x01
	binary.BigEndian.PutUint64(v6[8:], i)
	return store.Instance{ServiceID: serviceID, Number: number,
		IP:     store.AddrPair{V4: netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)}), V6: netip.AddrFrom16(v6)},
		Status: store.StatusScheduled, UpdatedAt: time.Now()}
}

// deleteService deletes a service, for tests that check only the error.
func (h *harness) deleteService(id string, force bool) error {
	_, err := h.DeleteService(h.ctx, id, force)
	return err
}
