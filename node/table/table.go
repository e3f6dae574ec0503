// Package table is the worker node's cache of table entries (CONTRACT.md, "Worker node
// behaviour"; FLOWS.md, steps 2 and 3): which instances serve each Service IP and
// Instance IP the node's senders use, and the choice of one instance per new flow by the
// address's balancing policy (Round Robin, Closest, Instance IP). It also knows the
// instances running on this node, so the translator can give a sender's packets its
// Instance IP as source and recognise local destinations. It is a pure core: the caller
// feeds it table query results and update pushes, asks it per packet, and acts on what it
// returns (queries the cluster, ends flows, sends interest/remove).
//
// Why copy-on-write: lookups run per packet on every datapath goroutine while entries
// change at control-plane rate. Every change builds a new immutable snapshot and publishes
// it with one atomic pointer store, so a lookup is a pointer load and a map read: no lock
// (even a read lock writes its counter, so every core would keep taking that cache line
// from the others), and no allocation (the maps are keyed by netip.Addr, which is
// comparable; sync.Map's interface keys would allocate). The price is on the writer side:
// a change copies the maps, O(entries), which is fine for a node's few hundred jobs
// changing a few times a second.
package table

import (
	"cmp"
	"errors"
	"fmt"
	"iter"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

// DefaultIdleTimeout is how long an entry stays without use: the reference node's 10 s
// (CONTRACT.md, "Worker node behaviour").
const DefaultIdleTimeout = 10 * time.Second

// ErrOutdated is returned (wrapped) by Apply for a result older than the installed entry:
// an answer or push overtaken by a newer one. Nothing changed but the query key being
// remembered; callers may count it and otherwise ignore it.
var ErrOutdated = errors.New("table: result is older than the installed entry")

// Config configures a Table.
type Config struct {
	// Location is this node's location, from which Closest measures. Nil (or invalid):
	// Closest prefers local instances, then orders by geo.TieBreak only.
	Location *geo.Point
	// IdleTimeout drops an entry no packet used for this long, unless an instance of its
	// job runs on this node. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
}

// Status says what Lookup found.
type Status uint8

const (
	// Unknown: no entry has the address; the caller queries the cluster.
	Unknown Status = iota
	// Found: the Target is the instance to send to.
	Found
	// NoInstance: the address belongs to a known entry but no instance of it is usable
	// (for an Instance IP: that instance is not); the caller drops and counts. Updates
	// arrive by push, so there is nothing to query.
	NoInstance
	// NotInstance (Origin only): the address is a Service IP (RR or Closest) of a known
	// entry, not an Instance IP; no instance sends from it.
	NotInstance
)

// String returns "unknown", "found", "no instance" or "not an instance".
func (s Status) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Found:
		return "found"
	case NoInstance:
		return "no instance"
	case NotInstance:
		return "not an instance"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Target is the instance a packet goes to. Its addresses have the family of the address
// it was looked up by (no translation between IPv4 and IPv6).
type Target struct {
	// NamespaceIP is the instance's real address: the rewritten destination.
	NamespaceIP netip.Addr
	// InstanceIP is the instance's Instance IP; its replies come from it.
	InstanceIP netip.Addr
	// Endpoint is the tunnel endpoint (host_ip:host_port) of the node running it.
	Endpoint netip.AddrPort
	// Local is set when the instance runs on this node (its namespace IP was registered
	// with AddLocal): the packet goes to the bridge, not the tunnel.
	Local bool
	// Job is the job name; InstanceNumber the instance's number in it.
	Job            string
	InstanceNumber int
}

// Expired is one entry Expire dropped.
type Expired struct {
	// Job is the job name.
	Job string
	// Keys are the keys to send interest/remove for and to stop following: the job name
	// first, then every other key (a Service or Instance IP) the node queried it by.
	Keys []string
	// Gone are the namespace IPs that stopped being usable, for ending their flows.
	Gone []netip.Addr
}

// Table is the node's table cache. It is safe for concurrent use: the per-packet methods
// (Lookup, Origin, Touch, Sender, IsLocalNamespace, ByNamespace) take no lock and allocate
// nothing; the others serialize among themselves.
type Table struct {
	idle int64 // IdleTimeout in nanoseconds
	from *geo.Point
	seed uint64 // of the IPv6 indexes' hash

	snap atomic.Pointer[snapshot]

	// Writer state, guarded by mu.
	mu      sync.Mutex
	keys    map[string][]string        // per job: the keys it was asked under, job name first
	locals  map[localKey][2]netip.Addr // registered local instances' namespace IPs
	nsOwner map[netip.Addr]localKey    // which registration holds a local namespace IP
}

// localKey identifies a local instance.
type localKey struct {
	job    string
	number int
}

// snapshot is the immutable state lookups read. Writers copy it, change the copy and
// publish it.
type snapshot struct {
	routes addrMap[route]      // Service and Instance IPs (v4 and v6) to their entry
	byNS   addrMap[route]      // usable instances' namespace IPs (policyInstance routes)
	local  addrMap[netip.Addr] // local namespace IPs to their Instance IP (zero until known)
	jobs   map[string]*entry
}

func (s *snapshot) clone() *snapshot {
	return &snapshot{
		routes: s.routes.clone(), byNS: s.byNS.clone(),
		local: s.local.clone(), jobs: maps.Clone(s.jobs),
	}
}

func (s *snapshot) isLocal(a netip.Addr) bool {
	_, ok := s.local.get(a)
	return ok
}

// New returns an empty table.
func New(cfg Config) *Table {
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	t := &Table{
		idle:    int64(cfg.IdleTimeout),
		seed:    rand.Uint64(),
		keys:    make(map[string][]string),
		locals:  make(map[localKey][2]netip.Addr),
		nsOwner: make(map[netip.Addr]localKey),
	}
	if cfg.Location != nil && cfg.Location.Validate() == nil {
		p := *cfg.Location // the caller's Point may change later; ours must not
		t.from = &p
	}
	t.snap.Store(&snapshot{
		routes: newAddrMap[route](t.seed), byNS: newAddrMap[route](t.seed),
		local: newAddrMap[netip.Addr](t.seed), jobs: map[string]*entry{},
	})
	return t
}

// Apply installs or replaces a job's entry from a table query result or an update push,
// and remembers r.QueryKey (a Service or Instance IP, or the job name) as a key the node
// asked under, for Expire. If r.QueryKey is an IP the entry lists no address for, Lookup
// answers NoInstance for it rather than Unknown.
//
// It returns the namespace IPs (v4 and v6) of instances that were usable before and are
// not now (removed, no longer live, moved to another namespace IP, lost their tunnel
// endpoint), so the caller can end their flows (conntrack.Forget).
//
// A result with Error set, or a malformed one (no AppName, an address of the wrong family,
// a duplicate instance number, one address in two roles, conflicting service addresses),
// returns an error and changes nothing. A result whose Revision is older than the
// installed entry's (both non-zero) changes nothing and returns ErrOutdated. An address
// another job's entry listed passes to this job: the newer apply wins.
func (t *Table) Apply(r *mqttapi.TableQueryResult, now time.Time) (gone []netip.Addr, err error) {
	switch {
	case r == nil:
		return nil, errors.New("table: nil table query result")
	case r.Error != "":
		return nil, fmt.Errorf("table: the cluster could not answer for %q: %s", cmp.Or(r.AppName, r.QueryKey), r.Error)
	case r.AppName == "":
		return nil, fmt.Errorf("table: table query result for %q has no app_name", r.QueryKey)
	}
	job := r.AppName
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	prev := old.jobs[job]
	if prev != nil && prev.rev != 0 && r.Revision != 0 && r.Revision < prev.rev {
		if t.addKey(job, r.QueryKey) {
			s := old.clone()
			t.addWeak(s, prev)
			t.snap.Store(s)
		}
		return nil, fmt.Errorf("%w: job %q revision %d, installed %d", ErrOutdated, job, r.Revision, prev.rev)
	}
	e, err := parse(r, prev)
	if err != nil {
		return nil, err
	}
	s := old.clone()
	if prev != nil {
		e.st = prev.st
		if e.rev == 0 {
			e.rev = prev.rev // an unknown revision does not make later results look newer
		}
		t.remove(s, prev)
	} else {
		e.st = new(jobState)
		e.st.used.Store(now.UnixNano())
		t.keys[job] = []string{job}
	}
	t.addKey(job, r.QueryKey)
	t.install(s, e)
	t.snap.Store(s)
	return goneBetween(prev, e), nil
}

// addKey records key for job and reports whether it was new.
func (t *Table) addKey(job, key string) bool {
	if key == "" || slices.Contains(t.keys[job], key) {
		return false
	}
	t.keys[job] = append(t.keys[job], key)
	return true
}

// weakAddrs yields the job's query keys that are IP addresses.
func (t *Table) weakAddrs(job string) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		for _, k := range t.keys[job] {
			a, err := netip.ParseAddr(k)
			if a = a.Unmap(); err != nil || checkFamily(a, family(a)) != nil {
				continue // a job name, or an address that cannot be a key
			}
			if !yield(a) {
				return
			}
		}
	}
}

