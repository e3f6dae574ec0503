// Package store defines what root persists: clusters, services, instances, worker subnets,
// address leases, cluster interests, gateways, exposures and the change log, behind one
// interface with two backends (bolt: embedded, the default; mongo: MongoDB for
// replicated deployments).
//
// The store is the authority on address uniqueness. The in-memory allocators in root only
// propose addresses; a create succeeds only if the store can claim every address as a
// lease at the same time, so two root processes sharing one MongoDB can never hand out the
// same address, and a restart rebuilds the allocators from the leases (ListLeases).
//
// Every mutation of a service, instance, gateway or exposure gets a revision from one
// monotonically increasing counter and a Change in the log, which is what clusters follow.
package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/semnet/semnet/shared/geo"
)

// Sentinel errors; compare with errors.Is.
var (
	ErrNotFound      = errors.New("not found")
	ErrAlreadyExists = errors.New("already exists")
	// ErrAddressTaken: an address is leased, or released but still in quarantine.
	// Returned wrapped in *AddressTakenError, which says by whom.
	ErrAddressTaken = errors.New("address taken")
	// ErrHasInstances: a service cannot be deleted while it has instances (unless forced).
	ErrHasInstances = errors.New("service has instances")
	// ErrCompacted: the change log no longer holds revisions right after the one asked
	// for; the reader must resync fully.
	ErrCompacted = errors.New("revision compacted")
	// ErrUnavailable: the backend cannot be reached (API answers 503).
	ErrUnavailable = errors.New("store unavailable")
)

// AddressTakenError says which address could not be claimed and who holds it.
type AddressTakenError struct {
	Addr  netip.Addr
	Lease Lease // the lease that holds it (ReleasedAt set when in quarantine)
}

func (e *AddressTakenError) Error() string {
	if !e.Lease.ReleasedAt.IsZero() {
		return fmt.Sprintf("address %s is in quarantine since %s (last used by %s)", e.Addr, e.Lease.ReleasedAt.UTC().Format(time.RFC3339), e.Lease.OwnerString())
	}
	return fmt.Sprintf("address %s is already used by %s", e.Addr, e.Lease.OwnerString())
}

func (e *AddressTakenError) Unwrap() error { return ErrAddressTaken }

// Roles an address lease can have.
const (
	RoleRoundRobin = "rr"
	RoleClosest    = "closest"
	RoleInstance   = "instance"
	RoleSubnet     = "subnet"
)

// Lease records that an address (or, for subnets, a prefix's first address) belongs to
// someone. Released leases stay until their quarantine is over so the address is not
// reused early; after that a claim may take the address over.
type Lease struct {
	Addr       netip.Addr `json:"addr"`
	Role       string     `json:"role"`
	Owner      string     `json:"owner"`    // service ID, or for subnets the node ID
	Instance   int        `json:"instance"` // instance number for RoleInstance, else -1
	CreatedAt  time.Time  `json:"created_at"`
	ReleasedAt time.Time  `json:"released_at,omitzero"` // zero while active
}

// OwnerString names the owner for error messages.
func (l Lease) OwnerString() string {
	switch l.Role {
	case RoleInstance:
		return fmt.Sprintf("instance %d of service %s", l.Instance, l.Owner)
	case RoleSubnet:
		return "worker subnet of node " + l.Owner
	default:
		return fmt.Sprintf("service %s (%s)", l.Owner, l.Role)
	}
}

// AddrPair is an IPv4 address and its IPv6 twin; semnet always allocates both.
type AddrPair struct {
	V4 netip.Addr `json:"v4"`
	V6 netip.Addr `json:"v6"`
}

// Cluster is a registered cluster service.
type Cluster struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Address  string    `json:"address"` // host or IP root reaches it at
	Port     int       `json:"port"`
	Location geo.Point `json:"location"`
	RadiusKM float64   `json:"radius_km"`
	// Reference is set for clusters registered through the reference API; they are
	// notified with POST /api/net/job/update.
	Reference bool      `json:"reference"`
	Status    string    `json:"status"`
	LastSeen  time.Time `json:"last_seen"`
	CreatedAt time.Time `json:"created_at"`
}

