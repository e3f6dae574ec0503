package mqttapi

import (
	"net/netip"
	"time"

	"github.com/semnet/semnet/proto/refapi"
)

// Deployed is published by a node on service/deployed when an instance started on it.
// host_port is a string here in the reference (and a number elsewhere): FlexInt takes
// both. Lat and Lon are semnet's addition: the node's location, for the Closest policy.
type Deployed struct {
	AppName        string         `json:"appname"`
	Status         string         `json:"status"`
	InstanceNumber refapi.FlexInt `json:"instance_number"`
	NSIP           string         `json:"nsip"`
	NSIPv6         string         `json:"nsipv6"`
	HostIP         string         `json:"host_ip"`
	HostPort       refapi.FlexInt `json:"host_port"`
	Lat            *float64       `json:"lat,omitempty"`
	Lon            *float64       `json:"lon,omitempty"`
}

// Undeployed is published on service/undeployed when an instance stopped on the node.
type Undeployed struct {
	AppName        string         `json:"appname"`
	InstanceNumber refapi.FlexInt `json:"instance_number"`
	// HostIP and HostPort (semnet nodes; reference nodes leave them out) say where the
	// instance stopped, so a stop arriving after the instance migrated elsewhere is ignored.
	HostIP   string         `json:"host_ip,omitempty"`
	HostPort refapi.FlexInt `json:"host_port,omitempty"`
}

// AddressChanged is published on service/address-changed when the node's tunnel
// endpoint of an instance changed (the node got a new host address or port).
type AddressChanged struct {
	AppName        string         `json:"appname"`
	InstanceNumber refapi.FlexInt `json:"instance_number"`
	HostIP         string         `json:"host_ip"`
	HostPort       refapi.FlexInt `json:"host_port"`
}

// TableQuery is published on tablequery/request. The reference node always sends both
// fields, the unused one empty: SIP (a Service or Instance IP) wins when both are set.
type TableQuery struct {
	SName string `json:"sname"`
	SIP   string `json:"sip"`
}

// Key returns what the query asks for: the IP if given, else the job name.
func (q TableQuery) Key() string {
	if q.SIP != "" {
		return q.SIP
	}
	return q.SName
}

// IP types in a TableQueryResult's service_ip lists. The reference node matches them
// case-sensitively and takes any other string for an instance IP, so these exact
// spellings matter (note "Closest" here, while root's job document says "closest").
const (
	IPTypeRR         = "RR"
	IPTypeClosest    = "Closest"
	IPTypeInstanceIP = "instance_ip"
)

// TableQueryResult answers a TableQuery on tablequery/result. A node matches it to its
// waiting request by AppName, QueryKey or any service IP in it.
//
// semnet's additions: Error is set (and InstanceList empty) when the query cannot be
// answered, e.g. `unknown service "x"` — the reference stayed silent and let the node
// time out — and ErrorCode says what kind of failure it is (QueryErr...); Revision is
// root's revision the answer reflects; Stale is set when the cluster has not heard from
// root for longer than its staleness bound.
type TableQueryResult struct {
	AppName      string          `json:"app_name"`
	QueryKey     string          `json:"query_key"`
	InstanceList []TableInstance `json:"instance_list"`
	Error        string          `json:"error,omitempty"`
	ErrorCode    string          `json:"error_code,omitempty"`
	Revision     uint64          `json:"revision,omitempty"`
	Stale        bool            `json:"stale,omitempty"`
}

// Error codes of a TableQueryResult. Only QueryErrUnknown says the job is gone: a node
// drops its entry on it, and keeps the entry on the others.
const (
	QueryErrUnknown     = "unknown"     // no job has the key (root said so)
	QueryErrUnavailable = "unavailable" // root cannot be asked now, or the cluster is busy: ask again later
	QueryErrInvalid     = "invalid"     // the request is malformed
)

// TableInstance is one live instance in a TableQueryResult, with the service's IPs
// (RR, Closest) and its own Instance IP in ServiceIP. host_port is a number here.
// Lat, Lon and Status are semnet's additions.
type TableInstance struct {
	InstanceNumber int         `json:"instance_number"`
	InstanceIP     netip.Addr  `json:"instance_ip"`
	InstanceIPv6   netip.Addr  `json:"instance_ip_v6"`
	ClusterID      string      `json:"cluster_id"`
	NamespaceIP    netip.Addr  `json:"namespace_ip"`
	NamespaceIPv6  netip.Addr  `json:"namespace_ip_v6,omitzero"`
	HostIP         netip.Addr  `json:"host_ip"`
	HostPort       int         `json:"host_port"`
	ServiceIP      []ServiceIP `json:"service_ip"`
	Lat            *float64    `json:"lat,omitempty"`
	Lon            *float64    `json:"lon,omitempty"`
	Status         string      `json:"status,omitempty"`
}