// addWeak routes e's IP query keys that lead nowhere else to e, as NoInstance.
func (t *Table) addWeak(s *snapshot, e *entry) {
	for a := range t.weakAddrs(e.job) {
		if r, ok := s.routes.get(a); !ok || r.policy == policyNone {
			s.routes.set(a, route{e: e, policy: policyNone})
		}
	}
}

// install adds e (its derived fields computed here) to s.
func (t *Table) install(s *snapshot, e *entry) {
	e.derive(s.isLocal, t.from)
	for a, r := range e.routes() {
		s.routes.set(a, r)
	}
	t.addWeak(s, e)
	for i := range e.insts {
		for f := range 2 {
			if e.usable[f][i] {
				s.byNS.set(e.insts[i].ns[f], route{e: e, policy: policyInstance, inst: int32(i)})
			}
		}
	}
	s.jobs[e.job] = e
	t.setSenders(s, e.job, e)
}

// remove takes e out of s, leaving the addresses another job took over from it.
func (t *Table) remove(s *snapshot, e *entry) {
	for a := range e.routes() {
		if r, ok := s.routes.get(a); ok && r.e.job == e.job {
			s.routes.del(a)
		}
	}
	for a := range t.weakAddrs(e.job) {
		if r, ok := s.routes.get(a); ok && r.e.job == e.job {
			s.routes.del(a)
		}
	}
	for i := range e.insts {
		for _, a := range e.insts[i].ns {
			if r, ok := s.byNS.get(a); ok && r.e.job == e.job {
				s.byNS.del(a)
			}
		}
	}
	delete(s.jobs, e.job)
	t.setSenders(s, e.job, nil)
}

