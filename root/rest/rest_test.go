package rest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/shared/addrplan"
)

const (
	token     = "test-token-0123456789abcdef"
	readToken = "read-only-token-0123456789"
)

func newServer(t *testing.T) (*httptest.Server, http.Handler) {
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
	h := rest.Handler(reg, rest.Config{Tokens: []string{token}, ReadTokens: []string{readToken}, Registerer: pr, Gatherer: pr, Ready: reg.Ping})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, h
}

type client struct {
	t    *testing.T
	base string
}

// do sends a request and decodes the answer into out (when non-nil), returning the status.
func (c client) do(method, path, body string, out any) (int, http.Header) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode, resp.Header
}

type problem struct {
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Title  string `json:"title"`
}

// expectProblem checks that a request fails with the status and a detail containing msg.
func (c client) expectProblem(method, path, body string, status int, msg string) {
	c.t.Helper()
	var p problem
	got, h := c.do(method, path, body, &p)
	if got != status || p.Status != status || !strings.Contains(p.Detail, msg) {
		c.t.Errorf("%s %s: %d %+v, want %d with detail containing %q", method, path, got, p, status, msg)
	}
	if ct := h.Get("Content-Type"); ct != "application/problem+json" {
		c.t.Errorf("%s %s: Content-Type %q, want application/problem+json", method, path, ct)
	}
}

