package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/geo"
)

func testEmpty(t *testing.T, h *harness) {
	noErr(t, "Ping", h.Ping(h.ctx))
	if rev := h.revision(t); rev != 0 {
		t.Fatalf("Revision of an empty store = %d, want 0", rev)
	}
	if cs := h.changesSince(t, 0); len(cs) != 0 {
		t.Fatalf("Changes of an empty store: %s", describe(cs))
	}
	ss, err := h.ListServices(h.ctx, "", 10)
	noErr(t, "ListServices", err)
	cl, err := h.ListClusters(h.ctx)
	noErr(t, "ListClusters", err)
	sn, err := h.ListSubnets(h.ctx)
	noErr(t, "ListSubnets", err)
	n := 0
	noErr(t, "ListLeases", h.ListLeases(h.ctx, func(store.Lease) error { n++; return nil }))
	if len(ss)+len(cl)+len(sn)+n != 0 {
		t.Fatalf("empty store lists %d services, %d clusters, %d subnets, %d leases", len(ss), len(cl), len(sn), n)
	}
}

func testNotFound(t *testing.T, h *harness) {
	sv := h.mustService(t, "present")
	_, err := h.GetCluster(h.ctx, "nope")
	wantErr(t, "GetCluster", err, store.ErrNotFound)
	wantErr(t, "DeleteCluster", h.DeleteCluster(h.ctx, "nope"), store.ErrNotFound)
	_, err = h.GetService(h.ctx, "nope")
	wantErr(t, "GetService", err, store.ErrNotFound)
	_, err = h.GetServiceByJobName(h.ctx, "app.ns.nope.ns")
	wantErr(t, "GetServiceByJobName", err, store.ErrNotFound)
	wantErr(t, "DeleteService", h.deleteService("nope", false), store.ErrNotFound)
	wantErr(t, "DeleteService force", h.deleteService("nope", true), store.ErrNotFound)
	_, err = h.CreateInstance(h.ctx, h.instance("nope", 0))
	wantErr(t, "CreateInstance of a missing service", err, store.ErrNotFound)
	_, err = h.GetInstance(h.ctx, sv.ID, 0)
	wantErr(t, "GetInstance", err, store.ErrNotFound)
	called := false
	_, err = h.UpdateInstance(h.ctx, sv.ID, 0, func(*store.Instance) error { called = true; return nil })
	wantErr(t, "UpdateInstance", err, store.ErrNotFound)
	if called {
		t.Fatal("UpdateInstance called fn for a missing instance")
	}
	wantErr(t, "DeleteInstance", h.DeleteInstance(h.ctx, sv.ID, 0), store.ErrNotFound)
	_, err = h.GetLease(h.ctx, h.addr4())
	wantErr(t, "GetLease", err, store.ErrNotFound)
	p := netip.MustParsePrefix("10.200.0.0/26")
	_, err = h.GetSubnet(h.ctx, p)
	wantErr(t, "GetSubnet", err, store.ErrNotFound)
	wantErr(t, "DeleteSubnet", h.DeleteSubnet(h.ctx, p), store.ErrNotFound)
	ins, err := h.ListInstances(h.ctx, "nope")
	noErr(t, "ListInstances of a missing service", err)
	if len(ins) != 0 {
		t.Fatalf("ListInstances of a missing service = %v", ins)
	}
	// Nothing above may have logged a change.
	if cs := h.changesSince(t, sv.Revision); len(cs) != 0 {
		t.Fatalf("failed calls logged changes: %s", describe(cs))
	}
}

func testClusters(t *testing.T, h *harness) {
	now := h.clock.Now()
	b := store.Cluster{ID: "b", Name: "beta", Address: "10.0.0.2", Port: 10000,
		Location: geo.Point{Lat: 48.1, Lon: 11.5}, RadiusKM: 50, Status: "ready", LastSeen: now, CreatedAt: now}
	a := store.Cluster{ID: "a", Name: "alpha", Address: "cluster-a.example", Port: 10001, Reference: true, CreatedAt: now}
	noErr(t, "PutCluster b", h.PutCluster(h.ctx, b))
	noErr(t, "PutCluster a", h.PutCluster(h.ctx, a))
	got, err := h.GetCluster(h.ctx, "b")
	noErr(t, "GetCluster", err)
	equal(t, "GetCluster", got, b)

	b.Status, b.Port = "lost", 10002
	noErr(t, "PutCluster replace", h.PutCluster(h.ctx, b))
	got, err = h.GetCluster(h.ctx, "b")
	noErr(t, "GetCluster after replace", err)
	equal(t, "GetCluster after replace", got, b)

	all, err := h.ListClusters(h.ctx)
	noErr(t, "ListClusters", err)
	equal(t, "ListClusters", all, []store.Cluster{a, b})

	noErr(t, "DeleteCluster", h.DeleteCluster(h.ctx, "a"))
	_, err = h.GetCluster(h.ctx, "a")
	wantErr(t, "GetCluster after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteCluster twice", h.DeleteCluster(h.ctx, "a"), store.ErrNotFound)
	if rev := h.revision(t); rev != 0 {
		t.Fatalf("cluster writes took revisions: %d", rev)
	}
}