// setSenders sets the Instance IPs of job's local instances from e (nil: unknown).
func (t *Table) setSenders(s *snapshot, job string, e *entry) {
	for k, ns := range t.locals {
		if k.job != job {
			continue
		}
		for f, a := range ns {
			if a.IsValid() && t.nsOwner[a] == k {
				var ip netip.Addr
				if e != nil {
					ip = e.instanceIP(k.number, f)
				}
				s.local.set(a, ip)
			}
		}
	}
}

// Delete drops a job's entry (the job was deleted) and returns the namespace IPs that
// stop being usable. Its keys are forgotten: read them with Keys first if needed.
func (t *Table) Delete(job string) (gone []netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	e := old.jobs[job]
	if e == nil {
		return nil
	}
	s := old.clone()
	t.remove(s, e)
	delete(t.keys, job)
	t.snap.Store(s)
	return e.usableNS(nil)
}

// Lookup is the per-packet call. dst is a Service IP (RR or Closest) or an Instance IP,
// IPv4 or IPv6; an IPv4 address must be unmapped (netip.Addr.Unmap). It picks the
// instance by the address's policy:
//   - RR: the usable instances in turn (one counter per entry, one step per call);
//   - Closest: the usable instance nearest the node, the order computed when the entry
//     was applied, so an unusable nearest one falls to the next nearest at once;
//   - Instance IP: exactly that instance, NoInstance if it is not usable.
//
// It marks the entry used (for Expire), also when it answers NoInstance, and takes no
// lock and allocates nothing.
func (t *Table) Lookup(dst netip.Addr, now time.Time) (Target, Status) {
	r, ok := t.snap.Load().routes.get(dst)
	if !ok {
		return Target{}, Unknown
	}
	e := r.e
	e.st.touch(now)
	f := family(dst)
	i := r.inst
	switch r.policy {
	case policyRR:
		u := e.rr[f]
		if len(u) == 0 {
			return Target{}, NoInstance
		}
		i = u[(e.st.rr.Add(1)-1)%uint64(len(u))]
	case policyClosest:
		u := e.closest[f]
		if len(u) == 0 {
			return Target{}, NoInstance
		}
		i = u[0]
	case policyInstance:
		if !e.usable[f][i] {
			return Target{}, NoInstance
		}
	default:
		return Target{}, NoInstance
	}
	return e.targets[f][i], Found
}

