package root

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/httpapi/httpapitest"
)

// The fixture every fuzz input meets: a cluster, a service and its instance 0, placed.
// Routes that act on "a cluster" or "a service" act on these.
const (
	fuzzToken   = "fuzz-token-0123456789abcdef"
	fuzzCluster = "fz-c1"
	fuzzService = "5f0000000000000000000001"
	fuzzJob     = "fz.app.web.ns"
	fuzzGateway = "fz-gw"
)

// bodyRoutes are root's routes that read a request body, as FuzzAPIBodies picks them
// (the input's first byte, modulo their number). A route with a kind answers addresses
// on success, which record checks.
var bodyRoutes = []struct {
	method, path, kind string
}{
	{http.MethodPost, "/api/v1/clusters", ""},
	{http.MethodPut, "/api/v1/clusters/" + fuzzCluster + "/heartbeat", ""},
	{http.MethodPost, "/api/v1/clusters/" + fuzzCluster + "/interests", ""},
	{http.MethodPost, "/api/v1/services", "service"},
	{http.MethodPost, "/api/v1/services/" + fuzzJob + "/instances", "instance"},
	{http.MethodPut, "/api/v1/services/" + fuzzJob + "/instances/0/placement", "instance"},
	{http.MethodPost, "/api/v1/services/" + fuzzJob + "/exposures", ""},
	{http.MethodPut, "/api/v1/gateways/" + fuzzGateway, "gateway"},
	{http.MethodPost, "/api/v1/subnets", "subnet"},
	{http.MethodPost, "/api/net/cluster", ""},
	{http.MethodPost, "/api/net/service/deploy", "job"},
	{http.MethodPost, "/api/net/instance/deploy", "job"},
	{http.MethodPost, "/api/net/service/net_deploy_status", "job"},
}

// sweepEvery is how many inputs answered 2xx pass between two full checks of
// the stored state, each followed by a reset to the fixture (so the store stays small
// and every input stays fast).
const sweepEvery = 32

// FuzzAPIBodies sends arbitrary bodies to every body-taking route of the handler root
// serves (/api/v1 and the reference /api/net) over an embedded store, and checks:
//   - no 5xx: whatever a client sends is its own fault, answered 4xx;
//   - every 4xx is problem+json with a status and a detail;
//   - the fixture still answers afterwards, its addresses unchanged;
//   - no address is given to two owners: each answer that allocated is checked against
//     what was allocated before, and every sweepEvery such answers the whole state is
//     read back through the API and checked (nothing acknowledged lost, no address or
//     subnet twice).
func FuzzAPIBodies(f *testing.F) {
	fa := newFuzzAPI(f)
	f.Fuzz(fa.input)
}

// input is one fuzz input: body sent to the route the first byte picks.
func (fa *fuzzAPI) input(t *testing.T, route uint8, body []byte) {
	r := bodyRoutes[int(route)%len(bodyRoutes)]
	a := fa.do(r.method, r.path, body)
	if err := httpapitest.CheckClientError(a); err != nil {
		t.Fatalf("%s %s %q: %v", r.method, r.path, body, err)
	}
	fa.checkFixture(t)
	if a.Code >= 300 {
		return
	}
	fa.record(t, r.kind, a.Body)
	if fa.accepted++; fa.accepted >= sweepEvery {
		fa.sweep(t)
		fa.reset(t)
	}
}

// fuzzAPI is root's handler over an embedded store, built once per fuzzing process,
// with what the inputs allocated so far.
type fuzzAPI struct {
	h       http.Handler
	fixture api.Service
	inst0   api.Instance
	// owners maps each address answered as allocated to its owner ("service ID" or
	// "instance ID/n"); accepted counts inputs answered 2xx since the last reset.
	owners   map[netip.Addr]string
	accepted int
}

