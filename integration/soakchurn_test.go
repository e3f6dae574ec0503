package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// The soak's tooling: what a deployment system does to the platform, recorded in a
// model (soak.jobs) the final check compares root, clusters and nodes against.

// seed deploys the services the run starts with.
func (s *soak) seed() {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4) // FerretDB (SQLite) serializes writes: more only queue
	for range *soakSvcs {
		wg.Add(1)
		sem <- struct{}{}
		go func() { defer wg.Done(); defer func() { <-sem }(); s.deploy() }()
	}
	wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.live) < *soakSvcs*9/10 {
		s.t.Fatalf("only %d of %d services deployed before the run", len(s.live), *soakSvcs)
	}
}

// churn runs -soak-churn operations per second until ctx ends.
func (s *soak) churn(ctx context.Context) {
	tick := time.NewTicker(time.Duration(float64(time.Second) / *soakChurn))
	defer tick.Stop()
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case sem <- struct{}{}:
		default: // 16 operations still waiting (root down): this one is skipped
			s.series.count("churn_skipped", time.Now())
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			switch r := rand.IntN(100); {
			case r < 20:
				s.deploy()
			case r < 45:
				s.withJob(s.scaleUp)
			case r < 65:
				s.withJob(s.scaleDown)
			case r < 85:
				s.withJob(s.migrate)
			default:
				s.withJob(s.undeploy)
			}
		}()
	}
}

// withJob runs op on a random live job no other operation holds.
func (s *soak) withJob(op func(*soakJob)) {
	for range 5 {
		s.mu.Lock()
		var j *soakJob
		if len(s.live) > 0 {
			j = s.jobs[s.live[rand.IntN(len(s.live))]]
		}
		s.mu.Unlock()
		if j == nil {
			return
		}
		if !j.mu.TryLock() {
			continue
		}
		if !j.deleted && !j.undeploying {
			op(j)
		}
		j.mu.Unlock()
		return
	}
}

// liveNode picks a node that is not dead, other than not (-1: any).
func (s *soak) liveNode(not int) *soakNode {
	for {
		n := s.nodes[rand.IntN(len(s.nodes))]
		if !n.dead.Load() && n.i != not {
			return n
		}
	}
}

// deploy creates a service with one to three instances.
func (s *soak) deploy() {
	s.mu.Lock()
	s.seq++
	name := fmt.Sprintf("s%d", s.seq)
	s.mu.Unlock()
	req := api.ServiceRequest{App: "soak", AppNS: "load", Service: name, ServiceNS: "x"}
	job := "soak.load." + name + ".x"
	var svc api.Service
	unc, err := s.rest("create service", job, func(ctx context.Context, rc *client.Client) (err error) {
		svc, err = rc.CreateService(ctx, req)
		return err
	})
	// The name is new: a conflict means an earlier attempt created it without its
	// answer reaching us (none came, or root gave up waiting on the store after writing).
	if errors.Is(err, client.ErrConflict) {
		_, err = s.rest("read service", job, func(ctx context.Context, rc *client.Client) (err error) {
			svc, err = rc.Service(ctx, job)
			return err
		})
	}
	if err != nil {
		if unc {
			s.mu.Lock()
			s.uncertain[job] = true
			s.mu.Unlock()
		}
		return
	}
	j := &soakJob{svc: svc, inst: map[int]soakInst{}}
	j.mu.Lock()
	defer j.mu.Unlock()
	s.mu.Lock()
	s.jobs[job] = j
	s.live = append(s.live, job)
	s.mu.Unlock()
	for range 1 + rand.IntN(3) {
		s.scaleUp(j)
	}
}

// scaleUp creates an instance at root and starts it on a random node.
func (s *soak) scaleUp(j *soakJob) {
	n := s.liveNode(-1)
	var in api.Instance
	unc, err := s.rest("create instance", j.svc.JobName, func(ctx context.Context, rc *client.Client) (err error) {
		in, err = rc.CreateInstance(ctx, j.svc.JobName, api.InstanceRequest{ClusterID: n.cluster})
		return err
	})
	if unc {
		j.dirty = true
	}
	if err != nil {
		return
	}
	s.place(j, in.Number, n)
}

