// Package mqttapi is the MQTT contract between a cluster and its worker nodes
// (CONTRACT.md "Cluster MQTT"): the topic names and the JSON payloads, exactly as the
// reference worker node speaks them, plus semnet's additions (fields only, never
// renames: reference nodes ignore unknown fields).
//
// This is the one place that knows the topic names; the broker's ACL, the cluster's
// handlers and the node's client all build and parse topics here.
package mqttapi

import "strings"

// Topic suffixes a node publishes under NodePrefix(id) (node -> cluster).
const (
	SuffixDeployed       = "service/deployed"
	SuffixUndeployed     = "service/undeployed"
	SuffixAddressChanged = "service/address-changed"
	SuffixTableQuery     = "tablequery/request"
	SuffixSubnet         = "subnet"
	SuffixInterestRemove = "interest/remove"
	// SuffixGatewayRegister is semnet's addition: a gateway node announces its public
	// addresses; the cluster answers on SuffixGatewayConfig.
	SuffixGatewayRegister = "gateway/register"
)

// Topic suffixes the cluster publishes under NodePrefix(id) (cluster -> one node).
const (
	SuffixTableQueryResult = "tablequery/result"
	SuffixSubnetResult     = "subnetwork/result"
	// SuffixGatewayConfig carries a gateway's whole configuration (GatewayConfig): the
	// answer to its registration, and again after every change to its exposures.
	SuffixGatewayConfig = "gateway/config"
)

// UpdatesFilter is the filter matching every job's update topic; nodes may subscribe to
// it (or to single jobs' topics), only the cluster may publish there.
const UpdatesFilter = "jobs/+/updates_available"

// NodePrefix returns "nodes/<id>/", the subtree a node owns: it may publish and subscribe
// only below it (besides subscribing to job updates).
func NodePrefix(nodeID string) string { return "nodes/" + nodeID + "/" }

// NodeTopic returns the topic "nodes/<id>/net/<suffix>".
func NodeTopic(nodeID, suffix string) string { return "nodes/" + nodeID + "/net/" + suffix }

// UpdatesTopic returns "jobs/<key>/updates_available"; key is a job name or, for nodes
// that queried by address, a Service or Instance IP.
func UpdatesTopic(key string) string { return "jobs/" + key + "/updates_available" }

// ToCluster reports whether topic is one on which node nodeID talks to the cluster:
// "nodes/<id>/net" or below it (what the reference cluster subscribes to as
// "nodes/+/net/#"). It builds no string: the broker asks it for every message.
func ToCluster(topic, nodeID string) bool {
	rest, ok := UnderNode(topic, nodeID)
	if ok {
		rest, ok = strings.CutPrefix(rest, "net")
	}
	return ok && (rest == "" || rest[0] == '/')
}

// UnderNode returns what follows NodePrefix(nodeID) in topic (or filter); ok is false
// when topic is not below it. It builds no string: the broker asks it for every message
// and every delivery.
func UnderNode(topic, nodeID string) (rest string, ok bool) {
	rest, ok = strings.CutPrefix(topic, "nodes/")
	if ok {
		rest, ok = strings.CutPrefix(rest, nodeID)
	}
	if ok {
		rest, ok = strings.CutPrefix(rest, "/")
	}
	return rest, ok
}

// ParseNodeTopic splits "nodes/<id>/net/<suffix>" into its node id and suffix; ok is false
// for any other shape (including an empty id or suffix).
func ParseNodeTopic(topic string) (nodeID, suffix string, ok bool) {
	rest, found := strings.CutPrefix(topic, "nodes/")
	if !found {
		return "", "", false
	}
	nodeID, rest, found = strings.Cut(rest, "/")
	if !found || nodeID == "" {
		return "", "", false
	}
	suffix, found = strings.CutPrefix(rest, "net/")
	if !found || suffix == "" {
		return "", "", false
	}
	return nodeID, suffix, true
}

// ParseUpdatesTopic returns the key of "jobs/<key>/updates_available".
func ParseUpdatesTopic(topic string) (key string, ok bool) {
	rest, found := strings.CutPrefix(topic, "jobs/")
	if !found {
		return "", false
	}
	key, found = strings.CutSuffix(rest, "/updates_available")
	if !found || key == "" || strings.Contains(key, "/") {
		return "", false
	}
	return key, true
}
