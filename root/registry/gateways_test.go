package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

// gatewayEnv is a registry with clusters c1 and c2 registered.
func gatewayEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, addrplan.Default())
	for _, id := range []string{"c1", "c2"} {
		if _, err := e.reg.RegisterCluster(context.Background(), api.ClusterRequest{ID: id, Address: "127.0.0.1", Port: 10110}, false); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// gwReq is a valid registration on cluster c1 whose Namespace IP is 10.18.0.<n>.
func gwReq(n int) api.GatewayRequest {
	return api.GatewayRequest{ClusterID: "c1", PublicIP: netip.MustParseAddr("127.0.0.1"),
		PublicIPv6: netip.MustParseAddr("2001:db8::1"), NamespaceIP: netip.AddrFrom4([4]byte{10, 18, 0, byte(n)}),
		HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103, Location: &geo.Point{Lat: 48.1, Lon: 11.6}}
}

func (e *env) gateway(id string, req api.GatewayRequest) registry.Gateway {
	e.t.Helper()
	g, _, err := e.reg.RegisterGateway(context.Background(), id, req)
	if err != nil {
		e.t.Fatalf("register gateway %s: %v", id, err)
	}
	return g
}

// gatewayInstances lists the instances of the gateway service.
func (e *env) gatewayInstances() []store.Instance {
	e.t.Helper()
	s, err := e.reg.Service(context.Background(), api.GatewayJobName)
	if err != nil {
		e.t.Fatalf("gateway service: %v", err)
	}
	ins, err := e.reg.Instances(context.Background(), s.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return ins
}

func TestRegisterGatewayKeepsItsInstance(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	req := gwReq(2)
	g, created, err := e.reg.RegisterGateway(ctx, "gw1", req)
	if err != nil || !created {
		t.Fatalf("first registration: created=%v, %v", created, err)
	}
	in := g.Instance
	if in.Status != store.StatusRunning || in.NamespaceIP.V4 != req.NamespaceIP || in.HostIP != req.HostIP || in.HostPort != 50103 ||
		in.ClusterID != "c1" || in.Location == nil || g.PublicV4 != req.PublicIP || g.PublicV6 != req.PublicIPv6 {
		t.Fatalf("registered gateway %+v", g)
	}
	if !e.plan.ServiceV4.Contains(in.IP.V4) || !e.plan.InstanceV6.Contains(in.IP.V6) || g.InstanceNumber != in.Number {
		t.Fatalf("gateway Instance IPs %v (number %d, record %d)", in.IP, in.Number, g.InstanceNumber)
	}
	// Replies reach the gateway like any instance: its Instance IP resolves to it.
	entry, err := e.reg.Resolve(ctx, in.IP.V4.String(), nil)
	if err != nil || entry.Service.JobName() != api.GatewayJobName || entry.Matched != in.Number || len(entry.Instances) != 1 {
		t.Fatalf("resolve the gateway's Instance IP: %+v, %v", entry, err)
	}

	// The same registration again is an update that changes nothing but the time.
	again, created, err := e.reg.RegisterGateway(ctx, "gw1", req)
	if err != nil || created || again.Instance.IP != in.IP || again.InstanceNumber != in.Number {
		t.Fatalf("repeated registration: created=%v %+v, %v", created, again, err)
	}
	// A gateway that moved (new cluster, addresses and node location) keeps its Instance
	// IPs, also after a root restart.
	e.restart()
	moved := gwReq(70)
	moved.ClusterID, moved.PublicIP, moved.PublicIPv6 = "c2", netip.MustParseAddr("127.0.0.9"), netip.Addr{}
	moved.Location = &geo.Point{Lat: 52.5, Lon: 13.4}
	g2, created, err := e.reg.RegisterGateway(ctx, "gw1", moved)
	if err != nil || created {
		t.Fatalf("re-registration: created=%v, %v", created, err)
	}
	if g2.Instance.IP != in.IP || g2.Instance.ClusterID != "c2" || g2.ClusterID != "c2" || g2.Instance.NamespaceIP.V4 != moved.NamespaceIP ||
		g2.PublicV4 != moved.PublicIP || g2.PublicV6.IsValid() || g2.Instance.Location.Lat != 52.5 || !g2.CreatedAt.Equal(g.CreatedAt) {
		t.Fatalf("re-registered gateway %+v, want Instance IPs %v kept and the rest updated", g2, in.IP)
	}
	if ins := e.gatewayInstances(); len(ins) != 1 {
		t.Fatalf("%d gateway instances after re-registrations, want 1", len(ins))
	}
	got, err := e.reg.GatewayByID(ctx, "gw1")
	if err != nil || got.Instance.IP != in.IP || got.Revision != g2.Revision {
		t.Fatalf("GatewayByID: %+v, %v", got, err)
	}
	all, err := e.reg.Gateways(ctx)
	if err != nil || len(all) != 1 || all[0].ID != "gw1" {
		t.Fatalf("Gateways: %+v, %v", all, err)
	}
	if _, err := e.reg.GatewayByID(ctx, "gw9"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "unknown gateway gw9") {
		t.Fatalf("unknown gateway: %v", err)
	}
}

func TestRegisterGatewayConcurrently(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	const n = 8
	var wg sync.WaitGroup
	// Eight new gateways at once also race to create the gateway service.
	numbers := make([]int, n)
	for i := range n {
		wg.Go(func() {
			g, _, err := e.reg.RegisterGateway(ctx, fmt.Sprintf("gw%d", i), gwReq(2+i))
			if err != nil {
				t.Error(err)
			}
			numbers[i] = g.InstanceNumber
		})
	}
	wg.Wait()
	seen := map[int]bool{}
	for _, num := range numbers {
		if seen[num] {
			t.Fatalf("two gateways got instance %d: %v", num, numbers)
		}
		seen[num] = true
	}
	// Eight registrations of one new gateway create one instance.
	results := make([]registry.Gateway, n)
	created := make([]bool, n)
	for i := range n {
		wg.Go(func() {
			var err error
			results[i], created[i], err = e.reg.RegisterGateway(ctx, "edge", gwReq(100))
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	news := 0
	for i, g := range results {
		if g.Instance.IP != results[0].Instance.IP {
			t.Fatalf("registration %d got Instance IPs %v, another %v", i, g.Instance.IP, results[0].Instance.IP)
		}
		if created[i] {
			news++
		}
	}
	if news != 1 {
		t.Fatalf("%d registrations reported a new gateway, want 1", news)
	}
	if ins := e.gatewayInstances(); len(ins) != n+1 {
		t.Fatalf("%d gateway instances, want %d", len(ins), n+1)
	}
}

func TestRegisterGatewayValidation(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	with := func(f func(*api.GatewayRequest)) api.GatewayRequest {
		r := gwReq(2)
		f(&r)
		return r
	}
	cases := []struct {
		name, id string
		req      api.GatewayRequest
		wantErr  error
		msg      string
	}{
		{"bad id", "gw/1", gwReq(2), registry.ErrInvalid, `gateway id "gw/1" may hold only`},
		{"no cluster", "gw1", with(func(r *api.GatewayRequest) { r.ClusterID = "" }), registry.ErrInvalid, "cluster_id"},
		{"unknown cluster", "gw1", with(func(r *api.GatewayRequest) { r.ClusterID = "c9" }), store.ErrNotFound, "cluster c9 is not registered"},
		{"no public address", "gw1", with(func(r *api.GatewayRequest) { r.PublicIP, r.PublicIPv6 = netip.Addr{}, netip.Addr{} }), registry.ErrInvalid, "needs a public address"},
		{"v6 in public_ip", "gw1", with(func(r *api.GatewayRequest) { r.PublicIP = netip.MustParseAddr("2001:db8::5") }), registry.ErrInvalid, "public_ip 2001:db8::5 must be a unicast IPv4"},
		{"v4 in public_ip_v6", "gw1", with(func(r *api.GatewayRequest) { r.PublicIPv6 = netip.MustParseAddr("192.0.2.1") }), registry.ErrInvalid, "public_ip_v6 192.0.2.1 must be a unicast IPv6"},
		{"mapped v4 in public_ip_v6", "gw1", with(func(r *api.GatewayRequest) { r.PublicIPv6 = netip.MustParseAddr("::ffff:192.0.2.1") }), registry.ErrInvalid, "public_ip_v6"},
		{"unspecified public_ip", "gw1", with(func(r *api.GatewayRequest) { r.PublicIP = netip.IPv4Unspecified() }), registry.ErrInvalid, "public_ip 0.0.0.0"},
		{"no namespace ip", "gw1", with(func(r *api.GatewayRequest) { r.NamespaceIP = netip.Addr{} }), registry.ErrInvalid, "namespace_ip is required"},
		{"namespace ip outside subnets", "gw1", with(func(r *api.GatewayRequest) { r.NamespaceIP = netip.MustParseAddr("192.168.1.1") }), registry.ErrInvalid, "namespace_ip 192.168.1.1 is outside the worker subnets"},
		{"no host ip", "gw1", with(func(r *api.GatewayRequest) { r.HostIP = netip.Addr{} }), registry.ErrInvalid, "host_ip is required"},
		{"host port 0", "gw1", with(func(r *api.GatewayRequest) { r.HostPort = 0 }), registry.ErrInvalid, "host_port 0 must be between 1 and 65535"},
		{"host port too big", "gw1", with(func(r *api.GatewayRequest) { r.HostPort = 65536 }), registry.ErrInvalid, "host_port 65536"},
		{"bad location", "gw1", with(func(r *api.GatewayRequest) { r.Location = &geo.Point{Lat: 91} }), registry.ErrInvalid, "location"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := e.reg.RegisterGateway(ctx, c.id, c.req)
			if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, c.wantErr, c.msg)
			}
		})
	}
	if gs, err := e.reg.Gateways(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("gateways after refused registrations: %+v, %v", gs, err)
	}
}

func TestDeleteGateway(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	g1 := e.gateway("gw1", gwReq(2))
	e.gateway("gw2", gwReq(66))
	s := e.service("web")
	own, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 8080, ServicePort: 80, Gateway: "gw1"})
	if err != nil {
		t.Fatal(err)
	}
	shared, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "udp", PublicPort: 53, ServicePort: 53})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.DeleteGateway(ctx, "gw1", false); !errors.Is(err, registry.ErrConflict) || !strings.Contains(err.Error(), "exposure(s) tcp-8080 that name it") {
		t.Fatalf("delete a gateway named by an exposure: %v, want a conflict naming tcp-8080", err)
	}
	if _, err := e.reg.GatewayByID(ctx, "gw1"); err != nil {
		t.Fatalf("gateway after refused delete: %v", err)
	}
	// gw2 is named by no exposure (the shared one is every gateway's).
	if err := e.reg.DeleteGateway(ctx, "gw2", false); err != nil {
		t.Fatalf("delete gw2: %v", err)
	}
	if err := e.reg.DeleteGateway(ctx, "gw1", true); err != nil {
		t.Fatalf("forced delete: %v", err)
	}
	if _, err := e.reg.Exposure(ctx, s.ID, own.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("gw1's exposure after forced delete: %v", err)
	}
	if _, err := e.reg.Exposure(ctx, s.ID, shared.ID); err != nil {
		t.Fatalf("the shared exposure after deleting a gateway: %v", err)
	}
	if err := e.reg.DeleteGateway(ctx, "gw1", false); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	// Its instance is gone and its Instance IPs are in quarantine.
	if ins := e.gatewayInstances(); len(ins) != 0 {
		t.Fatalf("gateway instances after deleting every gateway: %+v", ins)
	}
	for _, a := range []netip.Addr{g1.Instance.IP.V4, g1.Instance.IP.V6} {
		if l, err := e.st.GetLease(ctx, a); err != nil || l.ReleasedAt.IsZero() {
			t.Fatalf("lease of %s after delete: %+v, %v; want quarantined", a, l, err)
		}
	}
	again := e.gateway("gw1", gwReq(2))
	if again.Instance.IP.V4 == g1.Instance.IP.V4 || again.Instance.IP.V6 == g1.Instance.IP.V6 {
		t.Fatalf("a new registration got quarantined Instance IPs %v", again.Instance.IP)
	}
}