// Origin returns the tunnel endpoint of the node running the instance whose Instance IP
// is src: where a packet with that source must come from through the tunnel. The status
// is Found, Unknown (no entry lists src: the caller queries the cluster), NoInstance (the
// Instance IP of an instance that is not usable: not running, without a tunnel endpoint
// or a namespace IP of src's family; or an address the entry no longer lists) or
// NotInstance (a Service IP). Like Lookup it marks the entry used, so the jobs whose
// instances keep sending to this node stay in its table, followed, and a move of one of
// them is pushed here. Lock-free, zero allocations.
func (t *Table) Origin(src netip.Addr, now time.Time) (netip.AddrPort, Status) {
	r, ok := t.snap.Load().routes.get(src)
	if !ok {
		return netip.AddrPort{}, Unknown
	}
	e := r.e
	e.st.touch(now)
	switch r.policy {
	case policyInstance:
		f := family(src)
		if !e.usable[f][r.inst] {
			return netip.AddrPort{}, NoInstance
		}
		return e.targets[f][r.inst].Endpoint, Found
	case policyNone:
		return netip.AddrPort{}, NoInstance
	}
	return netip.AddrPort{}, NotInstance
}

// Candidates returns the instances a new flow to dst may go to, in the order dst's
// policy takes them: for an RR Service IP the usable instances in the sequence Lookup
// cycles through, for a Closest Service IP nearest first (Lookup takes the first, and the
// next when it stops), for an Instance IP that instance. It is empty when dst is unknown
// or nothing is usable. Unlike Lookup it allocates, and it neither marks use nor advances
// the Round Robin counter: it is for tools that show what the node would pick (semnet
// ctl resolve), not for packets.
func (t *Table) Candidates(dst netip.Addr) []Target {
	r, ok := t.snap.Load().routes.get(dst)
	if !ok {
		return nil
	}
	e, f := r.e, family(dst)
	var order []int32
	switch r.policy {
	case policyRR:
		order = e.rr[f]
	case policyClosest:
		order = e.closest[f]
	case policyInstance:
		if e.usable[f][r.inst] {
			order = []int32{r.inst}
		}
	}
	out := make([]Target, len(order))
	for k, i := range order {
		out[k] = e.targets[f][i]
	}
	return out
}

// Touch marks the entry of a Service or Instance IP as used, for packets of established
// flows, which skip Lookup. Lock-free, and it writes the shared entry only about once a
// second.
func (t *Table) Touch(addr netip.Addr, now time.Time) {
	if r, ok := t.snap.Load().routes.get(addr); ok {
		r.e.st.touch(now)
	}
}

// ByNamespace returns the Target of the usable instance whose namespace IP is nsIP. Packets
// of established flows (whose rewritten destination the connection tracker holds) find
// their tunnel endpoint here, so they follow a node's new address; ok is false when no
// usable instance has nsIP any more. Lock-free, zero allocations; it does not mark use.
func (t *Table) ByNamespace(nsIP netip.Addr) (tg Target, ok bool) {
	r, ok := t.snap.Load().byNS.get(nsIP)
	if !ok {
		return Target{}, false
	}
	return r.e.targets[family(nsIP)][r.inst], true
}

// Established is ByNamespace for a packet of an established flow: the Target of the
// usable instance whose namespace IP is nsIP, and the mark that its job's entry is in
// use (what Touch does by the address the packet was sent to: the flow's destination is
// an address of the same job). One lookup instead of two, and the Target is not copied:
// it points into the table's current snapshot, which is never changed once published;
// callers only read it. Lock-free, zero allocations.
func (t *Table) Established(nsIP netip.Addr, now time.Time) (*Target, bool) {
	r, ok := t.snap.Load().byNS.get(nsIP)
	if !ok {
		return nil, false
	}
	r.e.st.touch(now)
	return &r.e.targets[family(nsIP)][r.inst], true
}

// AddLocal registers an instance running on this node, with its namespace IPs (either may
// be zero; one of the wrong family is ignored). Then Sender knows its Instance IP (once
// the job's entry is applied, in either order), IsLocalNamespace recognises its namespace
// IPs, Lookup marks it Local, and its job's entry never expires. Registering the same
// instance again replaces its addresses; a namespace IP held by another registration
// passes to this one.
func (t *Table) AddLocal(job string, instanceNumber int, nsIP4, nsIP6 netip.Addr) {
	ns := [2]netip.Addr{nsIP4.Unmap(), nsIP6}
	for f, a := range ns {
		if checkFamily(a, f) != nil {
			ns[f] = netip.Addr{}
		}
	}
	k := localKey{job: job, number: instanceNumber}
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.snap.Load().clone()
	changed := t.dropLocal(s, k)
	t.locals[k] = ns
	for _, a := range ns {
		if a.IsValid() {
			t.nsOwner[a] = k
			s.local.set(a, netip.Addr{})
			changed = append(changed, a)
		}
	}
	t.setSenders(s, job, s.jobs[job])
	t.relocal(s, changed)
	t.snap.Store(s)
}