func testServices(t *testing.T, h *harness) {
	want := h.service("web")
	got, err := h.CreateService(h.ctx, want)
	noErr(t, "CreateService", err)
	if got.Revision == 0 {
		t.Fatal("CreateService did not assign a revision")
	}
	want.Revision = got.Revision
	equal(t, "CreateService result", got, want)
	if rev := h.revision(t); rev != got.Revision {
		t.Fatalf("Revision = %d, want the service's %d", rev, got.Revision)
	}

	byID, err := h.GetService(h.ctx, "web")
	noErr(t, "GetService", err)
	equal(t, "GetService", byID, want)
	byName, err := h.GetServiceByJobName(h.ctx, "app.ns.web.ns")
	noErr(t, "GetServiceByJobName", err)
	equal(t, "GetServiceByJobName", byName, want)

	h.wantLease(t, want.RR.V4, store.RoleRoundRobin, "web", -1, false)
	h.wantLease(t, want.RR.V6, store.RoleRoundRobin, "web", -1, false)
	h.wantLease(t, want.Closest.V4, store.RoleClosest, "web", -1, false)
	h.wantLease(t, want.Closest.V6, store.RoleClosest, "web", -1, false)

	// A retried create (same record) is ErrAlreadyExists, not a claim conflict.
	_, err = h.CreateService(h.ctx, want)
	wantErr(t, "CreateService again", err, store.ErrAlreadyExists)

	// Same ID, other job name and addresses.
	dupID := h.service("web")
	dupID.Name = "other"
	_, err = h.CreateService(h.ctx, dupID)
	wantErr(t, "CreateService with a taken ID", err, store.ErrAlreadyExists)
	h.wantFree(t, dupID.RR.V4, dupID.RR.V6, dupID.Closest.V4, dupID.Closest.V6)

	// Other ID, same job name.
	dupName := h.service("web2")
	dupName.Name = "web"
	_, err = h.CreateService(h.ctx, dupName)
	wantErr(t, "CreateService with a taken job name", err, store.ErrAlreadyExists)
	h.wantFree(t, dupName.RR.V4, dupName.RR.V6, dupName.Closest.V4, dupName.Closest.V6)
	_, err = h.GetService(h.ctx, "web2")
	wantErr(t, "GetService of the failed create", err, store.ErrNotFound)

	if cs := h.changesSince(t, got.Revision); len(cs) != 0 {
		t.Fatalf("failed creates logged changes: %s", describe(cs))
	}
}

func testListServicesPagination(t *testing.T, h *harness) {
	var want []string
	for i := range 25 {
		want = append(want, fmt.Sprintf("svc-%02d", i))
	}
	for _, i := range rand.Perm(len(want)) {
		h.mustService(t, want[i])
	}
	var got []string
	after := ""
	for page := 0; ; page++ {
		ss, err := h.ListServices(h.ctx, after, 10)
		noErr(t, "ListServices", err)
		if len(ss) > 10 {
			t.Fatalf("ListServices(%q, 10) returned %d", after, len(ss))
		}
		if len(ss) == 0 {
			break
		}
		if page < 2 && len(ss) != 10 {
			t.Fatalf("page %d has %d services, want 10", page, len(ss))
		}
		got = append(got, ids(ss)...)
		after = ss[len(ss)-1].ID
		if page > 3 {
			t.Fatal("ListServices does not end")
		}
	}
	equal(t, "paged IDs", got, want)
	ss, err := h.ListServices(h.ctx, "svc-07", 3)
	noErr(t, "ListServices", err)
	equal(t, "ListServices(svc-07, 3)", ids(ss), []string{"svc-08", "svc-09", "svc-10"})
	ss, err = h.ListServices(h.ctx, "svc-065", 1) // after need not be an existing ID
	noErr(t, "ListServices", err)
	equal(t, "ListServices(svc-065, 1)", ids(ss), []string{"svc-07"})
	ss, err = h.ListServices(h.ctx, "svc-24", 10)
	noErr(t, "ListServices", err)
	if len(ss) != 0 {
		t.Fatalf("ListServices after the last = %v", ids(ss))
	}
	first, err := h.GetService(h.ctx, "svc-00")
	noErr(t, "GetService", err)
	ss, err = h.ListServices(h.ctx, "", 1)
	noErr(t, "ListServices", err)
	equal(t, "ListServices first record", ss, []store.Service{first})
}

