// Package api holds the JSON bodies of root's own REST API, /api/v1 (documented in
// proto/openapi.yaml). Cluster services and `semnet ctl` decode the same types, so the
// names here are the contract: the same words as the reference (rr_ip, instance_ip,
// namespace_ip, ...) wherever the reference had one.
package api

import (
	"net/netip"
	"time"

	"github.com/semnet/semnet/shared/geo"
)

// ClusterRequest registers (or re-registers) a cluster.
type ClusterRequest struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Address  string    `json:"address"`
	Port     int       `json:"port"`
	Location geo.Point `json:"location"`
	RadiusKM float64   `json:"radius_km"`
}

// Cluster is a registered cluster.
type Cluster struct {
	ClusterRequest
	Status    string    `json:"status"`
	LastSeen  time.Time `json:"last_seen"`
	CreatedAt time.Time `json:"created_at"`
}

// Heartbeat is a cluster's periodic status report.
type Heartbeat struct {
	Status string `json:"status"` // "ok" or "degraded"; free text is kept as given
}

// ServiceRequest deploys a service. The four names each match ^[a-zA-Z0-9]{1,30}$;
// the job name is app.app_ns.service.service_ns. Requested addresses are optional.
type ServiceRequest struct {
	ID          string `json:"id,omitempty"` // chosen by root when empty
	App         string `json:"app"`
	AppNS       string `json:"app_ns"`
	Service     string `json:"service"`
	ServiceNS   string `json:"service_ns"`
	RRIP        string `json:"rr_ip,omitempty"`
	RRIPv6      string `json:"rr_ip_v6,omitempty"`
	ClosestIP   string `json:"closest_ip,omitempty"`
	ClosestIPv6 string `json:"closest_ip_v6,omitempty"`
}

// JobName is the name the service will have: app.app_ns.service.service_ns.
func (r ServiceRequest) JobName() string {
	return r.App + "." + r.AppNS + "." + r.Service + "." + r.ServiceNS
}

// Service is a deployed service with its Service IPs, one pair per policy.
type Service struct {
	ID          string     `json:"id"`
	JobName     string     `json:"job_name"`
	App         string     `json:"app"`
	AppNS       string     `json:"app_ns"`
	Service     string     `json:"service"`
	ServiceNS   string     `json:"service_ns"`
	RRIP        netip.Addr `json:"rr_ip"`
	RRIPv6      netip.Addr `json:"rr_ip_v6"`
	ClosestIP   netip.Addr `json:"closest_ip"`
	ClosestIPv6 netip.Addr `json:"closest_ip_v6"`
	CreatedAt   time.Time  `json:"created_at"`
	Revision    uint64     `json:"revision"`
}

// ServiceList is one page of services; pass Next as ?after= for the next page.
type ServiceList struct {
	Items []Service `json:"items"`
	Next  string    `json:"next,omitempty"`
}

// InstanceRequest creates an instance: its Instance IP pair is allocated at once, its
// placement is reported later. Number is chosen by root (lowest unused) when absent.
type InstanceRequest struct {
	Number    *int   `json:"number,omitempty"`
	ClusterID string `json:"cluster_id"`
}

// Placement reports where an instance runs and whether it is alive.
type Placement struct {
	NamespaceIP   netip.Addr `json:"namespace_ip"`
	NamespaceIPv6 netip.Addr `json:"namespace_ip_v6"`
	HostIP        netip.Addr `json:"host_ip"`
	HostPort      int        `json:"host_port"`
	Location      *geo.Point `json:"location,omitempty"`
	Status        string     `json:"status"` // running | failed | stopped
	// ClusterID is the cluster reporting the placement, when it says: a running or failed
	// instance moves to it (it migrated), and a stop from a cluster the instance has left
	// is ignored. With HostIP on a stop, a stop from a host it has left is ignored too.
	ClusterID string `json:"cluster_id,omitempty"`
	// IfRevision, when set on a stop or failure, applies it only while the instance still
	// has this revision. A cluster that reports a vanished node's instances failed says
	// which placement it last saw: when anything placed the instance since (the node came
	// back through another cluster replica, the instance moved), the report is ignored
	// like a stop from a host the instance has left.
	IfRevision uint64 `json:"if_revision,omitempty"`
	// Sequence orders the placements one cluster reports (with ClusterID): root applies
	// one only if its sequence is above the last it applied from that cluster for the
	// instance, and otherwise ignores it like a late stop. A report retried after a
	// timeout may still reach root after the ones queued behind it (the first attempt
	// was in flight, not lost); this keeps it from undoing them. Clusters use the wall
	// clock in nanoseconds, made strictly increasing, so replicas of one cluster agree.
	// Across clusters, whose clocks may disagree a little, root ignores a report more
	// than 2 s older than the last it applied from another cluster (a deploy report
	// that waited in a backlogged cluster while the instance migrated elsewhere).
	// 0: unordered (reference callers).
	Sequence uint64 `json:"sequence,omitempty"`
}