func newFuzzAPI(f testing.TB) *fuzzAPI {
	plan := addrplan.Default()
	// Released addresses are free at once: the inputs allocate and the resets release
	// far more than the pools hold, and a quarantine would turn that into 507s.
	plan.Quarantine = 0
	c := Config{DataDir: f.TempDir(), Plan: plan, Tokens: []string{fuzzToken}}
	ctx := context.Background()
	st, err := OpenStore(ctx, c)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	// No notifier: it would push job updates to whatever address an input registers a
	// reference cluster at.
	reg, err := registry.New(ctx, plan, st, registry.Options{})
	if err != nil {
		f.Fatal(err)
	}
	fa := &fuzzAPI{h: handler(ctx, c, reg, prometheus.NewRegistry(), slog.New(slog.DiscardHandler)), owners: map[netip.Addr]string{}}
	mustJSON := func(method, path, body string, want int, out any) {
		a := fa.do(method, path, []byte(body))
		if a.Code != want {
			f.Fatalf("fixture: %s %s: %d %s", method, path, a.Code, a.Body)
		}
		if out != nil {
			if err := json.Unmarshal(a.Body, out); err != nil {
				f.Fatalf("fixture: %s %s: %v", method, path, err)
			}
		}
	}
	mustJSON("POST", "/api/v1/clusters", `{"id":"`+fuzzCluster+`","address":"127.0.0.1","port":10110,"location":{"lat":48.1,"lon":11.6},"radius_km":50}`, 201, nil)
	mustJSON("POST", "/api/v1/services", `{"id":"`+fuzzService+`","app":"fz","app_ns":"app","service":"web","service_ns":"ns"}`, 201, &fa.fixture)
	mustJSON("POST", "/api/v1/services/"+fuzzJob+"/instances", `{"cluster_id":"`+fuzzCluster+`"}`, 201, nil)
	mustJSON("PUT", "/api/v1/services/"+fuzzJob+"/instances/0/placement",
		`{"status":"running","namespace_ip":"10.18.0.2","host_ip":"127.0.0.1","host_port":50103}`, 200, &fa.inst0)
	fa.reset(f)
	return fa
}

func (fa *fuzzAPI) do(method, path string, body []byte) httpapitest.Answer {
	return httpapitest.Serve(fa.h, method, path, fuzzToken, body)
}

// get reads path into out, failing the test unless it answers 200.
func (fa *fuzzAPI) get(t testing.TB, path string, out any) {
	t.Helper()
	a := fa.do(http.MethodGet, path, nil)
	if a.Code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, a.Code, a.Body)
	}
	if err := json.Unmarshal(a.Body, out); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, a.Body)
	}
}

func (fa *fuzzAPI) mustDelete(t testing.TB, path string) {
	t.Helper()
	if a := fa.do(http.MethodDelete, path, nil); a.Code != http.StatusNoContent {
		t.Fatalf("DELETE %s: %d %s", path, a.Code, a.Body)
	}
}

// checkFixture: the fixture still answers, with the Instance IPs it was given, whatever
// the input did. One request, by job name, so the service's lookup is exercised too;
// the service's own addresses are checked by every sweep.
func (fa *fuzzAPI) checkFixture(t *testing.T) {
	var in api.Instance
	fa.get(t, "/api/v1/services/"+fuzzJob+"/instances/0", &in)
	if in.InstanceIP != fa.inst0.InstanceIP || in.InstanceIPv6 != fa.inst0.InstanceIPv6 {
		t.Fatalf("fixture instance 0 has Instance IPs %v %v, was given %v %v", in.InstanceIP, in.InstanceIPv6, fa.inst0.InstanceIP, fa.inst0.InstanceIPv6)
	}
}

// own records that owner holds the addresses, failing if another owner holds one or
// the owner got one twice.
func (fa *fuzzAPI) own(t testing.TB, owner string, addrs ...netip.Addr) {
	t.Helper()
	for i, a := range addrs {
		if !a.IsValid() || slices.Contains(addrs[:i], a) {
			t.Fatalf("%s answered with a missing or repeated address: %v", owner, addrs)
		}
		if o, ok := fa.owners[a]; ok && o != owner {
			t.Fatalf("address %v given to %s, but %s holds it", a, owner, o)
		}
		fa.owners[a] = owner
	}
}

func serviceOwner(id string) string         { return "service " + id }
func instanceOwner(id string, n int) string { return fmt.Sprintf("instance %s/%d", id, n) }
func decodeInto(t testing.TB, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("answer does not decode as %T: %v: %s", v, err, b)
	}
}

// record checks what a successful input answered against the addresses handed out
// before, and reads it back.
func (fa *fuzzAPI) record(t *testing.T, kind string, body []byte) {
	switch kind {
	case "service":
		var s api.Service
		decodeInto(t, body, &s)
		fa.own(t, serviceOwner(s.ID), s.RRIP, s.RRIPv6, s.ClosestIP, s.ClosestIPv6)
		var back api.Service
		fa.get(t, "/api/v1/services/"+url.PathEscape(s.JobName), &back)
		if back.ID != s.ID || back.RRIP != s.RRIP || back.ClosestIPv6 != s.ClosestIPv6 {
			t.Fatalf("created %+v, reads back %+v", s, back)
		}
	case "instance":
		var in api.Instance
		decodeInto(t, body, &in)
		fa.own(t, instanceOwner(fa.fixture.ID, in.Number), in.InstanceIP, in.InstanceIPv6)
		var back api.Instance
		fa.get(t, fmt.Sprintf("/api/v1/services/%s/instances/%d", fuzzJob, in.Number), &back)
		if back.InstanceIP != in.InstanceIP || back.InstanceIPv6 != in.InstanceIPv6 {
			t.Fatalf("created %+v, reads back %+v", in, back)
		}
	case "gateway":
		var g api.Gateway
		decodeInto(t, body, &g)
		var gs api.Service
		fa.get(t, "/api/v1/services/"+api.GatewayJobName, &gs)
		fa.own(t, instanceOwner(gs.ID, g.InstanceNumber), g.InstanceIP, g.InstanceIPv6)
	case "subnet":
		var sn api.Subnet
		decodeInto(t, body, &sn)
		fa.own(t, "subnet "+sn.SubnetV4.String(), sn.SubnetV4.Addr(), sn.SubnetV6.Addr())
	case "job":
		var j refapi.Job
		decodeInto(t, body, &j)
		for _, sip := range j.ServiceIPList {
			fa.own(t, serviceOwner(j.ID), sip.Address, sip.AddressV6)
		}
		for _, in := range j.InstanceList {
			fa.own(t, instanceOwner(j.ID, in.InstanceNumber), in.InstanceIP, in.InstanceIPv6)
		}
	}
}