// RemoveLocal forgets a local instance registered with AddLocal. Its job's entry stays
// (and expires when unused, unless other instances of it run here).
func (t *Table) RemoveLocal(job string, instanceNumber int) {
	k := localKey{job: job, number: instanceNumber}
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.locals[k]; !ok {
		return
	}
	s := t.snap.Load().clone()
	changed := t.dropLocal(s, k)
	delete(t.locals, k)
	t.relocal(s, changed)
	t.snap.Store(s)
}

// dropLocal releases the namespace IPs registration k holds and returns them.
func (t *Table) dropLocal(s *snapshot, k localKey) []netip.Addr {
	var out []netip.Addr
	for _, a := range t.locals[k] {
		if a.IsValid() && t.nsOwner[a] == k {
			delete(t.nsOwner, a)
			s.local.del(a)
			out = append(out, a)
		}
	}
	return out
}

// relocal rebuilds the entries with an instance at one of the changed namespace IPs, whose
// Local flags and Closest order depend on them. Addresses keep their owners.
func (t *Table) relocal(s *snapshot, changed []netip.Addr) {
	if len(changed) == 0 {
		return
	}
	for _, old := range s.jobs {
		if !slices.ContainsFunc(old.insts, func(in instance) bool {
			return slices.Contains(changed, in.ns[v4]) || slices.Contains(changed, in.ns[v6])
		}) {
			continue
		}
		e := *old
		e.derive(s.isLocal, t.from)
		ne := &e
		repoint := func(r route) route {
			if r.e == old {
				r.e = ne
			}
			return r
		}
		s.routes.update(repoint)
		s.byNS.update(repoint)
		s.jobs[e.job] = ne
	}
}

// Sender returns the Instance IP of the local instance whose namespace IP is nsIP, of the
// same family: the source address its packets get. ok is false if nsIP is not a local
// instance's or its job's entry (or the instance in it) is not known yet. Lock-free, zero
// allocations.
func (t *Table) Sender(nsIP netip.Addr) (instanceIP netip.Addr, ok bool) {
	ip, _ := t.snap.Load().local.get(nsIP)
	return ip, ip.IsValid()
}

// IsLocalNamespace reports whether addr is a registered local namespace IP: the check on
// packets arriving through the tunnel. Lock-free, zero allocations.
func (t *Table) IsLocalNamespace(addr netip.Addr) bool {
	_, ok := t.snap.Load().local.get(addr)
	return ok
}

// Expire drops the entries no packet used for IdleTimeout, except those of jobs with a
// local instance, and returns what the caller must do for each: send interest/remove for
// its keys and end the flows to its namespace IPs. Sorted by job.
func (t *Table) Expire(now time.Time) []Expired {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.snap.Load()
	local := make(map[string]bool, len(t.locals))
	for k := range t.locals {
		local[k.job] = true
	}
	n := now.UnixNano()
	var out []Expired
	var s *snapshot
	for job, e := range old.jobs {
		if local[job] || n-e.st.used.Load() < t.idle {
			continue
		}
		if s == nil {
			s = old.clone()
		}
		out = append(out, Expired{Job: job, Keys: t.keys[job], Gone: e.usableNS(nil)})
		t.remove(s, e)
		delete(t.keys, job)
	}
	if s == nil {
		return nil
	}
	t.snap.Store(s)
	slices.SortFunc(out, func(a, b Expired) int { return cmp.Compare(a.Job, b.Job) })
	return out
}

// Keys returns the keys job was asked under (the job name first), nil if it has no entry.
func (t *Table) Keys(job string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.keys[job])
}

// Jobs returns the jobs with an entry, sorted: what to follow again after a reconnect.
func (t *Table) Jobs() []string {
	return slices.Sorted(maps.Keys(t.snap.Load().jobs))
}

// Known reports whether job has an entry.
func (t *Table) Known(job string) bool {
	_, ok := t.snap.Load().jobs[job]
	return ok
}

// Len returns the number of entries.
func (t *Table) Len() int { return len(t.snap.Load().jobs) }