func testAddressUniqueness(t *testing.T, h *harness) {
	a := h.mustService(t, "a")
	start := a.Revision

	// A service address cannot be another service's address, in any role.
	b := h.service("b")
	b.Closest.V4 = a.RR.V4
	_, err := h.CreateService(h.ctx, b)
	wantTaken(t, "service reusing a round-robin address", err, a.RR.V4, store.RoleRoundRobin, "a", false)
	h.wantFree(t, b.RR.V4, b.RR.V6, b.Closest.V6)
	_, err = h.GetService(h.ctx, "b")
	wantErr(t, "GetService of the failed create", err, store.ErrNotFound)
	_, err = h.GetServiceByJobName(h.ctx, b.JobName())
	wantErr(t, "GetServiceByJobName of the failed create", err, store.ErrNotFound)

	b = h.service("b")
	b.RR.V6 = a.Closest.V6
	_, err = h.CreateService(h.ctx, b)
	wantTaken(t, "service reusing a closest IPv6 address", err, a.Closest.V6, store.RoleClosest, "a", false)
	h.wantFree(t, b.RR.V4, b.Closest.V4, b.Closest.V6)

	// Nor an instance's.
	in := h.instance("a", 0)
	in.IP.V4 = a.Closest.V4
	_, err = h.CreateInstance(h.ctx, in)
	wantTaken(t, "instance reusing a Service IP", err, a.Closest.V4, store.RoleClosest, "a", false)
	h.wantFree(t, in.IP.V6)
	_, err = h.GetInstance(h.ctx, "a", 0)
	wantErr(t, "GetInstance of the failed create", err, store.ErrNotFound)

	i0 := h.mustInstance(t, "a", 0)
	b = h.service("b")
	b.RR.V6 = i0.IP.V6
	_, err = h.CreateService(h.ctx, b)
	taken := wantTaken(t, "service reusing an Instance IP", err, i0.IP.V6, store.RoleInstance, "a", false)
	if taken.Lease.Instance != 0 {
		t.Fatalf("holder instance = %d, want 0", taken.Lease.Instance)
	}
	in = h.instance("a", 1)
	in.IP.V6 = i0.IP.V6
	_, err = h.CreateInstance(h.ctx, in)
	wantTaken(t, "instance reusing an Instance IP", err, i0.IP.V6, store.RoleInstance, "a", false)
	h.wantFree(t, in.IP.V4)

	// Nor a subnet's first address, and a subnet cannot start at a taken address.
	sn := store.Subnet{V4: netip.PrefixFrom(a.RR.V4, 32), V6: netip.PrefixFrom(h.addr6(), 128), NodeID: "n1", ClusterID: "c1", CreatedAt: h.clock.Now()}
	wantTaken(t, "subnet at a Service IP", h.CreateSubnet(h.ctx, sn), a.RR.V4, store.RoleRoundRobin, "a", false)
	h.wantFree(t, sn.V6.Addr())
	sn = store.Subnet{V4: netip.MustParsePrefix("10.250.0.0/26"), V6: netip.MustParsePrefix("fd99::/120"), NodeID: "n1", ClusterID: "c1", CreatedAt: h.clock.Now()}
	noErr(t, "CreateSubnet", h.CreateSubnet(h.ctx, sn))
	b = h.service("b")
	b.Closest.V4 = sn.V4.Addr()
	_, err = h.CreateService(h.ctx, b)
	wantTaken(t, "service at a subnet's address", err, sn.V4.Addr(), store.RoleSubnet, "n1", false)

	// One record cannot use an address twice.
	b = h.service("b")
	b.Closest.V4 = b.RR.V4
	_, err = h.CreateService(h.ctx, b)
	if !errors.Is(err, store.ErrAddressTaken) {
		t.Fatalf("service using one address twice: got %v, want ErrAddressTaken", err)
	}
	h.wantFree(t, b.RR.V4, b.RR.V6, b.Closest.V6)

	// Only the two successful creates logged changes.
	cs := h.changesSince(t, start)
	if len(cs) != 1 || cs[0].Kind != store.KindInstance || cs[0].Revision != i0.Revision {
		t.Fatalf("changes after the failed creates: %s", describe(cs))
	}
}

func testQuarantine(t *testing.T, h *harness) {
	a := h.mustService(t, "a")
	noErr(t, "DeleteService", h.deleteService("a", false))
	released := h.clock.Now()
	for _, addr := range []netip.Addr{a.RR.V4, a.RR.V6} {
		l := h.wantLease(t, addr, store.RoleRoundRobin, "a", -1, true)
		if !l.ReleasedAt.Equal(released) {
			t.Fatalf("lease %s released at %s, want %s", addr, l.ReleasedAt, released)
		}
	}
	h.wantLease(t, a.Closest.V4, store.RoleClosest, "a", -1, true)

	b := h.service("b")
	b.RR.V4 = a.RR.V4
	_, err := h.CreateService(h.ctx, b)
	taken := wantTaken(t, "claim during quarantine", err, a.RR.V4, store.RoleRoundRobin, "a", true)
	if !taken.Lease.ReleasedAt.Equal(released) {
		t.Fatalf("taken lease released at %s, want %s", taken.Lease.ReleasedAt, released)
	}
	h.wantFree(t, b.RR.V6, b.Closest.V4, b.Closest.V6)

	// The same ID may be created again at once with other addresses.
	a2 := h.service("a")
	_, err = h.CreateService(h.ctx, a2)
	noErr(t, "re-create a deleted service with new addresses", err)

	h.clock.Advance(Quarantine - 1)
	_, err = h.CreateService(h.ctx, b)
	wantTaken(t, "claim just before the quarantine ends", err, a.RR.V4, store.RoleRoundRobin, "a", true)

	h.clock.Advance(1)
	// Once the quarantine is over the lease is gone.
	h.wantFree(t, a.RR.V4, a.RR.V6, a.Closest.V4, a.Closest.V6)
	leased := map[netip.Addr]bool{}
	noErr(t, "ListLeases", h.ListLeases(h.ctx, func(l store.Lease) error { leased[l.Addr] = true; return nil }))
	if leased[a.RR.V4] || len(leased) != 4 {
		t.Fatalf("ListLeases after the quarantine: %v, want only a2's four", leased)
	}
	b.CreatedAt = h.clock.Now()
	_, err = h.CreateService(h.ctx, b)
	noErr(t, "claim after the quarantine", err)
	l := h.wantLease(t, a.RR.V4, store.RoleRoundRobin, "b", -1, false)
	if !l.CreatedAt.Equal(h.clock.Now()) {
		t.Fatalf("taken-over lease created at %s, want %s", l.CreatedAt, h.clock.Now())
	}

	// Instance addresses are quarantined too.
	in := h.mustInstance(t, "b", 0)
	noErr(t, "DeleteInstance", h.DeleteInstance(h.ctx, "b", 0))
	h.wantLease(t, in.IP.V4, store.RoleInstance, "b", 0, true)
	again := h.instance("b", 0)
	again.IP.V6 = in.IP.V6
	_, err = h.CreateInstance(h.ctx, again)
	wantTaken(t, "instance IP during quarantine", err, in.IP.V6, store.RoleInstance, "b", true)
	h.clock.Advance(Quarantine)
	_, err = h.CreateInstance(h.ctx, again)
	noErr(t, "instance IP after the quarantine", err)
}

