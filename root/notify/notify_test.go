package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/root/notify"
	refapisrv "github.com/semnet/semnet/root/refapi"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/shared/addrplan"
)

// The registry accepts the Notifier as its Observer and the Notifier reads the registry.
var (
	_ registry.Observer = (*notify.Notifier)(nil)
	_ notify.Source     = (*registry.Registry)(nil)
)

const token = "test-token-0123456789abcdef"

// stack is root's real HTTP stack with a running Notifier as the registry's observer.
type stack struct {
	t     *testing.T
	base  string
	reg   *registry.Registry
	notif *notify.Notifier
	prom  *prometheus.Registry
}

func newStack(t *testing.T, opt notify.Options) *stack {
	t.Helper()
	plan := addrplan.Default()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "root.db"), store.Options{Quarantine: plan.Quarantine})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pr := prometheus.NewRegistry()
	opt.Registerer = pr
	n := notify.New(opt)
	reg, err := registry.New(context.Background(), plan, st, registry.Options{Observer: n})
	if err != nil {
		t.Fatal(err)
	}
	n.SetRegistry(reg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	h := rest.Handler(reg, rest.Config{Tokens: []string{token}, Registerer: pr, Gatherer: pr,
		Mount: func(r chi.Router) { refapisrv.Mount(r, reg, refapisrv.Options{}) }})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		n.Close()
		cancel()
		<-done
	})
	return &stack{t: t, base: srv.URL, reg: reg, notif: n, prom: pr}
}

// call sends a reference API request and fails the test unless it answers 200.
func (s *stack) call(method, path, body string) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
}

// metric reads a counter's value from the stack's Prometheus registry.
func (s *stack) metric(name, label, value string) float64 {
	s.t.Helper()
	mfs, err := s.prom.Gather()
	if err != nil {
		s.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
			if label == "" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// refCluster stands in for a reference cluster: it records every job update POSTed to it.
// answer decides the status of the i-th request (from 0).
type refCluster struct {
	srv     *httptest.Server
	updates chan refapi.JobUpdate
	hits    atomic.Int64
}

func newRefCluster(t *testing.T, answer func(i int64) int) *refCluster {
	t.Helper()
	c := &refCluster{updates: make(chan refapi.JobUpdate, 100)}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := c.hits.Add(1) - 1
		if r.Method != http.MethodPost || r.URL.Path != refapi.JobUpdatePath || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("cluster got %s %s (Content-Type %q)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		status := http.StatusOK
		if answer != nil {
			status = answer(i)
		}
		if status == http.StatusOK {
			var u refapi.JobUpdate
			dec := json.NewDecoder(r.Body)
			dec.DisallowUnknownFields() // exactly {job_name, instance_number, type}
			if err := dec.Decode(&u); err != nil {
				t.Errorf("cluster got a body it cannot decode: %v", err)
			}
			c.updates <- u
		}
		w.WriteHeader(status)
		io.WriteString(w, "update notification received")
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *refCluster) hostPort(t *testing.T) (string, int) {
	t.Helper()
	host, port, err := net.SplitHostPort(c.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

// register registers the stand-in as reference cluster id.
func (s *stack) register(id string, c *refCluster) {
	host, port := c.hostPort(s.t)
	s.call("POST", "/api/net/cluster", `{"cluster_id":"`+id+`","cluster_address":"`+host+`","cluster_port":`+strconv.Itoa(port)+`}`)
}

func (c *refCluster) want(t *testing.T, want refapi.JobUpdate) {
	t.Helper()
	select {
	case got := <-c.updates:
		if got != want {
			t.Fatalf("cluster got %+v, want %+v", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("cluster got no update; want %+v", want)
	}
}

func (c *refCluster) wantNone(t *testing.T, within time.Duration) {
	t.Helper()
	select {
	case got := <-c.updates:
		t.Fatalf("cluster got an unexpected update %+v", got)
	case <-time.After(within):
	}
}

const (
	jobID = "65a1b2c3d4e5f60718293a4b"
	job   = "shop.prod.web.eu"
)

func (s *stack) deploy(id string) {
	s.call("POST", "/api/net/service/deploy", `{"_id":"`+id+`","deployment_descriptor":{"app_name":"shop","app_ns":"prod","microservice_name":"web","microservice_namespace":"eu"}}`)
}

func (s *stack) place(id string, n int) {
	s.call("POST", "/api/net/service/net_deploy_status", `{"job_id":"`+id+`","instances":[{"instance_number":`+strconv.Itoa(n)+
		`,"namespace_ip":"10.18.0.`+strconv.Itoa(2+n)+`","namespace_ip_v6":"fc00::`+strconv.Itoa(2+n)+`","host_ip":"127.0.0.1","host_port":"50103"}]}`)
}

func (s *stack) instance(id string, n int, cluster string) {
	s.call("POST", "/api/net/instance/deploy", `{"_id":"`+id+`","instance_number":`+strconv.Itoa(n)+`,"cluster_id":"`+cluster+`"}`)
}

// TestDeploymentAndUndeployment follows the orchestrator's flow and checks what an
// interested reference cluster is told, and that semnet's own clusters are not pushed to.
func TestDeploymentAndUndeployment(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: 10 * time.Millisecond})
	ref := newRefCluster(t, nil)
	s.register("ref1", ref)
	// A semnet cluster (registered through /api/v1) follows the change stream instead.
	own := newRefCluster(t, nil)
	host, port := own.hostPort(t)
	if _, err := s.reg.RegisterCluster(context.Background(), api.ClusterRequest{ID: "own1", Address: host, Port: port}, false); err != nil {
		t.Fatal(err)
	}
	// A reference cluster with no interest hears nothing.
	idle := newRefCluster(t, nil)
	s.register("idle", idle)

	s.deploy(jobID)
	s.instance(jobID, 0, "ref1")
	s.call("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=ref1", "")
	if _, err := s.reg.AddInterest(context.Background(), "own1", jobID); err != nil {
		t.Fatal(err)
	}

	// A scheduled instance makes no update; its placement makes a DEPLOYMENT.
	s.instance(jobID, 1, "ref1")
	s.place(jobID, 0)
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 0, Type: "DEPLOYMENT"})
	s.place(jobID, 1)
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 1, Type: "DEPLOYMENT"})

	s.call("DELETE", "/api/net/"+jobID+"/0", "")
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 0, Type: "UNDEPLOYMENT"})
	s.call("DELETE", "/api/net/"+jobID+"/-1", "")
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 1, Type: "UNDEPLOYMENT"})
	s.call("DELETE", "/api/net/service/"+jobID, "")
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: -1, Type: "UNDEPLOYMENT"})

	ref.wantNone(t, 200*time.Millisecond)
	own.wantNone(t, 0)
	idle.wantNone(t, 0)
	if got := s.metric("semnet_root_notify_updates_total", "result", "ok"); got != 5 {
		t.Fatalf("updates_total{result=ok} = %v, want 5", got)
	}
}

