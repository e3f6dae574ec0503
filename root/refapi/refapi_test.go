package refapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/refapi"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

const token = "test-token-0123456789abcdef"

// newStack runs root's real HTTP stack (bolt store in a temp dir, registry, /api with the
// reference API mounted) on 127.0.0.1.
func newStack(t *testing.T) (client, *registry.Registry) {
	t.Helper()
	plan := addrplan.Default()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "root.db"), store.Options{Quarantine: plan.Quarantine})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	reg, err := registry.New(context.Background(), plan, st, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pr := prometheus.NewRegistry()
	h := rest.Handler(reg, rest.Config{Tokens: []string{token}, Registerer: pr, Gatherer: pr,
		Mount: func(r chi.Router) { refapi.Mount(r, reg, refapi.Options{}) }})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return client{t: t, base: srv.URL}, reg
}

type client struct {
	t    *testing.T
	base string
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// do sends body (a string is sent as is, anything else as JSON) with extra headers given
// as name, value pairs.
func (c client) do(method, path string, body any, hdr ...string) answer {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = strings.NewReader(string(j))
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// ok asserts a 200 with a JSON body and decodes it as a generic document.
func (c client) ok(method, path string, body any, hdr ...string) map[string]any {
	c.t.Helper()
	a := c.do(method, path, body, hdr...)
	if a.status != http.StatusOK {
		c.t.Fatalf("%s %s: status %d, want 200: %s", method, path, a.status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		c.t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		c.t.Fatalf("%s %s: decode %s: %v", method, path, a.body, err)
	}
	return m
}

// problem asserts a problem+json answer with the given status whose detail contains want.
func (c client) problem(status int, want, method, path string, body any, hdr ...string) {
	c.t.Helper()
	a := c.do(method, path, body, hdr...)
	if a.status != status {
		c.t.Fatalf("%s %s: status %d, want %d: %s", method, path, a.status, status, a.body)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/problem+json" {
		c.t.Fatalf("%s %s: Content-Type %q, want application/problem+json", method, path, ct)
	}
	var p struct {
		Status int    `json:"status"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(a.body, &p); err != nil {
		c.t.Fatalf("%s %s: decode problem %s: %v", method, path, a.body, err)
	}
	if p.Status != status || !strings.Contains(p.Detail, want) {
		c.t.Fatalf("%s %s: problem %+v, want status %d and detail containing %q", method, path, p, status, want)
	}
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func wantKeys(t *testing.T, what string, m map[string]any, want ...string) {
	t.Helper()
	sort.Strings(want)
	if got := keys(m); !slices.Equal(got, want) {
		t.Fatalf("%s has fields %v, want exactly %v (in %v)", what, got, want, m)
	}
}

func list(t *testing.T, m map[string]any, field string) []map[string]any {
	t.Helper()
	raw, ok := m[field].([]any)
	if !ok {
		t.Fatalf("%s is %T, want a list (in %v)", field, m[field], m)
	}
	out := make([]map[string]any, len(raw))
	for i, e := range raw {
		if out[i], ok = e.(map[string]any); !ok {
			t.Fatalf("%s[%d] is %T, want an object", field, i, e)
		}
	}
	return out
}

func inPrefix(t *testing.T, what string, v any, p string) netip.Addr {
	t.Helper()
	s, _ := v.(string)
	a, err := netip.ParseAddr(s)
	if err != nil || !netip.MustParsePrefix(p).Contains(a) {
		t.Fatalf("%s = %v, want an address in %s", what, v, p)
	}
	return a
}

// descriptor is a deployment descriptor as the reference orchestrator sends it: its whole
// job, most of which networking ignores.
func descriptor(app, svc string, extra map[string]any) map[string]any {
	d := map[string]any{
		"app_name": app, "app_ns": "prod", "microservice_name": svc, "microservice_namespace": "eu",
		"service_name": svc, "service_ns": "eu", "image": "docker.io/library/nginx:latest",
		"virtualization": "docker", "instance_list": []any{}, "next_instance_progressive_number": 0,
		"RR_ip": nil,
	}
	for k, v := range extra {
		d[k] = v
	}
	return d
}

const jobID = "65a1b2c3d4e5f60718293a4b"

// TestOrchestratorFlow walks the reference orchestrator's calls end to end and checks
// the exact documents it and the reference clusters read.
func TestOrchestratorFlow(t *testing.T) {
	c, reg := newStack(t)
	ctx := context.Background()

	// The orchestrator registers a cluster; its port arrives as a string or a number.
	got := c.ok("POST", "/api/net/cluster", `{"cluster_id":"c1","cluster_address":"192.0.2.1","cluster_port":"10110"}`)
	wantKeys(t, "cluster answer", got, "cluster_id", "cluster_address", "cluster_port")
	cl, err := reg.Cluster(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if !cl.Reference || cl.Port != 10110 || cl.Address != "192.0.2.1" || cl.Location != (geo.Point{}) {
		t.Fatalf("registered cluster %+v, want a reference cluster at 192.0.2.1:10110 with no location", cl)
	}
	c.ok("POST", "/api/net/cluster", `{"cluster_id":"c2","cluster_address":"192.0.2.2","cluster_port":10110}`)

	// A service without requested addresses.
	job := c.ok("POST", "/api/net/service/deploy", map[string]any{"_id": jobID, "deployment_descriptor": descriptor("shop", "web", nil)})
	wantKeys(t, "job", job, "_id", "job_name", "service_ip_list", "instance_list")
	if job["_id"] != jobID || job["job_name"] != "shop.prod.web.eu" {
		t.Fatalf("job %v", job)
	}
	sips := list(t, job, "service_ip_list")
	if len(sips) != 2 || sips[0]["IpType"] != "RR" || sips[1]["IpType"] != "closest" {
		t.Fatalf("service_ip_list %v, want RR then closest", sips)
	}
	for _, s := range sips {
		wantKeys(t, "service IP", s, "IpType", "Address", "Address_v6")
	}
	rr4 := inPrefix(t, "RR Address", sips[0]["Address"], "10.30.0.0/16")
	rr6 := inPrefix(t, "RR Address_v6", sips[0]["Address_v6"], "fdff:2000::/21")
	inPrefix(t, "closest Address", sips[1]["Address"], "10.30.0.0/16")
	inPrefix(t, "closest Address_v6", sips[1]["Address_v6"], "fdff:1000::/21")
	if n := len(list(t, job, "instance_list")); n != 0 {
		t.Fatalf("new job has %d instances", n)
	}

	// A retried deploy answers the same job; the same _id for another job is refused.
	if again := c.ok("POST", "/api/net/service/deploy", map[string]any{"_id": jobID, "deployment_descriptor": descriptor("shop", "web", nil)}); !equalJSON(t, again, job) {
		t.Fatalf("retried deploy answered %v, want %v", again, job)
	}
	c.problem(409, "already exists", "POST", "/api/net/service/deploy", map[string]any{"_id": jobID, "deployment_descriptor": descriptor("shop", "api", nil)})

	// A service with requested addresses (and semnet's closest_ip).
	job2 := c.ok("POST", "/api/net/service/deploy", map[string]any{"_id": "job2", "deployment_descriptor": descriptor("shop", "db",
		map[string]any{"RR_ip": "10.30.30.30", "RR_ip_v6": "fdff:2000::30", "closest_ip": "10.30.30.31"})})
	sips2 := list(t, job2, "service_ip_list")
	if sips2[0]["Address"] != "10.30.30.30" || sips2[0]["Address_v6"] != "fdff:2000::30" || sips2[1]["Address"] != "10.30.30.31" {
		t.Fatalf("requested addresses not honoured: %v", sips2)
	}
	c.problem(409, "10.30.30.30", "POST", "/api/net/service/deploy", map[string]any{"_id": "job3", "deployment_descriptor": descriptor("shop", "cache",
		map[string]any{"RR_ip": "10.30.30.30"})})
	c.problem(400, "rr_ip", "POST", "/api/net/service/deploy", map[string]any{"_id": "job3", "deployment_descriptor": descriptor("shop", "cache",
		map[string]any{"RR_ip": "10.31.0.1"})})
	c.problem(400, "^[a-zA-Z0-9]{1,30}$", "POST", "/api/net/service/deploy", map[string]any{"_id": "job3", "deployment_descriptor": descriptor("shop", "no-dash", nil)})
	c.problem(400, "_id is required", "POST", "/api/net/service/deploy", map[string]any{"deployment_descriptor": descriptor("shop", "cache", nil)})
	// The gateways' app namespace is root's own.
	c.problem(400, "semnet.system holds semnet's own services", "POST", "/api/net/service/deploy",
		map[string]any{"_id": "job4", "deployment_descriptor": descriptor("semnet", "gateway", map[string]any{"app_ns": "system"})})

	// Instances: 404 for an unknown job; otherwise the Instance IP pair, status scheduled
	// and no placement fields yet.
	c.problem(404, "not found", "POST", "/api/net/instance/deploy", `{"_id":"nosuchjob","instance_number":0,"cluster_id":"c1"}`)
	job = c.ok("POST", "/api/net/instance/deploy", map[string]any{"_id": jobID, "instance_number": 0, "cluster_id": "c1"})
	ins := list(t, job, "instance_list")
	if len(ins) != 1 {
		t.Fatalf("instance_list %v", ins)
	}
	wantKeys(t, "scheduled instance", ins[0], "instance_number", "instance_ip", "instance_ip_v6", "cluster_id", "status")
	if ins[0]["instance_number"] != 0.0 || ins[0]["cluster_id"] != "c1" || ins[0]["status"] != "scheduled" {
		t.Fatalf("instance %v", ins[0])
	}
	inst4 := inPrefix(t, "instance_ip", ins[0]["instance_ip"], "10.30.0.0/16")
	inPrefix(t, "instance_ip_v6", ins[0]["instance_ip_v6"], "fdff::/21")
	// A retry is idempotent; the same number on another cluster is a conflict.
	c.ok("POST", "/api/net/instance/deploy", map[string]any{"_id": jobID, "instance_number": 0, "cluster_id": "c1"})
	c.problem(409, "already exists", "POST", "/api/net/instance/deploy", map[string]any{"_id": jobID, "instance_number": 0, "cluster_id": "c2"})
	c.ok("POST", "/api/net/instance/deploy", map[string]any{"_id": jobID, "instance_number": 1, "cluster_id": "c2"})

	// The clusters report placements: host_port as a string (as reference clusters relay
	// it from their nodes) and as a number with semnet's lat/lon.
	c.problem(404, "instance 7 of service shop.prod.web.eu", "POST", "/api/net/service/net_deploy_status",
		`{"job_id":"`+jobID+`","instances":[{"instance_number":0,"namespace_ip":"10.18.0.2","namespace_ip_v6":"fc00::2","host_ip":"192.0.2.10","host_port":"50103"},{"instance_number":7,"namespace_ip":"10.18.0.3","namespace_ip_v6":"fc00::3","host_ip":"192.0.2.10","host_port":"50103"}]}`)
	if in, _, _ := reg.Instance(ctx, jobID, 0); in.Status != store.StatusScheduled {
		t.Fatalf("a rejected report placed instance 0: %+v", in)
	}
	c.problem(400, "instances[0].namespace_ip", "POST", "/api/net/service/net_deploy_status",
		`{"job_id":"`+jobID+`","instances":[{"instance_number":0,"namespace_ip":"bogus","host_ip":"192.0.2.10","host_port":"50103"}]}`)
	c.problem(404, "not found", "POST", "/api/net/service/net_deploy_status", `{"job_id":"nosuchjob","instances":[]}`)
	c.ok("POST", "/api/net/service/net_deploy_status",
		`{"job_id":"`+jobID+`","instances":[{"instance_number":0,"namespace_ip":"10.18.0.2","namespace_ip_v6":"fc00::2","host_ip":"192.0.2.10","host_port":"50103"}]}`)
	c.ok("POST", "/api/net/service/net_deploy_status",
		`{"job_id":"`+jobID+`","instances":[{"instance_number":1,"namespace_ip":"10.18.0.66","namespace_ip_v6":"fc00::102","host_ip":"192.0.2.11","host_port":50103,"lat":48.14,"lon":11.58}]}`)

	// The table query by job name ('_' for '.'), with an explicit cluster ID: the exact
	// document, and the cluster's interest recorded.
	job = c.ok("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=c1", nil)
	wantKeys(t, "job", job, "_id", "job_name", "service_ip_list", "instance_list")
	ins = list(t, job, "instance_list")
	if len(ins) != 2 {
		t.Fatalf("instance_list %v", ins)
	}
	wantKeys(t, "placed instance", ins[0], "instance_number", "instance_ip", "instance_ip_v6", "cluster_id",
		"namespace_ip", "namespace_ip_v6", "host_ip", "host_port", "status")
	wantKeys(t, "located instance", ins[1], "instance_number", "instance_ip", "instance_ip_v6", "cluster_id",
		"namespace_ip", "namespace_ip_v6", "host_ip", "host_port", "lat", "lon", "status")
	want0 := map[string]any{"instance_number": 0.0, "instance_ip": inst4.String(), "cluster_id": "c1", "namespace_ip": "10.18.0.2",
		"namespace_ip_v6": "fc00::2", "host_ip": "192.0.2.10", "host_port": 50103.0, "status": "running"}
	for k, v := range want0 {
		if ins[0][k] != v {
			t.Fatalf("instance 0 %s = %#v, want %#v (%v)", k, ins[0][k], v, ins[0])
		}
	}
	if ins[1]["lat"] != 48.14 || ins[1]["lon"] != 11.58 || ins[1]["cluster_id"] != "c2" || ins[1]["host_port"] != 50103.0 {
		t.Fatalf("instance 1 %v", ins[1])
	}
	wantInterest(t, reg, "c1", jobID, true)

	// By IP: IPv4 with underscores or dots, IPv6 as is, an Instance IP; the cluster ID
	// also as a header.
	for _, ip := range []string{strings.ReplaceAll(rr4.String(), ".", "_"), rr4.String(), rr6.String(), inst4.String()} {
		byIP := c.ok("GET", "/api/net/service/ip/"+ip+"/instances", nil, refapi.ClusterIDHeader, "c2")
		if !equalJSON(t, byIP, job) {
			t.Fatalf("by IP %s: %v, want %v", ip, byIP, job)
		}
	}
	wantInterest(t, reg, "c2", jobID, true)

	// Not found is a 404 problem, never {} with 200; a bad IP is a 400.
	c.problem(404, "not found", "GET", "/api/net/service/nosuch_prod_web_eu/instances?cluster_id=c1", nil)
	c.problem(404, "not found", "GET", "/api/net/service/ip/10_30_99_99/instances?cluster_id=c1", nil)
	c.problem(404, "not found", "GET", "/api/net/service/ip/fdff:2000::9999/instances", nil)
	c.problem(400, "not an IP address", "GET", "/api/net/service/ip/10_30_x_1/instances", nil)
	// An explicit but unregistered cluster ID is an error, not a silently lost interest.
	c.problem(404, "nosuchcluster", "GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=nosuchcluster", nil)

	// Dropping an interest.
	c.ok("DELETE", "/api/net/interest/shop.prod.web.eu?cluster_id=c1", nil)
	wantInterest(t, reg, "c1", jobID, false)
	c.ok("DELETE", "/api/net/interest/shop_prod_web_eu", nil, refapi.ClusterIDHeader, "c2")
	wantInterest(t, reg, "c2", jobID, false)
	c.problem(404, "not found", "DELETE", "/api/net/interest/nosuch.prod.web.eu?cluster_id=c1", nil)
	c.problem(400, "cannot tell which cluster", "DELETE", "/api/net/interest/shop.prod.web.eu", nil)

	// Undeploy: the service refuses (400, as the reference) while instances exist.
	c.problem(400, "still has instances", "DELETE", "/api/net/service/"+jobID, nil)
	job = c.ok("DELETE", "/api/net/"+jobID+"/0", nil)
	if ins := list(t, job, "instance_list"); len(ins) != 1 || ins[0]["instance_number"] != 1.0 {
		t.Fatalf("after deleting instance 0: %v", ins)
	}
	c.problem(404, "not found", "DELETE", "/api/net/"+jobID+"/0", nil)
	c.problem(400, "-1 for every instance", "DELETE", "/api/net/"+jobID+"/-2", nil)
	c.problem(400, "-1 for every instance", "DELETE", "/api/net/"+jobID+"/one", nil)
	c.problem(404, "not found", "DELETE", "/api/net/nosuchjob/0", nil)
	c.ok("POST", "/api/net/instance/deploy", map[string]any{"_id": jobID, "instance_number": 2, "cluster_id": "c1"})
	job = c.ok("DELETE", "/api/net/"+jobID+"/-1", nil)
	if ins := list(t, job, "instance_list"); len(ins) != 0 {
		t.Fatalf("after deleting every instance: %v", ins)
	}
	if _, err := reg.Service(ctx, jobID); err != nil {
		t.Fatalf("deleting every instance deleted the service: %v", err)
	}
	// The undeployed Instance IP no longer resolves.
	c.problem(404, "not found", "GET", "/api/net/service/ip/"+inst4.String()+"/instances", nil)

	last := c.ok("DELETE", "/api/net/service/"+jobID, nil)
	if last["job_name"] != "shop.prod.web.eu" {
		t.Fatalf("delete answered %v", last)
	}
	c.problem(404, "not found", "DELETE", "/api/net/service/"+jobID, nil)
	c.problem(404, "not found", "GET", "/api/net/service/shop_prod_web_eu/instances", nil)
}

// TestLegacyFields checks the fall-backs for older orchestrators: system_job_id,
// service_name/service_ns and the SLA's addresses object.
func TestLegacyFields(t *testing.T) {
	c, _ := newStack(t)
	job := c.ok("POST", "/api/net/service/deploy", `{"system_job_id":"old1","deployment_descriptor":{"app_name":"a","app_ns":"b","service_name":"c","service_ns":"d","addresses":{"rr_ip":"10.30.7.7","rr_ip_v6":"fdff:2000::7"}}}`)
	if job["_id"] != "old1" || job["job_name"] != "a.b.c.d" {
		t.Fatalf("job %v", job)
	}
	if s := list(t, job, "service_ip_list"); s[0]["Address"] != "10.30.7.7" || s[0]["Address_v6"] != "fdff:2000::7" {
		t.Fatalf("service IPs %v", s)
	}
	job = c.ok("POST", "/api/net/instance/deploy", `{"system_job_id":"old1","instance_number":"3","cluster_id":"c9"}`)
	if ins := list(t, job, "instance_list"); len(ins) != 1 || ins[0]["instance_number"] != 3.0 {
		t.Fatalf("instances %v", ins)
	}
	c.problem(400, "cluster_port", "POST", "/api/net/cluster", `{"cluster_id":"c1","cluster_address":"192.0.2.1","cluster_port":"ten"}`)
	c.problem(400, "port", "POST", "/api/net/cluster", `{"cluster_id":"c1","cluster_address":"192.0.2.1"}`)
}

// TestInterestByRemoteAddress checks the compatibility fall-back for reference clusters
// that send no cluster ID: the one cluster registered at the caller's address.
func TestInterestByRemoteAddress(t *testing.T) {
	c, reg := newStack(t)
	c.ok("POST", "/api/net/service/deploy", map[string]any{"_id": jobID, "deployment_descriptor": descriptor("shop", "web", nil)})

	// No cluster at 127.0.0.1: served, no interest anywhere.
	c.ok("POST", "/api/net/cluster", `{"cluster_id":"far","cluster_address":"192.0.2.1","cluster_port":10110}`)
	c.ok("GET", "/api/net/service/shop_prod_web_eu/instances", nil)
	wantInterest(t, reg, "far", jobID, false)

	// One cluster at 127.0.0.1: it is the caller.
	c.ok("POST", "/api/net/cluster", `{"cluster_id":"local","cluster_address":"127.0.0.1","cluster_port":10110}`)
	c.ok("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=None", nil)
	wantInterest(t, reg, "local", jobID, true)
	c.ok("DELETE", "/api/net/interest/shop.prod.web.eu", nil)
	wantInterest(t, reg, "local", jobID, false)

	// Two clusters at 127.0.0.1: ambiguous, so no interest is recorded.
	c.ok("POST", "/api/net/cluster", `{"cluster_id":"local2","cluster_address":"127.0.0.1","cluster_port":10111}`)
	c.ok("GET", "/api/net/service/shop_prod_web_eu/instances", nil)
	wantInterest(t, reg, "local", jobID, false)
	wantInterest(t, reg, "local2", jobID, false)
}

// TestReferenceClusterKeepsLocation: re-registering through the reference API does not
// erase what semnet knows about a cluster.
func TestReferenceClusterKeepsLocation(t *testing.T) {
	c, reg := newStack(t)
	ctx := context.Background()
	loc := geo.Point{Lat: 48.14, Lon: 11.58}
	if _, err := reg.RegisterCluster(ctx, api.ClusterRequest{ID: "munich", Name: "Munich", Address: "192.0.2.1", Port: 10110, Location: loc, RadiusKM: 50}, false); err != nil {
		t.Fatal(err)
	}
	c.ok("POST", "/api/net/cluster", `{"cluster_id":"munich","cluster_address":"192.0.2.9","cluster_port":10111}`)
	cl, err := reg.Cluster(ctx, "munich")
	if err != nil {
		t.Fatal(err)
	}
	if cl.Location != loc || cl.RadiusKM != 50 || cl.Name != "Munich" || cl.Address != "192.0.2.9" || cl.Port != 10111 || !cl.Reference {
		t.Fatalf("cluster after reference registration: %+v", cl)
	}
}

func TestSubnet(t *testing.T) {
	c, reg := newStack(t)
	a := c.do("GET", "/api/net/subnet", nil)
	if a.status != 200 || strings.TrimSpace(string(a.body)) != `{"subnet_addr":"10.18.0.0","subnet_addr_v6":"fc00::"}` {
		t.Fatalf("first subnet: %d %s", a.status, a.body)
	}
	if cc := a.header.Get("Cache-Control"); cc != "no-store" {
		t.Fatalf("Cache-Control %q", cc)
	}
	got := c.ok("GET", "/api/net/subnet?node_id=worker1", nil)
	if got["subnet_addr"] != "10.18.0.64" || got["subnet_addr_v6"] != "fc00::100" {
		t.Fatalf("second subnet %v", got)
	}
	sns, err := reg.Subnets(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(sns) != 2 || sns[0].ClusterID != refapi.ReferenceClusterID || sns[0].NodeID != "unknown" || sns[1].NodeID != "worker1" {
		t.Fatalf("subnets %+v", sns)
	}
}

func TestAvailableIPs(t *testing.T) {
	c, _ := newStack(t)
	c.problem(400, "between 1 and 1000", "GET", "/api/pubnet/service/netinfo/available-ip/0", nil)
	c.problem(400, "between 1 and 1000", "GET", "/api/pubnet/service/netinfo/available-ip/x", nil)
	c.problem(400, "must be 4 or 6", "GET", "/api/pubnet/service/netinfo/available-ip/?v=5", nil)

	got := c.ok("GET", "/api/pubnet/service/netinfo/available-ip/2?v=4", nil)
	ips := list(t, got, "available_service_ips")
	if len(ips) != 2 {
		t.Fatalf("available IPs %v", ips)
	}
	for _, ip := range ips {
		wantKeys(t, "available IP", ip, "Address", "Address_v6", "IpType")
		if ip["IpType"] != "IPv4" || ip["Address_v6"] != nil {
			t.Fatalf("available IP %v", ip)
		}
	}
	// A look-ahead reserves nothing: the next deploy gets the first address offered.
	job := c.ok("POST", "/api/net/service/deploy", map[string]any{"_id": jobID, "deployment_descriptor": descriptor("shop", "web", nil)})
	if s := list(t, job, "service_ip_list"); s[0]["Address"] != ips[0]["Address"] {
		t.Fatalf("deploy got %v, look-ahead offered %v", s[0]["Address"], ips[0]["Address"])
	}
	got = c.ok("GET", "/api/pubnet/service/netinfo/available-ip/", nil)
	if ips := list(t, got, "available_service_ips"); len(ips) != 2 || ips[0]["IpType"] != "IPv4" || ips[1]["IpType"] != "IPv6" {
		t.Fatalf("available IPs of both families %v", ips)
	}
}

func wantInterest(t *testing.T, reg *registry.Registry, cluster, serviceID string, want bool) {
	t.Helper()
	ids, err := reg.Interests(context.Background(), cluster)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Contains(ids, serviceID); got != want {
		t.Fatalf("cluster %s interested in %s: %v, want %v (interests %v)", cluster, serviceID, got, want, ids)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	x, err1 := json.Marshal(a)
	y, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return string(x) == string(y)
}
