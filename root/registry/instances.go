package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
)

// maxInstanceNumber bounds instance numbers (the reference uses small integers; the
// bound keeps them printable in topic names and URLs).
const maxInstanceNumber = 1 << 20

// CreateInstance allocates an Instance IP pair for a new instance of the service named by
// key and records it, scheduled on the given cluster. Without a number, the lowest unused
// one is taken.
func (r *Registry) CreateInstance(ctx context.Context, key string, req api.InstanceRequest) (store.Instance, store.Service, error) {
	s, err := r.userService(ctx, key, "register a gateway (PUT /api/v1/gateways/{id}) instead")
	if err != nil {
		return store.Instance{}, s, err
	}
	in, err := r.newInstance(ctx, s, req)
	return in, s, err
}

// newInstance creates an instance of s, numbered as req asks or with the lowest free
// number.
func (r *Registry) newInstance(ctx context.Context, s store.Service, req api.InstanceRequest) (store.Instance, error) {
	if req.ClusterID != "" {
		if err := validID("cluster_id", req.ClusterID); err != nil {
			return store.Instance{}, err
		}
	}
	if req.Number != nil && (*req.Number < 0 || *req.Number > maxInstanceNumber) {
		return store.Instance{}, invalidf("instance_number %d must be between 0 and %d", *req.Number, maxInstanceNumber)
	}
	// Picking the lowest free number races with concurrent creates. Within this process a
	// per-service lock orders them; across root processes sharing a database the store's
	// unique (service, number) key catches the race and we pick again.
	if req.Number == nil {
		mu := &r.numbering[stripe(s.ID)]
		mu.Lock()
		defer mu.Unlock()
	}
	for attempt := 0; ; attempt++ {
		num := 0
		if req.Number != nil {
			num = *req.Number
		} else if n, err := r.freeNumber(ctx, s.ID); err != nil {
			return store.Instance{}, err
		} else {
			num = n
		}
		in, err := r.createInstance(ctx, s, num, req.ClusterID)
		if err == nil || req.Number != nil || !errors.Is(err, store.ErrAlreadyExists) || attempt >= maxClaimAttempts {
			return in, err
		}
	}
}

// probedNumbers is how many of the lowest instance numbers freeNumber asks for one by one
// before it lists the service's instances.
const probedNumbers = 4

// freeNumber returns the lowest instance number the service does not use. Most services
// have few instances, so it first reads the lowest numbers by key: FerretDB v1 serves
// the listing's filter on the service ID by decoding every instance of every service,
// a read by key in its SQLite (tens of times faster, and flat on MongoDB).
func (r *Registry) freeNumber(ctx context.Context, serviceID string) (int, error) {
	for n := range probedNumbers {
		_, err := r.store.GetInstance(ctx, serviceID, n)
		if errors.Is(err, store.ErrNotFound) {
			return n, nil
		}
		if err != nil {
			return 0, fmt.Errorf("instance %d: %w", n, err)
		}
	}
	ins, err := r.store.ListInstances(ctx, serviceID)
	if err != nil {
		return 0, fmt.Errorf("list instances: %w", err)
	}
	// Instances come ordered by number: the first gap is the lowest free number.
	for i, in := range ins {
		if in.Number != i {
			return i, nil
		}
	}
	return len(ins), nil
}

func (r *Registry) createInstance(ctx context.Context, s store.Service, num int, clusterID string) (store.Instance, error) {
	cs := []*claim{{pool: r.service4, field: "instance_ip"}, {pool: r.instance6, field: "instance_ip_v6"}}
	var out store.Instance
	err := r.withClaims(ctx, cs, func() error {
		var err error
		out, err = r.store.CreateInstance(ctx, store.Instance{
			ServiceID: s.ID, Number: num, ClusterID: clusterID,
			IP:     store.AddrPair{V4: cs[0].got, V6: cs[1].got},
			Status: store.StatusScheduled, UpdatedAt: r.now().UTC(),
		})
		return err
	})
	if err != nil {
		return store.Instance{}, wrap(err, "create instance %d of %s", num, s.JobName())
	}
	r.log.Info("instance created", "service", s.JobName(), "instance", num, "instance_ip", out.IP.V4, "cluster", clusterID)
	r.notify(store.Change{Revision: out.Revision, Kind: store.KindInstance, Op: store.OpPut, ServiceID: s.ID, JobName: s.JobName(), Instance: num})
	return out, nil
}

