package registry_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/ippool"
)

// clock is a test clock shared by the registry and its store.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type env struct {
	t     *testing.T
	dir   string
	plan  addrplan.Plan
	clock *clock
	st    store.Store
	reg   *registry.Registry
}

func newEnv(t *testing.T, plan addrplan.Plan) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), plan: plan, clock: newClock()}
	e.open()
	return e
}

// open (re)opens the store and builds a registry over it, as a root restart does.
func (e *env) open() {
	e.t.Helper()
	st, err := bolt.Open(filepath.Join(e.dir, "root.db"), store.Options{Quarantine: e.plan.Quarantine, Now: e.clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
	e.st = st
	e.t.Cleanup(func() { st.Close() })
	e.reg, err = registry.New(context.Background(), e.plan, st, registry.Options{Now: e.clock.Now})
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) restart() {
	e.t.Helper()
	if err := e.st.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.open()
}

func svcReq(name string) api.ServiceRequest {
	return api.ServiceRequest{App: "app", AppNS: "ns", Service: name, ServiceNS: "sns"}
}

func (e *env) service(name string) store.Service {
	e.t.Helper()
	s, err := e.reg.CreateService(context.Background(), svcReq(name))
	if err != nil {
		e.t.Fatalf("create service %s: %v", name, err)
	}
	return s
}

// placedWeb registers the clusters and creates service "web" with instance 0 in the
// first of them: the start of the placement tests.
func (e *env) placedWeb(clusters ...string) store.Service {
	e.t.Helper()
	ctx := context.Background()
	for _, id := range clusters {
		if _, err := e.reg.RegisterCluster(ctx, api.ClusterRequest{ID: id, Address: "127.0.0.1", Port: 10110}, false); err != nil {
			e.t.Fatal(err)
		}
	}
	s := e.service("web")
	if _, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: clusters[0]}); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// placer returns a function that applies a placement to instance 0 of service id and
// returns the instance, failing the test on an error.
func (e *env) placer(id string) func(api.Placement) store.Instance {
	return func(p api.Placement) store.Instance {
		e.t.Helper()
		in, _, err := e.reg.Place(context.Background(), id, 0, p)
		if err != nil {
			e.t.Fatal(err)
		}
		return in
	}
}

func TestCreateServiceAllocatesFourAddressesInTheirPools(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	s := e.service("web")
	p := e.plan
	checks := []struct {
		name string
		a    netip.Addr
		in   netip.Prefix
	}{{"rr v4", s.RR.V4, p.ServiceV4}, {"closest v4", s.Closest.V4, p.ServiceV4}, {"rr v6", s.RR.V6, p.RoundRobinV6}, {"closest v6", s.Closest.V6, p.ClosestV6}}
	for _, c := range checks {
		if !c.in.Contains(c.a) {
			t.Errorf("%s = %s, want inside %s", c.name, c.a, c.in)
		}
	}
	if s.RR.V4 == s.Closest.V4 {
		t.Errorf("RR and Closest share %s", s.RR.V4)
	}
	// The all-zeros address of an IPv6 prefix is the Subnet-Router anycast address.
	for _, a := range []netip.Addr{s.RR.V6, s.Closest.V6} {
		if a == p.RoundRobinV6.Addr() || a == p.ClosestV6.Addr() {
			t.Errorf("allocated the anycast address %s", a)
		}
	}
	if got, err := e.reg.Service(context.Background(), "app.ns.web.sns"); err != nil || got.ID != s.ID {
		t.Errorf("by job name: %v %v", got.ID, err)
	}
	for _, a := range []netip.Addr{s.RR.V4, s.RR.V6, s.Closest.V4, s.Closest.V6} {
		if got, err := e.reg.Service(context.Background(), a.String()); err != nil || got.ID != s.ID {
			t.Errorf("by %s: %v %v", a, got.ID, err)
		}
	}
}

func TestCreateServiceValidation(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	taken := e.service("taken")
	cases := []struct {
		name    string
		req     api.ServiceRequest
		wantErr error
		msg     string
	}{
		{"bad name", api.ServiceRequest{App: "a-b", AppNS: "n", Service: "s", ServiceNS: "n"}, registry.ErrInvalid, `app "a-b"`},
		{"long name", api.ServiceRequest{App: strings.Repeat("a", 31), AppNS: "n", Service: "s", ServiceNS: "n"}, registry.ErrInvalid, "^[a-zA-Z0-9]{1,30}$"},
		{"empty ns", api.ServiceRequest{App: "a", AppNS: "", Service: "s", ServiceNS: "n"}, registry.ErrInvalid, "app_ns"},
		{"rr out of range", api.ServiceRequest{App: "a", AppNS: "n", Service: "s1", ServiceNS: "n", RRIP: "10.31.0.1"}, registry.ErrInvalid, "10.31.0.1"},
		{"rr v6 wrong prefix", api.ServiceRequest{App: "a", AppNS: "n", Service: "s2", ServiceNS: "n", RRIPv6: "fdff:1000::5"}, registry.ErrInvalid, "rr_ip_v6"},
		{"rr taken", api.ServiceRequest{App: "a", AppNS: "n", Service: "s3", ServiceNS: "n", RRIP: taken.RR.V4.String()}, store.ErrAddressTaken, "rr_ip: address " + taken.RR.V4.String() + " is already used by service " + taken.ID},
		{"rr = closest", api.ServiceRequest{App: "a", AppNS: "n", Service: "s4", ServiceNS: "n", RRIP: "10.30.9.9", ClosestIP: "10.30.9.9"}, registry.ErrInvalid, "own Service IP"},
		{"duplicate job", svcReq("taken"), store.ErrAlreadyExists, "app.ns.taken.sns"},
		{"bad id", api.ServiceRequest{ID: "a/b", App: "a", AppNS: "n", Service: "s5", ServiceNS: "n"}, registry.ErrInvalid, "id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.reg.CreateService(ctx, c.req)
			if !errors.Is(err, c.wantErr) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, c.wantErr, c.msg)
			}
		})
	}
	// Failed creates must not leak addresses: a requested address from a failed create is free.
	s, err := e.reg.CreateService(ctx, api.ServiceRequest{App: "a", AppNS: "n", Service: "ok", ServiceNS: "n", RRIP: "10.30.9.9"})
	if err != nil || s.RR.V4 != netip.MustParseAddr("10.30.9.9") {
		t.Fatalf("requested address after failed attempts: %v %v", s.RR.V4, err)
	}
}

