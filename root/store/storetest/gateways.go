package storetest

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/semnet/semnet/root/store"
)

// wantChange fails unless c is a change of kind and op about object (and, for
// exposures, the service).
func wantChange(t *testing.T, what string, c store.Change, kind, op, object, serviceID, jobName string) {
	t.Helper()
	if c.Kind != kind || c.Op != op || c.Object != object || c.ServiceID != serviceID || c.JobName != jobName || c.Instance != -1 {
		t.Fatalf("%s: change %+v, want %s %s of %q (service %q, job %q, instance -1)", what, c, kind, op, object, serviceID, jobName)
	}
}

func testGateways(t *testing.T, h *harness) {
	_, err := h.GetGateway(h.ctx, "gw-b")
	wantErr(t, "GetGateway of a missing gateway", err, store.ErrNotFound)
	wantErr(t, "DeleteGateway of a missing gateway", h.DeleteGateway(h.ctx, "gw-b"), store.ErrNotFound)

	b := h.gateway("gw-b", 1)
	b.PublicV6 = netip.Addr{} // a gateway with an IPv4 public address only
	got, err := h.PutGateway(h.ctx, b)
	noErr(t, "PutGateway", err)
	if got.Revision == 0 || got.Revision != h.revision(t) {
		t.Fatalf("gateway revision %d, store revision %d", got.Revision, h.revision(t))
	}
	b.Revision = got.Revision
	equal(t, "PutGateway result", got, b)
	stored, err := h.GetGateway(h.ctx, "gw-b")
	noErr(t, "GetGateway", err)
	equal(t, "GetGateway", stored, b)
	a, err := h.PutGateway(h.ctx, h.gateway("gw-a", 0))
	noErr(t, "PutGateway", err)

	// A re-registration replaces the record with a new revision.
	h.clock.Advance(1e9)
	b2 := b
	b2.ClusterID, b2.PublicV4, b2.PublicV6, b2.UpdatedAt = "c2", h.addr4(), h.addr6(), h.clock.Now()
	got, err = h.PutGateway(h.ctx, b2)
	noErr(t, "PutGateway replace", err)
	if got.Revision <= a.Revision {
		t.Fatalf("replaced gateway revision %d, want > %d", got.Revision, a.Revision)
	}
	b2.Revision = got.Revision
	equal(t, "PutGateway replace result", got, b2)
	all, err := h.ListGateways(h.ctx)
	noErr(t, "ListGateways", err)
	equal(t, "ListGateways", all, []store.Gateway{a, b2})

	noErr(t, "DeleteGateway", h.DeleteGateway(h.ctx, "gw-b"))
	_, err = h.GetGateway(h.ctx, "gw-b")
	wantErr(t, "GetGateway after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteGateway twice", h.DeleteGateway(h.ctx, "gw-b"), store.ErrNotFound)

	cs := h.changesSince(t, 0)
	if len(cs) != 4 {
		t.Fatalf("gateway writes logged %s, want three puts and a delete", describe(cs))
	}
	for i, w := range []struct{ op, id string }{{store.OpPut, "gw-b"}, {store.OpPut, "gw-a"}, {store.OpPut, "gw-b"}, {store.OpDelete, "gw-b"}} {
		wantChange(t, fmt.Sprintf("change %d", i), cs[i], store.KindGateway, w.op, w.id, "", "")
	}
	if cs[2].Revision != b2.Revision || !cs[3].Time.Equal(h.clock.Now()) {
		t.Fatalf("changes %s: want the replace at revision %d and the delete at %s", describe(cs), b2.Revision, h.clock.Now())
	}
}