func TestServiceLifecycleOverREST(t *testing.T) {
	srv, _ := newServer(t)
	c := client{t, srv.URL + "/api/v1"}
	var cl api.Cluster
	if st, _ := c.do("POST", "/clusters", `{"id":"munich","address":"127.0.0.1","port":10110,"location":{"lat":48.1,"lon":11.6},"radius_km":50}`, &cl); st != 201 || cl.ID != "munich" {
		t.Fatalf("register cluster: %d %+v", st, cl)
	}
	var s api.Service
	st, h := c.do("POST", "/services", `{"app":"shop","app_ns":"prod","service":"web","service_ns":"eu","rr_ip":"10.30.5.5"}`, &s)
	if st != 201 || s.JobName != "shop.prod.web.eu" || s.RRIP.String() != "10.30.5.5" || !s.ClosestIPv6.IsValid() {
		t.Fatalf("create service: %d %+v", st, s)
	}
	if h.Get("Location") != "/api/v1/services/"+s.ID {
		t.Errorf("Location %q", h.Get("Location"))
	}
	for _, key := range []string{s.ID, s.JobName, s.RRIP.String(), s.ClosestIPv6.String()} {
		var got api.Service
		if st, _ := c.do("GET", "/services/"+key, "", &got); st != 200 || got.ID != s.ID {
			t.Errorf("get by %s: %d %+v", key, st, got)
		}
	}
	var in api.Instance
	if st, _ := c.do("POST", "/services/shop.prod.web.eu/instances", `{"cluster_id":"munich"}`, &in); st != 201 || in.Status != "scheduled" {
		t.Fatalf("create instance: %d %+v", st, in)
	}
	if st, _ := c.do("PUT", "/services/shop.prod.web.eu/instances/0/placement",
		`{"status":"running","namespace_ip":"10.18.0.2","namespace_ip_v6":"fc00::2","host_ip":"127.0.0.1","host_port":50103,"location":{"lat":48.1,"lon":11.6}}`, &in); st != 200 || in.Status != "running" {
		t.Fatalf("place: %d %+v", st, in)
	}
	// Reported running on another node (a migration's new place), it shows the old place
	// as its standby until that place stops it.
	if st, _ := c.do("PUT", "/services/shop.prod.web.eu/instances/0/placement",
		`{"status":"running","namespace_ip":"10.18.0.66","namespace_ip_v6":"fc00::42","host_ip":"127.0.0.2","host_port":50103}`, &in); st != 200 ||
		in.HostIP.String() != "127.0.0.2" || in.Standby == nil || in.Standby.HostIP.String() != "127.0.0.1" || in.Standby.NamespaceIP.String() != "10.18.0.2" || in.Standby.ClusterID != "munich" {
		t.Fatalf("migrate: %d %+v (standby %+v)", st, in, in.Standby)
	}
	var ins []api.Instance
	if st, _ := c.do("GET", "/services/shop.prod.web.eu/instances", "", &ins); st != 200 || len(ins) != 1 || ins[0].Standby == nil || ins[0].Standby.HostPort != 50103 {
		t.Fatalf("list instances while migrating: %d %+v", st, ins)
	}
	in = api.Instance{} // decoding leaves a field the answer omits as it was
	if st, _ := c.do("PUT", "/services/shop.prod.web.eu/instances/0/placement", `{"status":"stopped","host_ip":"127.0.0.1","host_port":50103}`, &in); st != 200 ||
		in.Status != "running" || in.HostIP.String() != "127.0.0.2" || in.Standby != nil {
		t.Fatalf("old place stopped: %d %+v (standby %+v)", st, in, in.Standby)
	}
	var e api.TableEntry
	if st, _ := c.do("GET", "/resolve/"+in.InstanceIP.String()+"?lat=52.5&lon=13.4", "", &e); st != 200 || len(e.Instances) != 1 || e.MatchedInstance == nil || *e.MatchedInstance != 0 {
		t.Fatalf("resolve: %d %+v", st, e)
	}
	if d := e.Instances[0].DistanceKM; d == nil || *d < 400 || *d > 600 {
		t.Errorf("Munich-Berlin distance %v, want about 500 km", d)
	}
	// A cluster filling its cache registers its interest in the same call.
	var ids []string
	if c.do("GET", "/clusters/munich/interests", "", &ids); len(ids) != 0 {
		t.Fatalf("interests before resolve with cluster_id: %v", ids)
	}
	if st, _ := c.do("GET", "/resolve/"+s.JobName+"?cluster_id=munich", "", &e); st != 200 || e.Service.ID != s.ID {
		t.Fatalf("resolve with cluster_id: %d %+v", st, e)
	}
	if c.do("GET", "/clusters/munich/interests", "", &ids); len(ids) != 1 || ids[0] != s.ID {
		t.Errorf("interests after resolve with cluster_id: %v, want [%s]", ids, s.ID)
	}
	c.expectProblem("GET", "/resolve/"+s.JobName+"?cluster_id=nowhere", "", 404, "nowhere")
	if e.Revision == 0 {
		t.Errorf("resolve answered revision 0; want the store's revision")
	}

	// A cluster with nothing cached starts following at the current revision; one ahead
	// of root (root's database was replaced) is told to resync.
	var b api.ChangeBatch
	if st, _ := c.do("GET", "/clusters/munich/changes?since=now", "", &b); st != 200 || b.Revision < e.Revision || len(b.Changes) != 0 || b.Resync {
		t.Errorf("changes since=now: %d %+v, want no changes at revision >= %d", st, b, e.Revision)
	}
	now := b.Revision
	if st, _ := c.do("GET", fmt.Sprintf("/clusters/munich/changes?since=%d", now+100), "", &b); st != 200 || !b.Resync || b.Revision != now {
		t.Errorf("changes since a revision ahead of root: %d %+v, want resync at %d", st, b, now)
	}
	// A batch asked with entries=true carries the entry of the service it touches, read
	// after the change; without, none.
	if st, _ := c.do("PUT", "/services/shop.prod.web.eu/instances/0/placement",
		`{"status":"running","namespace_ip":"10.18.0.67","namespace_ip_v6":"fc00::43","host_ip":"127.0.0.2","host_port":50103}`, &in); st != 200 {
		t.Fatalf("move: %d %+v", st, in)
	}
	var plain, full api.ChangeBatch
	if st, _ := c.do("GET", fmt.Sprintf("/clusters/munich/changes?since=%d", now), "", &plain); st != 200 || len(plain.Changes) != 1 || plain.Entries != nil {
		t.Errorf("changes without entries: %d %+v, want the move and no entries", st, plain)
	}
	if st, _ := c.do("GET", fmt.Sprintf("/clusters/munich/changes?since=%d&entries=true", now), "", &full); st != 200 || len(full.Changes) != 1 || len(full.Entries) != 1 ||
		full.Entries[0].Service.ID != s.ID || len(full.Entries[0].Instances) != 1 || full.Entries[0].Instances[0].NamespaceIP.String() != "10.18.0.67" ||
		full.Entries[0].Revision < full.Changes[0].Revision {
		t.Errorf("changes with entries: %d %+v, want the move and the entry of %s after it", st, full, s.JobName)
	}
	c.expectProblem("DELETE", "/services/"+s.ID, "", 409, "still has 1 instance(s); delete them first or pass force=true")
	// Details are the operator's words, not a chain of internal wrappers.
	var p problem
	c.do("DELETE", "/services/"+s.ID, "", &p)
	if strings.Contains(p.Detail, "bolt") || strings.HasSuffix(p.Detail, "has instances") {
		t.Errorf("detail leaks internals: %q", p.Detail)
	}
	c.expectProblem("POST", "/services", `{"app":"x","app_ns":"n","service":"s","service_ns":"n","rr_ip":"10.30.5.5"}`, 409, "address 10.30.5.5 is already used by service "+s.ID)
	if st, _ := c.do("DELETE", "/services/"+s.ID+"?force=true", "", nil); st != 204 {
		t.Fatalf("force delete: %d", st)
	}
	c.expectProblem("GET", "/services/"+s.ID, "", 404, s.ID)
}

