// Package nodeapi is the node agent's local API (CONTRACT.md, "Node local API"): the
// JSON the platform's node engine sends over the node's unix socket to attach an
// instance to the overlay and detach it again. Field names are the reference node's, so
// its node engine drives semnet unchanged; semnet adds fields only.
package nodeapi

// Paths of the local API.
const (
	PathRegister = "/register"
	PathDeploy   = "/container/deploy"
	PathUndeploy = "/container/undeploy"
)

// RegisterRequest is the reference node engine's hello: the worker id and the cluster's
// MQTT address. semnet's node is configured by its command line; it checks that the
// two agree.
type RegisterRequest struct {
	ClientID       string `json:"client_id"`
	ClusterAddress string `json:"cluster_address"`
}

// DeployRequest attaches an instance: its network namespace is given by the pid of a
// process inside it (reference) or by a namespace path (semnet: NetNS, e.g.
// /var/run/netns/<name>); exactly one must be set.
type DeployRequest struct {
	Pid int `json:"pid,omitempty"`
	// NetNS is a network namespace path, the alternative to Pid.
	NetNS string `json:"netns,omitempty"`
	// ServiceName is the job name, four dot-separated parts.
	ServiceName    string `json:"serviceName"`
	InstanceNumber int    `json:"instanceNumber"`
	// PortMappings is the reference's port mapping string; the overlay does not need it
	// (instances are reached on their own namespace IP), it is accepted and ignored.
	PortMappings string `json:"portMappings,omitempty"`
}

// DeployResponse gives the instance's Namespace IPs.
type DeployResponse struct {
	ServiceName string `json:"serviceName"`
	NsAddress   string `json:"nsAddress"`
	NsAddressV6 string `json:"nsAddressv6"`
}

// UndeployRequest detaches an instance. The reference sends the instance number as
// "instance"; "instanceNumber" is accepted too.
type UndeployRequest struct {
	ServiceName    string `json:"serviceName"`
	Instance       *int   `json:"instance,omitempty"`
	InstanceNumber *int   `json:"instanceNumber,omitempty"`
}

// Number returns the instance number however it was sent, and whether it was.
func (u UndeployRequest) Number() (int, bool) {
	switch {
	case u.InstanceNumber != nil:
		return *u.InstanceNumber, true
	case u.Instance != nil:
		return *u.Instance, true
	}
	return 0, false
}