func TestRequestedAddressesHonoured(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	req := svcReq("req")
	req.RRIP, req.RRIPv6, req.ClosestIP, req.ClosestIPv6 = "10.30.200.1", "fdff:2000::abcd", "10.30.200.2", "fdff:1000::1:2"
	s, err := e.reg.CreateService(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	got := []string{s.RR.V4.String(), s.RR.V6.String(), s.Closest.V4.String(), s.Closest.V6.String()}
	want := []string{req.RRIP, req.RRIPv6, req.ClosestIP, req.ClosestIPv6}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestInstancesQuarantineAndRestart(t *testing.T) {
	plan := addrplan.Default()
	plan.Quarantine = 10 * time.Minute
	e := newEnv(t, plan)
	ctx := context.Background()
	s := e.service("web")
	in0, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	in1, _, err := e.reg.CreateInstance(ctx, s.JobName(), api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if in0.Number != 0 || in1.Number != 1 {
		t.Fatalf("numbers %d, %d; want 0, 1", in0.Number, in1.Number)
	}
	if !plan.InstanceV6.Contains(in0.IP.V6) || !plan.ServiceV4.Contains(in0.IP.V4) {
		t.Fatalf("instance IPs %v outside their pools", in0.IP)
	}
	if _, err := e.reg.DeleteInstance(ctx, s.ID, 0); err != nil {
		t.Fatal(err)
	}
	// The freed address is quarantined: a request for it is refused, also after a restart.
	e.restart()
	req := svcReq("other")
	req.RRIP = in0.IP.V4.String()
	if _, err := e.reg.CreateService(ctx, req); !errors.Is(err, store.ErrAddressTaken) || !strings.Contains(err.Error(), "in quarantine") {
		t.Fatalf("claim quarantined %s after restart: %v, want taken, in quarantine", in0.IP.V4, err)
	}
	// Used addresses survive a restart too: new allocations never repeat them.
	seen := map[netip.Addr]bool{s.RR.V4: true, s.Closest.V4: true, in0.IP.V4: true, in1.IP.V4: true}
	for i := range 20 {
		n := e.service(fmt.Sprintf("n%d", i))
		for _, a := range []netip.Addr{n.RR.V4, n.Closest.V4} {
			if seen[a] {
				t.Fatalf("address %s handed out twice", a)
			}
			seen[a] = true
		}
	}
	e.clock.Advance(plan.Quarantine + time.Second)
	if _, err := e.reg.CreateService(ctx, req); err != nil {
		t.Fatalf("claim %s after quarantine: %v", in0.IP.V4, err)
	}
	// Number 0 is free again, and is the lowest.
	in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{})
	if err != nil || in.Number != 0 {
		t.Fatalf("reuse number 0: %d %v", in.Number, err)
	}
}

func TestConcurrentAllocationNeverDuplicates(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.service("web")
	var (
		mu   sync.Mutex
		seen = map[netip.Addr]string{}
		wg   sync.WaitGroup
	)
	add := func(a netip.Addr, who string) {
		mu.Lock()
		defer mu.Unlock()
		if prev, ok := seen[a]; ok {
			t.Errorf("%s handed to %s and %s", a, prev, who)
		}
		seen[a] = who
	}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if g%2 == 0 {
					sv, err := e.reg.CreateService(ctx, svcReq(fmt.Sprintf("g%di%d", g, i)))
					if err != nil {
						t.Error(err)
						return
					}
					for _, a := range []netip.Addr{sv.RR.V4, sv.RR.V6, sv.Closest.V4, sv.Closest.V6} {
						add(a, sv.JobName())
					}
				} else {
					in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{})
					if err != nil {
						t.Error(err)
						return
					}
					add(in.IP.V4, fmt.Sprint("instance ", in.Number))
					add(in.IP.V6, fmt.Sprint("instance ", in.Number))
				}
			}
		}()
	}
	wg.Wait()
	ins, _ := e.reg.Instances(ctx, s.ID)
	if len(ins) != 100 {
		t.Fatalf("%d instances, want 100", len(ins))
	}
}

func TestExhaustion(t *testing.T) {
	plan := addrplan.Default()
	plan.ServiceV4 = netip.MustParsePrefix("10.30.0.0/29")
	plan.ReservedV4 = []netip.Prefix{netip.MustParsePrefix("10.30.0.0/32"), netip.MustParsePrefix("10.30.0.7/32")}
	plan.GatewayV4 = netip.MustParseAddr("10.30.0.7")
	e := newEnv(t, plan)
	ctx := context.Background()
	// 6 usable addresses: 3 services of 2 IPv4 addresses each.
	for i := range 3 {
		e.service(fmt.Sprint("s", i))
	}
	_, err := e.reg.CreateService(ctx, svcReq("full"))
	if !errors.Is(err, ippool.ErrExhausted) || !strings.Contains(err.Error(), "pool 10.30.0.0/29 exhausted") {
		t.Fatalf("err = %v, want pool 10.30.0.0/29 exhausted", err)
	}
	// A failed create leaves nothing behind: deleting one service frees room after quarantine.
	if err := e.reg.DeleteService(ctx, "app.ns.s0.sns", false); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.CreateService(ctx, svcReq("full")); !errors.Is(err, ippool.ErrExhausted) {
		t.Fatalf("during quarantine: %v, want exhausted", err)
	}
	e.clock.Advance(plan.Quarantine + time.Second)
	if _, err := e.reg.CreateService(ctx, svcReq("full")); err != nil {
		t.Fatalf("after quarantine: %v", err)
	}
}

