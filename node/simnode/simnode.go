// Package simnode runs simulated worker nodes: the control-plane half of `semnet node`
// (an MQTT link to the cluster, a worker subnet, instances reported running, table
// queries) with no datapath, so a platform can be tried without privileges. `semnet up`
// runs a few to give its demo service somewhere to live.
package simnode

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/geo"
)

// Config configures a simulated node.
type Config struct {
	ID       string // worker id: MQTT client id and username
	Broker   string // the cluster's MQTT address, host:port
	Password string // empty for a broker admitting workers by client id
	// HostIP and HostPort are the tunnel endpoint the node reports for its instances.
	// Nothing listens there: other nodes' packets would go nowhere.
	HostIP   netip.Addr
	HostPort int
	Location *geo.Point // reported with each instance; nil: the cluster's
	// OnUpdate, when set, receives every push on a key the node follows (see Follow),
	// from the MQTT client's goroutine: it must not block on the node.
	OnUpdate func(key string, u mqttapi.UpdatesAvailable)
	// OnReconnect, when set, is called after every reconnection, once the node has
	// re-announced its instances: pushes sent while it was away are lost, so a node
	// re-reads the entries it holds there.
	OnReconnect func()
	Logger      *slog.Logger
}

// Node is a connected simulated node. It is safe for concurrent use.
type Node struct {
	cfg    Config
	link   *clusterlink.Link
	subnet mqttapi.SubnetResult

	mu        sync.Mutex
	last      [2]netip.Addr // the latest Namespace IP pair handed out
	instances map[instanceKey]mqttapi.Deployed
	connected bool // once the first connection is up: later ones are reconnections
}

type instanceKey struct {
	job    string
	number int
}

// Start connects to the cluster and takes a worker subnet, as a real node does first.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if !cfg.HostIP.IsValid() || cfg.HostPort < 1 || cfg.HostPort > 65535 {
		return nil, fmt.Errorf("simnode %s: a host IP and a port between 1 and 65535 are required", cfg.ID)
	}
	n := &Node{cfg: cfg, instances: map[instanceKey]mqttapi.Deployed{}}
	link, err := clusterlink.Dial(ctx, clusterlink.Config{Broker: cfg.Broker, NodeID: cfg.ID, Password: cfg.Password,
		Logger: cfg.Logger, OnConnect: n.announce, OnUpdate: cfg.OnUpdate})
	if err != nil {
		return nil, fmt.Errorf("simnode %s: %w", cfg.ID, err)
	}
	n.link = link
	if n.subnet, err = link.Subnet(ctx); err != nil {
		link.Close()
		return nil, fmt.Errorf("simnode %s: subnet: %w", cfg.ID, err)
	}
	// .0 is the network and .1 the bridge, as on a real node: instances start at .2.
	n.last = [2]netip.Addr{n.subnet.Address.Next(), n.subnet.AddressV6.Next()}
	return n, nil
}

// Subnet returns the node's worker subnet pair (its first addresses).
func (n *Node) Subnet() (v4, v6 netip.Addr) { return n.subnet.Address, n.subnet.AddressV6 }

// Deploy reports instance number of job running on the node with the next Namespace IP
// pair of its subnet, and returns that pair. The instance must exist at root.
func (n *Node) Deploy(ctx context.Context, job string, number int) (v4, v6 netip.Addr, err error) {
	n.mu.Lock()
	v4, v6 = n.last[0].Next(), n.last[1].Next()
	n.last = [2]netip.Addr{v4, v6}
	d := mqttapi.Deployed{AppName: job, Status: "running", InstanceNumber: refapi.FlexInt(number),
		NSIP: v4.String(), NSIPv6: v6.String(), HostIP: n.cfg.HostIP.String(), HostPort: refapi.FlexInt(n.cfg.HostPort)}
	if l := n.cfg.Location; l != nil {
		d.Lat, d.Lon = &l.Lat, &l.Lon
	}
	n.instances[instanceKey{job, number}] = d
	n.mu.Unlock()
	if err := n.link.Deployed(ctx, d); err != nil {
		return v4, v6, fmt.Errorf("simnode %s: report %s instance %d: %w", n.cfg.ID, job, number, err)
	}
	return v4, v6, nil
}

// Undeploy reports instance number of job stopped on the node.
func (n *Node) Undeploy(ctx context.Context, job string, number int) error {
	n.mu.Lock()
	delete(n.instances, instanceKey{job, number})
	n.mu.Unlock()
	err := n.link.Undeployed(ctx, mqttapi.Undeployed{AppName: job, InstanceNumber: refapi.FlexInt(number),
		HostIP: n.cfg.HostIP.String(), HostPort: refapi.FlexInt(n.cfg.HostPort)})
	if err != nil {
		return fmt.Errorf("simnode %s: report %s instance %d stopped: %w", n.cfg.ID, job, number, err)
	}
	return nil
}

// Query asks the cluster for key's table entry, as a node does on a cache miss.
func (n *Node) Query(ctx context.Context, key string) (*mqttapi.TableQueryResult, error) {
	return n.link.Query(ctx, key)
}

// Follow subscribes to the pushes for key (a job name or an IP): Config.OnUpdate gets
// them. The subscription survives reconnections.
func (n *Node) Follow(ctx context.Context, key string) error { return n.link.Follow(ctx, key) }

// Unfollow drops the subscription for key and tells the cluster the node no longer needs
// it (interest/remove).
func (n *Node) Unfollow(ctx context.Context, key string) error { return n.link.Unfollow(ctx, key) }

// announce re-reports every instance after a reconnection: a restarted cluster learns
// what runs here, as from a real node.
func (n *Node) announce() {
	n.mu.Lock()
	again := n.connected
	n.connected = true
	ds := make([]mqttapi.Deployed, 0, len(n.instances))
	for _, d := range n.instances {
		ds = append(ds, d)
	}
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, d := range ds {
		if err := n.link.Deployed(ctx, d); err != nil && n.cfg.Logger != nil {
			n.cfg.Logger.Warn("re-announce instance", "node", n.cfg.ID, "job", d.AppName, "err", err)
		}
	}
	if again && n.cfg.OnReconnect != nil {
		n.cfg.OnReconnect()
	}
}

// Connected reports whether the node's link to the cluster is up now.
func (n *Node) Connected() bool { return n.link.Connected() }

// Close disconnects from the cluster; the cluster sees the node gone.
func (n *Node) Close() { n.link.Close() }
