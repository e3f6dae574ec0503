// Package refapi holds the JSON bodies of the reference platform's root network API
// (Oakestra's /api/net, CONTRACT.md "Root REST (reference)") and of the root -> cluster
// job update. The reference's own components produce and consume these, so every JSON
// name here is exact, including the odd ones (`_id`, `RR_ip`, `IpType`, `Address_v6`).
// semnet only ever adds fields (Closest IPs, location, status), never renames.
//
// Requests are decoded liberally: numbers that the reference sends sometimes as a string
// (ports, instance numbers) are FlexInt, and older field names the reference orchestrator
// used (`system_job_id`, `service_name`, `addresses.rr_ip`) are accepted as fall-backs.
package refapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// FlexInt is an integer that may arrive as a JSON number or as a decimal string (the
// reference's `host_port` is a string in some messages and a number in others). It is
// encoded as a number.
type FlexInt int

// UnmarshalJSON accepts 42, "42" and null (left unchanged).
func (f *FlexInt) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("decode integer string: %w", err)
		}
		s = strings.TrimSpace(s)
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		// A type error, so the decoder names the field it happened in.
		return &json.UnmarshalTypeError{Value: string(b) + " (want a number or a decimal string)", Type: reflect.TypeFor[int]()}
	}
	*f = FlexInt(n)
	return nil
}

// ClusterRegistration is POST /api/net/cluster.
type ClusterRegistration struct {
	ClusterID      string  `json:"cluster_id"`
	ClusterAddress string  `json:"cluster_address"`
	ClusterPort    FlexInt `json:"cluster_port"`
}

// ServiceDeploy is POST /api/net/service/deploy. The job ID is `_id`; reference
// orchestrators before that rename sent `system_job_id`, accepted when `_id` is empty.
type ServiceDeploy struct {
	ID          string               `json:"_id"`
	SystemJobID string               `json:"system_job_id,omitempty"`
	Descriptor  DeploymentDescriptor `json:"deployment_descriptor"`
}

// JobID returns `_id`, or `system_job_id` when `_id` is empty.
func (d ServiceDeploy) JobID() string {
	if d.ID != "" {
		return d.ID
	}
	return d.SystemJobID
}

// DeploymentDescriptor is the part of the orchestrator's job that networking reads; the
// orchestrator sends its whole job, whose other fields are ignored. The job name is
// app_name.app_ns.microservice_name.microservice_namespace.
type DeploymentDescriptor struct {
	AppName               string `json:"app_name"`
	AppNS                 string `json:"app_ns"`
	MicroserviceName      string `json:"microservice_name"`
	MicroserviceNamespace string `json:"microservice_namespace"`
	// ServiceName and ServiceNS are the reference orchestrator's copies of the two
	// microservice names (older orchestrators sent only these); used when the
	// microservice_* fields are empty.
	ServiceName string `json:"service_name,omitempty"`
	ServiceNS   string `json:"service_ns,omitempty"`

	// Requested Service IPs (optional). RR_ip must lie in 10.30.0.0/16 and RR_ip_v6 in
	// fdff:2000::/21; closest_ip and closest_ip_v6 are semnet's additions.
	RRIP        string `json:"RR_ip,omitempty"`
	RRIPv6      string `json:"RR_ip_v6,omitempty"`
	ClosestIP   string `json:"closest_ip,omitempty"`
	ClosestIPv6 string `json:"closest_ip_v6,omitempty"`
	// Addresses is the SLA's own spelling of the requested addresses, which the
	// orchestrator copies into RR_ip and RR_ip_v6; used for any of those left empty.
	Addresses *RequestedAddresses `json:"addresses,omitempty"`
}

// RequestedAddresses is the SLA's `addresses` object.
type RequestedAddresses struct {
	RRIP        string `json:"rr_ip,omitempty"`
	RRIPv6      string `json:"rr_ip_v6,omitempty"`
	ClosestIP   string `json:"closest_ip,omitempty"`
	ClosestIPv6 string `json:"closest_ip_v6,omitempty"`
}

// Names returns the four parts of the job name, taking the service_* fall-backs into
// account.
func (d DeploymentDescriptor) Names() (app, appNS, service, serviceNS string) {
	service, serviceNS = d.MicroserviceName, d.MicroserviceNamespace
	if service == "" {
		service = d.ServiceName
	}
	if serviceNS == "" {
		serviceNS = d.ServiceNS
	}
	return d.AppName, d.AppNS, service, serviceNS
}