func testExposures(t *testing.T, h *harness) {
	h.mustService(t, "web")
	h.mustService(t, "api")
	start := h.revision(t)

	want := h.exposure("web", "tcp", 8080)
	want.Gateway, want.Policy, want.InstanceNumber = "gw1", "instance", 3
	got, err := h.CreateExposure(h.ctx, want)
	noErr(t, "CreateExposure", err)
	if got.Revision == 0 || got.Revision != h.revision(t) {
		t.Fatalf("exposure revision %d, store revision %d", got.Revision, h.revision(t))
	}
	want.Revision, want.JobName = got.Revision, "app.ns.web.ns" // the store names the service
	equal(t, "CreateExposure result", got, want)
	stored, err := h.GetExposure(h.ctx, "tcp-8080")
	noErr(t, "GetExposure", err)
	equal(t, "GetExposure", stored, want)

	// A public port is exposed once per protocol, whichever service asks.
	_, err = h.CreateExposure(h.ctx, h.exposure("api", "tcp", 8080))
	wantErr(t, "CreateExposure of a taken port", err, store.ErrAlreadyExists)
	_, err = h.CreateExposure(h.ctx, h.exposure("web", "tcp", 8080))
	wantErr(t, "CreateExposure again", err, store.ErrAlreadyExists)
	_, err = h.CreateExposure(h.ctx, h.exposure("nope", "tcp", 9090))
	wantErr(t, "CreateExposure of a missing service", err, store.ErrNotFound)
	_, err = h.GetExposure(h.ctx, "tcp-9090")
	wantErr(t, "GetExposure of the failed create", err, store.ErrNotFound)
	if cs := h.changesSince(t, got.Revision); len(cs) != 0 {
		t.Fatalf("failed creates logged %s", describe(cs))
	}

	udp, err := h.CreateExposure(h.ctx, h.exposure("api", "udp", 8080))
	noErr(t, "CreateExposure of the same port over UDP", err)
	web2, err := h.CreateExposure(h.ctx, h.exposure("web", "tcp", 443))
	noErr(t, "CreateExposure", err)

	list := func(serviceID string, want ...store.Exposure) {
		t.Helper()
		got, err := h.ListExposures(h.ctx, serviceID)
		noErr(t, "ListExposures", err)
		equal(t, fmt.Sprintf("ListExposures(%q)", serviceID), got, want)
	}
	list("web", web2, want)
	list("api", udp)
	list("", web2, want, udp)
	list("nope")

	noErr(t, "DeleteExposure", h.DeleteExposure(h.ctx, "tcp-8080"))
	_, err = h.GetExposure(h.ctx, "tcp-8080")
	wantErr(t, "GetExposure after delete", err, store.ErrNotFound)
	wantErr(t, "DeleteExposure twice", h.DeleteExposure(h.ctx, "tcp-8080"), store.ErrNotFound)
	list("web", web2)

	cs := h.changesSince(t, start)
	if len(cs) != 4 {
		t.Fatalf("exposure writes logged %s, want three puts and a delete", describe(cs))
	}
	wantChange(t, "first put", cs[0], store.KindExposure, store.OpPut, "tcp-8080", "web", "app.ns.web.ns")
	wantChange(t, "put over UDP", cs[1], store.KindExposure, store.OpPut, "udp-8080", "api", "app.ns.api.ns")
	wantChange(t, "delete", cs[3], store.KindExposure, store.OpDelete, "tcp-8080", "web", "app.ns.web.ns")

	// The port is free again, for any service.
	_, err = h.CreateExposure(h.ctx, h.exposure("api", "tcp", 8080))
	noErr(t, "CreateExposure of a freed port", err)
}