func TestDeleteServiceWithInstances(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.service("web")
	if _, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.DeleteService(ctx, s.ID, false); !errors.Is(err, store.ErrHasInstances) {
		t.Fatalf("delete with instances: %v, want ErrHasInstances", err)
	}
	if err := e.reg.DeleteService(ctx, s.ID, true); err != nil {
		t.Fatalf("force delete: %v", err)
	}
	if _, err := e.reg.Service(ctx, s.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := e.reg.Service(ctx, s.RR.V4.String()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("by freed address: %v", err)
	}
}

func place(t *testing.T, e *env, s store.Service, n int, nsip string, lat, lon float64, status string) {
	t.Helper()
	p := api.Placement{Status: status, NamespaceIP: netip.MustParseAddr(nsip), HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103, Location: &geo.Point{Lat: lat, Lon: lon}}
	if _, _, err := e.reg.Place(context.Background(), s.ID, n, p); err != nil {
		t.Fatal(err)
	}
}

func TestResolveClosestOrder(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.service("web")
	for range 4 {
		if _, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	place(t, e, s, 0, "10.18.0.2", 48.14, 11.58, "running")  // Munich
	place(t, e, s, 1, "10.18.0.66", 52.52, 13.40, "running") // Berlin
	place(t, e, s, 2, "10.18.0.130", 53.55, 9.99, "running") // Hamburg
	place(t, e, s, 3, "10.18.0.194", 52.50, 13.30, "failed") // dead, near Berlin
	// Caller in Potsdam: Berlin, Hamburg, Munich; the failed instance is not listed.
	en, err := e.reg.Resolve(ctx, s.Closest.V4.String(), &geo.Point{Lat: 52.39, Lon: 13.06})
	if err != nil {
		t.Fatal(err)
	}
	var order []int
	for _, in := range en.Instances {
		order = append(order, in.Number)
	}
	if fmt.Sprint(order) != "[1 2 0]" {
		t.Fatalf("order %v, want [1 2 0]", order)
	}
	if en.DistanceKM[0] > en.DistanceKM[1] || en.DistanceKM[1] > en.DistanceKM[2] {
		t.Fatalf("distances not ascending: %v", en.DistanceKM)
	}
	// Berlin dies: Closest falls back to the next nearest.
	place(t, e, s, 1, "10.18.0.66", 52.52, 13.40, "failed")
	en, _ = e.reg.Resolve(ctx, s.JobName(), &geo.Point{Lat: 52.39, Lon: 13.06})
	if len(en.Instances) != 2 || en.Instances[0].Number != 2 {
		t.Fatalf("after Berlin failed: %+v", en.Instances)
	}
	// By Instance IP: the entry says which instance was meant.
	in2, _, _ := e.reg.Instance(ctx, s.ID, 2)
	en, err = e.reg.Resolve(ctx, in2.IP.V6.String(), nil)
	if err != nil || en.Matched != 2 {
		t.Fatalf("by instance IP: matched %d, %v", en.Matched, err)
	}
	if _, err := e.reg.Resolve(ctx, "10.30.123.123", nil); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown address: %v", err)
	}
}

func TestPlacementValidation(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.service("web")
	if _, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{}); err != nil {
		t.Fatal(err)
	}
	bad := []api.Placement{
		{Status: "sleeping"},
		{Status: "running"},
		{Status: "running", NamespaceIP: netip.MustParseAddr("192.168.1.1"), HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 1},
		{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.2"), HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 70000},
		{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.2"), HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 1, Location: &geo.Point{Lat: 91}},
	}
	for _, p := range bad {
		if _, _, err := e.reg.Place(ctx, s.ID, 0, p); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("placement %+v: %v, want ErrInvalid", p, err)
		}
	}
	if _, _, err := e.reg.Place(ctx, s.ID, 7, api.Placement{Status: "failed"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown instance: %v", err)
	}
}

// An instance migrating between clusters starts in the new place while the old one is
// torn down; the two clusters' reports reach root in either order.
func TestMigrationAcrossClusters(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.placedWeb("c1", "c2")
	old := netip.MustParseAddr("192.0.2.1")
	moved := netip.MustParseAddr("192.0.2.2")
	running := func(host netip.Addr, nsip, cluster string) api.Placement {
		return api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr(nsip), HostIP: host, HostPort: 50103, ClusterID: cluster}
	}
	check := func(what, status string, host netip.Addr, cluster string) {
		t.Helper()
		in, _, err := e.reg.Instance(ctx, s.ID, 0)
		if err != nil {
			t.Fatal(err)
		}
		if in.Status != status || in.HostIP != host || in.ClusterID != cluster {
			t.Fatalf("%s: %s on %s in %s, want %s on %s in %s", what, in.Status, in.HostIP, in.ClusterID, status, host, cluster)
		}
	}
	if _, _, err := e.reg.Place(ctx, s.ID, 0, running(old, "10.18.0.2", "c1")); err != nil {
		t.Fatal(err)
	}
	// The new place reports first; the old host's stop arrives late and changes nothing.
	if _, _, err := e.reg.Place(ctx, s.ID, 0, running(moved, "10.18.0.66", "c2")); err != nil {
		t.Fatal(err)
	}
	check("after the move", "running", moved, "c2")
	for _, late := range []api.Placement{
		{Status: "stopped", HostIP: old, HostPort: 50103, ClusterID: "c1"},
		{Status: "stopped", ClusterID: "c1"},             // a reference node says no host
		{Status: "failed", HostIP: old, HostPort: 50103}, // a reference cluster says no cluster
	} {
		if _, _, err := e.reg.Place(ctx, s.ID, 0, late); err != nil {
			t.Fatalf("late %+v: %v", late, err)
		}
		check(fmt.Sprintf("after a late %+v", late), "running", moved, "c2")
	}
	// A stop from where it runs applies, and does not move it.
	if _, _, err := e.reg.Place(ctx, s.ID, 0, api.Placement{Status: "stopped", HostIP: moved, HostPort: 50103, ClusterID: "c2"}); err != nil {
		t.Fatal(err)
	}
	check("stopped where it runs", "stopped", moved, "c2")
	// A placement naming an unknown cluster is refused.
	if _, _, err := e.reg.Place(ctx, s.ID, 0, running(old, "10.18.0.2", "nowhere")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown cluster: %v, want ErrNotFound", err)
	}
}

// A failure reported for a vanished node says which revision it saw: it applies while
// the instance is unchanged, and is ignored once the node re-announced it (through
// another cluster replica, say); a running report after a failure applies.
func TestConditionalFailure(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.placedWeb("c1")
	host := netip.MustParseAddr("192.0.2.1")
	run := api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.2"), HostIP: host, HostPort: 50103, ClusterID: "c1"}
	seen, _, err := e.reg.Place(ctx, s.ID, 0, run)
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := e.reg.Place(ctx, s.ID, 0, run) // re-announced after a reconnection
	if err != nil {
		t.Fatal(err)
	}
	fail := api.Placement{Status: "failed", HostIP: host, HostPort: 50103, ClusterID: "c1", IfRevision: seen.Revision}
	if in, _, err := e.reg.Place(ctx, s.ID, 0, fail); err != nil || in.Status != "running" || in.Revision != again.Revision {
		t.Fatalf("failure for an older revision: %+v, %v; want it ignored", in, err)
	}
	fail.IfRevision = again.Revision
	if in, _, err := e.reg.Place(ctx, s.ID, 0, fail); err != nil || in.Status != "failed" {
		t.Fatalf("failure for the current revision: %+v, %v; want failed", in, err)
	}
	if in, _, err := e.reg.Place(ctx, s.ID, 0, run); err != nil || in.Status != "running" {
		t.Fatalf("running after failed: %+v, %v", in, err)
	}
}

// TestReportSequence: a cluster's report that arrives after its successors (an attempt
// that timed out at the cluster but was still on its way) changes nothing; another
// cluster's, or an unordered one, is judged as before.
func TestReportSequence(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	s := e.placedWeb("c1", "c2")
	host := netip.MustParseAddr("192.0.2.1")
	at := func(ns string, seq uint64, status, cluster string) api.Placement {
		return api.Placement{Status: status, NamespaceIP: netip.MustParseAddr(ns), HostIP: host, HostPort: 50103, ClusterID: cluster, Sequence: seq}
	}
	place := e.placer(s.ID)
	// Placed, stopped, placed again (sequences 10, 20, 30); then the first placement and
	// the stop arrive once more, late.
	place(at("10.18.0.5", 10, "running", "c1"))
	place(api.Placement{Status: "stopped", HostIP: host, HostPort: 50103, ClusterID: "c1", Sequence: 20})
	want := place(at("10.18.0.6", 30, "running", "c1"))
	if want.ReportedBy != "c1" || want.ReportSeq != 30 {
		t.Fatalf("instance records %s/%d, want c1/30", want.ReportedBy, want.ReportSeq)
	}
	for _, late := range []api.Placement{at("10.18.0.5", 10, "running", "c1"),
		{Status: "stopped", HostIP: host, HostPort: 50103, ClusterID: "c1", Sequence: 20}, at("10.18.0.6", 30, "running", "c1")} {
		if in := place(late); in.Status != "running" || in.NamespaceIP.V4 != want.NamespaceIP.V4 || in.Revision != want.Revision {
			t.Errorf("late report %+v applied: %+v", late, in)
		}
	}
	// Sequences are per cluster: c2's first report applies (the instance migrates).
	if in := place(at("10.18.1.9", 5, "running", "c2")); in.ClusterID != "c2" || in.NamespaceIP.V4.String() != "10.18.1.9" {
		t.Errorf("c2's report: %+v", in)
	}
	// Unordered (reference callers): applied.
	if in := place(at("10.18.1.10", 0, "running", "c2")); in.NamespaceIP.V4.String() != "10.18.1.10" {
		t.Errorf("unordered report: %+v", in)
	}
	// Across clusters sequences are wall clocks that may disagree a little: a report
	// older than the last applied by more than that is late (a deploy report that waited
	// in a backlogged cluster while the instance migrated to another cluster), one within
	// it is judged as before.
	const sec = uint64(time.Second)
	place(at("10.18.1.11", 100*sec, "running", "c2"))
	if in := place(at("10.18.0.7", 100*sec-3*sec, "running", "c1")); in.ClusterID != "c2" || in.NamespaceIP.V4.String() != "10.18.1.11" {
		t.Errorf("c1's report 3 s older than c2's applied: %+v", in)
	}
	if in := place(at("10.18.0.8", 100*sec-sec, "running", "c1")); in.ClusterID != "c1" || in.NamespaceIP.V4.String() != "10.18.0.8" {
		t.Errorf("c1's report 1 s older than c2's (within the clocks' disagreement) ignored: %+v", in)
	}
	// Migrated from c1 to c2, whose "running" waited in its backlog while the old node's
	// stop went straight through: the stop came first and is newer by the clocks, but
	// it was about the old place; the new place's report applies (the load run caught
	// root leaving such an instance stopped).
	if in := place(api.Placement{Status: "stopped", HostIP: host, HostPort: 50103, ClusterID: "c1", Sequence: 200 * sec}); in.Status != "stopped" {
		t.Fatalf("the old place's stop: %+v", in)
	}
	if in := place(at("10.18.1.12", 190*sec, "running", "c2")); in.Status != "running" || in.ClusterID != "c2" || in.NamespaceIP.V4.String() != "10.18.1.12" {
		t.Errorf("the new place's report, 10 s older than the old place's stop, ignored: %+v", in)
	}
}

func TestSubnetPairs(t *testing.T) {
	plan := addrplan.Default()
	e := newEnv(t, plan)
	ctx := context.Background()
	var got []store.Subnet
	for i := range 3 {
		sn, err := e.reg.AllocateSubnet(ctx, "c1", fmt.Sprint("node", i))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, sn)
	}
	want := [][2]string{{"10.18.0.0/26", "fc00::/120"}, {"10.18.0.64/26", "fc00::100/120"}, {"10.18.0.128/26", "fc00::200/120"}}
	for i, sn := range got {
		if sn.V4.String() != want[i][0] || sn.V6.String() != want[i][1] {
			t.Errorf("subnet %d = %s %s, want %s %s", i, sn.V4, sn.V6, want[i][0], want[i][1])
		}
	}
	if err := e.reg.ReleaseSubnet(ctx, got[1].V4); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.ReleaseSubnet(ctx, got[1].V4); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("double release: %v", err)
	}
	if err := e.reg.ReleaseSubnet(ctx, netip.MustParsePrefix("10.18.0.32/27")); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("wrong size: %v", err)
	}
	// The released /26 is in quarantine: the next one is new.
	sn, err := e.reg.AllocateSubnet(ctx, "c1", "node9")
	if err != nil || sn.V4.String() != "10.18.0.192/26" {
		t.Fatalf("next subnet %s %v, want 10.18.0.192/26", sn.V4, err)
	}
}

