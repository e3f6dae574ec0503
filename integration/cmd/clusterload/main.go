// Command clusterload measures a cluster service under worker-node load, against PERFORMANCE.md:
//
//   - table queries answered from the cache (hits): closed-loop throughput as a ratio to a
//     bare broker echo (same broker package, same clients, same run), and open-loop
//     latency at a fixed offered rate from many connected nodes;
//   - table queries the cluster must ask root for (misses): latency;
//   - propagation: an instance change at root until every interested node got the push;
//   - memory: the cluster's RSS holding -fill cached instances.
//
// Root runs in this process (embedded store in a temp dir, or MongoDB with -mongo-uri); the cluster and the echo
// broker each run in a child process (this binary re-executed), so their RSS and CPU are
// their own. Everything listens on 127.0.0.1. This process runs its garbage collector
// less often (-gen-gogc, GOGC 400): it hosts all the simulated nodes, and each of its
// collections would stall them all at once and be counted as the broker's latency
// (measured: open-loop p99 of the bare echo 7-11 ms at Go's default, 4-8 ms at 400,
// same code, interleaved runs).
//
//	go run ./integration/cmd/clusterload -nodes 1000 -rate 5000 -duration 10s
//	go run ./integration/cmd/clusterload -nodes 20 -fill 100000
//	go run ./integration/cmd/clusterload -nodes 100 -rounds 200 -mongo-uri mongodb://127.0.0.1:27017/
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/broker"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

type options struct {
	nodes, services, instances, misses, rounds, fill, closedClients, genGOGC int
	rate                                                                     float64
	duration                                                                 time.Duration
	profile, mongoURI                                                        string
}

func main() {
	var o options
	serve := flag.String("serve", "", "internal: run a child (cluster ROOT_URL | echo) and print its addresses")
	flag.IntVar(&o.nodes, "nodes", 1000, "connected simulated worker nodes")
	flag.IntVar(&o.services, "services", 200, "services deployed for the queries")
	flag.IntVar(&o.instances, "instances", 3, "placed instances per service")
	flag.Float64Var(&o.rate, "rate", 5000, "open loop: table queries per second offered (hits)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "open-loop phase length")
	flag.IntVar(&o.closedClients, "closed-clients", 20, "clients of the closed-loop throughput phase (hits vs echo)")
	flag.IntVar(&o.misses, "misses", 300, "cache-miss queries (one per fresh service)")
	flag.IntVar(&o.rounds, "rounds", 20, "propagation rounds (each changes one instance at root)")
	flag.IntVar(&o.fill, "fill", 0, "also cache this many instances (10 per service) and report the cluster's RSS")
	flag.StringVar(&o.mongoURI, "mongo-uri", "", "start root on this MongoDB (a fresh database) instead of the embedded store: cache misses and propagation then include root's reads from it")
	flag.IntVar(&o.genGOGC, "gen-gogc", 400, "GOGC of this process (the simulated nodes, and root), not of the cluster's or echo broker's (Go's default, or the GOGC environment variable): each garbage collection here pauses all simulated nodes at once, which no real deployment does, and would be counted as the broker's latency (100: Go's default)")
	flag.StringVar(&o.profile, "profile", "", "write the cluster's CPU and allocation profiles of the whole run (cluster.cpu.prof, cluster.allocs.prof; `go tool pprof` reads them) to this directory")
	flag.Parse()
	var err error
	if *serve != "" {
		err = serveChild(*serve)
	} else {
		err = run(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "clusterload:", err)
		os.Exit(1)
	}
}

// child is a process this binary started with -serve.
type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	MQTT string `json:"mqtt"`
	REST string `json:"rest"`
}