// TestGatewayOrphanInstance: a registration that died between creating its instance and
// storing the gateway left an instance no gateway names; a later registration deletes
// it once it is older than the grace, and never one that may still be in progress.
func TestGatewayOrphanInstance(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	e.gateway("gw1", gwReq(2))
	svc, err := e.reg.Service(ctx, api.GatewayJobName)
	if err != nil {
		t.Fatal(err)
	}
	orphan, err := e.st.CreateInstance(ctx, store.Instance{ServiceID: svc.ID, Number: 7, ClusterID: "c1",
		IP:     store.AddrPair{V4: netip.MustParseAddr("10.30.100.100"), V6: netip.MustParseAddr("fdff::100:100")},
		Status: store.StatusScheduled, UpdatedAt: e.clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	e.restart() // the crash
	e.gateway("gw2", gwReq(66))
	if _, _, err := e.reg.Instance(ctx, svc.ID, orphan.Number); err != nil {
		t.Fatalf("a young orphan was deleted (it may be a registration in progress): %v", err)
	}
	e.clock.Advance(2 * time.Minute)
	e.gateway("gw1", gwReq(2)) // has its instance: no sweep needed
	if _, _, err := e.reg.Instance(ctx, svc.ID, orphan.Number); err != nil {
		t.Fatalf("orphan deleted by a registration that created no instance: %v", err)
	}
	e.gateway("gw3", gwReq(130))
	if _, _, err := e.reg.Instance(ctx, svc.ID, orphan.Number); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("old orphan after a new registration: %v, want it deleted", err)
	}
	if l, err := e.st.GetLease(ctx, orphan.IP.V4); err != nil || l.ReleasedAt.IsZero() {
		t.Fatalf("orphan's lease: %+v, %v; want quarantined", l, err)
	}
	if ins := e.gatewayInstances(); len(ins) != 3 {
		t.Fatalf("%d gateway instances, want one per gateway", len(ins))
	}
}

func TestSystemNamespaceIsReserved(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	for _, req := range []api.ServiceRequest{
		{App: "semnet", AppNS: "system", Service: "gateway", ServiceNS: "all"},
		{App: "semnet", AppNS: "system", Service: "web", ServiceNS: "eu"},
		{App: "SemNet", AppNS: "SYSTEM", Service: "web", ServiceNS: "eu"},
	} {
		if _, err := e.reg.CreateService(ctx, req); !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "semnet.system holds semnet's own services") {
			t.Errorf("create %+v: %v, want ErrInvalid naming the reserved namespace", req, err)
		}
	}
	if _, err := e.reg.CreateService(ctx, api.ServiceRequest{App: "semnet", AppNS: "prod", Service: "web", ServiceNS: "eu"}); err != nil {
		t.Fatalf("app semnet in another namespace: %v", err)
	}
	e.gateway("gw1", gwReq(2))
	job := api.GatewayJobName
	checks := map[string]error{
		"create instance": func() error { _, _, err := e.reg.CreateInstance(ctx, job, api.InstanceRequest{}); return err }(),
		"place instance":  func() error { _, _, err := e.reg.Place(ctx, job, 0, api.Placement{Status: "running"}); return err }(),
		"delete instance": func() error { _, err := e.reg.DeleteInstance(ctx, job, 0); return err }(),
		"delete service":  e.reg.DeleteService(ctx, job, true),
		"expose": func() error {
			_, err := e.reg.CreateExposure(ctx, job, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1})
			return err
		}(),
	}
	for what, err := range checks {
		if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "gateway") {
			t.Errorf("%s of the gateway service: %v, want ErrInvalid", what, err)
		}
	}
	if ins := e.gatewayInstances(); len(ins) != 1 || ins[0].Status != store.StatusRunning {
		t.Fatalf("gateway instances after refused changes: %+v", ins)
	}
}