// Requested returns the requested Service IPs (rr, rr6, closest, closest6), each "" when
// not requested, taking the `addresses` fall-back into account.
func (d DeploymentDescriptor) Requested() (rr, rr6, closest, closest6 string) {
	rr, rr6, closest, closest6 = d.RRIP, d.RRIPv6, d.ClosestIP, d.ClosestIPv6
	if a := d.Addresses; a != nil {
		rr, rr6 = or(rr, a.RRIP), or(rr6, a.RRIPv6)
		closest, closest6 = or(closest, a.ClosestIP), or(closest6, a.ClosestIPv6)
	}
	return rr, rr6, closest, closest6
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// InstanceDeploy is POST /api/net/instance/deploy: instance InstanceNumber of job ID was
// scheduled on cluster ClusterID. `system_job_id` is accepted as for ServiceDeploy.
type InstanceDeploy struct {
	ID             string   `json:"_id"`
	SystemJobID    string   `json:"system_job_id,omitempty"`
	InstanceNumber *FlexInt `json:"instance_number"`
	ClusterID      string   `json:"cluster_id"`
}

// JobID returns `_id`, or `system_job_id` when `_id` is empty.
func (d InstanceDeploy) JobID() string {
	if d.ID != "" {
		return d.ID
	}
	return d.SystemJobID
}

// DeployStatus is POST /api/net/service/net_deploy_status: where a cluster placed
// instances of job JobID.
type DeployStatus struct {
	JobID     string             `json:"job_id"`
	Instances []DeployedInstance `json:"instances"`
}

// DeployedInstance is one placed instance in a DeployStatus. Lat and Lon are semnet's
// addition (the worker's location, for the Closest policy); the reference sends neither.
type DeployedInstance struct {
	InstanceNumber *FlexInt `json:"instance_number"`
	NamespaceIP    string   `json:"namespace_ip"`
	NamespaceIPv6  string   `json:"namespace_ip_v6"`
	HostIP         string   `json:"host_ip"`
	HostPort       FlexInt  `json:"host_port"`
	Lat            *float64 `json:"lat,omitempty"`
	Lon            *float64 `json:"lon,omitempty"`
}

// IP types in a job's service_ip_list.
const (
	IPTypeRR      = "RR"
	IPTypeClosest = "closest"
)

// Job is the job document GET /api/net/service/.../instances answers (and the deploy
// calls echo).
type Job struct {
	ID            string      `json:"_id"`
	JobName       string      `json:"job_name"`
	ServiceIPList []ServiceIP `json:"service_ip_list"`
	InstanceList  []Instance  `json:"instance_list"`
}

// ServiceIP is one Service IP pair of a job, by balancing policy.
type ServiceIP struct {
	IPType    string     `json:"IpType"`
	Address   netip.Addr `json:"Address"`
	AddressV6 netip.Addr `json:"Address_v6"`
}

// Instance is one instance in a job document. The placement fields are absent until the
// instance is placed (as in the reference, which adds them at net_deploy_status); Lat and
// Lon are absent while the location is unknown (reference clusters report none). Status
// is semnet's addition: scheduled, running or failed.
type Instance struct {
	InstanceNumber int        `json:"instance_number"`
	InstanceIP     netip.Addr `json:"instance_ip"`
	InstanceIPv6   netip.Addr `json:"instance_ip_v6"`
	ClusterID      string     `json:"cluster_id"`
	NamespaceIP    netip.Addr `json:"namespace_ip,omitzero"`
	NamespaceIPv6  netip.Addr `json:"namespace_ip_v6,omitzero"`
	HostIP         netip.Addr `json:"host_ip,omitzero"`
	HostPort       int        `json:"host_port,omitempty"`
	Lat            *float64   `json:"lat,omitempty"`
	Lon            *float64   `json:"lon,omitempty"`
	Status         string     `json:"status"`
}

// Subnet answers GET /api/net/subnet: the network addresses of a fresh worker subnet pair
// (a /26 and a /120 by default; the lengths are the address plan's).
type Subnet struct {
	SubnetAddr   netip.Addr `json:"subnet_addr"`
	SubnetAddrV6 netip.Addr `json:"subnet_addr_v6"`
}

// IP types in an available-IP answer.
const (
	IPTypeV4 = "IPv4"
	IPTypeV6 = "IPv6"
)

// AvailableIPs answers GET /api/pubnet/service/netinfo/available-ip/[<n>]: free Service
// IPs, IPv4 ones first, not reserved.
type AvailableIPs struct {
	AvailableServiceIPs []AvailableIP `json:"available_service_ips"`
}

// AvailableIP is one free Service IP: Address for IPv4 or Address_v6 for IPv6, the other
// null, as in the reference.
type AvailableIP struct {
	Address   *netip.Addr `json:"Address"`
	AddressV6 *netip.Addr `json:"Address_v6"`
	IPType    string      `json:"IpType"`
}

// Update types of a JobUpdate.
const (
	UpdateDeployment   = "DEPLOYMENT"
	UpdateUndeployment = "UNDEPLOYMENT"
)

// JobUpdate is what root POSTs to a reference cluster's /api/net/job/update: instance
// InstanceNumber of job JobName was deployed or undeployed (-1: every instance).
type JobUpdate struct {
	JobName        string `json:"job_name"`
	InstanceNumber int    `json:"instance_number"`
	Type           string `json:"type"`
}

// JobUpdatePath is the cluster endpoint that receives JobUpdate.
const JobUpdatePath = "/api/net/job/update"

// CheckJobName reports whether name is a job name as the reference forms it: four
// non-empty dot-separated parts, app.app_ns.service.service_ns.
func CheckJobName(name string) error {
	parts := strings.Split(name, ".")
	if len(parts) != 4 {
		return fmt.Errorf("%q must have four dot-separated parts (app.app_ns.service.service_ns)", name)
	}
	if slices.Contains(parts, "") {
		return fmt.Errorf("%q has an empty part", name)
	}
	return nil
}