// serveChild runs a cluster (arg "cluster ROOT_URL") or a bare echo broker (arg "echo")
// until its stdin closes, printing its addresses as one JSON line.
func serveChild(arg string) error {
	ctx := context.Background()
	if dir := os.Getenv(profileEnv); dir != "" {
		stop, err := profile(dir, "cluster")
		if err != nil {
			return err
		}
		defer stop()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var out child
	if rootURL, ok := strings.CutPrefix(arg, "cluster "); ok {
		srv, err := cluster.Start(ctx, cluster.Config{ID: "load", Name: "load", RootURL: rootURL,
			Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", Insecure: true, Spares: 1,
			// Capacity is measured: the closed-loop clients each publish more than the
			// per-connection flood bound (1000/s) a real node never reaches.
			Broker: broker.Config{PublishRate: -1},
			// Nor is its REST API limited: prefetch posts every job at once.
			RateLimit: 0,
			// The tool places instances at root itself, not through nodes: no node
			// announces them, so the sweep after a start must not fail them.
			NodeGrace: -1,
			Location:  geo.Point{Lat: 48.14, Lon: 11.58}, StaleAfter: time.Minute, Logger: log})
		if err != nil {
			return err
		}
		defer srv.Close()
		<-srv.Registered()
		out.MQTT, out.REST = srv.MQTTAddr.String(), srv.Addr.String()
	} else {
		b, err := broker.New(broker.Config{Listen: "127.0.0.1:0", AllowAnonymous: true, PublishRate: -1}, log, prometheus.NewRegistry())
		if err != nil {
			return err
		}
		reply := []byte(strings.Repeat("x", 600))
		// The same path a hit takes: the handler answers inline with a 600-byte result.
		err = b.Handle(func(id, _ string, _ []byte) {
			_ = b.Publish(mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult), reply)
		})
		if err != nil {
			return err
		}
		if err := b.Start(); err != nil {
			return err
		}
		defer b.Close()
		out.MQTT = b.Addr().String()
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, os.Stdin) // until the parent goes
	return nil
}

// profileEnv tells a cluster child where to write its profiles (-profile).
const profileEnv = "CLUSTERLOAD_PROFILE"

// profile starts a CPU profile into dir/name.cpu.prof; the returned function stops it and
// writes the allocations since the start into dir/name.allocs.prof.
func profile(dir, name string) (func(), error) {
	f, err := os.Create(filepath.Join(dir, name+".cpu.prof"))
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		a, err := os.Create(filepath.Join(dir, name+".allocs.prof"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "clusterload:", err)
			return
		}
		defer a.Close()
		if err := pprof.Lookup("allocs").WriteTo(a, 0); err != nil {
			fmt.Fprintln(os.Stderr, "clusterload:", err)
		}
	}, nil
}

func startChild(arg, profileDir string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-serve", arg)
	cmd.Stderr = os.Stderr
	if profileDir != "" {
		cmd.Env = append(os.Environ(), profileEnv+"="+profileDir)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, in: in}
	line, err := bufio.NewReader(outp).ReadBytes('\n')
	if err != nil {
		cmd.Process.Kill()
		return nil, fmt.Errorf("child %q: %w", arg, err)
	}
	return c, json.Unmarshal(line, c)
}

func (c *child) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// cpu returns the CPU time (user and system) the child used so far.
func (c *child) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces, in parentheses): utime and
	// stime are the 12th and 13th, in clock ticks (100 per second on Linux).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// selfCPU returns the CPU time this process (load generator and root) used so far.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter measures the CPU a child and this process use from its start.
type cpuMeter struct {
	c         *child
	from, gen time.Duration
	t0        time.Time
}

func meterCPU(c *child) cpuMeter {
	return cpuMeter{c: c, from: c.cpu(), gen: selfCPU(), t0: time.Now()}
}

// report says, for n queries answered since the start, how many cores the child (named
// what) and this process used, and the child's CPU per query.
func (m cpuMeter) report(what string, n int) string {
	c, g, wall := m.c.cpu()-m.from, selfCPU()-m.gen, time.Since(m.t0).Seconds()
	return fmt.Sprintf("%s %.2f cores (%.0f µs per query), load generator with root %.2f cores, of 2",
		what, c.Seconds()/wall, float64(c.Microseconds())/float64(max(1, n)), g.Seconds()/wall)
}

func (c *child) rss() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(v)[0])
			return fmt.Sprintf("%.1f MiB", float64(kb)/1024)
		}
	}
	return "?"
}

// loadNode is one simulated worker: an MQTT client that times its table queries. Hits
// are answered in order, so a FIFO of send times per node matches answers to queries.
type loadNode struct {
	id   string
	c    paho.Client
	mu   sync.Mutex
	sent []time.Time
	lat  *latencies
	// answered is signalled after each answer (the closed loop waits on it).
	answered chan struct{}
}

type latencies struct {
	mu  sync.Mutex
	d   []time.Duration
	bad atomic.Int64
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) take() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.d
	l.d = nil
	return d
}

