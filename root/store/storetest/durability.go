package storetest

import (
	"net/netip"
	"testing"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/fakeclock"
)

// Durability checks that everything written survives a close and reopen: records,
// leases (quarantined ones with their release time), interests, the change log and the
// revision counter. open must open the same, initially empty, backing store each time;
// Durability closes what it opens.
func Durability(t *testing.T, open func(opt store.Options) store.Store) {
	clock := fakeclock.New()
	opt := store.Options{Quarantine: Quarantine, Now: clock.Now}
	h := &harness{Store: open(opt), clock: clock, ctx: t.Context()}

	sv := h.mustService(t, "web")
	h.mustInstance(t, "web", 0)
	in, err := h.UpdateInstance(h.ctx, "web", 0, func(p *store.Instance) error {
		p.Status, p.HostPort = store.StatusRunning, 31000
		return nil
	})
	noErr(t, "UpdateInstance", err)
	gone := h.mustService(t, "gone")
	noErr(t, "DeleteService", h.deleteService("gone", false))
	released := clock.Now()
	sn := store.Subnet{V4: netip.MustParsePrefix("10.128.0.0/26"), V6: netip.MustParsePrefix("fd10::/120"), ClusterID: "c1", NodeID: "n1", CreatedAt: clock.Now()}
	noErr(t, "CreateSubnet", h.CreateSubnet(h.ctx, sn))
	cl := store.Cluster{ID: "c1", Name: "one", Address: "10.0.0.1", Port: 10000, CreatedAt: clock.Now()}
	noErr(t, "PutCluster", h.PutCluster(h.ctx, cl))
	noErr(t, "AddInterest", h.AddInterest(h.ctx, "c1", "web"))
	gw, err := h.PutGateway(h.ctx, h.gateway("gw1", 0))
	noErr(t, "PutGateway", err)
	ex, err := h.CreateExposure(h.ctx, h.exposure("web", "tcp", 8080))
	noErr(t, "CreateExposure", err)
	rev := h.revision(t)
	changes := h.changesSince(t, 0)
	noErr(t, "Close", h.Close())

	clock.Advance(Quarantine / 2)
	h.Store = open(opt)
	defer h.Close()
	if got := h.revision(t); got != rev {
		t.Fatalf("Revision after reopen = %d, want %d", got, rev)
	}
	got, err := h.GetService(h.ctx, "web")
	noErr(t, "GetService after reopen", err)
	equal(t, "service after reopen", got, sv)
	gotIn, err := h.GetInstance(h.ctx, "web", 0)
	noErr(t, "GetInstance after reopen", err)
	equal(t, "instance after reopen", gotIn, in)
	gotSn, err := h.GetSubnet(h.ctx, sn.V4)
	noErr(t, "GetSubnet after reopen", err)
	equal(t, "subnet after reopen", gotSn, sn)
	gotCl, err := h.GetCluster(h.ctx, "c1")
	noErr(t, "GetCluster after reopen", err)
	equal(t, "cluster after reopen", gotCl, cl)
	interested, err := h.InterestedClusters(h.ctx, "web")
	noErr(t, "InterestedClusters after reopen", err)
	equal(t, "interests after reopen", interested, []string{"c1"})
	gotGw, err := h.GetGateway(h.ctx, "gw1")
	noErr(t, "GetGateway after reopen", err)
	equal(t, "gateway after reopen", gotGw, gw)
	gotEx, err := h.GetExposure(h.ctx, ex.ID)
	noErr(t, "GetExposure after reopen", err)
	equal(t, "exposure after reopen", gotEx, ex)
	gotChanges := h.changesSince(t, 0)
	equal(t, "change count after reopen", len(gotChanges), len(changes))
	for i := range changes {
		equal(t, "change after reopen", gotChanges[i], changes[i])
	}

	h.wantLease(t, sv.RR.V4, store.RoleRoundRobin, "web", -1, false)
	h.wantLease(t, in.IP.V6, store.RoleInstance, "web", 0, false)
	l := h.wantLease(t, gone.Closest.V4, store.RoleClosest, "gone", -1, true)
	if !l.ReleasedAt.Equal(released) {
		t.Fatalf("quarantined lease released at %s after reopen, want %s", l.ReleasedAt, released)
	}
	b := h.service("b")
	b.Closest.V4 = gone.Closest.V4
	_, err = h.CreateService(h.ctx, b)
	wantTaken(t, "claim of a quarantined address after reopen", err, gone.Closest.V4, store.RoleClosest, "gone", true)
	b.Closest.V4 = sv.RR.V4
	_, err = h.CreateService(h.ctx, b)
	wantTaken(t, "claim of a leased address after reopen", err, sv.RR.V4, store.RoleRoundRobin, "web", false)

	next := h.mustService(t, "next")
	if next.Revision <= rev {
		t.Fatalf("revision after reopen %d, want > %d", next.Revision, rev)
	}
}