func TestExposureValidation(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	e.gateway("gw1", gwReq(2))
	s := e.service("web")
	other := e.service("api")
	in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.CreateExposure(ctx, other.JobName(), api.ExposureRequest{Protocol: "tcp", PublicPort: 8080, ServicePort: 80}); err != nil {
		t.Fatal(err)
	}
	num := func(n int) *int { return &n }
	cases := []struct {
		name, service string
		req           api.ExposureRequest
		wantErr       error
		msg           string
	}{
		{"unknown service", "app.ns.nope.sns", api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1}, store.ErrNotFound, "app.ns.nope.sns"},
		{"uppercase protocol", s.ID, api.ExposureRequest{Protocol: "TCP", PublicPort: 1, ServicePort: 1}, registry.ErrInvalid, `protocol "TCP" must be "tcp" or "udp"`},
		{"no protocol", s.ID, api.ExposureRequest{PublicPort: 1, ServicePort: 1}, registry.ErrInvalid, `protocol ""`},
		{"public port 0", s.ID, api.ExposureRequest{Protocol: "tcp", ServicePort: 1}, registry.ErrInvalid, "public_port 0 must be between 1 and 65535"},
		{"public port too big", s.ID, api.ExposureRequest{Protocol: "udp", PublicPort: 65536, ServicePort: 1}, registry.ErrInvalid, "public_port 65536"},
		{"service port 0", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1}, registry.ErrInvalid, "service_port 0"},
		{"tunnel port", s.ID, api.ExposureRequest{Protocol: "udp", PublicPort: 50103, ServicePort: 53}, registry.ErrInvalid, "tunnel port"},
		{"unknown policy", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, Policy: "random"}, registry.ErrInvalid, `policy "random" must be "round_robin" (the default), "closest" or "instance"`},
		{"instance without number", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, Policy: "instance"}, registry.ErrInvalid, "needs instance_number"},
		{"number without instance policy", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, InstanceNumber: num(0)}, registry.ErrInvalid, `instance_number is only for policy "instance" (policy is "round_robin")`},
		{"unknown instance", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, Policy: "instance", InstanceNumber: num(5)}, store.ErrNotFound, "instance_number 5: service app.ns.web.sns has no such instance"},
		{"unknown gateway", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, Gateway: "gw9"}, store.ErrNotFound, "unknown gateway gw9"},
		{"bad gateway id", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 1, ServicePort: 1, Gateway: "a b"}, registry.ErrInvalid, `gateway "a b"`},
		{"port taken", s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 8080, ServicePort: 80}, store.ErrAlreadyExists, "tcp port 8080 is already exposed by service app.ns.api.sns (exposure tcp-8080)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.reg.CreateExposure(ctx, c.service, c.req)
			if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, c.wantErr, c.msg)
			}
		})
	}
	// Each policy picks its address pair.
	for _, c := range []struct {
		req    api.ExposureRequest
		policy string
		target store.AddrPair
	}{
		{api.ExposureRequest{Protocol: "tcp", PublicPort: 80, ServicePort: 8000}, "round_robin", s.RR},
		{api.ExposureRequest{Protocol: "tcp", PublicPort: 81, ServicePort: 8000, Policy: "closest", Gateway: "gw1"}, "closest", s.Closest},
		{api.ExposureRequest{Protocol: "udp", PublicPort: 8080, ServicePort: 8000, Policy: "instance", InstanceNumber: num(0)}, "instance", in.IP},
	} {
		x, err := e.reg.CreateExposure(ctx, s.RR.V4.String(), c.req)
		if err != nil || x.Policy != c.policy || x.Target != c.target || x.JobName != s.JobName() || x.ID != fmt.Sprintf("%s-%d", c.req.Protocol, c.req.PublicPort) {
			t.Fatalf("expose %+v: %+v, %v; want policy %s targeting %v", c.req, x, err, c.policy, c.target)
		}
		if (c.policy == "instance") != (x.InstanceNumber == 0) {
			t.Fatalf("exposure %+v: instance number %d", x, x.InstanceNumber)
		}
	}
}