func testDeleteServiceWithExposures(t *testing.T, h *harness) {
	// Without instances, a service goes with its exposures even when not forced.
	h.mustService(t, "web")
	for _, port := range []int{80, 443} {
		_, err := h.CreateExposure(h.ctx, h.exposure("web", "tcp", port))
		noErr(t, "CreateExposure", err)
	}
	other, err := h.CreateExposure(h.ctx, h.exposure(h.mustService(t, "api").ID, "tcp", 8080))
	noErr(t, "CreateExposure", err)
	start := h.revision(t)
	noErr(t, "DeleteService", h.deleteService("web", false))
	cs := h.changesSince(t, start)
	if len(cs) != 3 {
		t.Fatalf("DeleteService logged %s, want two exposure deletes and the service delete", describe(cs))
	}
	wantChange(t, "first exposure delete", cs[0], store.KindExposure, store.OpDelete, "tcp-443", "web", "app.ns.web.ns")
	wantChange(t, "second exposure delete", cs[1], store.KindExposure, store.OpDelete, "tcp-80", "web", "app.ns.web.ns")
	if cs[2].Kind != store.KindService || cs[2].Op != store.OpDelete {
		t.Fatalf("DeleteService logged %s, want the service delete last", describe(cs))
	}
	all, err := h.ListExposures(h.ctx, "")
	noErr(t, "ListExposures", err)
	equal(t, "exposures after DeleteService", all, []store.Exposure{other})

	// With instances, a refused delete keeps the exposures; a forced one removes them.
	sv := h.mustService(t, "web")
	ex, err := h.CreateExposure(h.ctx, h.exposure("web", "udp", 53))
	noErr(t, "CreateExposure", err)
	in := h.mustInstance(t, "web", 0)
	start = h.revision(t)
	wantErr(t, "DeleteService with instances", h.deleteService("web", false), store.ErrHasInstances)
	stored, err := h.GetExposure(h.ctx, ex.ID)
	noErr(t, "GetExposure after refused delete", err)
	equal(t, "exposure after refused delete", stored, ex)
	if cs := h.changesSince(t, start); len(cs) != 0 {
		t.Fatalf("refused delete logged %s", describe(cs))
	}
	del, err := h.DeleteService(h.ctx, "web", true)
	noErr(t, "DeleteService force", err)
	equal(t, "what the forced delete deleted", del, store.Deleted{Service: sv, Instances: []store.Instance{in}, Exposures: []store.Exposure{ex}})
	_, err = h.GetExposure(h.ctx, ex.ID)
	wantErr(t, "GetExposure after forced delete", err, store.ErrNotFound)
	cs = h.changesSince(t, start)
	if len(cs) != 3 || cs[2].Kind != store.KindService {
		t.Fatalf("forced delete logged %s, want an exposure and an instance delete, then the service delete", describe(cs))
	}
	kinds := map[string]bool{cs[0].Kind: true, cs[1].Kind: true}
	if !kinds[store.KindExposure] || !kinds[store.KindInstance] {
		t.Fatalf("forced delete logged %s", describe(cs))
	}
}

func testConcurrentExposures(t *testing.T, h *harness) {
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		sv := h.mustService(t, fmt.Sprintf("svc%02d", i))
		wg.Go(func() { _, errs[i] = h.CreateExposure(h.ctx, h.exposure(sv.ID, "tcp", 8080)) })
	}
	wg.Wait()
	winners := 0
	for i, err := range errs {
		switch {
		case err == nil:
			winners++
		case !errors.Is(err, store.ErrAlreadyExists):
			t.Fatalf("create %d: %v, want success or ErrAlreadyExists", i, err)
		}
	}
	if winners != 1 {
		t.Fatalf("%d creates exposed tcp port 8080, want exactly 1", winners)
	}
	all, err := h.ListExposures(h.ctx, "")
	noErr(t, "ListExposures", err)
	if len(all) != 1 {
		t.Fatalf("exposures after the race: %+v", all)
	}
	// The winner's put is logged; losers log nothing.
	var puts []store.Change
	for _, c := range h.changesSince(t, 0) {
		if c.Kind == store.KindExposure {
			puts = append(puts, c)
		}
	}
	if len(puts) != 1 || puts[0].ServiceID != all[0].ServiceID || puts[0].Revision != all[0].Revision {
		t.Fatalf("the race logged %s, want the winner's put only", describe(puts))
	}
}
