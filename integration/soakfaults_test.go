package integration

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// faults injects the soak's faults one after another, spread over the middle of the run
// (from 10% to 85% of d), each in the test's goroutine. The link cut lasts -partition
// (60 s), at most a tenth of the run.
func (s *soak) faults(d time.Duration) {
	cut := min(*partitionFor, d/10)
	list := []struct {
		name string
		run  func() string
	}{
		{"root A killed (kill -9), restarted 3 s later", func() string { return s.killRoot(0) }},
		{"MongoDB killed, restarted 5 s later", s.killMongo},
		{"Redis (c2's cache) restarted empty", s.restartRedis},
		{fmt.Sprintf("root's link to both clusters down for %s", cut), func() string { return s.cutRoot(cut) }},
		{"cluster c2 killed (kill -9), restarted 3 s later", s.killCluster},
		{"1% of the nodes die (instances moved elsewhere once failed)", s.killNodes},
		{"root B killed (kill -9), restarted 3 s later", func() string { return s.killRoot(1) }},
	}
	for i, f := range list {
		at := s.t0.Add(time.Duration(float64(d) * (0.1 + 0.75*float64(i)/float64(len(list)))))
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		start := time.Since(s.t0)
		note := f.run()
		s.mu.Lock()
		s.events = append(s.events, soakEvent{name: f.name, start: start, end: time.Since(s.t0), note: note})
		s.mu.Unlock()
		s.t.Logf("soak: %s at %s: %s", f.name, start.Round(time.Second), note)
	}
}

func (s *soak) killRoot(k int) string {
	r := s.roots[k]
	r.kill()
	time.Sleep(3 * time.Second)
	t0 := time.Now()
	launches, err := r.launch()
	if err != nil { // the run goes on with one root: the check shows what that cost
		s.t.Errorf("soak: %v", err)
		return fmt.Sprintf("NOT ready again within 2 min (%d launches): %v", launches, err)
	}
	return fmt.Sprintf("ready again %s after its restart (%d launches)", time.Since(t0).Round(time.Millisecond), launches)
}