// TestRetries: a cluster that answers 500 twice still gets the update, once.
func TestRetries(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: 10 * time.Millisecond})
	ref := newRefCluster(t, func(i int64) int {
		if i < 2 {
			return http.StatusInternalServerError
		}
		return http.StatusOK
	})
	s.register("ref1", ref)
	s.deploy(jobID)
	s.instance(jobID, 0, "ref1")
	s.call("GET", "/api/net/service/"+strings.ReplaceAll(job, ".", "_")+"/instances?cluster_id=ref1", "")
	s.place(jobID, 0)
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 0, Type: "DEPLOYMENT"})
	ref.wantNone(t, 100*time.Millisecond)
	if got := ref.hits.Load(); got != 3 {
		t.Fatalf("cluster was called %d times, want 3 (two 500s, then 200)", got)
	}
	if got := s.metric("semnet_root_notify_retries_total", "", ""); got != 2 {
		t.Fatalf("retries_total = %v, want 2", got)
	}
}

// TestGivesUp: a cluster refusing every attempt costs Attempts calls, then the update is
// counted as failed; a client error (4xx) is not retried.
func TestGivesUp(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: time.Millisecond, Attempts: 3})
	down := newRefCluster(t, func(int64) int { return http.StatusServiceUnavailable })
	refusing := newRefCluster(t, func(int64) int { return http.StatusBadRequest })
	s.register("down", down)
	s.register("refusing", refusing)
	s.deploy(jobID)
	s.instance(jobID, 0, "down")
	s.call("GET", "/api/net/service/ip/10_30_0_1/instances?cluster_id=down", "")
	s.call("GET", "/api/net/service/ip/10.30.0.1/instances?cluster_id=refusing", "")
	s.place(jobID, 0)
	deadline := time.Now().Add(10 * time.Second)
	for s.metric("semnet_root_notify_updates_total", "result", "failed") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("updates not given up: down called %d times, refusing %d", down.hits.Load(), refusing.hits.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d, r := down.hits.Load(), refusing.hits.Load(); d != 3 || r != 1 {
		t.Fatalf("down called %d times (want 3), refusing %d (want 1)", d, r)
	}
}

// TestDeadClusterDoesNotBlock: a cluster that never answers delays neither the API
// requests that make changes nor the updates of other clusters.
func TestDeadClusterDoesNotBlock(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: 10 * time.Millisecond, Timeout: 2 * time.Second})
	release := make(chan struct{})
	dead := newRefCluster(t, func(int64) int {
		<-release // hang until the test ends
		return http.StatusOK
	})
	t.Cleanup(func() { close(release) }) // runs before the stand-in's server closes
	alive := newRefCluster(t, nil)
	s.register("dead", dead)
	s.register("alive", alive)
	s.deploy(jobID)
	for n := range 5 {
		s.instance(jobID, n, "alive")
	}
	s.call("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=dead", "")
	s.call("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=alive", "")
	for n := range 5 {
		start := time.Now()
		s.place(jobID, n)
		if d := time.Since(start); d > time.Second {
			t.Fatalf("placing instance %d took %v with a dead cluster interested", n, d)
		}
		alive.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: n, Type: "DEPLOYMENT"})
	}
	for deadline := time.Now().Add(5 * time.Second); dead.hits.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the dead cluster was never called: the test proves nothing")
		}
	}
}