// validatePlacement checks a placement report against the address plan.
func (r *Registry) validatePlacement(p api.Placement) error {
	switch p.Status {
	case store.StatusRunning:
		if !p.NamespaceIP.IsValid() || !p.HostIP.IsValid() {
			return invalidf("a running instance needs namespace_ip and host_ip")
		}
	case store.StatusFailed, store.StatusStopped:
	default:
		return invalidf("status %q must be %q, %q or %q", p.Status, store.StatusRunning, store.StatusFailed, store.StatusStopped)
	}
	if p.NamespaceIP.IsValid() && !r.plan.SubnetV4.Contains(p.NamespaceIP) {
		return invalidf("namespace_ip %s is outside the worker subnets %s", p.NamespaceIP, r.plan.SubnetV4)
	}
	if p.NamespaceIPv6.IsValid() && !r.plan.SubnetV6.Contains(p.NamespaceIPv6) {
		return invalidf("namespace_ip_v6 %s is outside the worker subnets %s", p.NamespaceIPv6, r.plan.SubnetV6)
	}
	if p.HostIP.IsValid() && (p.HostPort < 1 || p.HostPort > 65535) {
		return invalidf("host_port %d must be between 1 and 65535", p.HostPort)
	}
	if p.Location != nil {
		if err := p.Location.Validate(); err != nil {
			return invalidf("location: %v", err)
		}
	}
	return nil
}

// Place records where an instance runs (or that it failed). Of the gateway service's
// instances it takes only failures (see api.Gateway.Status).
func (r *Registry) Place(ctx context.Context, key string, number int, p api.Placement) (store.Instance, store.Service, error) {
	// A gateway's failure is the one placement a cluster reports for it (its node stayed
	// away past the grace); it runs again by registering again.
	var s store.Service
	var err error
	if p.Status == store.StatusFailed {
		s, err = r.Service(ctx, key)
	} else {
		s, err = r.userService(ctx, key, "a gateway reports its placement by registering again (PUT /api/v1/gateways/{id}); only its failure comes as a placement")
	}
	if err != nil {
		return store.Instance{}, s, err
	}
	if err := r.validatePlacement(p); err != nil {
		return store.Instance{}, s, err
	}
	if p.ClusterID != "" {
		if err := r.knownCluster(ctx, p.ClusterID); err != nil {
			return store.Instance{}, s, err
		}
	}
	moveTo := p.ClusterID
	if p.Status == store.StatusStopped {
		moveTo = "" // stopping somewhere is no move
	}
	in, err := r.place(ctx, s, number, p, moveTo)
	if errors.Is(err, errStalePlacement) {
		r.log.Info("late placement ignored (an older report, or a stop of a migrated or re-placed instance)", "service", s.JobName(), "instance", number, "status", p.Status,
			"stopped_on", p.HostIP, "stopped_in", p.ClusterID, "runs_on", in.HostIP, "runs_in", in.ClusterID,
			"if_revision", p.IfRevision, "revision", in.Revision, "sequence", p.Sequence, "last_sequence", in.ReportSeq)
		return in, s, nil
	}
	return in, s, err
}

// clockSkew is how far two clusters' clocks (their report sequences) may disagree:
// reports from different clusters closer in time than this are not ordered.
const clockSkew = 2 * time.Second

// errStalePlacement is a stop reported by a node or cluster the instance has already
// left: instances migrate by starting in the new place before (or while) the old one is
// torn down, and two clusters' reports reach root in no particular order.
var errStalePlacement = errors.New("the instance runs elsewhere")

// staleStop tells whether p stops or fails an instance that runs somewhere else than
// where p comes from (a host, or a cluster when the node did not say its host), or that
// changed since the revision p applies to.
//
// A node's stop of an instance that has never been placed anywhere is stale too: it
// cannot be about this instance, which never ran on that node, but about an earlier one
// of the same number (numbers are reused after a delete) whose undeploy report arrived
// after the new one was created. Applied, it left the new instance stopped, and its own
// "running" report, when older than the stop by the cluster's sequence, was then refused.
func staleStop(in store.Instance, p api.Placement) bool {
	if p.Status == store.StatusStopped && p.HostIP.IsValid() && !in.HostIP.IsValid() {
		return true
	}
	if p.Status == store.StatusRunning || in.Status != store.StatusRunning {
		return false
	}
	if p.IfRevision != 0 && p.IfRevision != in.PlacementRevision() {
		return true
	}
	if p.HostIP.IsValid() {
		return p.HostIP != in.HostIP || p.HostPort != in.HostPort
	}
	return p.ClusterID != "" && p.ClusterID != in.ClusterID
}