func TestBadInputGetsPreciseProblems(t *testing.T) {
	srv, _ := newServer(t)
	c := client{t, srv.URL + "/api/v1"}
	c.expectProblem("POST", "/services", `{"app":"a",`, 400, "truncated")
	c.expectProblem("POST", "/services", `{"app":"a" "x"}`, 400, "malformed JSON at byte")
	c.expectProblem("POST", "/services", `{"app":5}`, 400, "field app: expected string")
	c.expectProblem("POST", "/services", ``, 400, "empty")
	c.expectProblem("POST", "/services", `{} {}`, 400, "after the JSON value")
	c.expectProblem("POST", "/services", `{"app":"a-b","app_ns":"n","service":"s","service_ns":"n"}`, 400, `app "a-b" must match`)
	c.expectProblem("POST", "/services", `{"app":"a","app_ns":"n","service":"s","service_ns":"n","rr_ip":"10.31.0.1"}`, 400, "10.31.0.1")
	c.expectProblem("POST", "/services", `{"app":"a","app_ns":"n","service":"s","service_ns":"n","rr_ip":"10.30.255.253"}`, 400, "10.30.255.253")
	c.expectProblem("POST", "/services", `{"app":"a","app_ns":"n","service":"s","service_ns":"n","rr_ip_v6":"10.30.0.1"}`, 400, "rr_ip_v6")
	big := `{"app":"` + strings.Repeat("a", 2<<20) + `"}`
	c.expectProblem("POST", "/services", big, 413, "larger than")
	c.expectProblem("GET", "/services?limit=0", "", 400, "limit")
	c.expectProblem("GET", "/services/nope/instances/x", "", 400, `n "x" is not an integer`)
	c.expectProblem("GET", "/resolve/10.30.0.1?lat=abc&lon=1", "", 400, "decimal degrees")
	c.expectProblem("GET", "/resolve/nothing.here.at.all", "", 404, "nothing.here.at.all")
	c.expectProblem("GET", "/clusters/nope/changes?since=x", "", 400, "since")
	c.expectProblem("GET", "/clusters/nope/changes?entries=maybe", "", 400, "entries")
	c.expectProblem("POST", "/clusters", `{"id":"c","address":"a b","port":1}`, 400, "address")
	c.expectProblem("POST", "/clusters", `{"id":"c","address":"h","port":0}`, 400, "port 0")
	c.expectProblem("POST", "/subnets", `{"cluster_id":"c"}`, 400, "node_id")
	c.expectProblem("DELETE", "/subnets/10.18.0.1", "", 400, "worker subnet")
	c.expectProblem("DELETE", "/subnets/10.18.0.64", "", 404, "not allocated")
	c.expectProblem("GET", "/nosuch", "", 404, "no such endpoint")
	c.expectProblem("PATCH", "/services", "", 405, "PATCH")
	// Duplicates are conflicts, and a failed request leaves no trace.
	c.do("POST", "/services", `{"app":"a","app_ns":"n","service":"s","service_ns":"n"}`, nil)
	c.expectProblem("POST", "/services", `{"app":"a","app_ns":"n","service":"s","service_ns":"n"}`, 409, "a.n.s.n")
	var list api.ServiceList
	if c.do("GET", "/services", "", &list); len(list.Items) != 1 {
		t.Fatalf("%d services after failed requests, want 1", len(list.Items))
	}
}