// Service is a deployed service (the reference calls it a job).
type Service struct {
	ID        string    `json:"id"` // the reference's job `_id`
	App       string    `json:"app"`
	AppNS     string    `json:"app_ns"`
	Name      string    `json:"name"`
	NS        string    `json:"ns"`
	RR        AddrPair  `json:"rr"`
	Closest   AddrPair  `json:"closest"`
	CreatedAt time.Time `json:"created_at"`
	Revision  uint64    `json:"revision"`
}

// JobName is the service's name as the platform knows it: app.appns.service.servicens.
func (s Service) JobName() string { return s.App + "." + s.AppNS + "." + s.Name + "." + s.NS }

// Instance statuses.
const (
	StatusScheduled = "scheduled" // addresses allocated, not placed yet
	StatusRunning   = "running"
	StatusFailed    = "failed"
	StatusStopped   = "stopped" // its node reported it undeployed; the record stays until deleted
)

// Instance is one replica of a service.
type Instance struct {
	ServiceID   string     `json:"service_id"`
	Number      int        `json:"number"`
	IP          AddrPair   `json:"ip"` // the Instance IP pair
	ClusterID   string     `json:"cluster_id"`
	NamespaceIP AddrPair   `json:"namespace_ip"` // zero until placed
	HostIP      netip.Addr `json:"host_ip"`
	HostPort    int        `json:"host_port"`
	Location    *geo.Point `json:"location,omitempty"` // the node's location, once placed
	Status      string     `json:"status"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Revision    uint64     `json:"revision"`
	// ReportedBy and ReportSeq are the cluster and sequence of the last ordered placement
	// applied (api.Placement.Sequence); zero when none was.
	ReportedBy string `json:"reported_by,omitempty"`
	ReportSeq  uint64 `json:"report_seq,omitempty"`
	// Standby is where the instance still ran when a report moved it elsewhere (a
	// migration starts the instance in its new place before stopping the old one), until
	// that place reports it stopped. Nil when there is none.
	Standby *Place `json:"standby,omitempty"`
	// PlacedRevision is the revision of the write that last placed the instance where it
	// is, when later writes left that placement as it was (the standby's stop after a
	// migration); zero when Revision is that write. See PlacementRevision.
	PlacedRevision uint64 `json:"placed_revision,omitempty"`
}

// PlacementRevision is the revision that placed the instance where it is: what a
// cluster that reports a vanished node's instances failed names as their IfRevision.
func (in Instance) PlacementRevision() uint64 {
	if in.PlacedRevision != 0 {
		return in.PlacedRevision
	}
	return in.Revision
}

// Place is where an instance runs: its cluster, node and Namespace IPs.
type Place struct {
	ClusterID   string     `json:"cluster_id"`
	NamespaceIP AddrPair   `json:"namespace_ip"`
	HostIP      netip.Addr `json:"host_ip"`
	HostPort    int        `json:"host_port"`
	Location    *geo.Point `json:"location,omitempty"`
	// PlacedRevision, on a standby, is the revision that placed the instance there: it
	// is the instance's placement revision again if the instance returns there.
	PlacedRevision uint64 `json:"placed_revision,omitempty"`
}

// Place returns where the instance runs (or ran last).
func (in Instance) Place() Place {
	return Place{ClusterID: in.ClusterID, NamespaceIP: in.NamespaceIP, HostIP: in.HostIP, HostPort: in.HostPort, Location: in.Location,
		PlacedRevision: in.PlacementRevision()}
}

// MoveTo makes p the instance's place.
func (in *Instance) MoveTo(p Place) {
	in.ClusterID, in.NamespaceIP, in.HostIP, in.HostPort, in.Location = p.ClusterID, p.NamespaceIP, p.HostIP, p.HostPort, p.Location
	in.PlacedRevision = p.PlacedRevision
}

// Subnet is a worker subnet pair handed to a node.
type Subnet struct {
	V4        netip.Prefix `json:"v4"`
	V6        netip.Prefix `json:"v6"`
	ClusterID string       `json:"cluster_id"`
	NodeID    string       `json:"node_id"`
	CreatedAt time.Time    `json:"created_at"`
}

// Gateway is a registered gateway node: its public addresses and the instance of the
// system gateway service (api.GatewayJobName) that gives it its Instance IPs and holds
// its placement.
type Gateway struct {
	ID             string     `json:"id"` // the node's worker id
	ClusterID      string     `json:"cluster_id"`
	PublicV4       netip.Addr `json:"public_v4"` // zero when the gateway has none
	PublicV6       netip.Addr `json:"public_v6"`
	InstanceNumber int        `json:"instance_number"`
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
	Revision       uint64     `json:"revision"`
}

// Exposure is a service port exposed on the gateways' public addresses. Its ID,
// "<protocol>-<public_port>", is what makes a public port unique per protocol across
// the platform.
type Exposure struct {
	ID          string `json:"id"`
	ServiceID   string `json:"service_id"`
	JobName     string `json:"job_name"` // set by the store from the service
	Protocol    string `json:"protocol"`
	PublicPort  int    `json:"public_port"`
	ServicePort int    `json:"service_port"`
	Policy      string `json:"policy"`
	// InstanceNumber is the targeted instance for the instance policy, else -1.
	InstanceNumber int `json:"instance_number"`
	// Gateway is the one gateway serving the exposure; "" means every gateway.
	Gateway   string    `json:"gateway"`
	Target    AddrPair  `json:"target"` // the address pair the policy picked
	CreatedAt time.Time `json:"created_at"`
	Revision  uint64    `json:"revision"`
}

// ExposureID is the ID of the exposure of a protocol's public port.
func ExposureID(protocol string, publicPort int) string {
	return protocol + "-" + strconv.Itoa(publicPort)
}

// Change kinds and operations.
const (
	KindService  = "service"
	KindInstance = "instance"
	KindGateway  = "gateway"
	KindExposure = "exposure"
	OpPut        = "put"
	OpDelete     = "delete"
)

// Change is one entry of the change log. It names what changed, not the new state:
// readers fetch the current state, so a reader that is behind converges in one read.
type Change struct {
	Revision  uint64 `json:"revision"`
	Kind      string `json:"kind"`
	Op        string `json:"op"`
	ServiceID string `json:"service_id"` // of an exposure change: the exposed service
	JobName   string `json:"job_name"`
	Instance  int    `json:"instance"` // -1 for service-level, gateway and exposure changes
	// Object is the gateway's ID (KindGateway) or the exposure's ID (KindExposure).
	Object string    `json:"object,omitempty"`
	Time   time.Time `json:"time"`
}

// Options configure a backend.
type Options struct {
	// Quarantine: a released lease blocks its address for this long.
	Quarantine time.Duration
	// Now is the clock (tests move it); nil means time.Now.
	Now func() time.Time
}

// Deleted is what DeleteService removed: the service and, with it, its instances and
// exposures (ordered by number and ID).
type Deleted struct {
	Service   Service
	Instances []Instance
	Exposures []Exposure
}

// Store is root's persistence. Every method is safe for concurrent use. Creates claim the
// record's addresses as leases atomically with the record: either the record and all its
// leases exist afterwards, or none of them (a backend without transactions must clean up
// after itself, including after a crash: see the backend's docs).
type Store interface {
	Ping(ctx context.Context) error
	Close() error

	// Revision is the newest revision handed out (0 for an empty store).
	Revision(ctx context.Context) (uint64, error)

	// PutCluster creates or replaces a cluster (keyed by ID).
	PutCluster(ctx context.Context, c Cluster) error
	GetCluster(ctx context.Context, id string) (Cluster, error)
	ListClusters(ctx context.Context) ([]Cluster, error)
	// DeleteCluster removes the cluster and its interests.
	DeleteCluster(ctx context.Context, id string) error

	// CreateService stores s and claims its four addresses (RR and Closest, v4 and v6).
	// ErrAlreadyExists if the ID or job name exists; *AddressTakenError if an address is
	// leased or quarantined. Assigns and returns s.Revision; logs a service put.
	CreateService(ctx context.Context, s Service) (Service, error)
	GetService(ctx context.Context, id string) (Service, error)
	GetServiceByJobName(ctx context.Context, jobName string) (Service, error)
	// ListServices returns up to limit services with ID > after, ordered by ID.
	ListServices(ctx context.Context, after string, limit int) ([]Service, error)
	// DeleteService removes a service and releases its addresses into quarantine.
	// ErrHasInstances while it has instances, unless force, which deletes them too.
	// Its exposures are deleted with it, forced or not: they mean nothing without the
	// service. Each deleted exposure and instance logs its delete change, then the
	// service its own. It returns what it deleted, as it found it under the delete.
	DeleteService(ctx context.Context, id string, force bool) (Deleted, error)

	// CreateInstance stores in and claims its Instance IP pair. ErrNotFound if the service
	// does not exist, ErrAlreadyExists if the number is taken, *AddressTakenError as above.
	CreateInstance(ctx context.Context, in Instance) (Instance, error)
	GetInstance(ctx context.Context, serviceID string, number int) (Instance, error)
	// ListInstances returns the service's instances ordered by number.
	ListInstances(ctx context.Context, serviceID string) ([]Instance, error)
	// UpdateInstance applies fn to the current instance and stores the result, with a new
	// revision and a change. fn may run more than once (optimistic concurrency) and must
	// not change ServiceID, Number or IP. An error from fn is returned unchanged.
	UpdateInstance(ctx context.Context, serviceID string, number int, fn func(*Instance) error) (Instance, error)
	// DeleteInstance removes an instance and releases its addresses into quarantine.
	DeleteInstance(ctx context.Context, serviceID string, number int) error

	// GetLease returns the lease of addr (active or in quarantine); ErrNotFound if none.
	GetLease(ctx context.Context, addr netip.Addr) (Lease, error)
	// ListLeases calls fn for every lease (active and quarantined), in no set order.
	ListLeases(ctx context.Context, fn func(Lease) error) error

	// CreateSubnet stores sn and claims both prefixes' first addresses (RoleSubnet, owner
	// the node ID). ErrAddressTaken as above.
	CreateSubnet(ctx context.Context, sn Subnet) error
	GetSubnet(ctx context.Context, v4 netip.Prefix) (Subnet, error)
	ListSubnets(ctx context.Context) ([]Subnet, error)
	// DeleteSubnet removes the subnet with this IPv4 prefix and releases it into quarantine.
	DeleteSubnet(ctx context.Context, v4 netip.Prefix) error

	// AddInterest records that a cluster wants changes of a service (idempotent).
	AddInterest(ctx context.Context, clusterID, serviceID string) error
	RemoveInterest(ctx context.Context, clusterID, serviceID string) error
	// InterestedClusters lists the clusters interested in a service, ordered by ID.
	InterestedClusters(ctx context.Context, serviceID string) ([]string, error)
	// Interests lists the services a cluster is interested in, ordered by ID.
	Interests(ctx context.Context, clusterID string) ([]string, error)
	// Interested reports whether a cluster is interested in a service (one read by key).
	Interested(ctx context.Context, clusterID, serviceID string) (bool, error)

	// PutGateway creates or replaces a gateway (keyed by ID) with a new revision, which
	// it assigns and returns, and logs a gateway put.
	PutGateway(ctx context.Context, g Gateway) (Gateway, error)
	GetGateway(ctx context.Context, id string) (Gateway, error)
	// ListGateways returns every gateway, ordered by ID.
	ListGateways(ctx context.Context) ([]Gateway, error)
	// DeleteGateway removes a gateway and logs a gateway delete. It does not touch the
	// gateway's instance or exposures: that is the caller's business.
	DeleteGateway(ctx context.Context, id string) error

	// CreateExposure stores e, setting its JobName from its service, and logs an
	// exposure put. ErrAlreadyExists if the ID (protocol and public port) is taken,
	// ErrNotFound if the service does not exist; an exposure never survives its
	// service's deletion, even one racing it. Assigns and returns e.Revision.
	CreateExposure(ctx context.Context, e Exposure) (Exposure, error)
	GetExposure(ctx context.Context, id string) (Exposure, error)
	// ListExposures returns the exposures of a service ("" for every service), ordered
	// by ID.
	ListExposures(ctx context.Context, serviceID string) ([]Exposure, error)
	// DeleteExposure removes an exposure and logs an exposure delete.
	DeleteExposure(ctx context.Context, id string) error

	// Changes returns up to limit changes with Revision > since, in revision order, with no
	// gaps: a change is returned only once every lower revision is readable (or was
	// abandoned by a crashed writer, which a backend decides after a bounded wait).
	// ErrCompacted if revisions after since were dropped by CompactChanges.
	Changes(ctx context.Context, since uint64, limit int) ([]Change, error)
	// CompactChanges drops changes with Revision <= upTo.
	CompactChanges(ctx context.Context, upTo uint64) error
}