func connect(addr, id string, lat *latencies) (*loadNode, error) {
	n := &loadNode{id: id, lat: lat, answered: make(chan struct{}, 1)}
	opts := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).SetCleanSession(true).
		SetKeepAlive(30 * time.Second).SetAutoReconnect(false).SetProtocolVersion(4).SetOrderMatters(false)
	n.c = paho.NewClient(opts)
	if tok := n.c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("connect %s: %v", id, tok.Error())
	}
	tok := n.c.Subscribe(mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult), 1, func(_ paho.Client, m paho.Message) {
		now := time.Now()
		n.mu.Lock()
		if len(n.sent) == 0 {
			n.mu.Unlock()
			return
		}
		t0 := n.sent[0]
		n.sent = n.sent[1:]
		n.mu.Unlock()
		if strings.Contains(string(m.Payload()), `"error"`) {
			n.lat.bad.Add(1)
		}
		n.lat.add(now.Sub(t0))
		select {
		case n.answered <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		return nil, fmt.Errorf("subscribe %s: %v", id, tok.Error())
	}
	return n, nil
}

// query publishes a table query stamped with when it was due (open loop) or sent.
func (n *loadNode) query(key string, due time.Time) {
	b, _ := json.Marshal(mqttapi.TableQuery{SName: key})
	n.mu.Lock()
	n.sent = append(n.sent, due)
	n.mu.Unlock()
	n.c.Publish(mqttapi.NodeTopic(n.id, mqttapi.SuffixTableQuery), 1, false, b)
}

func connectAll(addr, prefix string, count int, lat *latencies) ([]*loadNode, error) {
	nodes := make([]*loadNode, count)
	var wg sync.WaitGroup
	errs := make(chan error, count)
	sem := make(chan struct{}, 32)
	for i := range count {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			n, err := connect(addr, fmt.Sprintf("%s%d", prefix, i), lat)
			if err != nil {
				errs <- err
				return
			}
			nodes[i] = n
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return nodes, nil
}

func disconnectAll(nodes []*loadNode) {
	for _, n := range nodes {
		if n != nil {
			n.c.Disconnect(0)
		}
	}
}

// closedLoop runs each node as fast as its answers come for d: queries per second.
func closedLoop(nodes []*loadNode, keys []string, d time.Duration) float64 {
	var total atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				n.query(keys[rand.IntN(len(keys))], time.Now())
				select {
				case <-n.answered:
					total.Add(1)
				case <-time.After(5 * time.Second):
					return // unanswered: waitAnswers reports it
				}
			}
		}()
	}
	wg.Wait()
	return float64(total.Load()) / d.Seconds()
}

// openLoop offers rate queries per second spread over the nodes for d; latency counts
// from when each query was due, so a slow answer delays nothing else (no coordinated
// omission).
func openLoop(nodes []*loadNode, keys []string, rate float64, d time.Duration) {
	total := int(rate * d.Seconds())
	t0 := time.Now()
	for i := range total {
		due := t0.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		nodes[i%len(nodes)].query(keys[rand.IntN(len(keys))], due)
	}
}

func waitAnswers(nodes []*loadNode, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		pending := 0
		for _, n := range nodes {
			n.mu.Lock()
			pending += len(n.sent)
			n.mu.Unlock()
		}
		if pending == 0 {
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
	pending := 0
	for _, n := range nodes {
		n.mu.Lock()
		pending += len(n.sent)
		n.sent = nil
		n.mu.Unlock()
	}
	return pending
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(p*float64(len(d))))]
}

func summary(d []time.Duration) string {
	slices.Sort(d)
	if len(d) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("n=%d p50 %s p99 %s max %s", len(d), pct(d, .5).Round(time.Microsecond), pct(d, .99).Round(time.Microsecond), d[len(d)-1].Round(time.Microsecond))
}

