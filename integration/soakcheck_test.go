package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/geo"
)

// The soak's final consistency check: after the load stops and the tooling has cleaned
// up, root (both replicas), both clusters' caches and every node's table must agree with
// what the tooling did, and no address or subnet may be held twice.

// rootView is what one root replica says about the soak's services.
type rootView struct {
	services  map[string]api.Service
	instances map[string][]api.Instance
}

func (s *soak) readRoot(rc *client.Client) (rootView, error) {
	ctx, cancel := context.WithTimeout(s.ctx, time.Minute)
	defer cancel()
	v := rootView{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}
	svcs, err := rc.Services(ctx)
	if err != nil {
		return v, err
	}
	for _, sv := range svcs {
		v.services[sv.JobName] = sv
		if v.instances[sv.JobName], err = rc.Instances(ctx, sv.JobName); err != nil {
			return v, err
		}
	}
	return v, nil
}

// placedAt is "v4 v6 port" of where the tooling placed an instance, to compare.
func (s *soak) placedAt(in soakInst) string {
	return fmt.Sprint(in.v4, " ", in.v6, " ", s.nodes[in.node].port)
}

// rootDiffs compares a root's view with the tooling's record.
func (s *soak) rootDiffs(v rootView) []string {
	var d []string
	s.mu.Lock()
	defer s.mu.Unlock()
	for job, j := range s.jobs {
		_, there := v.services[job]
		switch {
		case j.deleted && there:
			d = append(d, job+": deleted, still at root")
		case j.deleted:
		case !there:
			d = append(d, job+": missing at root")
		default:
			seen := map[int]bool{}
			for _, in := range v.instances[job] {
				seen[in.Number] = true
				want, ok := j.inst[in.Number]
				got := fmt.Sprint(in.NamespaceIP, " ", in.NamespaceIPv6, " ", in.HostPort)
				switch {
				case !ok:
					d = append(d, fmt.Sprintf("%s/%d: at root (%s), not placed by the tooling", job, in.Number, in.Status))
				case in.Status != "running" || got != s.placedAt(want):
					d = append(d, fmt.Sprintf("%s/%d: root has %s at %s, want running at %s", job, in.Number, in.Status, got, s.placedAt(want)))
				}
			}
			for num := range j.inst {
				if !seen[num] {
					d = append(d, fmt.Sprintf("%s/%d: placed, missing at root", job, num))
				}
			}
		}
	}
	for job := range v.services {
		if s.jobs[job] == nil && !s.uncertain[job] {
			d = append(d, job+": at root, never created")
		}
	}
	return d
}

// duplicates lists every address two records hold.
func duplicates(v rootView, subnets []api.Subnet) []string {
	owner := map[netip.Addr]string{}
	var d []string
	hold := func(a netip.Addr, who string) {
		if !a.IsValid() {
			return
		}
		if o, dup := owner[a]; dup {
			d = append(d, fmt.Sprintf("%s held by %s and %s", a, o, who))
		}
		owner[a] = who
	}
	for job, sv := range v.services {
		for k, a := range []netip.Addr{sv.RRIP, sv.RRIPv6, sv.ClosestIP, sv.ClosestIPv6} {
			hold(a, job+" service IP "+strconv.Itoa(k))
		}
		for _, in := range v.instances[job] {
			hold(in.InstanceIP, fmt.Sprintf("%s/%d", job, in.Number))
			hold(in.InstanceIPv6, fmt.Sprintf("%s/%d", job, in.Number))
		}
	}
	for _, sn := range subnets {
		hold(sn.SubnetV4.Addr(), "subnet of "+sn.NodeID)
		hold(sn.SubnetV6.Addr(), "subnet of "+sn.NodeID)
	}
	return d
}

// settle retries check until it reports nothing or limit passes; it returns the last
// report and how long it took.
func settle(limit time.Duration, check func() []string) ([]string, time.Duration) {
	t0 := time.Now()
	for {
		d := check()
		if len(d) == 0 || time.Since(t0) > limit {
			return d, time.Since(t0)
		}
		time.Sleep(time.Second)
	}
}

func (s *soak) failIf(what string, d []string) {
	if len(d) == 0 {
		return
	}
	s.t.Errorf("soak: %s: %d differences, e.g.:\n%v", what, len(d), d[:min(20, len(d))])
}