// killMongo kills FerretDB for 5 s, watching what root's /readyz says meanwhile.
func (s *soak) killMongo() string {
	s.ferret.Kill()
	down := time.Now()
	codes := map[int]int{}
	for time.Since(down) < 5*time.Second {
		codes[readyz(s.roots[0].addr)]++
		time.Sleep(250 * time.Millisecond)
	}
	s.ferret.Start()
	up := time.Now()
	for readyz(s.roots[0].addr) != 200 && time.Since(up) < time.Minute {
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("root A /readyz during the outage: %v (status: polls); ready %s after MongoDB's restart",
		codes, time.Since(up).Round(time.Millisecond))
}

func (s *soak) restartRedis() string {
	s.redis.Kill()
	time.Sleep(time.Second)
	s.redis.Start()
	return "down 1 s; c2 answered from root meanwhile and refilled its cache"
}

func (s *soak) cutRoot(d time.Duration) string {
	s.proxy.Cut()
	time.Sleep(d)
	s.proxy.Restore()
	return "cut, then restored"
}

// killCluster kills c2 for 3 s and times its nodes' return.
func (s *soak) killCluster() string {
	c := s.cls[1]
	c.kill()
	time.Sleep(3 * time.Second)
	t0 := time.Now()
	c.start()
	ready := time.Since(t0)
	for time.Since(t0) < time.Minute {
		back := true
		for _, n := range s.nodes {
			if n.cluster == "c2" && !n.dead.Load() && !n.sim.Connected() {
				back = false
				break
			}
		}
		if back {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Sprintf("ready %s after its restart; every c2 node reconnected %s after it", ready.Round(time.Millisecond),
		time.Since(t0).Round(time.Millisecond))
}

// killNodes takes 1% of the nodes (at least 2) away for good, waits until root reports
// their instances failed, and moves those instances to live nodes, as an orchestrator
// would. Half of them (rounded up) are nodes that run instances, when there are such,
// so the failover is exercised whatever the churn left where; the others are a fixed,
// spread-out choice across both clusters.
func (s *soak) killNodes() string {
	type victim struct {
		j         *soakJob
		num, node int
	}
	s.mu.Lock()
	jobs := make([]*soakJob, 0, len(s.jobs))
	for _, j := range s.jobs {
		jobs = append(jobs, j)
	}
	s.mu.Unlock()
	// Lock every job to see its instances, and kill the nodes while none moves:
	// operations on the jobs wait meanwhile. (Locking first, since taking the locks waits
	// for the operations under way, seconds each on a slow root: counted after the
	// deaths, that wait passed for the failures' delay.) Churn locks one job at a time,
	// so taking them all in turn cannot deadlock.
	holds := map[int]bool{}
	for _, j := range jobs {
		j.mu.Lock()
		for _, in := range j.inst {
			if !j.deleted {
				holds[in.node] = true
			}
		}
	}
	want := max(2, len(s.nodes)/100)
	var dead []*soakNode
	chosen := map[int]bool{}
	pick := func(ok func(n *soakNode) bool, upTo int) {
		for _, n := range s.nodes {
			if len(dead) >= upTo {
				return
			}
			if !chosen[n.i] && !n.dead.Load() && ok(n) {
				chosen[n.i] = true
				dead = append(dead, n)
			}
		}
	}
	half := (want + 1) / 2
	pick(func(n *soakNode) bool { return holds[n.i] && n.cluster == "c1" }, (half+1)/2)
	pick(func(n *soakNode) bool { return holds[n.i] && n.cluster == "c2" }, half)
	pick(func(n *soakNode) bool { return holds[n.i] }, half) // when a cluster had too few
	pick(func(n *soakNode) bool { return n.i%7 == 3 }, want)
	var victims []victim
	for _, j := range jobs {
		for num, in := range j.inst {
			if chosen[in.node] && !j.deleted {
				victims = append(victims, victim{j, num, in.node})
			}
		}
	}
	t0 := time.Now()
	for _, n := range dead {
		n.dead.Store(true)
		n.sim.Close()
		n.mu.Lock()
		follow := n.follow
		n.mu.Unlock()
		for _, job := range follow {
			s.exp.unfollowed(n, job)
		}
	}
	for _, j := range jobs {
		j.mu.Unlock()
	}
	// The failures queue at the clusters behind the reports already waiting for root: on
	// a store slower than the load, that backlog, not the grace, sets the time.
	backlog := s.pendingReports()
	failedIn := time.Duration(-1)
	var still string // the first victim root still offers, as root has it
	for time.Since(t0) < soakGrace+soakDeathWait {
		all := true
		for _, v := range victims {
			var in api.Instance
			_, err := s.rest("read instance", v.j.svc.JobName, func(ctx context.Context, rc *client.Client) (err error) {
				in, err = rc.Instance(ctx, v.j.svc.JobName, v.num)
				return err
			})
			// Out of every choice: not running where the dead node was (failed, or
			// moved, or gone).
			if err == nil && in.Status == "running" && in.HostPort == s.nodes[v.node].port {
				all = false
				still = fmt.Sprintf("%s instance %d: %+v", v.j.svc.JobName, v.num, in)
				break
			}
		}
		if all {
			failedIn = time.Since(t0)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	moved := 0
	for _, v := range victims {
		v.j.mu.Lock()
		if in, ok := v.j.inst[v.num]; ok && !v.j.deleted && s.nodes[in.node].dead.Load() {
			s.place(v.j, v.num, s.liveNode(-1))
			moved++
		}
		v.j.mu.Unlock()
	}
	if failedIn < 0 {
		s.t.Errorf("soak: the instances of %d dead nodes were not all failed at root within %s (%s reports were pending at the clusters when they died); still offered: %s",
			len(dead), soakGrace+soakDeathWait, backlog, still)
		return fmt.Sprintf("%d nodes died; NOT all their %d instances failed at root in time (%s reports pending at the clusters then)", len(dead), len(victims), backlog)
	}
	return fmt.Sprintf("%d nodes died holding %d instances: all out of root's choices %s later (grace %s; %s reports pending at the clusters then); %d moved to live nodes",
		len(dead), len(victims), failedIn.Round(time.Millisecond), soakGrace, backlog, moved)
}

// soakDeathWait is how long after the grace the dead nodes' instances may take to fail at
// root: their failures wait behind the reports queued before them.
const soakDeathWait = 3 * time.Minute

// pendingReports returns the status reports waiting for root at each cluster, from their
// metrics ("c1 12, c2 40").
func (s *soak) pendingReports() string { return s.clusterMetric("semnet_cluster_reports_pending") }

// clusterMetric returns the value of one series at each cluster, the series of family
// name whose labels include the label pairs given ("c1 12, c2 40"; counters count since
// each one's last start).
func (s *soak) clusterMetric(name string, labelPairs ...string) string {
	var out []string
	for i, c := range s.cls {
		v := "?"
		for _, m := range c.metrics()[name].GetMetric() {
			if hasLabels(m, labelPairs...) {
				v = strconv.FormatFloat(value(m), 'f', -1, 64)
			}
		}
		out = append(out, fmt.Sprintf("c%d %s", i+1, v))
	}
	return strings.Join(out, ", ")
}

// queryOutcomes returns, for each cluster, the shares of the table queries it answered
// from its cache, from root (misses), with "unknown service" (most from its short memory
// of names root did not know) and with an error (semnet_cluster_table_queries_total,
// since its last start): the answers' latency is a cache hit's only for the first.
func (s *soak) queryOutcomes() string {
	var out []string
	for i, c := range s.cls {
		n, by := 0.0, map[string]float64{}
		for _, m := range c.metrics()["semnet_cluster_table_queries_total"].GetMetric() {
			by[labels(m)["outcome"]] += value(m)
			n += value(m)
		}
		if n == 0 {
			out = append(out, fmt.Sprintf("c%d no queries", i+1))
			continue
		}
		out = append(out, fmt.Sprintf("c%d %.1f%% / %.1f%% / %.1f%% / %.1f%% (n=%.0f)", i+1,
			100*by["hit"]/n, 100*by["miss"]/n, 100*by["unknown"]/n, 100*by["error"]/n, n))
	}
	return strings.Join(out, ", ")
}

// pushDelays returns, for each cluster, the share of its pushes made within 50, 100 and
// 250 ms of root's change (semnet_cluster_change_push_delay_seconds, since its last
// start, faults included): how much of the propagation is root's and the cluster's.
func (s *soak) pushDelays() string {
	var out []string
	for i, c := range s.cls {
		hs := histTotals([]*daemon{c}, "semnet_cluster_change_push_delay_seconds", func(map[string]string) (string, bool) { return "", true })
		if len(hs) == 0 || hs[0].n == 0 {
			out = append(out, fmt.Sprintf("c%d no pushes", i+1))
			continue
		}
		h := hs[0]
		out = append(out, fmt.Sprintf("c%d %.1f%% / %.1f%% / %.1f%% (n=%.0f)", i+1,
			100*h.within[.05]/h.n, 100*h.within[.1]/h.n, 100*h.within[.25]/h.n, h.n))
	}
	return strings.Join(out, ", ")
}