// ids lists exposures' IDs, space-separated.
func ids(es []store.Exposure) string {
	var out []string
	for _, x := range es {
		out = append(out, x.ID)
	}
	return strings.Join(out, " ")
}

func TestListAndDeleteExposures(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	e.gateway("gw1", gwReq(2))
	e.gateway("gw2", gwReq(66))
	web, api2 := e.service("web"), e.service("api")
	expose := func(s store.Service, port int, gw string) {
		t.Helper()
		if _, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: port, ServicePort: 80, Gateway: gw}); err != nil {
			t.Fatal(err)
		}
	}
	expose(web, 1001, "gw1")
	expose(web, 1002, "")
	expose(api2, 1003, "gw2")
	rev, _ := e.st.Revision(ctx)
	for _, c := range []struct {
		gateway, want string
	}{{"gw1", "tcp-1001 tcp-1002"}, {"gw2", "tcp-1002 tcp-1003"}} {
		es, r, err := e.reg.ExposuresForGateway(ctx, c.gateway)
		if err != nil || ids(es) != c.want || r != rev {
			t.Fatalf("exposures of %s: %s (revision %d), %v; want %s at %d", c.gateway, ids(es), r, err, c.want, rev)
		}
	}
	if _, _, err := e.reg.ExposuresForGateway(ctx, "gw9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("exposures of an unknown gateway: %v", err)
	}
	if es, _, err := e.reg.ListExposures(ctx, web.JobName()); err != nil || ids(es) != "tcp-1001 tcp-1002" {
		t.Fatalf("exposures of web: %s, %v", ids(es), err)
	}
	if es, _, err := e.reg.ListExposures(ctx, ""); err != nil || ids(es) != "tcp-1001 tcp-1002 tcp-1003" {
		t.Fatalf("every exposure: %s, %v", ids(es), err)
	}
	// An exposure is reached only through its own service.
	if _, err := e.reg.Exposure(ctx, web.ID, "tcp-1003"); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "service app.ns.web.sns has no exposure tcp-1003") {
		t.Fatalf("another service's exposure: %v", err)
	}
	if err := e.reg.DeleteExposure(ctx, web.ID, "tcp-1003"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete another service's exposure: %v", err)
	}
	if err := e.reg.DeleteExposure(ctx, api2.ID, "tcp-1003"); err != nil {
		t.Fatal(err)
	}
	// Deleting a service (without instances, not forced) takes its exposures along and
	// frees their ports.
	if err := e.reg.DeleteService(ctx, web.ID, false); err != nil {
		t.Fatalf("delete a service with exposures: %v", err)
	}
	if es, _, err := e.reg.ListExposures(ctx, ""); err != nil || len(es) != 0 {
		t.Fatalf("exposures after deleting their services: %s, %v", ids(es), err)
	}
	expose(api2, 1001, "")
}

