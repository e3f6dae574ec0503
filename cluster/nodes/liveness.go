package nodes

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/proto/api"
)

// liveness keeps, for each node, the instances it announced running (deployed, and
// again after every reconnection), and reports them failed to root when the node
// disconnects (cleanly, or silent past its keepalive) and stays away longer than the
// grace. Its connection is the node's heartbeat: the broker drops a node silent for
// 1.5 × its keepalive.
//
// Each failure names the host the node reported, so root ignores it when the instance
// has moved meanwhile, and the revision root gave the node's last report: when anything
// placed the instance since (the node came back through another replica of this
// cluster), root ignores it too.
type liveness struct {
	ctx       context.Context // ends when the cluster stops: its own disconnects are no deaths
	grace     time.Duration   // negative: failures are never reported
	clusterID string
	present   func(nodeID string) bool
	enqueue   func(report.Report)
	// died is told the instances of each node reported dead, after their reports.
	died func(node string, refs []instanceRef)
	log  *slog.Logger

	mu    sync.Mutex
	nodes map[string]*nodeRecord

	deaths prometheus.Counter
	failed *prometheus.CounterVec // cause: node_death, restart_sweep
	away   prometheus.GaugeFunc
}

// instanceRef names an instance: its job and number.
type instanceRef struct {
	job    string
	number int
}

// announced is an instance a node said it runs.
type announced struct {
	host     netip.Addr
	hostPort int
	// rev is the revision root gave the latest report of it that was delivered; pending
	// counts the reports of it still queued for root. A failure is conditional on rev
	// only when none is pending: otherwise it queues behind them and must apply.
	rev     uint64
	pending int
}

type nodeRecord struct {
	runs map[instanceRef]*announced
	// away runs while the node is disconnected, within its grace; gen tells a timer that
	// fired after it was replaced or stopped from the current one.
	away *time.Timer
	gen  uint64
}

func newLiveness(ctx context.Context, grace time.Duration, clusterID string, present func(string) bool,
	enqueue func(report.Report), died func(string, []instanceRef), log *slog.Logger) *liveness {
	l := &liveness{ctx: ctx, grace: grace, clusterID: clusterID, present: present, enqueue: enqueue, died: died, log: log, nodes: map[string]*nodeRecord{}}
	l.deaths = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "node_deaths_total",
		Help: "Worker nodes that stayed disconnected longer than the grace (--node-grace); their instances were reported failed."})
	l.failed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "instances_reported_failed_total",
		Help: "Instances the cluster reported failed to root, by cause: node_death (their node stayed away), restart_sweep (no node announced them after a cluster restart)."}, []string{"cause"})
	l.failed.WithLabelValues(causeDeath)
	l.failed.WithLabelValues(causeSweep)
	l.away = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "semnet", Subsystem: "cluster", Name: "nodes_away",
		Help: "Worker nodes disconnected and still within their grace."}, func() float64 { return float64(l.awayCount()) })
	return l
}

const (
	causeDeath = "node_death"
	causeSweep = "restart_sweep"
)

func (l *liveness) collectors() []prometheus.Collector {
	return []prometheus.Collector{l.deaths, l.failed, l.away}
}

func (l *liveness) awayCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.nodes {
		if r.away != nil {
			n++
		}
	}
	return n
}

// record returns node's record, creating it. Callers hold mu.
func (l *liveness) record(node string) *nodeRecord {
	r := l.nodes[node]
	if r == nil {
		r = &nodeRecord{runs: map[instanceRef]*announced{}}
		l.nodes[node] = r
	}
	return r
}

// back stops the node's grace timer: a message from it proves it is connected. Callers
// hold mu.
func (r *nodeRecord) back() {
	if r.away != nil {
		r.away.Stop()
		r.away = nil
		r.gen++
	}
}

// running records that node runs the instance on host:port and returns whether it is new
// for the node (a re-announce is not), and the callback for the report's delivery.
func (l *liveness) running(node, job string, number int, host netip.Addr, port int) (fresh bool, done func(api.Instance, error)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.record(node)
	r.back()
	ref := instanceRef{job, number}
	a := r.runs[ref]
	if a == nil {
		a = &announced{}
		r.runs[ref] = a
		fresh = true
	}
	a.host, a.hostPort = host, port
	a.pending++
	// The callback holds a, not the map slot: a report delivered after the instance was
	// undeployed (and maybe deployed again) updates only the record it was sent for.
	return fresh, func(in api.Instance, err error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		a.pending--
		if err == nil {
			a.rev = in.Revision
		}
	}
}

// stopped forgets an instance node no longer runs (undeployed, or failed by its own
// report); it returns whether the node had announced it.
func (l *liveness) stopped(node, job string, number int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.nodes[node]
	if r == nil {
		return false
	}
	r.back()
	ref := instanceRef{job, number}
	_, had := r.runs[ref]
	delete(r.runs, ref)
	return had
}