// staleSequence tells whether p is older than the last placement applied, by the
// sequences of the clusters that reported them.
func staleSequence(in store.Instance, p api.Placement) bool {
	if p.Sequence == 0 || p.ClusterID == "" {
		return false
	}
	if p.ClusterID == in.ReportedBy && p.Sequence <= in.ReportSeq {
		return true // an older report of this cluster, arriving late
	}
	// Another cluster's report clearly older than the last one applied, while the
	// instance runs: a deploy report that waited in a backlogged cluster while the
	// instance migrated to another cluster must not move it back. Once the instance is
	// stopped, such a report is not late: the stop was about the old place, the report
	// about another (a migration's new place, whose "running" waited in its cluster's
	// backlog while the old node's stop went straight through), so it applies.
	return p.ClusterID != in.ReportedBy && in.Status == store.StatusRunning && p.Sequence+uint64(clockSkew) < in.ReportSeq
}

// onHost tells whether p comes from the node of place pl.
func onHost(pl store.Place, p api.Placement) bool {
	return p.HostIP.IsValid() && p.HostIP == pl.HostIP && p.HostPort == pl.HostPort
}

// migrate applies what a node's report means for an instance that runs in two places
// during a migration (started in the new place before it is stopped in the old one).
// Root keeps the place it ran in before as the instance's standby, until that place
// reports it stopped:
//   - running reported from another node while the instance runs: the place it ran in
//     becomes the standby (also when the report comes from the standby: the instance
//     moved back, or its old node announced it again; a stop from either settles it);
//   - a stop (or failure) from the standby: the standby is dropped, the instance runs on
//     where it is (done reports true);
//   - a stop from where the instance runs while a standby exists: the two places'
//     reports crossed (the old node announced the instance again, after a cluster
//     restart say, once the new one had), so it runs at the standby (done).
//
// Reports without a host (a cluster speaking for its nodes) leave the standby alone.
func migrate(in *store.Instance, p api.Placement) (done bool) {
	if !p.HostIP.IsValid() || (p.IfRevision != 0 && p.IfRevision != in.PlacementRevision()) {
		return false // a conditional stop of an instance changed since: staleStop's to judge
	}
	here := in.Place()
	switch {
	case p.Status == store.StatusRunning:
		if in.Status == store.StatusRunning && in.HostIP.IsValid() && !onHost(here, p) {
			in.Standby = &here // also when p comes from the standby: whichever stops, the other runs
		}
		return false
	case in.Standby != nil && onHost(*in.Standby, p) && !onHost(here, p):
		in.Standby = nil
		return true
	case in.Standby != nil && onHost(here, p) && in.Status == store.StatusRunning:
		in.MoveTo(*in.Standby)
		in.Standby = nil
		return true
	}
	return false
}

// place stores a validated placement of instance number of s, and moves the instance to
// clusterID unless that is empty. A stale placement (staleSequence, staleStop) changes
// nothing: it returns the instance as it is with errStalePlacement.
func (r *Registry) place(ctx context.Context, s store.Service, number int, p api.Placement, clusterID string) (store.Instance, error) {
	var current store.Instance
	out, err := r.store.UpdateInstance(ctx, s.ID, number, func(in *store.Instance) error {
		if staleSequence(*in, p) {
			current = *in
			return errStalePlacement
		}
		current = *in
		if p.Sequence != 0 && p.ClusterID != "" {
			in.ReportedBy, in.ReportSeq = p.ClusterID, p.Sequence
		}
		placed := in.PlacementRevision()
		sb := in.Standby
		if migrate(in, p) {
			if sb != nil && in.Standby == nil && onHost(*sb, p) {
				// Only the standby stopped: the instance stays placed as it was, and a
				// failure conditional on that placement (its node's death) still applies.
				// (Back at its standby, MoveTo gave it the standby's placement revision.)
				in.PlacedRevision = placed
			}
			in.UpdatedAt = r.now().UTC()
			return nil
		}
		if staleStop(*in, p) {
			return errStalePlacement
		}
		in.PlacedRevision = 0
		if p.NamespaceIP.IsValid() || p.Status == store.StatusRunning {
			in.NamespaceIP = store.AddrPair{V4: p.NamespaceIP, V6: p.NamespaceIPv6}
			in.HostIP, in.HostPort = p.HostIP, p.HostPort
		}
		if p.Location != nil {
			loc := *p.Location
			in.Location = &loc
		}
		if clusterID != "" {
			in.ClusterID = clusterID
		}
		in.Status = p.Status
		if p.Status != store.StatusRunning {
			in.Standby = nil // stopped everywhere, as far as root knows
		}
		in.UpdatedAt = r.now().UTC()
		return nil
	})
	if errors.Is(err, errStalePlacement) {
		return current, err
	}
	if err != nil {
		return store.Instance{}, fmt.Errorf("place instance %d of %s: %w", number, s.JobName(), err)
	}
	r.log.Info("instance placed", "service", s.JobName(), "instance", number, "status", p.Status, "namespace_ip", p.NamespaceIP, "host_ip", p.HostIP)
	r.notify(store.Change{Revision: out.Revision, Kind: store.KindInstance, Op: store.OpPut, ServiceID: s.ID, JobName: s.JobName(), Instance: number})
	return out, nil
}