// Instance is one replica with its Instance IPs and, once placed, its placement.
type Instance struct {
	Number        int        `json:"instance_number"`
	InstanceIP    netip.Addr `json:"instance_ip"`
	InstanceIPv6  netip.Addr `json:"instance_ip_v6"`
	ClusterID     string     `json:"cluster_id"`
	NamespaceIP   netip.Addr `json:"namespace_ip,omitzero"`
	NamespaceIPv6 netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	HostPort      int        `json:"host_port,omitempty"`
	Location      *geo.Point `json:"location,omitempty"`
	Status        string     `json:"status"`
	// Standby is where the instance also ran when a node reported it running elsewhere
	// (a migration starts the new place before stopping the old): until one of the two
	// places stops it, a stop from either leaves it running at the other.
	Standby *Place `json:"standby,omitempty"`
	// DistanceKM is set in resolve answers that were given a caller location.
	DistanceKM *float64  `json:"distance_km,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
	Revision   uint64    `json:"revision"`
}

// Place is where an instance runs: its cluster, node and Namespace IPs.
type Place struct {
	ClusterID     string     `json:"cluster_id"`
	NamespaceIP   netip.Addr `json:"namespace_ip,omitzero"`
	NamespaceIPv6 netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP        netip.Addr `json:"host_ip,omitzero"`
	HostPort      int        `json:"host_port,omitempty"`
}

// TableEntry is what a node needs to reach a service: its Service IPs and live instances.
// When resolved with a caller location, Instances are nearest first (the Closest order).
type TableEntry struct {
	Service   Service    `json:"service"`
	Instances []Instance `json:"instances"`
	// MatchedInstance is set when the entry was resolved by an Instance IP.
	MatchedInstance *int `json:"matched_instance,omitempty"`
	// Revision is root's revision read before the entry: it reflects every change up to
	// it. A cache keeps the entry with the highest Revision.
	Revision uint64 `json:"revision"`
}

// SubnetRequest asks for a worker subnet pair for one node of a cluster.
type SubnetRequest struct {
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id"`
}

// Subnet is a worker subnet pair (a /26 and a /120 by default).
type Subnet struct {
	SubnetV4  netip.Prefix `json:"subnet_v4"`
	SubnetV6  netip.Prefix `json:"subnet_v6"`
	ClusterID string       `json:"cluster_id"`
	NodeID    string       `json:"node_id"`
	CreatedAt time.Time    `json:"created_at"`
}

// Interest registers a cluster's interest in a service (by job name or service ID).
type Interest struct {
	Service string `json:"service"`
}

// Kinds of Change.
const (
	KindService  = "service"
	KindInstance = "instance"
	KindGateway  = "gateway"
	KindExposure = "exposure"
)

// Change is one entry of the change stream: what changed, not the new state (fetch the
// table entry to get it; a reader that is behind converges in one read).
type Change struct {
	Revision  uint64 `json:"revision"`
	Kind      string `json:"kind"` // service | instance | gateway | exposure
	Op        string `json:"op"`   // put | delete
	ServiceID string `json:"service_id"`
	JobName   string `json:"job_name"`
	Instance  int    `json:"instance"` // -1 for service-level changes
	// Object names the gateway (its id) or the exposure (its id, "tcp-8080") a gateway
	// or exposure change is about. ServiceID and JobName of an exposure change are the
	// exposed service's; a gateway change has neither.
	Object string    `json:"object,omitempty"`
	Time   time.Time `json:"time"`
}

// ChangeBatch answers GET /api/v1/clusters/{id}/changes?since=R. Continue with
// since=Revision. Resync is set when the log no longer reaches back to R: the reader must
// re-read every table entry it caches, then continue from Revision.
//
// Asked with entries=true, Entries holds the table entry of each service the changes
// touch, read after them (as GET /resolve/{service ID} answers it), so the reader needs
// no round trip per change. A service deleted or gone by then has none, and root may
// leave out one it could not read: the reader re-reads those itself.
type ChangeBatch struct {
	Changes  []Change     `json:"changes"`
	Revision uint64       `json:"revision"`
	Resync   bool         `json:"resync,omitempty"`
	Entries  []TableEntry `json:"entries,omitempty"`
}

