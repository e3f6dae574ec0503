package integration

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/node/simnode"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/syncbuf"
	"github.com/semnet/semnet/shared/testservers"
)

// TestSoak is the load run of issue 7: the whole platform as separate processes (two
// root replicas on one FerretDB, two clusters — one caching in memory, one in Redis —
// and many simulated worker nodes speaking the real MQTT contract through the node's own
// cluster link and table), under open-loop table queries and continuous churn (deploy,
// scale up and down, migrate, undeploy) while faults are injected one after another:
// root killed, MongoDB killed, Redis restarted empty, root's link cut, a cluster killed,
// nodes dying. It ends with a consistency check (root, cluster caches and node tables
// agree; no address or subnet is given out twice) and writes a summary table, the
// per-second series and a plot of latency over time to -soak-out.
//
// It runs only when asked for (-soak), as it takes many minutes; the full run is
//
//	.ci/with-servers go test -run TestSoak -v -timeout 40m ./integration/ -soak 10m -soak-nodes 1000 -soak-qps 5000 -soak-out soak-report
var (
	soakFor   = flag.Duration("soak", 0, "TestSoak: how long load, churn and faults run (0: TestSoak skips)")
	soakNodes = flag.Int("soak-nodes", 200, "TestSoak: simulated worker nodes (MQTT clients), split over two clusters")
	soakQPS   = flag.Float64("soak-qps", 300, "TestSoak: table queries per second the nodes offer in total (open loop)")
	soakChurn = flag.Float64("soak-churn", 10, "TestSoak: churn operations per second (deploy, scale up or down, migrate, undeploy)")
	soakSvcs  = flag.Int("soak-services", 60, "TestSoak: services deployed before the run (one to three instances each)")
	soakOut   = flag.String("soak-out", "", "TestSoak: directory for summary.md, latency.svg, series.csv and each daemon's log (default: a temporary one)")
	soakLog   = flag.String("soak-log-level", "warn", "TestSoak: the roots' and clusters' --log-level (info shows every placement and ignored late report)")
)

const (
	soakFollow = 8 // jobs a simulated node follows at most (it drops the oldest)
	soakGrace  = 5 * time.Second
)

// daemon is a semnet process of the soak: started, killed with SIGKILL, started again
// with the same command line.
type daemon struct {
	t    *testing.T
	name string
	bin  string
	args []string
	addr string // its REST address: /readyz answers 200 once it serves
	cmd  *exec.Cmd
	log  *syncbuf.Buffer
	// exited is closed when the running process has exited; nil when none runs.
	exited chan struct{}
}

func startDaemon(t *testing.T, name, bin, addr string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, name: name, bin: bin, args: args, addr: addr, log: &syncbuf.Buffer{}}
	d.start()
	t.Cleanup(func() {
		d.kill()
		if t.Failed() {
			out := d.log.String()
			t.Logf("--- %s output (last 4 KiB):\n%s", name, out[max(0, len(out)-4096):])
		}
	})
	return d
}

// start launches the process and waits until it is ready, launching it again when it
// exits first (as its supervisor would: root exits when its store does not answer at
// start). It returns how many launches it took; the test fails if it never got ready.
func (d *daemon) start() int {
	d.t.Helper()
	n, err := d.launch()
	if err != nil {
		d.t.Fatal(err)
	}
	return n
}

func (d *daemon) launch() (int, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for launch := 1; ; launch++ {
		d.cmd = exec.Command(d.bin, d.args...)
		d.cmd.Env = append(os.Environ(), "SEMNET_TOKEN="+token)
		d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
		if err := d.cmd.Start(); err != nil {
			return launch, err
		}
		exited := make(chan struct{})
		go func(cmd *exec.Cmd) { cmd.Wait(); close(exited) }(d.cmd)
		for {
			if readyz(d.addr) == http.StatusOK {
				d.exited = exited
				return launch, nil
			}
			if time.Now().After(deadline) {
				_ = d.cmd.Process.Kill()
				<-exited
				return launch, fmt.Errorf("%s not ready after %d launches", d.name, launch)
			}
			select {
			case <-exited:
			case <-time.After(50 * time.Millisecond):
				continue
			}
			break
		}
		time.Sleep(time.Second)
	}
}