func (s *soak) check() {
	s.cleanup()
	var views [2]rootView
	d, took := settle(2*time.Minute, func() []string {
		var d []string
		for k, rc := range s.rcs {
			v, err := s.readRoot(rc)
			if err != nil {
				return []string{err.Error()}
			}
			views[k] = v
			for _, x := range s.rootDiffs(v) {
				d = append(d, fmt.Sprintf("root %c: %s", 'A'+k, x))
			}
		}
		return d
	})
	s.failIf("root vs tooling", d)
	instances := 0
	for _, in := range views[0].instances {
		instances += len(in)
	}
	s.note("root (both replicas) agrees with the tooling", "%d differences, %d services and %d instances, settled in %s",
		len(d), len(views[0].services), instances, took.Round(time.Second))

	subnets, err := s.rcs[0].Subnets(s.ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	nodeSubnets := map[netip.Addr]bool{}
	for _, n := range s.nodes {
		v4, _ := n.sim.Subnet()
		nodeSubnets[v4] = true
	}
	dups := duplicates(views[0], subnets)
	if len(nodeSubnets) != len(s.nodes) {
		dups = append(dups, fmt.Sprintf("%d nodes hold only %d distinct subnets", len(s.nodes), len(nodeSubnets)))
	}
	s.failIf("addresses held twice", dups)
	s.note("addresses held twice", "%d (Service and Instance IPs of every service, %d worker subnets)", len(dups), len(subnets))

	d, took = settle(time.Minute, func() []string { return s.cacheDiffs(views[0]) })
	s.failIf("cluster caches vs root", d)
	s.note("cluster caches agree with root", "%d differences (every job asked of c1 and of c2), settled in %s", len(d), took.Round(time.Second))

	var held, absent int
	d, took = settle(time.Minute, func() []string {
		var d []string
		held, absent, d = s.tableDiffs()
		return d
	})
	s.failIf("node tables vs tooling", d)
	s.note("node tables agree with root", "%d differences in %d held entries (RR set and Closest choice; %d followed jobs not held), settled in %s",
		len(d), held, absent, took.Round(time.Second))
}

// cacheDiffs asks each cluster (through one of its live nodes) for every job and
// compares the running instances it answers with root's.
func (s *soak) cacheDiffs(v rootView) []string {
	var d []string
	for _, cl := range []string{"c1", "c2"} {
		var n *soakNode
		for _, m := range s.nodes {
			if m.cluster == cl && !m.dead.Load() {
				n = m
				break
			}
		}
		for job := range s.jobs {
			r, err := n.sim.Query(s.ctx, job)
			_, atRoot := v.services[job]
			if errors.Is(err, clusterlink.ErrUnknown) && !atRoot {
				continue
			}
			if err != nil {
				d = append(d, fmt.Sprintf("%s %s: %v", cl, job, err))
				continue
			}
			var got, want []string
			for _, in := range r.InstanceList {
				if in.Status == "" || in.Status == "running" {
					got = append(got, fmt.Sprint(in.InstanceNumber, " ", in.NamespaceIP, " ", in.HostPort))
				}
			}
			for _, in := range v.instances[job] {
				if in.Status == "running" {
					want = append(want, fmt.Sprint(in.Number, " ", in.NamespaceIP, " ", in.HostPort))
				}
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				d = append(d, fmt.Sprintf("%s %s: cache %v, root %v", cl, job, got, want))
			}
		}
	}
	return d
}

// tableDiffs compares every live node's entries with the tooling's record: the RR set
// (number, namespace IP, tunnel port) and the Closest choice from the node's location.
func (s *soak) tableDiffs() (held, absent int, d []string) {
	now := time.Now()
	for _, n := range s.nodes {
		if n.dead.Load() {
			continue
		}
		n.mu.Lock()
		follow := slices.Clone(n.follow)
		n.mu.Unlock()
		for _, job := range follow {
			s.mu.Lock()
			j := s.jobs[job]
			s.mu.Unlock()
			if j == nil {
				continue
			}
			if _, st := n.tab.Lookup(j.svc.RRIP, now); st == table.Unknown {
				absent++ // never answered (a query during a fault): the next packet asks
				continue
			}
			held++
			j.mu.Lock()
			var want []string
			type placed struct {
				num int
				loc geo.Point
			}
			var order []placed
			for num, in := range j.inst {
				want = append(want, fmt.Sprint(num, " ", in.v4, " ", s.nodes[in.node].port))
				order = append(order, placed{num, s.nodes[in.node].loc})
			}
			j.mu.Unlock()
			var got []string
			for _, c := range n.tab.Candidates(j.svc.RRIP) {
				got = append(got, fmt.Sprint(c.InstanceNumber, " ", c.NamespaceIP, " ", c.Endpoint.Port()))
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				d = append(d, fmt.Sprintf("node w%d %s: RR %v, want %v", n.i, job, got, want))
				continue
			}
			if len(order) == 0 {
				continue
			}
			geo.SortByDistance(order, n.loc, func(p placed) geo.Point { return p.loc },
				func(p placed) string { return job + "/" + strconv.Itoa(p.num) })
			if c := n.tab.Candidates(j.svc.ClosestIP); len(c) == 0 || c[0].InstanceNumber != order[0].num {
				d = append(d, fmt.Sprintf("node w%d %s: Closest picks %v, want instance %d", n.i, job, c, order[0].num))
			}
		}
	}
	return held, absent, d
}