// An exposure of one instance goes with the instance: its Instance IP is released and
// could later belong to another service.
func TestInstanceDeleteRemovesItsExposures(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	s := e.service("web")
	var nums []int
	for range 2 {
		in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{})
		if err != nil {
			t.Fatal(err)
		}
		nums = append(nums, in.Number)
	}
	for i, n := range nums {
		if _, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 9000 + i, ServicePort: 80,
			Policy: api.PolicyInstance, InstanceNumber: &n}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "tcp", PublicPort: 9100, ServicePort: 80}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.DeleteInstance(ctx, s.ID, nums[0]); err != nil {
		t.Fatal(err)
	}
	es, _, err := e.reg.ListExposures(ctx, s.ID)
	if err != nil || ids(es) != "tcp-9001 tcp-9100" {
		t.Errorf("exposures after deleting instance %d: %s, %v; want tcp-9001 and tcp-9100", nums[0], ids(es), err)
	}
}

func TestChangeStreamCarriesGatewaysAndExposures(t *testing.T) {
	e := gatewayEnv(t) // c1 and c2 have no interests
	ctx := context.Background()
	s := e.service("web")
	e.gateway("gw1", gwReq(2))
	x, err := e.reg.CreateExposure(ctx, s.ID, api.ExposureRequest{Protocol: "udp", PublicPort: 5353, ServicePort: 53})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.reg.DeleteExposure(ctx, s.JobName(), x.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.DeleteGateway(ctx, "gw1", false); err != nil {
		t.Fatal(err)
	}
	b, err := e.reg.Changes(ctx, "c1", 0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range b.Changes {
		got = append(got, fmt.Sprintf("%s %s %s %s", c.Kind, c.Op, c.Object, c.JobName))
	}
	want := []string{"gateway put gw1 ", "exposure put udp-5353 app.ns.web.sns", "exposure delete udp-5353 app.ns.web.sns", "gateway delete gw1 "}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("changes for a cluster without interests:\n got %q\nwant %q", got, want)
	}
	// Long-pollers are woken by them too.
	done := e.longPoll("c2", b.Revision)
	e.gateway("gw2", gwReq(66))
	select {
	case b := <-done:
		if len(b.Changes) == 0 || b.Changes[0].Kind != store.KindGateway || b.Changes[0].Object != "gw2" {
			t.Fatalf("woken with %+v", b.Changes)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long poll not woken by a gateway registration")
	}
}

// TestGatewayFailure: a gateway's cluster reports it failed (its node stayed away past
// the grace) as a placement of its instance; a failure from a host or cluster the
// gateway has left is ignored; registering again makes it run again, with the same
// instance. Other placements of the gateway service stay refused (see
// TestSystemNamespaceIsReserved).
func TestGatewayFailure(t *testing.T) {
	e := gatewayEnv(t)
	ctx := context.Background()
	g := e.gateway("gw1", gwReq(2))
	status := func() string {
		t.Helper()
		got, err := e.reg.GatewayByID(ctx, "gw1")
		if err != nil {
			t.Fatal(err)
		}
		return got.Instance.Status
	}
	if s := status(); s != store.StatusRunning {
		t.Fatalf("a registered gateway is %q, want running", s)
	}
	fail := func(p api.Placement) {
		t.Helper()
		p.Status = store.StatusFailed
		if _, _, err := e.reg.Place(ctx, api.GatewayJobName, g.InstanceNumber, p); err != nil {
			t.Fatalf("report %+v: %v", p, err)
		}
	}
	fail(api.Placement{ClusterID: "c1", HostIP: netip.MustParseAddr("127.0.0.2"), HostPort: 50103}) // another host
	fail(api.Placement{ClusterID: "c2"})                                                            // another cluster
	if s := status(); s != store.StatusRunning {
		t.Errorf("after failures from elsewhere the gateway is %q, want running", s)
	}
	fail(api.Placement{ClusterID: "c1", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103})
	if s := status(); s != store.StatusFailed {
		t.Errorf("after its cluster's failure the gateway is %q, want failed", s)
	}
	again := e.gateway("gw1", gwReq(2))
	if s := status(); s != store.StatusRunning || again.InstanceNumber != g.InstanceNumber || again.Instance.IP != g.Instance.IP {
		t.Errorf("registered again: %q, instance %d %v; want running, instance %d %v", s, again.InstanceNumber, again.Instance.IP, g.InstanceNumber, g.Instance.IP)
	}
}