// place starts instance num of j on node n: the node reports it (and re-announces it
// after a reconnection, so it counts as placed even when the report fails now).
func (s *soak) place(j *soakJob, num int, n *soakNode) {
	t0 := time.Now()
	v4, v6, err := n.sim.Deploy(s.ctx, j.svc.JobName, num)
	if err != nil {
		s.series.count("report_failed", t0)
	}
	j.inst[num] = soakInst{node: n.i, v4: v4, v6: v6}
	s.exp.expect(s, j, t0, func(tab *table.Table) bool {
		return slices.ContainsFunc(tab.Candidates(j.svc.RRIP), func(c table.Target) bool {
			return c.InstanceNumber == num && c.NamespaceIP == v4 && c.Endpoint.Port() == uint16(n.port)
		})
	})
}

// pickInstance returns a random instance of j on a live node.
func (s *soak) pickInstance(j *soakJob) (int, bool) {
	var nums []int
	for num, in := range j.inst {
		if !s.nodes[in.node].dead.Load() {
			nums = append(nums, num)
		}
	}
	if len(nums) == 0 {
		return 0, false
	}
	return nums[rand.IntN(len(nums))], true
}

// scaleDown stops an instance on its node and deletes it at root, keeping at least one.
func (s *soak) scaleDown(j *soakJob) {
	num, ok := s.pickInstance(j)
	if !ok || len(j.inst) < 2 {
		return
	}
	t0 := time.Now()
	if err := s.nodes[j.inst[num].node].sim.Undeploy(s.ctx, j.svc.JobName, num); err != nil {
		s.series.count("report_failed", t0)
	}
	_, err := s.rest("delete instance", j.svc.JobName, func(ctx context.Context, rc *client.Client) error {
		return rc.DeleteInstance(ctx, j.svc.JobName, num)
	})
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		j.dirty = true // it stays at root, stopped; the cleanup deletes it
	}
	delete(j.inst, num)
	s.exp.expect(s, j, t0, func(tab *table.Table) bool {
		return !slices.ContainsFunc(tab.Candidates(j.svc.RRIP), func(c table.Target) bool { return c.InstanceNumber == num })
	})
}

// migrate moves an instance to another node: started there, then stopped where it was.
func (s *soak) migrate(j *soakJob) {
	num, ok := s.pickInstance(j)
	if !ok {
		return
	}
	from := s.nodes[j.inst[num].node]
	to := s.liveNode(from.i)
	s.place(j, num, to)
	if err := from.sim.Undeploy(s.ctx, j.svc.JobName, num); err != nil {
		s.series.count("report_failed", time.Now())
	}
}

// undeploy stops every instance and deletes the service.
func (s *soak) undeploy(j *soakJob) {
	t0 := time.Now()
	for num, in := range j.inst {
		if n := s.nodes[in.node]; !n.dead.Load() {
			if err := n.sim.Undeploy(s.ctx, j.svc.JobName, num); err != nil {
				s.series.count("report_failed", t0)
			}
		}
	}
	unc, err := s.rest("delete service", j.svc.JobName, func(ctx context.Context, rc *client.Client) error {
		return rc.DeleteService(ctx, j.svc.JobName, true)
	})
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		// Not deleted, or deleted without an answer: the cleanup finds out. Its nodes
		// have stopped its instances either way.
		j.dirty = j.dirty || unc
		j.undeploying = true
		return
	}
	s.deleted(j, t0)
}

// deleted records j as gone.
func (s *soak) deleted(j *soakJob, t0 time.Time) {
	j.deleted = true
	clear(j.inst)
	s.mu.Lock()
	if i := slices.Index(s.live, j.svc.JobName); i >= 0 {
		s.live = slices.Delete(s.live, i, i+1)
	}
	s.mu.Unlock()
	s.exp.expect(s, j, t0, func(tab *table.Table) bool { return len(tab.Candidates(j.svc.RRIP)) == 0 })
}