// ServiceIP is one address pair of an instance's service_ip list.
type ServiceIP struct {
	IPType    string     `json:"IpType"`
	Address   netip.Addr `json:"Address"`
	AddressV6 netip.Addr `json:"Address_v6,omitzero"`
}

// SubnetMethodGet is the only method of a SubnetRequest the cluster serves.
const SubnetMethodGet = "GET"

// SubnetRequest is published on subnet.
type SubnetRequest struct {
	Method string `json:"METHOD"`
}

// SubnetResult answers on subnetwork/result: the network addresses of the node's worker
// subnet pair. Error is semnet's addition, set (and the addresses absent) on failure.
type SubnetResult struct {
	Address   netip.Addr `json:"address,omitzero"`
	AddressV6 netip.Addr `json:"addressv6,omitzero"`
	Error     string     `json:"error,omitempty"`
}

// InterestRemove is published on interest/remove: the node no longer needs the entry it
// queried as AppName (a job name, or the IP it queried by).
type InterestRemove struct {
	AppName string `json:"appname"`
}

// Update types of an UpdatesAvailable.
const (
	UpdateChanged = "CHANGED" // the job's entry changed; Table holds the new one
	UpdateDeleted = "DELETED" // the job is gone
)

// UpdatesAvailable is published on jobs/<key>/updates_available. Reference nodes re-query
// on any message there; semnet nodes use Table (the fresh entry, as a query by Key would
// answer) and skip the round trip.
type UpdatesAvailable struct {
	Type  string            `json:"type"`
	Table *TableQueryResult `json:"table,omitempty"`
	// ChangedAt is when root logged the change this push is about (root's clock), unset
	// when the cluster re-read the entry for another reason: a node can tell how long a
	// change took to reach it.
	ChangedAt time.Time `json:"changed_at,omitzero"`
}

// GatewayRegister is published by a gateway node (semnet node --gateway) on
// gateway/register, at start and after every reconnection. The cluster registers it at
// root (PUT /api/v1/gateways/{id}) and answers with a GatewayConfig.
type GatewayRegister struct {
	PublicIP      netip.Addr `json:"public_ip,omitzero"`
	PublicIPv6    netip.Addr `json:"public_ip_v6,omitzero"`
	NamespaceIP   netip.Addr `json:"namespace_ip"` // the gateway's overlay source address
	NamespaceIPv6 netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP        netip.Addr `json:"host_ip"`
	HostPort      int        `json:"host_port"`
	Lat           *float64   `json:"lat,omitempty"`
	Lon           *float64   `json:"lon,omitempty"`
}

// GatewayConfig is published by the cluster on a gateway node's gateway/config: the
// whole configuration, so a node that missed one applies the next and converges. The
// gateway is instance InstanceNumber of JobName (api.GatewayJobName), which gives it its
// Instance IPs. Error is set, and the rest empty, when registration failed; the node
// registers again later.
type GatewayConfig struct {
	JobName        string            `json:"job_name,omitempty"`
	InstanceNumber int               `json:"instance_number"`
	InstanceIP     netip.Addr        `json:"instance_ip,omitzero"`
	InstanceIPv6   netip.Addr        `json:"instance_ip_v6,omitzero"`
	Exposures      []GatewayExposure `json:"exposures"`
	Revision       uint64            `json:"revision,omitempty"`
	Error          string            `json:"error,omitempty"`
}

// GatewayExposure is one exposed port as a gateway applies it: traffic to its public
// address on PublicPort (Protocol "tcp" or "udp") goes to TargetIP:ServicePort (IPv4
// clients) or TargetIPv6:ServicePort (IPv6 clients).
type GatewayExposure struct {
	ID          string     `json:"id"`
	JobName     string     `json:"job_name"`
	Protocol    string     `json:"protocol"`
	PublicPort  int        `json:"public_port"`
	ServicePort int        `json:"service_port"`
	TargetIP    netip.Addr `json:"target_ip"`
	TargetIPv6  netip.Addr `json:"target_ip_v6,omitzero"`
}