func run(o options) error {
	ctx := context.Background()
	debug.SetGCPercent(o.genGOGC)
	dir, err := os.MkdirTemp("", "clusterload")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	plan := addrplan.Default()
	if o.fill > 0 {
		// The default plan's 10.30.0.0/16 holds about 65,000 Service and Instance IPs;
		// filling the cache with more instances needs a larger (test-only) pool.
		plan.ServiceV4 = netip.MustParsePrefix("10.0.0.0/12")
		plan.ReservedV4 = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/32"), netip.MustParsePrefix("10.15.255.0/24")}
		plan.GatewayV4 = netip.MustParseAddr("10.15.255.253")
	}
	rsrv, err := root.Start(ctx, root.Config{Listen: "127.0.0.1:0", DataDir: dir, Insecure: true, Plan: plan,
		MongoURI: o.mongoURI, MongoDB: fmt.Sprintf("clusterload_%d", time.Now().UnixNano())})
	if err != nil {
		return err
	}
	defer rsrv.Close()
	rootURL := "http://" + rsrv.Addr.String()
	rc, err := client.New(rootURL, "", nil)
	if err != nil {
		return err
	}
	fmt.Printf("clusterload: nodes=%d services=%d instances/service=%d (root in-process, cluster and echo broker in child processes, all on loopback; this process at GOGC %d)\n", o.nodes, o.services, o.instances, o.genGOGC)

	jobs, err := deploy(ctx, rc, "q", o.services, o.instances)
	if err != nil {
		return err
	}
	cl, err := startChild("cluster "+rootURL, o.profile)
	if err != nil {
		return err
	}
	defer cl.stop()
	echo, err := startChild("echo", "")
	if err != nil {
		return err
	}

	// 1. Closed-loop throughput: bare broker echo vs cache hits, same clients.
	lat := &latencies{}
	en, err := connectAll(echo.MQTT, "e", max(o.nodes, o.closedClients), lat)
	if err != nil {
		return err
	}
	echoRate := closedLoop(en[:o.closedClients], jobs, 5*time.Second)
	echoLat := summary(lat.take())
	// The same open loop as the cluster's below, against the bare echo: what the broker,
	// the clients and the machine cost before the cluster does anything.
	echoMeter := meterCPU(echo)
	openLoop(en[:o.nodes], jobs, o.rate, o.duration)
	echoLost := waitAnswers(en, 30*time.Second)
	ed := lat.take()
	echoCPU, echoOpen := echoMeter.report("echo broker", len(ed)), summary(ed)
	disconnectAll(en)
	echo.stop()

	qn, err := connectAll(cl.MQTT, "n", max(o.nodes, o.closedClients), lat)
	if err != nil {
		return err
	}
	defer disconnectAll(qn)
	for _, j := range jobs { // warm the cache
		qn[0].query(j, time.Now())
	}
	if p := waitAnswers(qn, 30*time.Second); p > 0 {
		return fmt.Errorf("%d warm-up queries unanswered", p)
	}
	lat.take()
	hitRate := closedLoop(qn[:o.closedClients], jobs, 5*time.Second)
	hitLat := summary(lat.take())
	fmt.Printf("closed loop, %d clients (requests at QoS 1, answers at QoS 0):\n  broker echo (600 B reply): %8.0f round trips/s  %s\n  table query, cache hit:    %8.0f queries/s      %s\n  ratio hit/echo: %.2f\n",
		o.closedClients, echoRate, echoLat, hitRate, hitLat, hitRate/echoRate)

	// 2. Open loop at the offered rate over every connected node.
	clMeter := meterCPU(cl)
	openLoop(qn[:o.nodes], jobs, o.rate, o.duration)
	lost := waitAnswers(qn, 30*time.Second)
	d := lat.take()
	fmt.Printf("open loop, %d connected nodes, %.0f queries/s offered for %s:\n  broker echo: %s; unanswered %d\n  cache hits:  %s; unanswered %d, error answers %d\n",
		o.nodes, o.rate, o.duration, echoOpen, echoLost, summary(d), lost, lat.bad.Swap(0))
	fmt.Printf("  CPU meanwhile: %s\n                 %s\n", echoCPU, clMeter.report("cluster", len(d)))

	// 3. Misses: fresh services, each queried once (the cluster asks root).
	fresh, err := deploy(ctx, rc, "m", o.misses, o.instances)
	if err != nil {
		return err
	}
	missRate := 200.0
	openLoop(qn[:min(len(qn), 100)], fresh, missRate, time.Duration(float64(len(fresh))/missRate*float64(time.Second)))
	_ = waitAnswers(qn, 30*time.Second)
	fmt.Printf("cache misses (cluster -> root), %.0f/s offered: %s\n", missRate, summary(lat.take()))

	// 4. Propagation to every node.
	if err := propagation(ctx, rc, qn[:o.nodes], jobs[0], o.rounds); err != nil {
		return err
	}

	// 5. Memory holding -fill instances.
	if o.fill > 0 {
		fmt.Printf("cluster RSS before fill: %s\n", cl.rss())
		filled, err := deploy(ctx, rc, "f", o.fill/10, 10)
		if err != nil {
			return err
		}
		if err := prefetch(ctx, cl.REST, filled); err != nil {
			return err
		}
		fmt.Printf("cluster RSS holding %d more cached instances (%d services): %s\n", len(filled)*10, len(filled), cl.rss())
	}
	return nil
}