// gone starts the grace of a node that disconnected (with a zero grace, its instances
// are reported at once).
func (l *liveness) gone(node string) {
	if l.grace < 0 || l.ctx.Err() != nil {
		return
	}
	l.mu.Lock()
	r := l.record(node)
	r.back()
	gen := r.gen
	if l.grace == 0 {
		l.mu.Unlock()
		l.expire(node, gen)
		return
	}
	r.away = time.AfterFunc(l.grace, func() { l.expire(node, gen) })
	l.mu.Unlock()
}

// expire reports the instances of a node whose grace ended failed, unless the node came
// back (it is connected again, or a message from it stopped the timer).
func (l *liveness) expire(node string, gen uint64) {
	if l.ctx.Err() != nil {
		return
	}
	l.mu.Lock()
	r := l.nodes[node]
	if r == nil || r.gen != gen {
		l.mu.Unlock()
		return
	}
	r.away = nil
	r.gen++
	// Connected again, but not a word yet: its re-announce is on the way.
	if l.present != nil && l.present(node) {
		l.mu.Unlock()
		return
	}
	delete(l.nodes, node)
	reps := make([]report.Report, 0, len(r.runs))
	refs := make([]instanceRef, 0, len(r.runs))
	for ref, a := range r.runs {
		refs = append(refs, ref)
		reps = append(reps, l.failure(node, ref, a.host, a.hostPort, a.conditionalOn()))
	}
	l.mu.Unlock()
	l.deaths.Inc()
	l.failed.WithLabelValues(causeDeath).Add(float64(len(reps)))
	for _, rep := range reps {
		l.enqueue(rep)
	}
	if len(reps) > 0 {
		l.log.Warn("worker node gone longer than its grace; its instances are reported failed", "node", node, "grace", l.grace, "instances", len(reps))
	} else {
		l.log.Info("worker node gone longer than its grace; it ran no instances", "node", node, "grace", l.grace)
	}
	if l.died != nil {
		l.died(node, refs)
	}
}

// conditionalOn is the revision a failure of a should apply to: the one root gave its
// last report, unless a report is still queued ahead of the failure (zero: apply).
func (a *announced) conditionalOn() uint64 {
	if a.pending > 0 {
		return 0
	}
	return a.rev
}

func (l *liveness) failure(node string, ref instanceRef, host netip.Addr, port int, rev uint64) report.Report {
	return report.Report{Node: node, Job: ref.job, Instance: ref.number, Placement: api.Placement{
		Status: "failed", ClusterID: l.clusterID, HostIP: host, HostPort: port, IfRevision: rev,
	}}
}

// announcedBy reports whether any node (connected, or within its grace) announced the
// instance.
func (l *liveness) announcedBy(ref instanceRef) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.nodes {
		if _, ok := r.runs[ref]; ok {
			return true
		}
	}
	return false
}

// Inventory is what the restart sweep reads from root (a *client.Client).
type Inventory interface {
	ServicePage(ctx context.Context, after string, limit int) (api.ServiceList, error)
	Instances(ctx context.Context, service string) ([]api.Instance, error)
}

// Sweep reports failed every instance root has running in this cluster that no node has
// announced: run once after a restart, when the nodes that are alive have reconnected
// and re-announced theirs (the grace after the start), it catches nodes that died while
// the cluster was down and were never seen to disconnect. Each failure is conditional on
// the revision read, so a node re-announcing meanwhile wins. It costs one request per
// service. It returns how many instances it reported; an error leaves the rest for a
// retry (reports already queued are not repeated: their revision has changed).
func (s *Server) Sweep(ctx context.Context, root Inventory) (int, error) {
	if s.live.grace < 0 {
		return 0, nil
	}
	n := 0
	after := ""
	for {
		page, err := root.ServicePage(ctx, after, 500)
		if err != nil {
			return n, fmt.Errorf("restart sweep: list services: %w", err)
		}
		for _, svc := range page.Items {
			// The gateway service too: a gateway node that registered again since the
			// restart is announced like an instance (GatewayRunning).
			ins, err := root.Instances(ctx, svc.ID)
			if err != nil {
				return n, fmt.Errorf("restart sweep: instances of %s: %w", svc.JobName, err)
			}
			for _, in := range ins {
				if in.ClusterID != s.opt.ClusterID || in.Status != "running" || !in.HostIP.IsValid() ||
					s.live.announcedBy(instanceRef{svc.JobName, in.Number}) {
					continue
				}
				s.reports.Enqueue(s.live.failure("", instanceRef{svc.JobName, in.Number}, in.HostIP, in.HostPort, in.Revision))
				s.live.failed.WithLabelValues(causeSweep).Inc()
				s.log.Warn("no node announced an instance root has running here; reported failed", "job", svc.JobName, "instance", in.Number, "host", netip.AddrPortFrom(in.HostIP, uint16(in.HostPort)))
				n++
			}
		}
		if page.Next == "" {
			return n, nil
		}
		after = page.Next
	}
}