func testDeleteService(t *testing.T, h *harness) {
	sv := h.mustService(t, "web")
	i0 := h.mustInstance(t, "web", 0)
	i1 := h.mustInstance(t, "web", 1)
	start := h.revision(t)

	wantErr(t, "DeleteService with instances", h.deleteService("web", false), store.ErrHasInstances)
	_, err := h.GetService(h.ctx, "web")
	noErr(t, "GetService after refused delete", err)
	ins, err := h.ListInstances(h.ctx, "web")
	noErr(t, "ListInstances after refused delete", err)
	equal(t, "instances after refused delete", ins, []store.Instance{i0, i1})
	h.wantLease(t, sv.RR.V4, store.RoleRoundRobin, "web", -1, false)
	h.wantLease(t, i0.IP.V4, store.RoleInstance, "web", 0, false)
	if cs := h.changesSince(t, start); len(cs) != 0 {
		t.Fatalf("refused delete logged changes: %s", describe(cs))
	}

	h.clock.Advance(1e6)
	del, err := h.DeleteService(h.ctx, "web", true)
	noErr(t, "DeleteService force", err)
	equal(t, "what the forced delete deleted", del, store.Deleted{Service: sv, Instances: []store.Instance{i0, i1}})
	_, err = h.GetService(h.ctx, "web")
	wantErr(t, "GetService after delete", err, store.ErrNotFound)
	_, err = h.GetServiceByJobName(h.ctx, "app.ns.web.ns")
	wantErr(t, "GetServiceByJobName after delete", err, store.ErrNotFound)
	_, err = h.GetInstance(h.ctx, "web", 1)
	wantErr(t, "GetInstance after delete", err, store.ErrNotFound)
	ins, err = h.ListInstances(h.ctx, "web")
	noErr(t, "ListInstances after delete", err)
	if len(ins) != 0 {
		t.Fatalf("instances after forced delete: %v", ins)
	}
	h.wantLease(t, sv.Closest.V6, store.RoleClosest, "web", -1, true)
	h.wantLease(t, i0.IP.V4, store.RoleInstance, "web", 0, true)
	h.wantLease(t, i1.IP.V6, store.RoleInstance, "web", 1, true)

	cs := h.changesSince(t, start)
	if len(cs) != 3 {
		t.Fatalf("forced delete logged %s, want two instance deletes and a service delete", describe(cs))
	}
	seen := map[int]bool{}
	for _, c := range cs[:2] {
		if c.Kind != store.KindInstance || c.Op != store.OpDelete || c.ServiceID != "web" || c.JobName != "app.ns.web.ns" {
			t.Fatalf("forced delete logged %s", describe(cs))
		}
		seen[c.Instance] = true
	}
	last := cs[2]
	if !seen[0] || !seen[1] || last.Kind != store.KindService || last.Op != store.OpDelete || last.Instance != -1 || last.ServiceID != "web" {
		t.Fatalf("forced delete logged %s", describe(cs))
	}
	if !last.Time.Equal(h.clock.Now()) {
		t.Fatalf("change time %s, want %s", last.Time, h.clock.Now())
	}

	// The ID and job name are free again.
	h.mustService(t, "web")
	wantErr(t, "DeleteService of an instance-less service twice", func() error {
		noErr(t, "DeleteService", h.deleteService("web", false))
		return h.deleteService("web", false)
	}(), store.ErrNotFound)
}

func testInstances(t *testing.T, h *harness) {
	h.mustService(t, "web")
	h.mustService(t, "web2") // an ID with "web" as prefix
	h.mustInstance(t, "web2", 0)
	var want []store.Instance
	for _, n := range []int{2, 0, 1} {
		in := h.instance("web", n)
		got, err := h.CreateInstance(h.ctx, in)
		noErr(t, "CreateInstance", err)
		if got.Revision == 0 || got.Revision != h.revision(t) {
			t.Fatalf("instance revision %d, store revision %d", got.Revision, h.revision(t))
		}
		in.Revision = got.Revision
		equal(t, "CreateInstance result", got, in)
		want = append(want, got)
		h.wantLease(t, in.IP.V4, store.RoleInstance, "web", n, false)
		h.wantLease(t, in.IP.V6, store.RoleInstance, "web", n, false)
	}
	want = []store.Instance{want[1], want[2], want[0]}
	got, err := h.ListInstances(h.ctx, "web")
	noErr(t, "ListInstances", err)
	equal(t, "ListInstances", got, want)
	one, err := h.GetInstance(h.ctx, "web", 1)
	noErr(t, "GetInstance", err)
	equal(t, "GetInstance", one, want[1])

	dup := h.instance("web", 1)
	_, err = h.CreateInstance(h.ctx, dup)
	wantErr(t, "CreateInstance with a taken number", err, store.ErrAlreadyExists)
	h.wantFree(t, dup.IP.V4, dup.IP.V6)

	start := h.revision(t)
	noErr(t, "DeleteInstance", h.DeleteInstance(h.ctx, "web", 1))
	_, err = h.GetInstance(h.ctx, "web", 1)
	wantErr(t, "GetInstance after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteInstance twice", h.DeleteInstance(h.ctx, "web", 1), store.ErrNotFound)
	h.wantLease(t, want[1].IP.V4, store.RoleInstance, "web", 1, true)
	cs := h.changesSince(t, start)
	if len(cs) != 1 || cs[0].Kind != store.KindInstance || cs[0].Op != store.OpDelete || cs[0].Instance != 1 || cs[0].JobName != "app.ns.web.ns" {
		t.Fatalf("DeleteInstance logged %s", describe(cs))
	}
	got, err = h.ListInstances(h.ctx, "web")
	noErr(t, "ListInstances", err)
	equal(t, "ListInstances after delete", got, []store.Instance{want[0], want[2]})

	// The number is free again (with new addresses).
	h.mustInstance(t, "web", 1)
}