// deploy creates count services named <prefix>N with n placed, located instances each.
func deploy(ctx context.Context, rc *client.Client, prefix string, count, n int) ([]string, error) {
	jobs := make([]string, count)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	sem := make(chan struct{}, 32)
	run := fmt.Sprint(time.Now().UnixNano() % 1e6)
	for i := range count {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			err := func() error {
				s, err := rc.CreateService(ctx, api.ServiceRequest{App: prefix + run, AppNS: "load", Service: fmt.Sprint("s", i), ServiceNS: "x"})
				if err != nil {
					return err
				}
				jobs[i] = s.JobName
				for k := range n {
					in, err := rc.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "load"})
					if err != nil {
						return err
					}
					ns := netip.AddrFrom4([4]byte{10, 18, byte(k), 2})
					loc := geo.Point{Lat: 40 + float64(k), Lon: 10}
					if _, err := rc.PlaceInstance(ctx, s.ID, in.Number, api.Placement{Status: "running", NamespaceIP: ns,
						HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103, Location: &loc}); err != nil {
						return err
					}
				}
				return nil
			}()
			if err != nil {
				select {
				case errs <- err:
				default:
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, fmt.Errorf("deploy: %w", err)
	default:
	}
	return jobs, nil
}

// prefetch makes the cluster cache every job (the orchestrator's POST /api/net/deployment).
func prefetch(ctx context.Context, rest string, jobs []string) error {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var failed atomic.Int64
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+rest+"/api/net/deployment", strings.NewReader(`{"job_name":"`+j+`"}`))
			resp, err := http.DefaultClient.Do(req)
			if err != nil || resp.StatusCode != 200 {
				failed.Add(1)
			}
			if resp != nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("prefetch: %d jobs failed", f)
	}
	return nil
}

// propagation: every node queries job and listens on its updates topic; each round moves
// instance 0 to a new port at root and times each node's receipt of the push carrying it.
func propagation(ctx context.Context, rc *client.Client, nodes []*loadNode, job string, rounds int) error {
	var (
		mu       sync.Mutex
		wantPort int
		t0       time.Time
		got      = map[string]bool{}
		lat      []time.Duration
		fromRoot []time.Duration // from root's change (the push's changed_at), as PERFORMANCE.md defines it
	)
	topic := mqttapi.UpdatesTopic(job)
	for _, n := range nodes {
		tok := n.c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
			now := time.Now()
			var u mqttapi.UpdatesAvailable
			if json.Unmarshal(m.Payload(), &u) != nil || u.Table == nil {
				return
			}
			for _, in := range u.Table.InstanceList {
				if in.InstanceNumber != 0 {
					continue
				}
				mu.Lock()
				if in.HostPort == wantPort && !got[n.id] {
					got[n.id] = true
					lat = append(lat, now.Sub(t0))
					if !u.ChangedAt.IsZero() {
						fromRoot = append(fromRoot, now.Sub(u.ChangedAt))
					}
				}
				mu.Unlock()
			}
		})
		if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			return fmt.Errorf("subscribe %s: %v", topic, tok.Error())
		}
		n.query(job, time.Now()) // interest, as a node resolving the job would have
	}
	_ = waitAnswers(nodes, 30*time.Second)
	e, err := rc.Resolve(ctx, job, "")
	if err != nil {
		return err
	}
	in := e.Instances[0]
	missed := 0
	for r := range rounds {
		mu.Lock()
		wantPort, t0 = 51000+r, time.Now()
		clear(got)
		mu.Unlock()
		if _, err := rc.PlaceInstance(ctx, job, in.Number, api.Placement{Status: "running", NamespaceIP: in.NamespaceIP,
			HostIP: in.HostIP, HostPort: 51000 + r, Location: in.Location}); err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			n := len(got)
			mu.Unlock()
			if n == len(nodes) || time.Now().After(deadline) {
				missed += len(nodes) - n
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	fmt.Printf("propagation (instance change at root -> push at each of %d interested nodes), %d rounds:\n  from root's change (the push's changed_at): %s\n  from the tool's call (adds root's write):   %s; missed %d\n",
		len(nodes), rounds, summary(fromRoot), summary(lat), missed)
	if missed > 0 {
		return errors.New("some nodes missed pushes")
	}
	return nil
}