func TestAuth(t *testing.T) {
	srv, _ := newServer(t)
	for _, h := range []string{"", "Bearer", "Bearer wrong", "Basic " + token, "bearer " + token} {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/services", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d, want 401 with a challenge", h, resp.StatusCode)
		}
	}
	// A read-only token reads, and anything else it asks is a 403 that changes nothing.
	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/api/v1/services", "", 200},
		{"GET", "/api/v1/pools", "", 200},
		{"POST", "/api/v1/services", `{"app":"a","app_ns":"b","service":"c","service_ns":"d"}`, 403},
		{"POST", "/api/v1/clusters", `{"id":"c9","address":"127.0.0.1","port":10110}`, 403},
		{"DELETE", "/api/v1/services/a.b.c.d", "", 403},
	} {
		req, _ := http.NewRequest(c.method, srv.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+readToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("read-only token %s %s: %d %s, want %d", c.method, c.path, resp.StatusCode, b, c.want)
		}
		if c.want == 403 && !strings.Contains(string(b), "only read") {
			t.Errorf("read-only token %s %s: problem %s does not say why", c.method, c.path, b)
		}
	}
	var list struct{ Items []any }
	if code, _ := (client{t, srv.URL}).do("GET", "/api/v1/services", "", &list); code != 200 || len(list.Items) != 0 {
		t.Errorf("after refused writes: %d, %d services, want none", code, len(list.Items))
	}
	// Health, readiness and metrics need no token.
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
}

func TestPaginationAndPools(t *testing.T) {
	srv, _ := newServer(t)
	c := client{t, srv.URL + "/api/v1"}
	for i := range 5 {
		c.do("POST", "/services", fmt.Sprintf(`{"app":"a","app_ns":"n","service":"s%d","service_ns":"n"}`, i), nil)
	}
	var all []string
	after := ""
	for pages := 0; ; pages++ {
		var l api.ServiceList
		c.do("GET", "/services?limit=2&after="+after, "", &l)
		for _, s := range l.Items {
			all = append(all, s.ID)
		}
		if l.Next == "" {
			if pages != 2 {
				t.Errorf("%d pages, want 3", pages+1)
			}
			break
		}
		after = l.Next
	}
	if len(all) != 5 || !slices.IsSorted(all) {
		t.Fatalf("paged IDs %v", all)
	}
	var pools []api.PoolUsage
	c.do("GET", "/pools", "", &pools)
	for _, p := range pools {
		if p.Name == "service_v4" && p.Used != 10 {
			t.Errorf("service_v4 used %d, want 10", p.Used)
		}
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`semnet_root_http_request_duration_seconds_count{code="201",method="POST",route="/api/v1/services"}`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestOpenAPICoversEveryRoute keeps proto/openapi.yaml and the router in step: every
// route served is documented, and every documented path is served.
func TestOpenAPICoversEveryRoute(t *testing.T) {
	b, err := os.ReadFile("../../proto/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	documented := map[string]bool{}
	for p, ops := range doc.Paths {
		for m := range ops {
			if m != "parameters" {
				documented[strings.ToUpper(m)+" "+p] = true
			}
		}
	}
	_, h := newServer(t)
	served := map[string]bool{}
	param := regexp.MustCompile(`\{[^}]+\}`)
	norm := func(s string) string { return param.ReplaceAllString(strings.TrimSuffix(s, "/"), "{}") }
	err = chi.Walk(h.(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if !strings.HasPrefix(route, "/api/v1") && !slices.Contains([]string{"/healthz", "/readyz", "/metrics"}, route) {
			return nil
		}
		served[method+" "+norm(route)] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	docNorm := map[string]bool{}
	for k := range documented {
		m, p, _ := strings.Cut(k, " ")
		docNorm[m+" "+norm(p)] = true
	}
	for k := range served {
		if !docNorm[k] {
			t.Errorf("served but not in openapi.yaml: %s", k)
		}
	}
	for k := range docNorm {
		if !served[k] {
			t.Errorf("in openapi.yaml but not served: %s", k)
		}
	}
}