func testUpdateInstance(t *testing.T, h *harness) {
	h.mustService(t, "web")
	in := h.mustInstance(t, "web", 3)
	h.clock.Advance(1e9)
	loc := geo.Point{Lat: 52.52, Lon: 13.405}
	calls := 0
	got, err := h.UpdateInstance(h.ctx, "web", 3, func(p *store.Instance) error {
		calls++
		equal(t, "instance passed to fn", *p, in)
		p.Status = store.StatusRunning
		p.ClusterID = "c1"
		p.NamespaceIP = store.AddrPair{V4: netip.MustParseAddr("172.30.0.5"), V6: netip.MustParseAddr("fdff::5")}
		p.HostIP = netip.MustParseAddr("192.168.1.7")
		p.HostPort = 30123
		p.Location = &loc
		p.UpdatedAt = h.clock.Now()
		p.ReportedBy, p.ReportSeq = "c1", 1<<62+7
		p.Standby = &store.Place{ClusterID: "c2", NamespaceIP: store.AddrPair{V4: netip.MustParseAddr("172.30.1.5"), V6: netip.MustParseAddr("fdff::1:5")},
			HostIP: netip.MustParseAddr("192.168.1.8"), HostPort: 30124, Location: &loc, PlacedRevision: in.Revision}
		p.PlacedRevision = in.Revision
		return nil
	})
	noErr(t, "UpdateInstance", err)
	if calls != 1 {
		t.Fatalf("fn ran %d times without contention", calls)
	}
	if got.Revision <= in.Revision || got.Revision != h.revision(t) {
		t.Fatalf("updated revision %d (was %d, store at %d)", got.Revision, in.Revision, h.revision(t))
	}
	want := in
	want.Status, want.ClusterID, want.HostPort, want.Location, want.UpdatedAt = store.StatusRunning, "c1", 30123, &loc, h.clock.Now()
	want.NamespaceIP = store.AddrPair{V4: netip.MustParseAddr("172.30.0.5"), V6: netip.MustParseAddr("fdff::5")}
	want.HostIP = netip.MustParseAddr("192.168.1.7")
	want.ReportedBy, want.ReportSeq = "c1", 1<<62+7
	want.Standby = &store.Place{ClusterID: "c2", NamespaceIP: store.AddrPair{V4: netip.MustParseAddr("172.30.1.5"), V6: netip.MustParseAddr("fdff::1:5")},
		HostIP: netip.MustParseAddr("192.168.1.8"), HostPort: 30124, Location: &loc, PlacedRevision: in.Revision}
	want.PlacedRevision = in.Revision
	want.Revision = got.Revision
	equal(t, "UpdateInstance result", got, want)
	stored, err := h.GetInstance(h.ctx, "web", 3)
	noErr(t, "GetInstance", err)
	equal(t, "GetInstance after update", stored, want)
	cs := h.changesSince(t, in.Revision)
	if len(cs) != 1 || cs[0].Revision != got.Revision || cs[0].Kind != store.KindInstance || cs[0].Op != store.OpPut || cs[0].Instance != 3 || cs[0].ServiceID != "web" {
		t.Fatalf("UpdateInstance logged %s", describe(cs))
	}

	// An error from fn comes back unchanged and changes nothing.
	boom := errors.New("boom")
	_, err = h.UpdateInstance(h.ctx, "web", 3, func(p *store.Instance) error {
		p.HostPort = 1
		return boom
	})
	if err != boom {
		t.Fatalf("UpdateInstance returned %v, want fn's error unchanged", err)
	}
	// Nor may fn change the identity or addresses.
	_, err = h.UpdateInstance(h.ctx, "web", 3, func(p *store.Instance) error {
		p.IP.V4 = netip.MustParseAddr("10.99.99.99")
		return nil
	})
	if err == nil {
		t.Fatal("UpdateInstance let fn change the Instance IP")
	}
	_, err = h.UpdateInstance(h.ctx, "web", 3, func(p *store.Instance) error {
		p.Number = 4
		return nil
	})
	if err == nil {
		t.Fatal("UpdateInstance let fn change the number")
	}
	stored, err = h.GetInstance(h.ctx, "web", 3)
	noErr(t, "GetInstance", err)
	equal(t, "instance after refused updates", stored, want)
	if cs := h.changesSince(t, got.Revision); len(cs) != 0 {
		t.Fatalf("refused updates logged %s", describe(cs))
	}

	// Optional fields cleared by an update are gone from the stored instance.
	cleared, err := h.UpdateInstance(h.ctx, "web", 3, func(p *store.Instance) error {
		p.Location, p.ReportedBy, p.ReportSeq, p.Standby, p.PlacedRevision = nil, "", 0, nil, 0
		return nil
	})
	noErr(t, "UpdateInstance", err)
	want.Location, want.ReportedBy, want.ReportSeq, want.Standby, want.PlacedRevision, want.Revision = nil, "", 0, nil, 0, cleared.Revision
	stored, err = h.GetInstance(h.ctx, "web", 3)
	noErr(t, "GetInstance", err)
	equal(t, "instance after clearing its location, reporter, standby and placed revision", stored, want)
}