// DeleteInstance removes an instance and frees its Instance IPs into quarantine.
func (r *Registry) DeleteInstance(ctx context.Context, key string, number int) (store.Service, error) {
	s, err := r.userService(ctx, key, "delete the gateway instead (DELETE /api/v1/gateways/{id})")
	if err != nil {
		return s, err
	}
	in, err := r.store.GetInstance(ctx, s.ID, number)
	if err != nil {
		return s, fmt.Errorf("instance %d of %s: %w", number, s.JobName(), err)
	}
	return s, r.deleteInstance(ctx, s, in)
}

// deleteInstance deletes in, an instance of s, and frees its Instance IPs into
// quarantine. Exposures that target this instance go first: their Instance IP is about
// to be released, and could later belong to another service.
func (r *Registry) deleteInstance(ctx context.Context, s store.Service, in store.Instance) error {
	exposures, err := r.store.ListExposures(ctx, s.ID)
	if err != nil {
		return fmt.Errorf("exposures of %s: %w", s.JobName(), err)
	}
	for _, e := range exposures {
		if e.Policy == api.PolicyInstance && e.InstanceNumber == in.Number {
			if err := r.deleteExposure(ctx, e); err != nil {
				return err
			}
		}
	}
	if err := r.store.DeleteInstance(ctx, s.ID, in.Number); err != nil {
		return fmt.Errorf("delete instance %d of %s: %w", in.Number, s.JobName(), err)
	}
	r.release(in.IP.V4, in.IP.V6)
	r.log.Info("instance deleted", "service", s.JobName(), "instance", in.Number)
	r.notify(store.Change{Kind: store.KindInstance, Op: store.OpDelete, ServiceID: s.ID, JobName: s.JobName(), Instance: in.Number})
	return nil
}

// userService looks up the service named by key for a change of its instances, which
// the gateway service's are not open to: fix says what to do instead.
func (r *Registry) userService(ctx context.Context, key, fix string) (store.Service, error) {
	s, err := r.Service(ctx, key)
	if err == nil && isGatewayService(s) {
		err = invalidf("the instances of %s are the gateways: %s", s.JobName(), fix)
	}
	return s, err
}

// Instances lists a service's instances ordered by number.
func (r *Registry) Instances(ctx context.Context, serviceID string) ([]store.Instance, error) {
	ins, err := r.store.ListInstances(ctx, serviceID)
	if err != nil {
		return nil, fmt.Errorf("list instances of %s: %w", serviceID, err)
	}
	return ins, nil
}

// Instance returns one instance.
func (r *Registry) Instance(ctx context.Context, key string, number int) (store.Instance, store.Service, error) {
	s, err := r.Service(ctx, key)
	if err != nil {
		return store.Instance{}, store.Service{}, err
	}
	in, err := r.store.GetInstance(ctx, s.ID, number)
	if err != nil {
		return store.Instance{}, s, fmt.Errorf("instance %d of %s: %w", number, s.JobName(), err)
	}
	return in, s, nil
}

// isLive reports whether traffic may be sent to the instance.
func isLive(in store.Instance) bool {
	return in.Status == store.StatusRunning && in.NamespaceIP.V4.IsValid() && in.HostIP.IsValid()
}

// stripe spreads services over the numbering locks (FNV-1a of the ID).
func stripe(id string) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return int(h % numberingStripes)
}