// cleanup is the tooling's own repair after the run: instances an unanswered create may
// have made, and stopped ones whose delete failed, are deleted.
func (s *soak) cleanup() {
	s.mu.Lock()
	jobs := make([]*soakJob, 0, len(s.jobs))
	for _, j := range s.jobs {
		jobs = append(jobs, j)
	}
	s.mu.Unlock()
	for _, j := range jobs {
		j.mu.Lock()
		for num, in := range j.inst { // placed on a node as it died
			if s.nodes[in.node].dead.Load() && !j.deleted {
				s.place(j, num, s.liveNode(-1))
			}
		}
		if j.undeploying && !j.deleted { // its delete failed: try again
			_, err := s.rest("delete service", j.svc.JobName, func(ctx context.Context, rc *client.Client) error {
				return rc.DeleteService(ctx, j.svc.JobName, true)
			})
			if err == nil || errors.Is(err, client.ErrNotFound) {
				s.deleted(j, time.Now())
			}
		}
		if j.dirty && !j.deleted {
			var ins []api.Instance
			if _, err := s.rest("list instances", j.svc.JobName, func(ctx context.Context, rc *client.Client) (err error) {
				ins, err = rc.Instances(ctx, j.svc.JobName)
				return err
			}); err == nil {
				for _, in := range ins {
					if _, ok := j.inst[in.Number]; !ok {
						s.rest("delete instance", j.svc.JobName+" (stray)", func(ctx context.Context, rc *client.Client) error {
							return rc.DeleteInstance(ctx, j.svc.JobName, in.Number)
						})
					}
				}
				j.dirty = false
			}
		}
		j.mu.Unlock()
	}
}

// expectation is a change every node following a job when it was made must see.
type expectation struct {
	t0      time.Time
	check   func(*table.Table) bool
	waiting map[int]bool // node indexes
}

// expectations times propagation: from a tooling operation to each following node's
// table showing it.
type expectations struct {
	mu         sync.Mutex
	jobs       map[string]*expectation // the latest per job: a later change supersedes
	superseded int
}

func newExpectations() *expectations { return &expectations{jobs: map[string]*expectation{}} }

func (e *expectations) expect(s *soak, j *soakJob, t0 time.Time, check func(*table.Table) bool) {
	w := map[int]bool{}
	for _, n := range s.nodes {
		if !n.dead.Load() && n.follows(j.svc.JobName) {
			w[n.i] = true
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if old := e.jobs[j.svc.JobName]; old != nil && len(old.waiting) > 0 {
		e.superseded += len(old.waiting)
	}
	x := &expectation{t0: t0, check: check, waiting: w}
	e.jobs[j.svc.JobName] = x
	for i := range w {
		if check(s.nodes[i].tab) { // its answer or push came first
			s.series.add("propagation", t0, time.Since(t0))
			delete(w, i)
		}
	}
}

// applied is called after node n applied an entry (or deletion) of job.
func (e *expectations) applied(s *soak, n *soakNode, job string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	x := e.jobs[job]
	if x == nil || !x.waiting[n.i] || !x.check(n.tab) {
		return
	}
	s.series.add("propagation", x.t0, time.Since(x.t0))
	delete(x.waiting, n.i)
}

// unfollowed is called when node n stops following job (or dies).
func (e *expectations) unfollowed(n *soakNode, job string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if x := e.jobs[job]; x != nil {
		delete(x.waiting, n.i)
	}
}

// missing counts nodes still waiting for a change, and describes up to five of them
// (job, node, when the change was made into the run that began at start).
func (e *expectations) missing(start time.Time) (int, []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	m := 0
	var some []string
	for job, x := range e.jobs {
		m += len(x.waiting)
		for i := range x.waiting {
			if len(some) < 5 {
				some = append(some, fmt.Sprintf("%s on node %d, changed at %s", job, i, x.t0.Sub(start).Round(time.Millisecond)))
			}
		}
	}
	return m, some
}