func testUpdateInstanceConcurrent(t *testing.T, h *harness) {
	h.mustService(t, "web")
	in := h.mustInstance(t, "web", 0)
	const n = 20
	var wg sync.WaitGroup
	revs := make([]uint64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			out, err := h.UpdateInstance(h.ctx, "web", 0, func(p *store.Instance) error {
				p.HostPort++
				return nil
			})
			revs[i], errs[i] = out.Revision, err
		})
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		noErr(t, fmt.Sprintf("updater %d", i), errs[i])
		if revs[i] <= in.Revision || seen[revs[i]] {
			t.Fatalf("updater %d got revision %d (create %d, seen %v)", i, revs[i], in.Revision, seen)
		}
		seen[revs[i]] = true
	}
	got, err := h.GetInstance(h.ctx, "web", 0)
	noErr(t, "GetInstance", err)
	if got.HostPort != n {
		t.Fatalf("HostPort = %d after %d concurrent increments: updates were lost", got.HostPort, n)
	}
	cs := h.changesSince(t, in.Revision)
	if len(cs) != n {
		t.Fatalf("%d updates logged %d changes: %s", n, len(cs), describe(cs))
	}
	for _, c := range cs {
		if !seen[c.Revision] {
			t.Fatalf("change %d is not one of the updates' revisions", c.Revision)
		}
	}
}

func testLeases(t *testing.T, h *harness) {
	sv := h.mustService(t, "web")
	in := h.mustInstance(t, "web", 0)
	sn := store.Subnet{V4: netip.MustParsePrefix("10.250.0.64/26"), V6: netip.MustParsePrefix("fd99::100/120"), NodeID: "n1", ClusterID: "c1"}
	noErr(t, "CreateSubnet", h.CreateSubnet(h.ctx, sn))
	gone := h.mustService(t, "gone")
	noErr(t, "DeleteService", h.deleteService("gone", false))

	got := map[netip.Addr]store.Lease{}
	noErr(t, "ListLeases", h.ListLeases(h.ctx, func(l store.Lease) error {
		if _, dup := got[l.Addr]; dup {
			t.Fatalf("ListLeases returned %s twice", l.Addr)
		}
		got[l.Addr] = l
		return nil
	}))
	want := map[netip.Addr]string{
		sv.RR.V4: "rr web -1 active", sv.RR.V6: "rr web -1 active", sv.Closest.V4: "closest web -1 active", sv.Closest.V6: "closest web -1 active",
		in.IP.V4: "instance web 0 active", in.IP.V6: "instance web 0 active",
		sn.V4.Addr(): "subnet n1 -1 active", sn.V6.Addr(): "subnet n1 -1 active",
		gone.RR.V4: "rr gone -1 quarantined", gone.RR.V6: "rr gone -1 quarantined", gone.Closest.V4: "closest gone -1 quarantined", gone.Closest.V6: "closest gone -1 quarantined",
	}
	if len(got) != len(want) {
		t.Fatalf("ListLeases returned %d leases, want %d: %v", len(got), len(want), got)
	}
	for a, w := range want {
		l, ok := got[a]
		state := "active"
		if !l.ReleasedAt.IsZero() {
			state = "quarantined"
		}
		if g := fmt.Sprintf("%s %s %d %s", l.Role, l.Owner, l.Instance, state); !ok || g != w {
			t.Fatalf("lease %s = %q, want %q", a, g, w)
		}
		one, err := h.GetLease(h.ctx, a)
		noErr(t, "GetLease", err)
		equal(t, "GetLease", one, l)
	}

	stop := errors.New("stop")
	n := 0
	err := h.ListLeases(h.ctx, func(store.Lease) error {
		n++
		return stop
	})
	if !errors.Is(err, stop) || n != 1 {
		t.Fatalf("ListLeases with a failing fn: %v after %d calls, want fn's error after 1", err, n)
	}
}

func testSubnets(t *testing.T, h *harness) {
	now := h.clock.Now()
	a := store.Subnet{V4: netip.MustParsePrefix("10.128.0.64/26"), V6: netip.MustParsePrefix("fd10::100/120"), ClusterID: "c1", NodeID: "n1", CreatedAt: now}
	b := store.Subnet{V4: netip.MustParsePrefix("10.128.0.0/26"), V6: netip.MustParsePrefix("fd10::/120"), ClusterID: "c1", NodeID: "n2", CreatedAt: now}
	noErr(t, "CreateSubnet a", h.CreateSubnet(h.ctx, a))
	noErr(t, "CreateSubnet b", h.CreateSubnet(h.ctx, b))
	got, err := h.GetSubnet(h.ctx, a.V4)
	noErr(t, "GetSubnet", err)
	equal(t, "GetSubnet", got, a)
	all, err := h.ListSubnets(h.ctx)
	noErr(t, "ListSubnets", err)
	if len(all) != 2 {
		t.Fatalf("ListSubnets = %v", all)
	}
	if all[0].V4 != b.V4 {
		all[0], all[1] = all[1], all[0]
	}
	equal(t, "ListSubnets", all, []store.Subnet{b, a})
	h.wantLease(t, a.V4.Addr(), store.RoleSubnet, "n1", -1, false)
	h.wantLease(t, a.V6.Addr(), store.RoleSubnet, "n1", -1, false)

	again := store.Subnet{V4: a.V4, V6: netip.MustParsePrefix("fd10::200/120"), ClusterID: "c1", NodeID: "n3", CreatedAt: now}
	wantTaken(t, "CreateSubnet of a taken prefix", h.CreateSubnet(h.ctx, again), a.V4.Addr(), store.RoleSubnet, "n1", false)
	h.wantFree(t, again.V6.Addr())

	noErr(t, "DeleteSubnet", h.DeleteSubnet(h.ctx, a.V4))
	_, err = h.GetSubnet(h.ctx, a.V4)
	wantErr(t, "GetSubnet after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteSubnet twice", h.DeleteSubnet(h.ctx, a.V4), store.ErrNotFound)
	h.wantLease(t, a.V4.Addr(), store.RoleSubnet, "n1", -1, true)
	wantTaken(t, "CreateSubnet during quarantine", h.CreateSubnet(h.ctx, again), a.V4.Addr(), store.RoleSubnet, "n1", true)
	h.clock.Advance(Quarantine)
	noErr(t, "CreateSubnet after quarantine", h.CreateSubnet(h.ctx, again))
	got, err = h.GetSubnet(h.ctx, a.V4)
	noErr(t, "GetSubnet", err)
	equal(t, "GetSubnet of the new subnet", got, again)
	if rev := h.revision(t); rev != 0 {
		t.Fatalf("subnet writes took revisions: %d", rev)
	}
}