// sweep reads the whole state back through the API: every address held once, by the
// owner that was told it got it.
func (fa *fuzzAPI) sweep(t testing.TB) {
	t.Helper()
	held := map[netip.Addr]string{}
	hold := func(owner string, addrs ...netip.Addr) {
		for _, a := range addrs {
			if o, ok := held[a]; ok && o != owner {
				t.Fatalf("stored state: address %v held by %s and by %s", a, o, owner)
			}
			held[a] = owner
		}
	}
	for _, s := range fa.services(t) {
		hold(serviceOwner(s.ID), s.RRIP, s.RRIPv6, s.ClosestIP, s.ClosestIPv6)
		var ins []api.Instance
		fa.get(t, "/api/v1/services/"+s.ID+"/instances", &ins)
		for _, in := range ins {
			hold(instanceOwner(s.ID, in.Number), in.InstanceIP, in.InstanceIPv6)
		}
	}
	var sns []api.Subnet
	fa.get(t, "/api/v1/subnets", &sns)
	for _, sn := range sns {
		hold("subnet "+sn.SubnetV4.String(), sn.SubnetV4.Addr(), sn.SubnetV6.Addr())
	}
	for a, o := range fa.owners {
		if held[a] != o {
			t.Fatalf("address %v was given to %s, but the stored state has it held by %q", a, o, held[a])
		}
	}
}

func (fa *fuzzAPI) services(t testing.TB) []api.Service {
	var out []api.Service
	for after := ""; ; {
		var l api.ServiceList
		fa.get(t, "/api/v1/services?limit=1000&after="+url.QueryEscape(after), &l)
		out = append(out, l.Items...)
		if after = l.Next; after == "" {
			return out
		}
	}
}

// reset deletes everything but the fixture, through the API.
func (fa *fuzzAPI) reset(t testing.TB) {
	t.Helper()
	var exs api.ExposureList
	fa.get(t, "/api/v1/exposures", &exs)
	for _, e := range exs.Items {
		fa.mustDelete(t, "/api/v1/services/"+e.ServiceID+"/exposures/"+url.PathEscape(e.ID))
	}
	var gws []api.Gateway
	fa.get(t, "/api/v1/gateways", &gws)
	for _, g := range gws {
		fa.mustDelete(t, "/api/v1/gateways/"+g.ID+"?force=true")
	}
	for _, s := range fa.services(t) {
		switch {
		case s.ID == fa.fixture.ID:
			var ins []api.Instance
			fa.get(t, "/api/v1/services/"+s.ID+"/instances", &ins)
			for _, in := range ins {
				if in.Number != 0 {
					fa.mustDelete(t, fmt.Sprintf("/api/v1/services/%s/instances/%d", s.ID, in.Number))
				}
			}
		case s.JobName != api.GatewayJobName: // root's own, emptied with the gateways
			fa.mustDelete(t, "/api/v1/services/"+s.ID+"?force=true")
		}
	}
	var sns []api.Subnet
	fa.get(t, "/api/v1/subnets", &sns)
	for _, sn := range sns {
		fa.mustDelete(t, "/api/v1/subnets/"+sn.SubnetV4.Addr().String())
	}
	var cs []api.Cluster
	fa.get(t, "/api/v1/clusters", &cs)
	for _, c := range cs {
		if c.ID != fuzzCluster {
			fa.mustDelete(t, "/api/v1/clusters/"+url.PathEscape(c.ID))
		}
	}
	clear(fa.owners)
	fa.own(t, serviceOwner(fa.fixture.ID), fa.fixture.RRIP, fa.fixture.RRIPv6, fa.fixture.ClosestIP, fa.fixture.ClosestIPv6)
	fa.own(t, instanceOwner(fa.fixture.ID, 0), fa.inst0.InstanceIP, fa.inst0.InstanceIPv6)
	fa.accepted = 0
}