// TestChangedNeverBlocks: with nobody draining the queue, Changed drops and counts rather
// than wait.
func TestChangedNeverBlocks(t *testing.T) {
	pr := prometheus.NewRegistry()
	n := notify.New(notify.Options{QueueSize: 2, Registerer: pr})
	defer n.Close()
	done := make(chan struct{})
	go func() {
		for i := range 10 {
			n.Changed(store.Change{Kind: store.KindInstance, Op: store.OpDelete, ServiceID: jobID, JobName: job, Instance: i})
		}
		// Service puts make no update and take no room.
		n.Changed(store.Change{Kind: store.KindService, Op: store.OpPut, ServiceID: jobID, JobName: job, Instance: -1})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Changed blocked on a full queue")
	}
	s := &stack{t: t, prom: pr}
	if got := s.metric("semnet_root_notify_dropped_total", "reason", "queue"); got != 8 {
		t.Fatalf("dropped_total{reason=queue} = %v, want 8", got)
	}
}

// TestCloseWithoutRun: Close returns at once when Run never started, and Run after Close
// returns at once.
func TestCloseWithoutRun(t *testing.T) {
	n := notify.New(notify.Options{})
	n.Close()
	n.Close()
	done := make(chan struct{})
	go func() { n.Run(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run after Close did not return")
	}
}

// TestServiceDeleteReachesFollowers: the final UNDEPLOYMENT of a service reaches the
// clusters last notified about it even when the store no longer lists their interest
// (simulated here by dropping it before the delete).
func TestServiceDeleteReachesFollowers(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: 10 * time.Millisecond})
	ref := newRefCluster(t, nil)
	s.register("ref1", ref)
	s.deploy(jobID)
	s.instance(jobID, 0, "ref1")
	s.call("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=ref1", "")
	s.place(jobID, 0)
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 0, Type: "DEPLOYMENT"})
	if err := s.reg.RemoveInterest(context.Background(), "ref1", jobID); err != nil {
		t.Fatal(err)
	}
	s.call("DELETE", "/api/net/"+jobID+"/0", "")
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 0, Type: "UNDEPLOYMENT"})
	s.call("DELETE", "/api/net/service/"+jobID, "")
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: -1, Type: "UNDEPLOYMENT"})
}

// countingSource counts the Notifier's lookups of instances and interested clusters.
type countingSource struct {
	notify.Source
	instances, interested atomic.Int64
}

func (c *countingSource) Instance(ctx context.Context, key string, number int) (store.Instance, store.Service, error) {
	c.instances.Add(1)
	return c.Source.Instance(ctx, key, number)
}

func (c *countingSource) InterestedClusters(ctx context.Context, serviceID string) ([]store.Cluster, error) {
	c.interested.Add(1)
	return c.Source.InterestedClusters(ctx, serviceID)
}

// TestNoLookupsWithoutReferenceClusters: while no reference cluster is registered, a
// change costs the Notifier one read of the clusters, not a read of the instance and
// of the service's interests (on FerretDB the latter decodes every cluster's).
func TestNoLookupsWithoutReferenceClusters(t *testing.T) {
	s := newStack(t, notify.Options{Backoff: 10 * time.Millisecond})
	src := &countingSource{Source: s.reg}
	s.notif.SetRegistry(src)
	own := newRefCluster(t, nil)
	host, port := own.hostPort(t)
	ctx := context.Background()
	if _, err := s.reg.RegisterCluster(ctx, api.ClusterRequest{ID: "own1", Address: host, Port: port}, false); err != nil {
		t.Fatal(err)
	}
	s.deploy(jobID)
	if _, err := s.reg.AddInterest(ctx, "own1", jobID); err != nil {
		t.Fatal(err)
	}
	s.instance(jobID, 0, "own1")
	s.place(jobID, 0)
	// A reference cluster comes: its updates flow (and, the dispatcher taking changes in
	// order, the earlier ones have been dispatched by the time it gets one).
	ref := newRefCluster(t, nil)
	s.register("ref1", ref)
	s.call("GET", "/api/net/service/shop_prod_web_eu/instances?cluster_id=ref1", "")
	s.instance(jobID, 1, "ref1")
	s.place(jobID, 1)
	ref.want(t, refapi.JobUpdate{JobName: job, InstanceNumber: 1, Type: "DEPLOYMENT"})
	// Instance 1's create and placement: two instance reads, one interest read.
	if i, c := src.instances.Load(), src.interested.Load(); i != 2 || c != 1 {
		t.Errorf("%d instance reads and %d interest reads; want 2 and 1 (none for instance 0's changes)", i, c)
	}
	own.wantNone(t, 0)
}