func testInterests(t *testing.T, h *harness) {
	for _, id := range []string{"c1", "c2"} {
		noErr(t, "PutCluster", h.PutCluster(h.ctx, store.Cluster{ID: id, Name: id}))
	}
	add := func(c, s string) { noErr(t, "AddInterest", h.AddInterest(h.ctx, c, s)) }
	add("c2", "s1")
	add("c1", "s2")
	add("c1", "s1")
	add("c1", "s1") // idempotent
	check := func(what string, got []string, err error, want ...string) {
		t.Helper()
		noErr(t, what, err)
		equal(t, what, got, want)
	}
	got, err := h.Interests(h.ctx, "c1")
	check("Interests(c1)", got, err, "s1", "s2")
	got, err = h.InterestedClusters(h.ctx, "s1")
	check("InterestedClusters(s1)", got, err, "c1", "c2")
	got, err = h.InterestedClusters(h.ctx, "s3")
	check("InterestedClusters(s3)", got, err)
	interested := func(c, s string, want bool) {
		t.Helper()
		ok, err := h.Interested(h.ctx, c, s)
		noErr(t, "Interested", err)
		if ok != want {
			t.Errorf("Interested(%s, %s) = %v, want %v", c, s, ok, want)
		}
	}
	interested("c1", "s1", true)
	interested("c2", "s1", true)
	interested("c2", "s2", false)
	interested("c1", "s3", false)
	interested("c3", "s1", false)

	noErr(t, "RemoveInterest", h.RemoveInterest(h.ctx, "c1", "s1"))
	noErr(t, "RemoveInterest twice", h.RemoveInterest(h.ctx, "c1", "s1"))
	got, err = h.Interests(h.ctx, "c1")
	check("Interests(c1) after remove", got, err, "s2")
	got, err = h.InterestedClusters(h.ctx, "s1")
	check("InterestedClusters(s1) after remove", got, err, "c2")
	interested("c1", "s1", false)

	noErr(t, "DeleteCluster", h.DeleteCluster(h.ctx, "c2"))
	got, err = h.InterestedClusters(h.ctx, "s1")
	check("InterestedClusters(s1) after DeleteCluster", got, err)
	got, err = h.Interests(h.ctx, "c2")
	check("Interests(c2) after DeleteCluster", got, err)
	got, err = h.InterestedClusters(h.ctx, "s2")
	check("InterestedClusters(s2)", got, err, "c1")
}

func testChanges(t *testing.T, h *harness) {
	type step struct {
		kind, op string
		instance int
	}
	var want []step
	sv := h.mustService(t, "web")
	want = append(want, step{store.KindService, store.OpPut, -1})
	h.clock.Advance(1e9)
	h.mustInstance(t, "web", 0)
	want = append(want, step{store.KindInstance, store.OpPut, 0})
	_, err := h.UpdateInstance(h.ctx, "web", 0, func(p *store.Instance) error { p.Status = store.StatusRunning; return nil })
	noErr(t, "UpdateInstance", err)
	want = append(want, step{store.KindInstance, store.OpPut, 0})
	noErr(t, "DeleteInstance", h.DeleteInstance(h.ctx, "web", 0))
	want = append(want, step{store.KindInstance, store.OpDelete, 0})
	h.mustInstance(t, "web", 1)
	want = append(want, step{store.KindInstance, store.OpPut, 1})
	h.clock.Advance(1e9)
	noErr(t, "DeleteService", h.deleteService("web", true))
	want = append(want, step{store.KindInstance, store.OpDelete, 1}, step{store.KindService, store.OpDelete, -1})

	cs := h.changesSince(t, 0)
	if len(cs) != len(want) {
		t.Fatalf("Changes(0) = %s, want %d changes", describe(cs), len(want))
	}
	for i, c := range cs {
		if i > 0 && c.Revision <= cs[i-1].Revision {
			t.Fatalf("revisions do not increase: %s", describe(cs))
		}
		w := want[i]
		if c.Kind != w.kind || c.Op != w.op || c.Instance != w.instance || c.ServiceID != "web" || c.JobName != "app.ns.web.ns" {
			t.Fatalf("change %d = %+v, want %+v", i, c, w)
		}
	}
	if cs[0].Revision != sv.Revision {
		t.Fatalf("first change has revision %d, the service %d", cs[0].Revision, sv.Revision)
	}
	if !cs[0].Time.Equal(sv.CreatedAt) || !cs[6].Time.Equal(h.clock.Now()) {
		t.Fatalf("change times %s, %s; want %s, %s", cs[0].Time, cs[6].Time, sv.CreatedAt, h.clock.Now())
	}
	if rev := h.revision(t); rev != cs[6].Revision {
		t.Fatalf("Revision = %d, last change %d", rev, cs[6].Revision)
	}

	page, err := h.Changes(h.ctx, 0, 3)
	noErr(t, "Changes with limit", err)
	equal(t, "first page", len(page), 3)
	for i := range page {
		equal(t, "change on the first page", page[i], cs[i])
	}
	page, err = h.Changes(h.ctx, page[2].Revision, 3)
	noErr(t, "Changes with limit", err)
	equal(t, "second page", len(page), 3)
	equal(t, "second page starts after the first", page[0], cs[3])
	page, err = h.Changes(h.ctx, cs[5].Revision, 10)
	noErr(t, "Changes at the end", err)
	equal(t, "last page", len(page), 1)
	page, err = h.Changes(h.ctx, cs[6].Revision, 10)
	noErr(t, "Changes after the end", err)
	equal(t, "nothing after the last change", len(page), 0)
	page, err = h.Changes(h.ctx, cs[6].Revision+100, 10)
	noErr(t, "Changes beyond the end", err)
	equal(t, "nothing beyond the last change", len(page), 0)
}