// PeerChange tells a root process that another one on the same MongoDB logged a change
// (POST /api/v1/peer/changes, root's --peer): its change-stream long polls re-read the
// store at once.
type PeerChange struct {
	Revision uint64 `json:"revision"`
}

// PoolUsage is the fill level of one address pool.
type PoolUsage struct {
	Name        string       `json:"name"`
	Prefix      netip.Prefix `json:"prefix"`
	Size        uint64       `json:"size"`
	Used        uint64       `json:"used"`
	Quarantined uint64       `json:"quarantined"`
}

// Gateways and exposures (issue 5, FLOWS.md "External client to service").
//
// A gateway is a worker node started with --gateway: it has public addresses and serves
// the platform's exposures on them. Root records each gateway as an instance of the
// system service GatewayJobName, so the gateway gets an Instance IP pair like any
// replica: replies from instances reach it through the ordinary table look-up of that
// Instance IP, in any cluster.

// GatewayJobName is the system service whose instances are the platform's gateways. The
// app namespace "semnet.system" is reserved: users cannot create services in it.
const GatewayJobName = "semnet.system.gateway.all"

// GatewayRequest registers, or re-registers, a gateway: PUT /api/v1/gateways/{id}, {id}
// being the node's worker id. Re-registering keeps the gateway's Instance IPs and
// updates the rest. At least one public address is required.
type GatewayRequest struct {
	ClusterID  string     `json:"cluster_id"`
	PublicIP   netip.Addr `json:"public_ip,omitzero"`
	PublicIPv6 netip.Addr `json:"public_ip_v6,omitzero"`
	// NamespaceIP and NamespaceIPv6 are the gateway's own overlay source addresses, a
	// Namespace IP pair from its worker subnet: instances' replies are sent to them.
	NamespaceIP   netip.Addr `json:"namespace_ip"`
	NamespaceIPv6 netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP        netip.Addr `json:"host_ip"`
	HostPort      int        `json:"host_port"`
	Location      *geo.Point `json:"location,omitempty"`
}

// Gateway is a registered gateway with its Instance IP pair (an instance of
// GatewayJobName numbered InstanceNumber).
type Gateway struct {
	ID string `json:"id"`
	GatewayRequest
	InstanceNumber int        `json:"instance_number"`
	InstanceIP     netip.Addr `json:"instance_ip"`
	InstanceIPv6   netip.Addr `json:"instance_ip_v6"`
	// Status is its instance's: running from its registration, failed once its cluster
	// saw its node stay away longer than the grace, running again when it registers
	// again. An operator's DNS or load balancer in front of the public addresses can
	// follow it.
	Status    string    `json:"status"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Exposure protocols and target policies.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"

	PolicyRoundRobin = "round_robin"
	PolicyClosest    = "closest"
	PolicyInstance   = "instance"
)

// ExposureRequest exposes a service's port on the gateways' public addresses:
// POST /api/v1/services/{service}/exposures. A public port is exposed at most once per
// protocol across the platform (409 otherwise), so every gateway serving it is
// interchangeable.
type ExposureRequest struct {
	Protocol    string `json:"protocol"`     // tcp | udp
	PublicPort  int    `json:"public_port"`  // 1-65535
	ServicePort int    `json:"service_port"` // 1-65535
	// Policy picks the target address: round_robin (default) or closest are the
	// service's Service IPs (closest = nearest to the gateway); instance is the Instance
	// IP of InstanceNumber.
	Policy         string `json:"policy,omitempty"`
	InstanceNumber *int   `json:"instance_number,omitempty"`
	// Gateway restricts the exposure to one gateway (its id, which must be registered);
	// empty means every gateway.
	Gateway string `json:"gateway,omitempty"`
}

// Exposure is an exposed port. ID is "<protocol>-<public_port>", e.g. "tcp-8080".
// TargetIP and TargetIPv6 are the address pair the policy picked: a client reaching
// the gateway over IPv4 is sent to TargetIP, over IPv6 to TargetIPv6.
type Exposure struct {
	ID string `json:"id"`
	ExposureRequest
	ServiceID  string     `json:"service_id"`
	JobName    string     `json:"job_name"`
	TargetIP   netip.Addr `json:"target_ip"`
	TargetIPv6 netip.Addr `json:"target_ip_v6"`
	CreatedAt  time.Time  `json:"created_at"`
	Revision   uint64     `json:"revision"`
}

// ExposureList answers GET /api/v1/exposures[?gateway=ID] and
// GET /api/v1/services/{service}/exposures. With ?gateway=ID it holds the exposures
// that gateway serves (its own and those for every gateway). Revision is root's
// revision read before the list.
type ExposureList struct {
	Items    []Exposure `json:"items"`
	Revision uint64     `json:"revision"`
}