func TestChangeStreamFiltersAndLongPolls(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	if _, err := e.reg.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}, false); err != nil {
		t.Fatal(err)
	}
	a, b := e.service("a"), e.service("b")
	if _, err := e.reg.AddInterest(ctx, "c1", a.JobName()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.reg.CreateInstance(ctx, b.ID, api.InstanceRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.reg.CreateInstance(ctx, a.ID, api.InstanceRequest{}); err != nil {
		t.Fatal(err)
	}
	batch, err := e.reg.Changes(ctx, "c1", 0, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range batch.Changes {
		if c.ServiceID != a.ID {
			t.Errorf("change of uninteresting service %s", c.JobName)
		}
	}
	if len(batch.Changes) != 2 { // service a created, instance 0 of a created
		t.Fatalf("changes %+v, want 2 for service a", batch.Changes)
	}
	// Long poll: nothing new for c1; a change to a wakes it.
	done := e.longPoll("c1", batch.Revision)
	if _, err := e.reg.DeleteInstance(ctx, a.ID, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-done:
		if len(b.Changes) != 1 || b.Changes[0].Op != store.OpDelete || b.Changes[0].Instance != 0 {
			t.Fatalf("woken with %+v", b.Changes)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long poll not woken by a change")
	}
	if _, err := e.reg.Changes(ctx, "nope", 0, 10, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown cluster: %v", err)
	}
}

// longPoll starts a long poll of cluster's changes after since and lets it block
// before returning where its batch will arrive.
func (e *env) longPoll(cluster string, since uint64) <-chan registry.ChangeBatch {
	done := make(chan registry.ChangeBatch, 1)
	go func() {
		b, err := e.reg.Changes(context.Background(), cluster, since, 100, 10*time.Second)
		if err != nil {
			e.t.Error(err)
		}
		done <- b
	}()
	time.Sleep(50 * time.Millisecond)
	return done
}

// scanCounter counts the store reads that a MongoDB-wire store may serve by scanning a
// whole collection (FerretDB v1 filters on anything but _id that way).
type scanCounter struct {
	store.Store
	mu                                           sync.Mutex
	byJobName, listByServ, interests, interested int
}

func (c *scanCounter) Interested(ctx context.Context, clusterID, serviceID string) (bool, error) {
	c.mu.Lock()
	c.interested++
	c.mu.Unlock()
	return c.Store.Interested(ctx, clusterID, serviceID)
}

func (c *scanCounter) Interests(ctx context.Context, clusterID string) ([]string, error) {
	c.mu.Lock()
	c.interests++
	c.mu.Unlock()
	return c.Store.Interests(ctx, clusterID)
}

func (c *scanCounter) GetServiceByJobName(ctx context.Context, jobName string) (store.Service, error) {
	c.mu.Lock()
	c.byJobName++
	c.mu.Unlock()
	return c.Store.GetServiceByJobName(ctx, jobName)
}

func (c *scanCounter) ListInstances(ctx context.Context, serviceID string) ([]store.Instance, error) {
	c.mu.Lock()
	c.listByServ++
	c.mu.Unlock()
	return c.Store.ListInstances(ctx, serviceID)
}

func (c *scanCounter) counts() (byJobName, list int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byJobName, c.listByServ
}

// TestInstanceCreateReadsByKey: creating an instance of a service named by its ID finds
// the service and its lowest free number by key (no job name lookup, no listing) while
// the service has few instances, and still hands out the lowest free number.
func TestInstanceCreateReadsByKey(t *testing.T) {
	ctx := t.Context()
	sc, reg := countingRegistry(t)
	s, err := reg.CreateService(ctx, svcReq("web"))
	if err != nil {
		t.Fatal(err)
	}
	create := func(key string) int {
		t.Helper()
		in, _, err := reg.CreateInstance(ctx, key, api.InstanceRequest{ClusterID: "c1"})
		if err != nil {
			t.Fatalf("create instance of %s: %v", key, err)
		}
		return in.Number
	}
	for want := range 3 {
		if got := create(s.ID); got != want {
			t.Fatalf("instance number %d, want %d", got, want)
		}
	}
	if j, l := sc.counts(); j != 0 || l != 0 {
		t.Fatalf("3 instance creates by service ID made %d job name lookups and %d instance listings, want none", j, l)
	}
	if _, err := reg.DeleteInstance(ctx, s.ID, 1); err != nil {
		t.Fatal(err)
	}
	if got := create(s.ID); got != 1 {
		t.Fatalf("after deleting instance 1 the next create got %d, want 1", got)
	}
	// By job name, and past the numbers read by key: the listing finds the gap.
	for want := 3; want < 7; want++ {
		if got := create(s.JobName()); got != want {
			t.Fatalf("instance number %d, want %d", got, want)
		}
	}
	if j, l := sc.counts(); j == 0 || l == 0 {
		t.Fatalf("creates by job name past instance 3 made %d job name lookups and %d listings, want some of each", j, l)
	}
}

// TestPollReadsInterestsByKey: a change poll that finds no change reads no interests;
// one that finds changes of a few services reads the cluster's interest in each by key
// (on FerretDB the list decodes every cluster's interests), and one with changes of
// many services reads the list once.
func TestPollReadsInterestsByKey(t *testing.T) {
	ctx := t.Context()
	sc, reg := countingRegistry(t)
	if _, err := reg.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}, false); err != nil {
		t.Fatal(err)
	}
	s, err := reg.CreateService(ctx, svcReq("web"))
	if err != nil {
		t.Fatal(err)
	}
	other, err := reg.CreateService(ctx, svcReq("other"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddInterest(ctx, "c1", s.JobName()); err != nil {
		t.Fatal(err)
	}
	rev, err := reg.Revision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	reads := func() (list, keyed int) {
		sc.mu.Lock()
		defer sc.mu.Unlock()
		list, keyed = sc.interests, sc.interested
		sc.interests, sc.interested = 0, 0
		return list, keyed
	}
	if b, err := reg.Changes(ctx, "c1", rev, 100, 0); err != nil || len(b.Changes) != 0 {
		t.Fatalf("idle poll: %+v, %v", b, err)
	}
	if l, k := reads(); l+k != 0 {
		t.Errorf("an idle poll read the interests %d times and %d by key, want none", l, k)
	}
	for _, id := range []string{s.ID, other.ID} {
		if _, _, err := reg.CreateInstance(ctx, id, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	b, err := reg.Changes(ctx, "c1", rev, 100, 0)
	if err != nil || len(b.Changes) != 1 || b.Changes[0].ServiceID != s.ID {
		t.Fatalf("poll after two creates: %+v, %v; want the change of the service c1 follows", b, err)
	}
	if l, k := reads(); l != 0 || k != 2 {
		t.Errorf("a poll with changes of two services read the interests %d times and %d by key, want 0 and 2", l, k)
	}
	// Changes of more services than keyedInterests: the list, once.
	since := b.Revision
	for i := range 9 {
		if _, err := reg.CreateService(ctx, svcReq(fmt.Sprint("many", i))); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := reg.Changes(ctx, "c1", since, 100, 0); err != nil || len(b.Changes) != 0 {
		t.Fatalf("poll after nine creates of services c1 does not follow: %+v, %v", b, err)
	}
	if l, k := reads(); l != 1 || k != 0 {
		t.Errorf("a poll with changes of nine services read the interests %d times and %d by key, want 1 and 0", l, k)
	}
}

// countingRegistry returns a registry over an embedded store that counts its reads.
func countingRegistry(t *testing.T) (*scanCounter, *registry.Registry) {
	t.Helper()
	e := newEnv(t, addrplan.Default())
	sc := &scanCounter{Store: e.st}
	reg, err := registry.New(t.Context(), e.plan, sc, registry.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return sc, reg
}

// TestMigrationReportsCross: an instance migrating between nodes runs in both places for
// a while, and their reports reach root in any order. Root keeps the place it ran in
// before as a standby until that place stops it, so a stop from either place leaves the
// instance running at the other, however the reports crossed.
func TestMigrationReportsCross(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.placedWeb("c1", "c2")
	hostA, hostB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	running := func(host netip.Addr, ns, cluster string) api.Placement {
		return api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr(ns), HostIP: host, HostPort: 50103, ClusterID: cluster}
	}
	stopped := func(host netip.Addr, cluster string) api.Placement {
		return api.Placement{Status: "stopped", HostIP: host, HostPort: 50103, ClusterID: cluster}
	}
	a, b := running(hostA, "10.18.0.5", "c1"), running(hostB, "10.18.1.5", "c2")
	for _, tc := range []struct {
		name    string
		reports []api.Placement
		status  string
		host    netip.Addr
		cluster string
		standby bool
	}{
		{"migrated, old place stopped", []api.Placement{a, b, stopped(hostA, "c1")}, "running", hostB, "c2", false},
		{"migrating: runs in both places", []api.Placement{a, b}, "running", hostB, "c2", true},
		{"the old place announced again, then stopped", []api.Placement{a, b, a, stopped(hostA, "c1")}, "running", hostB, "c2", false},
		{"moved back, then the other place stopped", []api.Placement{a, b, a, stopped(hostB, "c2")}, "running", hostA, "c1", false},
		{"the old place stopped first, then announced late", []api.Placement{a, b, stopped(hostA, "c1"), stopped(hostA, "c1")}, "running", hostB, "c2", false},
		{"the new place failed before the old one stopped", []api.Placement{a, b, stopped(hostB, "c2")}, "running", hostA, "c1", false},
		{"then the old one stopped too", []api.Placement{a, b, stopped(hostB, "c2"), stopped(hostA, "c1")}, "stopped", hostA, "c1", false},
		{"a cluster stops it without naming a node", []api.Placement{a, b, {Status: "stopped", ClusterID: "c2"}}, "stopped", hostB, "c2", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.reports {
				if in, _, err = e.reg.Place(ctx, s.ID, in.Number, p); err != nil {
					t.Fatal(err)
				}
			}
			if in.Status != tc.status || in.HostIP != tc.host || in.ClusterID != tc.cluster || (in.Standby != nil) != tc.standby {
				t.Errorf("instance %s on %s in %s (standby %+v); want %s on %s in %s (standby: %v)",
					in.Status, in.HostIP, in.ClusterID, in.Standby, tc.status, tc.host, tc.cluster, tc.standby)
			}
			if tc.status == "running" && tc.host == hostB && in.NamespaceIP.V4 != b.NamespaceIP {
				t.Errorf("runs with Namespace IP %s, want %s (its new place's)", in.NamespaceIP.V4, b.NamespaceIP)
			}
		})
	}
}

// TestStopOfAnEarlierInstance: instance numbers are reused after a delete, so a node's
// late undeploy report of the instance deleted can reach root after a new instance took
// its number. It must not stop the new one, which never ran on that node.
func TestStopOfAnEarlierInstance(t *testing.T) {
	seconds := func(n int) uint64 { return uint64(time.Duration(n) * time.Second) }
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	s := e.placedWeb("c1", "c2")
	hostA, hostB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	old, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	run := api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.5"), HostIP: hostA, HostPort: 50103, ClusterID: "c1", Sequence: seconds(1)}
	if _, _, err := e.reg.Place(ctx, s.ID, old.Number, run); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.DeleteInstance(ctx, s.ID, old.Number); err != nil {
		t.Fatal(err)
	}
	in, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c2"})
	if err != nil {
		t.Fatal(err)
	}
	if in.Number != old.Number {
		t.Fatalf("the new instance is number %d, want the freed %d", in.Number, old.Number)
	}
	// Reports carry their cluster's clock (ns): the new instance ran at 5 s in c2, whose
	// report waited in a backlog, and the old node undeployed at 10 s, reported at once.
	lateStop := api.Placement{Status: "stopped", HostIP: hostA, HostPort: 50103, ClusterID: "c1", Sequence: seconds(10)}
	if in, _, err = e.reg.Place(ctx, s.ID, in.Number, lateStop); err != nil {
		t.Fatal(err)
	}
	if in.Status != store.StatusScheduled {
		t.Fatalf("after the deleted instance's stop the new one is %s, want %s", in.Status, store.StatusScheduled)
	}
	// Its own report, older than the stop and from another cluster, applies: had the stop
	// applied, the report would be refused as older, and the instance never placed.
	runB := api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.1.5"), HostIP: hostB, HostPort: 50103, ClusterID: "c2", Sequence: seconds(5)}
	if in, _, err = e.reg.Place(ctx, s.ID, in.Number, runB); err != nil {
		t.Fatal(err)
	}
	if in.Status != store.StatusRunning || in.HostIP != hostB {
		t.Errorf("instance %s on %s, want running on %s", in.Status, in.HostIP, hostB)
	}
	// A cluster that gives up on an instance it never placed still stops it.
	other, _, err := e.reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c2"})
	if err != nil {
		t.Fatal(err)
	}
	if other, _, err = e.reg.Place(ctx, s.ID, other.Number, api.Placement{Status: "stopped", ClusterID: "c2"}); err != nil {
		t.Fatal(err)
	}
	if other.Status != store.StatusStopped {
		t.Errorf("a cluster's stop of an unplaced instance left it %s", other.Status)
	}
}

// TestFailureAfterMigration: a cluster reports a vanished node's instances failed on the
// condition that nothing placed them since the placement it saw (IfRevision, the
// revision root gave the node's report). The old place's stop after a migration
// changes the instance (its standby goes) but not where it runs: the new node's death
// must still fail it. Before, it was ignored as a failure of a re-placed instance, and
// the dead node's instance stayed in everyone's choices (found by the load run).
func TestFailureAfterMigration(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	s := e.placedWeb("c1", "c2")
	hostA, hostB := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	place := e.placer(s.ID)
	place(api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.5"), HostIP: hostA, HostPort: 50103, ClusterID: "c1"})
	atB := place(api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.1.5"), HostIP: hostB, HostPort: 50103, ClusterID: "c2"})
	if in := place(api.Placement{Status: "stopped", HostIP: hostA, HostPort: 50103, ClusterID: "c1"}); in.Status != "running" || in.HostIP != hostB || in.Revision == atB.Revision {
		t.Fatalf("after the old place's stop: %+v", in)
	}
	failed := api.Placement{Status: "failed", HostIP: hostB, HostPort: 50103, ClusterID: "c2", IfRevision: atB.Revision}
	if in := place(failed); in.Status != "failed" {
		t.Errorf("the new node's death after the migration left the instance %s, want failed", in.Status)
	}
	// A placement since (the node announced the instance again, through another replica
	// of its cluster) makes the failure stale, as before.
	again := place(api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.1.5"), HostIP: hostB, HostPort: 50103, ClusterID: "c2"})
	if in := place(api.Placement{Status: "failed", HostIP: hostB, HostPort: 50103, ClusterID: "c2", IfRevision: atB.Revision}); in.Status != "running" || in.Revision != again.Revision {
		t.Errorf("a failure conditional on a placement older than the node's announcement applied: %+v", in)
	}
	// Back at its standby (the new place stopped it first): the standby node's death,
	// conditional on its own announcement, fails it.
	atA := place(api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.0.5"), HostIP: hostA, HostPort: 50103, ClusterID: "c1"})
	place(api.Placement{Status: "running", NamespaceIP: netip.MustParseAddr("10.18.1.5"), HostIP: hostB, HostPort: 50103, ClusterID: "c2"})
	if in := place(api.Placement{Status: "stopped", HostIP: hostB, HostPort: 50103, ClusterID: "c2"}); in.Status != "running" || in.HostIP != hostA {
		t.Fatalf("after the new place's stop: %+v, want running at its standby %s", in, hostA)
	}
	if in := place(api.Placement{Status: "failed", HostIP: hostA, HostPort: 50103, ClusterID: "c1", IfRevision: atA.Revision}); in.Status != "failed" {
		t.Errorf("the standby node's death left the instance back there %s, want failed", in.Status)
	}
}

// TestClusterChecksCached: the existence checks of change polls and placements read a
// cluster's registration once per few seconds; a deletion through this registry counts
// at once, one behind its back (another root process) once the check runs out.
func TestClusterChecksCached(t *testing.T) {
	e := newEnv(t, addrplan.Default())
	ctx := context.Background()
	if _, err := e.reg.Changes(ctx, "c1", 0, 10, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("changes of an unregistered cluster: %v, want ErrNotFound", err)
	}
	for _, id := range []string{"c1", "c2"} {
		if _, err := e.reg.RegisterCluster(ctx, api.ClusterRequest{ID: id, Address: "127.0.0.1", Port: 10110}, false); err != nil {
			t.Fatal(err)
		}
		if _, err := e.reg.Changes(ctx, id, 0, 10, 0); err != nil {
			t.Fatalf("changes of %s: %v", id, err)
		}
	}
	if err := e.reg.DeleteCluster(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.reg.Changes(ctx, "c1", 0, 10, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("changes of a cluster deleted here: %v, want ErrNotFound at once", err)
	}
	if err := e.st.DeleteCluster(ctx, "c2"); err != nil { // as another root process would
		t.Fatal(err)
	}
	if _, err := e.reg.Changes(ctx, "c2", 0, 10, 0); err != nil {
		t.Fatalf("changes of a cluster deleted elsewhere, within the check's life: %v, want it still taken for registered", err)
	}
	e.clock.Advance(10 * time.Second)
	if _, err := e.reg.Changes(ctx, "c2", 0, 10, 0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("changes of a cluster deleted elsewhere, 10 s later: %v, want ErrNotFound", err)
	}
}

// TestChangeEntries: a batch of changes comes with the entry of each service it touches,
// read after them (one instance listing per service, however many of its changes the
// batch holds); a service deleted since, or whose last change deleted it, has none.
func TestChangeEntries(t *testing.T) {
	ctx := t.Context()
	e := newEnv(t, addrplan.Default())
	sc := &scanCounter{Store: e.st}
	reg, err := registry.New(ctx, e.plan, sc, registry.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.reg = reg
	if _, err := reg.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}, false); err != nil {
		t.Fatal(err)
	}
	a, b, gone := e.service("a"), e.service("b"), e.service("gone")
	for _, s := range []store.Service{a, b, gone} {
		if _, err := reg.AddInterest(ctx, "c1", s.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []store.Service{a, b} {
		if _, _, err := reg.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := reg.Revision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	place(t, e, a, 0, "10.18.0.5", 48.1, 11.6, "running")
	place(t, e, a, 0, "10.18.0.6", 48.1, 11.6, "running") // a second change of a
	if _, err := reg.DeleteInstance(ctx, b.ID, 0); err != nil {
		t.Fatal(err)
	}
	if _, _, err := reg.CreateInstance(ctx, gone.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
		t.Fatal(err)
	}
	batch, err := reg.Changes(ctx, "c1", rev, 100, 0)
	if err != nil || len(batch.Changes) != 4 {
		t.Fatalf("changes: %+v, %v; want 4", batch.Changes, err)
	}
	if err := reg.DeleteService(ctx, gone.ID, true); err != nil {
		t.Fatal(err)
	}
	_, listed := sc.counts()
	entries := reg.ChangeEntries(ctx, batch)
	if _, l := sc.counts(); l-listed != 3 {
		t.Errorf("building the entries listed instances %d times, want 3 (once per service, though a had two changes)", l-listed)
	}
	got := map[string]registry.Entry{}
	for _, en := range entries {
		got[en.Service.ID] = en
		if en.Revision < batch.Revision {
			t.Errorf("entry of %s at revision %d, before the batch's changes (%d)", en.Service.JobName(), en.Revision, batch.Revision)
		}
	}
	if len(entries) != 2 || len(got) != 2 {
		t.Fatalf("entries of %v, want a and b only (gone was deleted after the batch)", entries)
	}
	if in := got[a.ID].Instances; len(in) != 1 || in[0].NamespaceIP.V4 != netip.MustParseAddr("10.18.0.6") {
		t.Errorf("entry of a lists %+v, want instance 0 at its last place, 10.18.0.6", in)
	}
	if in := got[b.ID].Instances; len(in) != 0 {
		t.Errorf("entry of b lists %+v, want none (its only instance was deleted)", in)
	}
	// The deletion's batch: gone's last change deletes it, so no entry, and no read.
	batch, err = reg.Changes(ctx, "c1", batch.Revision, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, listed = sc.counts()
	if entries := reg.ChangeEntries(ctx, batch); len(entries) != 0 {
		t.Errorf("entries %v for a batch that deletes its only service", entries)
	}
	if _, l := sc.counts(); l != listed {
		t.Errorf("a batch with no entry to build listed instances %d times", l-listed)
	}
}