func testCompactChanges(t *testing.T, h *harness) {
	for i := range 5 {
		h.mustService(t, fmt.Sprintf("s%d", i))
	}
	cs := h.changesSince(t, 0)
	if len(cs) != 5 {
		t.Fatalf("Changes(0) = %s", describe(cs))
	}
	noErr(t, "CompactChanges", h.CompactChanges(h.ctx, cs[2].Revision))
	_, err := h.Changes(h.ctx, 0, 10)
	wantErr(t, "Changes(0) after compaction", err, store.ErrCompacted)
	_, err = h.Changes(h.ctx, cs[1].Revision, 10)
	wantErr(t, "Changes before the compaction point", err, store.ErrCompacted)
	got, err := h.Changes(h.ctx, cs[2].Revision, 10)
	noErr(t, "Changes at the compaction point", err)
	equal(t, "changes after compaction", len(got), 2)
	equal(t, "first change after compaction", got[0], cs[3])
	if rev := h.revision(t); rev != cs[4].Revision {
		t.Fatalf("Revision after compaction = %d, want %d", rev, cs[4].Revision)
	}
	noErr(t, "CompactChanges backwards", h.CompactChanges(h.ctx, cs[0].Revision))
	_, err = h.Changes(h.ctx, cs[1].Revision, 10)
	wantErr(t, "Changes after compacting backwards", err, store.ErrCompacted)

	// Compacting past the newest revision compacts everything, and later changes are
	// readable from there.
	noErr(t, "CompactChanges past the end", h.CompactChanges(h.ctx, cs[4].Revision+1000))
	got, err = h.Changes(h.ctx, cs[4].Revision, 10)
	noErr(t, "Changes after compacting everything", err)
	equal(t, "changes after compacting everything", len(got), 0)
	sv := h.mustService(t, "later")
	got, err = h.Changes(h.ctx, cs[4].Revision, 10)
	noErr(t, "Changes after a new write", err)
	if len(got) != 1 || got[0].Revision != sv.Revision || sv.Revision <= cs[4].Revision {
		t.Fatalf("after compacting everything, a new create logged %s (service revision %d)", describe(got), sv.Revision)
	}
}

func testConcurrentSameAddress(t *testing.T, h *harness) {
	shared := h.addr4()
	const n = 16
	var wg sync.WaitGroup
	svcs := make([]store.Service, n)
	errs := make([]error, n)
	for i := range n {
		svcs[i] = h.service(fmt.Sprintf("svc%02d", i))
		svcs[i].Closest.V4 = shared
		wg.Go(func() { _, errs[i] = h.CreateService(h.ctx, svcs[i]) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("both %s and %s got address %s", svcs[winner].ID, svcs[i].ID, shared)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrAddressTaken):
			t.Fatalf("loser %d: got %v, want ErrAddressTaken", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("no create succeeded: %v", errs)
	}
	h.wantLease(t, shared, store.RoleClosest, svcs[winner].ID, -1, false)
	for i, sv := range svcs {
		if i != winner {
			h.wantFree(t, sv.RR.V4, sv.RR.V6, sv.Closest.V6)
		}
	}
	all, err := h.ListServices(h.ctx, "", 1000)
	noErr(t, "ListServices", err)
	equal(t, "services", ids(all), []string{svcs[winner].ID})
}

func testConcurrentTakeover(t *testing.T, h *harness) {
	old := h.mustService(t, "old")
	noErr(t, "DeleteService", h.deleteService("old", false))
	h.clock.Advance(Quarantine)
	shared := old.RR.V4
	const n = 16
	var wg sync.WaitGroup
	svcs := make([]store.Service, n)
	errs := make([]error, n)
	for i := range n {
		svcs[i] = h.service(fmt.Sprintf("svc%02d", i))
		svcs[i].RR.V4 = shared
		wg.Go(func() { _, errs[i] = h.CreateService(h.ctx, svcs[i]) })
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("both %s and %s took over address %s", svcs[winner].ID, svcs[i].ID, shared)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrAddressTaken):
			t.Fatalf("loser %d: got %v, want ErrAddressTaken", i, err)
		}
	}
	if winner < 0 {
		t.Fatalf("nobody took over the address after its quarantine: %v", errs)
	}
	h.wantLease(t, shared, store.RoleRoundRobin, svcs[winner].ID, -1, false)
}

func testConcurrentCreates(t *testing.T, h *harness) {
	const n = 32
	var wg sync.WaitGroup
	revs := make([]uint64, n)
	errs := make([]error, n)
	for i := range n {
		sv := h.service(fmt.Sprintf("svc%02d", i))
		wg.Go(func() {
			out, err := h.CreateService(h.ctx, sv)
			revs[i], errs[i] = out.Revision, err
		})
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		noErr(t, "concurrent CreateService", errs[i])
		if revs[i] == 0 || seen[revs[i]] {
			t.Fatalf("create %d got revision %d, seen %v", i, revs[i], seen)
		}
		seen[revs[i]] = true
	}
	cs := h.changesSince(t, 0)
	if len(cs) != n {
		t.Fatalf("%d creates logged %d changes", n, len(cs))
	}
	for _, c := range cs {
		if !seen[c.Revision] {
			t.Fatalf("change %d is no create's revision", c.Revision)
		}
	}
}