// metrics returns the daemon's /metrics by family name (none when it does not answer).
func (d *daemon) metrics() map[string]*dto.MetricFamily {
	resp, err := http.Get("http://" + d.addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fs, _ := p.TextToMetricFamilies(resp.Body) // what parsed before an error still counts
	return fs
}

func (d *daemon) kill() {
	if d.exited != nil {
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
		d.exited = nil
	}
}

// soakNode is one simulated worker node: the node's cluster link (through simnode) and
// its table, fed by query answers and pushes as in `semnet node`.
type soakNode struct {
	i       int
	cluster string
	port    int
	loc     geo.Point
	sim     *simnode.Node
	tab     *table.Table
	dead    atomic.Bool

	// subs serialises the node's subscription changes, as `semnet node` does per job: a
	// follow racing an unfollow of the same job could leave it listed and unsubscribed.
	subs   sync.Mutex
	mu     sync.Mutex
	follow []string // followed jobs, oldest first
}

func (n *soakNode) follows(job string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Contains(n.follow, job)
}

// soakInst is where the tooling placed an instance.
type soakInst struct {
	node   int
	v4, v6 netip.Addr
}

// soakJob is the tooling's record of a service: what it created and placed.
type soakJob struct {
	mu      sync.Mutex // one operation at a time per job
	svc     api.Service
	inst    map[int]soakInst
	deleted bool
	// undeploying: its instances were stopped but its delete at root failed; the
	// cleanup deletes it.
	undeploying bool
	// dirty: an instance create failed without an answer; root may hold an instance the
	// tooling does not know (never placed). Cleaned up before the check.
	dirty bool
}

type soak struct {
	t       *testing.T
	ctx     context.Context
	t0      time.Time
	roots   []*daemon
	rcs     []*client.Client
	cls     []*daemon
	brokers []string // the clusters' MQTT addresses
	proxy   *linkProxy
	ferret  *testservers.Server
	redis   *testservers.Server
	nodes   []*soakNode
	series  *series
	exp     *expectations

	mu        sync.Mutex
	jobs      map[string]*soakJob
	live      []string // job names not deleted (for picking)
	uncertain map[string]bool
	seq       int
	events    []soakEvent
	figures   []figure
}

// soakEvent is one injected fault: when it ran and what it showed.
type soakEvent struct {
	name       string
	start, end time.Duration // since the load started
	note       string
}

// figure is one line of the summary table.
type figure struct{ what, value string }

func (s *soak) note(what, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.figures = append(s.figures, figure{what, fmt.Sprintf(format, args...)})
}

func TestSoak(t *testing.T) {
	if *soakFor <= 0 || testing.Short() {
		t.Skip("soak: a run of many minutes, only when asked for: -soak 10m (see TestSoak)")
	}
	bin := benchBinary(t)
	if raceEnabled {
		bin = semnetBinary(t)
	}
	s := &soak{t: t, ctx: t.Context(), jobs: map[string]*soakJob{}, uncertain: map[string]bool{}, exp: newExpectations(),
		series: newSeries(time.Now())}
	s.startPlatform(bin)
	s.startNodes()
	s.seed()

	out := *soakOut
	if out == "" {
		out = t.TempDir()
	}
	t.Logf("soak: %s with %d nodes, %.0f queries/s, %.0f churn ops/s; report in %s", *soakFor, len(s.nodes), *soakQPS, *soakChurn, out)
	s.t0 = time.Now()
	s.series.restart(s.t0) // the samples of the seeding are not the run's
	loadCtx, stopLoad := context.WithCancel(s.ctx)
	var load sync.WaitGroup
	load.Add(2)
	go func() { defer load.Done(); s.queries(loadCtx) }()
	go func() { defer load.Done(); s.churn(loadCtx) }()
	s.faults(*soakFor)
	if w := time.Until(s.t0.Add(*soakFor)); w > 0 {
		time.Sleep(w)
	}
	stopLoad()
	load.Wait()
	end := time.Since(s.t0)

	s.check()
	if err := s.report(out, end); err != nil {
		t.Error(err)
	}
	for _, d := range append(slices.Clone(s.roots), s.cls...) {
		name := strings.ReplaceAll(d.name, " ", "-") + ".log"
		if err := os.WriteFile(filepath.Join(out, name), []byte(d.log.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// startPlatform starts FerretDB, Redis, two roots on FerretDB behind the link proxy, and
// two clusters (c1 in memory in Munich, c2 on Redis in Berlin) reaching root through it.
func (s *soak) startPlatform(bin string) {
	t := s.t
	s.ferret = testservers.StartFerretDB(t)
	s.redis = testservers.StartRedis(t)
	db := fmt.Sprintf("soak_%d", time.Now().UnixNano())
	rootAddrs := []string{testservers.FreeAddr(t), testservers.FreeAddr(t)}
	for k, addr := range rootAddrs {
		s.roots = append(s.roots, startDaemon(t, fmt.Sprintf("root %c", 'A'+k), bin, addr,
			// A short change log: FerretDB v1 compacts it, and reads it when a poll is
			// far behind, by decoding all of it (README, Stores); longer than the
			// partition, so no cluster resyncs. Each root tells the other of its changes.
			"root", "--listen", addr, "--mongo-uri", s.ferret.URI(), "--mongo-db", db, "--change-retention", "2m", "--log-level", *soakLog, "--rate-limit", "0",
			"--peer", "http://"+rootAddrs[1-k]))
		rc, err := client.New("http://"+addr, token, nil)
		if err != nil {
			t.Fatal(err)
		}
		s.rcs = append(s.rcs, rc)
	}
	s.proxy = startLinkProxy(t, rootAddrs...)
	for _, c := range []struct {
		id, lat, lon string
		extra        []string
	}{{"c1", "48.14", "11.58", nil}, {"c2", "52.52", "13.40", []string{"--redis-url", s.redis.URL()}}} {
		rest, mqtt := testservers.FreeAddr(t), testservers.FreeAddr(t)
		args := append([]string{"cluster", "--id", c.id, "--root", "http://" + s.proxy.Addr(), "--root-token", token,
			"--listen", rest, "--mqtt-listen", mqtt, "--insecure", "--lat", c.lat, "--lon", c.lon,
			"--node-grace", soakGrace.String(), "--log-level", *soakLog}, c.extra...)
		s.cls = append(s.cls, startDaemon(t, "cluster "+c.id, bin, rest, args...))
		s.brokers = append(s.brokers, mqtt)
	}
}

// startNodes connects the simulated nodes, half to each cluster, spread over Europe.
func (s *soak) startNodes() {
	t := s.t
	s.nodes = make([]*soakNode, *soakNodes)
	errs := make(chan error, len(s.nodes))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range s.nodes {
		n := &soakNode{i: i, cluster: []string{"c1", "c2"}[i%2], port: 20000 + i,
			loc: geo.Point{Lat: 36 + rand.Float64()*24, Lon: -8 + rand.Float64()*32}}
		n.tab = table.New(table.Config{Location: &n.loc})
		s.nodes[i] = n
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			// A node whose start fails (its subnet request timed out: root is slow while
			// many nodes start) starts again, as its supervisor would restart it.
			var err error
			for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(time.Second) {
				n.sim, err = simnode.Start(s.ctx, simnode.Config{ID: fmt.Sprintf("w%d", i), Broker: s.brokers[i%2],
					HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: n.port, Location: &n.loc,
					OnUpdate:    func(key string, u mqttapi.UpdatesAvailable) { s.pushed(n, key, u) },
					OnReconnect: func() { go s.refresh(n) }})
				if err == nil || time.Now().After(deadline) {
					break
				}
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, n := range s.nodes {
			if n.sim != nil && !n.dead.Load() {
				n.sim.Close()
			}
		}
	})
}

// pushed applies a push to the node's table, as `semnet node` does.
func (s *soak) pushed(n *soakNode, job string, u mqttapi.UpdatesAvailable) {
	switch {
	case u.Type == mqttapi.UpdateDeleted:
		n.tab.Delete(job)
	case u.Table != nil:
		if _, err := n.tab.Apply(u.Table, time.Now()); err != nil && !errors.Is(err, table.ErrOutdated) {
			s.series.count("push_rejected", time.Now())
			return
		}
	default:
		go s.query(n, job, time.Now()) // a push without the entry means "ask again"
		return
	}
	if !u.ChangedAt.IsZero() { // root's clock is this machine's
		s.series.add("root_propagation", u.ChangedAt, time.Since(u.ChangedAt))
	}
	s.exp.applied(s, n, job)
}

// refresh re-reads every followed entry after a reconnection, as `semnet node` does.
func (s *soak) refresh(n *soakNode) {
	n.mu.Lock()
	jobs := slices.Clone(n.follow)
	n.mu.Unlock()
	for _, j := range jobs {
		s.query(n, j, time.Now())
	}
}

// query asks the node's cluster for job (following it first, so no push between the
// answer and the subscription is lost) and applies the answer; latency counts from due.
func (s *soak) query(n *soakNode, job string, due time.Time) {
	followed := n.follows(job)
	if !followed {
		n.subs.Lock()
		if err := s.follow(n, job); err != nil {
			n.subs.Unlock()
			s.series.count("query_failed", due)
			return
		}
		n.subs.Unlock()
	}
	r, err := n.sim.Query(s.ctx, job)
	done := time.Now()
	switch {
	case errors.Is(err, clusterlink.ErrUnknown):
		s.series.count("query_unknown", due) // undeployed meanwhile: gone, as for the node
		n.tab.Delete(job)
		return
	case err != nil:
		s.series.count("query_failed", due)
		return
	}
	s.series.add("query", due, done.Sub(due))
	if followed {
		s.series.add("query_followed", due, done.Sub(due))
	}
	if r.Stale {
		s.series.count("query_stale", due)
	}
	if _, err := n.tab.Apply(r, done); err != nil && !errors.Is(err, table.ErrOutdated) {
		s.series.count("query_rejected", due)
		return
	}
	s.exp.applied(s, n, job)
}

// follow subscribes n to job unless a concurrent query did, and drops the oldest
// followed job past soakFollow. The caller holds n.subs.
func (s *soak) follow(n *soakNode, job string) error {
	if n.follows(job) {
		return nil
	}
	if err := n.sim.Follow(s.ctx, job); err != nil {
		return err
	}
	n.mu.Lock()
	n.follow = append(n.follow, job)
	var drop string
	if len(n.follow) > soakFollow {
		drop, n.follow = n.follow[0], n.follow[1:]
	}
	n.mu.Unlock()
	if drop != "" {
		s.exp.unfollowed(n, drop)
		n.tab.Delete(drop)
		_ = n.sim.Unfollow(s.ctx, drop)
	}
	return nil
}

// queries offers -soak-qps table queries per second, open loop, from random live nodes:
// mostly for a job the node follows (a cache hit at its cluster), sometimes a new one.
func (s *soak) queries(ctx context.Context) {
	every := time.Duration(float64(time.Second) / *soakQPS)
	next := time.Now()
	var wg sync.WaitGroup
	defer wg.Wait()
	for ctx.Err() == nil {
		if w := time.Until(next); w > 0 {
			time.Sleep(w)
		}
		due := next
		next = next.Add(every)
		n := s.nodes[rand.IntN(len(s.nodes))]
		if n.dead.Load() {
			continue
		}
		n.mu.Lock()
		job := ""
		if len(n.follow) > 0 && rand.IntN(10) > 0 {
			job = n.follow[rand.IntN(len(n.follow))]
		}
		n.mu.Unlock()
		if job == "" {
			if job = s.randomJob(); job == "" {
				continue
			}
		}
		wg.Add(1)
		go func() { defer wg.Done(); s.query(n, job, due) }()
	}
}

func (s *soak) randomJob() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) == 0 {
		return ""
	}
	return s.live[rand.IntN(len(s.live))]
}

// rest runs one tooling call against root, moving to the other replica on a temporary
// failure, for up to a minute. uncertain is set when an attempt failed in a way that
// may still have left the request done: no answer at all (none in time included), or a
// 503 (root lets a write run to its end after its client went, and a write whose change
// log failed answers 503 with the record written). kind names the call in the summary
// ("create service"), subject its target in the log.
func (s *soak) rest(kind, subject string, call func(context.Context, *client.Client) error) (uncertain bool, err error) {
	t0 := time.Now()
	k := rand.IntN(len(s.rcs))
	for {
		ctx, cancel := context.WithTimeout(s.ctx, 20*time.Second)
		err = call(ctx, s.rcs[k%len(s.rcs)])
		// An attempt that got no answer in time is as temporary as one refused: try
		// the other replica.
		temporary := err != nil && (client.Temporary(err) || ctx.Err() != nil && s.ctx.Err() == nil)
		cancel()
		if temporary {
			uncertain = true
		}
		if err == nil || !temporary || time.Since(t0) > time.Minute || s.ctx.Err() != nil {
			break
		}
		k++
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil && !errors.Is(err, client.ErrConflict) && !errors.Is(err, client.ErrNotFound) {
		s.series.count("rest_failed", t0)
		s.t.Logf("soak: %s %s: %v", kind, subject, err)
		return uncertain, err
	}
	s.series.add("rest", t0, time.Since(t0))
	s.series.add(restPrefix+kind, t0, time.Since(t0))
	return uncertain, err
}
