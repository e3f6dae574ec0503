package table

import (
	"cmp"
	"fmt"
	"iter"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

// Address families, the index of every per-family array.
const (
	v4 = 0
	v6 = 1
)

// family returns the index of a's family; a must be unmapped.
func family(a netip.Addr) int {
	if a.Is4() {
		return v4
	}
	return v6
}

// statusRunning is the live status root reports; an empty status (a reference cluster
// sends none) counts as live too, since such clusters list live instances only.
const statusRunning = "running"

// policy is what a route's address means.
type policy uint8

const (
	policyRR       policy = iota + 1 // Round Robin Service IP
	policyClosest                    // Closest Service IP
	policyInstance                   // an instance's own Instance IP
	// policyNone marks an address the node queried by that the entry lists no longer (a
	// job with no instances left, or a gone instance's Instance IP): the entry is known,
	// so Lookup answers NoInstance instead of sending the caller to query again for
	// every packet. Any listed address takes its place.
	policyNone
)

// route is where an address leads: its entry and policy, and for Instance IPs (and in
// snapshot.byNS, namespace IPs) the instance's index in entry.insts.
type route struct {
	e      *entry
	inst   int32
	policy policy
}

// role names the route's address for error messages.
func (r route) role() string {
	switch r.policy {
	case policyRR:
		return "its RR address"
	case policyClosest:
		return "its Closest address"
	case policyInstance:
		return "instance " + strconv.Itoa(r.e.insts[r.inst].number) + "'s Instance IP"
	}
	return "a query key"
}

// instance is one instance of an entry, checked and converted from a TableInstance.
type instance struct {
	number   int
	ip       [2]netip.Addr  // Instance IP per family
	ns       [2]netip.Addr  // Namespace IP per family
	endpoint netip.AddrPort // zero when the host address or port is unusable
	live     bool
	loc      geo.Point
	hasLoc   bool
}

// usable reports whether traffic of family f can go to the instance. Besides the
// contract's conditions (live, namespace IP, tunnel endpoint) it needs an Instance IP of
// the family: replies come from it, and without it they could not be mapped back.
func (in *instance) usable(f int) bool {
	return in.live && in.ns[f].IsValid() && in.ip[f].IsValid() && in.endpoint.IsValid()
}

// jobState is the mutable part of a job's entry, kept across its re-applies so that the
// Round Robin sequence continues and a pushed update does not count as use.
//
// Its 128 bytes (a size class of its own, so 128-byte aligned) give each field a cache line
// of its own: rr is written by every RR lookup, and used, read by every lookup of any
// policy, must not be evicted by those writes, nor share a line with another job's.
type jobState struct {
	used atomic.Int64 // Unix nanoseconds of the last use, at touchEvery resolution
	_    [56]byte
	rr   atomic.Uint64 // Round Robin counter, one increment per RR lookup
	_    [56]byte
}

// touchEvery is the resolution of an entry's last-use time: a lookup stores the time only
// when it moved by at least this much, so the packets of a busy job read the line instead
// of writing it each (a write from one core evicts the line from all others). Entries may
// thus expire up to this much early.
const touchEvery = int64(time.Second)

func (st *jobState) touch(now time.Time) {
	// Concurrent touches may store slightly out of order; the error is at most the spread
	// of the callers' clocks, far below touchEvery.
	if n := now.UnixNano(); n-st.used.Load() >= touchEvery {
		st.used.Store(n)
	}
}

// entry is one job's table entry. It is immutable once published in a snapshot (st aside):
// a change builds a new entry. The derived fields depend on which namespace IPs are
// local, so registering a local instance rebuilds them (Table.relocal).
type entry struct {
	job   string
	rev   uint64
	svc   [2][2]netip.Addr // [RR, Closest][family]
	insts []instance
	st    *jobState

	// Derived by derive, per family.
	targets [2][]Target // by instance index; meaningful where usable
	usable  [2][]bool   // by instance index
	rr      [2][]int32  // usable instances, in list order
	closest [2][]int32  // usable instances, nearest first
}

// parse checks a result and converts it to an entry (without its derived fields and
// state). Service addresses the result does not give are kept from prev: a job's list
// carries them on every instance, so a job with no instances left would otherwise forget
// its Service IPs, and packets to them would query the cluster again and again.
func parse(r *mqttapi.TableQueryResult, prev *entry) (*entry, error) {
	e := &entry{job: r.AppName, rev: r.Revision, insts: make([]instance, 0, len(r.InstanceList))}
	numbers := make(map[int]bool, len(r.InstanceList))
	for i := range r.InstanceList {
		ti := &r.InstanceList[i]
		if numbers[ti.InstanceNumber] {
			return nil, fmt.Errorf("table: job %q lists instance %d twice", e.job, ti.InstanceNumber)
		}
		numbers[ti.InstanceNumber] = true
		in, err := parseInstance(e.job, ti, &e.svc)
		if err != nil {
			return nil, err
		}
		e.insts = append(e.insts, in)
	}
	if prev != nil {
		for p := range e.svc {
			for f := range e.svc[p] {
				if !e.svc[p][f].IsValid() {
					e.svc[p][f] = prev.svc[p][f]
				}
			}
		}
	}
	seen := make(map[netip.Addr]route, 4+2*len(e.insts))
	for a, rt := range e.routes() {
		if other, dup := seen[a]; dup {
			return nil, fmt.Errorf("table: job %q uses %s both as %s and as %s", e.job, a, other.role(), rt.role())
		}
		seen[a] = rt
	}
	return e, nil
}

func parseInstance(job string, ti *mqttapi.TableInstance, svc *[2][2]netip.Addr) (instance, error) {
	in := instance{number: ti.InstanceNumber, live: ti.Status == "" || ti.Status == statusRunning}
	for _, fld := range []struct {
		name string
		a    netip.Addr
		dst  *netip.Addr
		f    int
	}{
		{"instance_ip", ti.InstanceIP, &in.ip[v4], v4},
		{"instance_ip_v6", ti.InstanceIPv6, &in.ip[v6], v6},
		{"namespace_ip", ti.NamespaceIP, &in.ns[v4], v4},
		{"namespace_ip_v6", ti.NamespaceIPv6, &in.ns[v6], v6},
	} {
		if err := checkFamily(fld.a, fld.f); err != nil {
			return in, fmt.Errorf("table: job %q instance %d: %s %s", job, in.number, fld.name, err)
		}
		*fld.dst = fld.a
	}
	if ti.HostIP.IsValid() && ti.HostPort >= 1 && ti.HostPort <= math.MaxUint16 {
		in.endpoint = netip.AddrPortFrom(ti.HostIP.Unmap(), uint16(ti.HostPort))
	}
	if ti.Lat != nil && ti.Lon != nil {
		// A bad location makes the instance's distance unknown (ranked last by Closest)
		// rather than the whole entry unusable.
		if p := (geo.Point{Lat: *ti.Lat, Lon: *ti.Lon}); p.Validate() == nil {
			in.loc, in.hasLoc = p, true
		}
	}
	for _, s := range ti.ServiceIP {
		var slots *[2]netip.Addr
		switch s.IPType {
		case mqttapi.IPTypeRR:
			slots = &svc[0]
		case mqttapi.IPTypeClosest:
			slots = &svc[1]
		case mqttapi.IPTypeInstanceIP:
			slots = &in.ip
		default:
			continue // a policy this node does not know: its address stays unknown
		}
		for f, a := range [2]netip.Addr{s.Address, s.AddressV6} {
			if err := checkFamily(a, f); err != nil {
				return in, fmt.Errorf("table: job %q instance %d: %s address %s", job, in.number, s.IPType, err)
			}
			if !a.IsValid() {
				continue
			}
			if old := slots[f]; old.IsValid() && old != a {
				return in, fmt.Errorf("table: job %q instance %d: its %s address is %s, but %s elsewhere in the entry", job, in.number, s.IPType, a, old)
			}
			slots[f] = a
		}
	}
	return in, nil
}

// checkFamily accepts a zero (absent) address or an unzoned, specified one of family f;
// an IPv4 address must not come IPv4-mapped, so that every address has one map key.
func checkFamily(a netip.Addr, f int) error {
	switch {
	case !a.IsValid():
		return nil
	case a.Zone() != "":
		return fmt.Errorf("%s has a zone", a)
	case a.IsUnspecified():
		return fmt.Errorf("%s is the unspecified address", a)
	case f == v4 && !a.Is4():
		return fmt.Errorf("%s is not an IPv4 address", a)
	case f == v6 && (!a.Is6() || a.Is4In6()):
		return fmt.Errorf("%s is not an IPv6 address", a)
	}
	return nil
}

// routes yields every address the entry lists, with its route.
func (e *entry) routes() iter.Seq2[netip.Addr, route] {
	return func(yield func(netip.Addr, route) bool) {
		for p := range e.svc {
			for _, a := range e.svc[p] {
				if a.IsValid() && !yield(a, route{e: e, policy: policyRR + policy(p)}) {
					return
				}
			}
		}
		for i := range e.insts {
			for _, a := range e.insts[i].ip {
				if a.IsValid() && !yield(a, route{e: e, policy: policyInstance, inst: int32(i)}) {
					return
				}
			}
		}
	}
}

// instanceIP returns the Instance IP of family f of the instance numbered n, or zero.
func (e *entry) instanceIP(n, f int) netip.Addr {
	for i := range e.insts {
		if e.insts[i].number == n {
			return e.insts[i].ip[f]
		}
	}
	return netip.Addr{}
}

// derive computes the per-packet data: each instance's Target, which are usable, the
// Round Robin list and the Closest order. It always allocates fresh slices: a copy of a
// published entry shares the old ones, which lookups may still read.
//
// Closest ranks by great-circle distance from the node; a local instance is at distance
// 0 whatever the locations say, and an instance whose distance is unknown (no location
// on either side) comes after every known one. Ties fall to geo.TieBreak of
// "<job>/<instance number>", as on every tier.
func (e *entry) derive(isLocal func(netip.Addr) bool, from *geo.Point) {
	n := len(e.insts)
	type ranked struct {
		d   float64
		tie uint64
		key string
		i   int32
	}
	order := make([]ranked, 0, n)
	for f := range 2 {
		e.targets[f] = make([]Target, n)
		e.usable[f] = make([]bool, n)
		e.rr[f] = make([]int32, 0, n)
		e.closest[f] = make([]int32, 0, n)
	}
	for i := range e.insts {
		in := &e.insts[i]
		local := false
		for f := range 2 {
			if !in.usable(f) {
				continue
			}
			e.usable[f][i] = true
			e.rr[f] = append(e.rr[f], int32(i))
			e.targets[f][i] = Target{
				NamespaceIP: in.ns[f], InstanceIP: in.ip[f], Endpoint: in.endpoint,
				Local: isLocal(in.ns[f]), Job: e.job, InstanceNumber: in.number,
			}
			local = local || e.targets[f][i].Local
		}
		if !e.usable[v4][i] && !e.usable[v6][i] {
			continue
		}
		d := math.Inf(1)
		switch {
		case local:
			d = 0
		case from != nil && in.hasLoc:
			d = geo.DistanceKM(*from, in.loc)
		}
		key := e.job + "/" + strconv.Itoa(in.number)
		order = append(order, ranked{d: d, tie: geo.TieBreak(key), key: key, i: int32(i)})
	}
	slices.SortFunc(order, func(a, b ranked) int {
		return cmp.Or(cmp.Compare(a.d, b.d), cmp.Compare(a.tie, b.tie), cmp.Compare(a.key, b.key))
	})
	for _, r := range order {
		for f := range 2 {
			if e.usable[f][r.i] {
				e.closest[f] = append(e.closest[f], r.i)
			}
		}
	}
}

// usableNS appends the namespace IPs of e's usable instances to dst, v4 before v6 per
// instance.
func (e *entry) usableNS(dst []netip.Addr) []netip.Addr {
	for i := range e.insts {
		for f := range 2 {
			if e.insts[i].usable(f) {
				dst = append(dst, e.insts[i].ns[f])
			}
		}
	}
	return dst
}

// goneBetween returns the namespace IPs usable in old and not in new (nil: the job is gone).
func goneBetween(old, new *entry) []netip.Addr {
	if old == nil {
		return nil
	}
	was := old.usableNS(nil)
	if new == nil || len(was) == 0 {
		return was
	}
	still := make(map[netip.Addr]bool, 2*len(new.insts))
	for _, a := range new.usableNS(nil) {
		still[a] = true
	}
	return slices.DeleteFunc(was, func(a netip.Addr) bool { return still[a] })
}
