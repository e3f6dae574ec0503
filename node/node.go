// Package node is the worker node agent (`semnet node`): it joins its cluster over
// MQTT, takes a worker subnet, sets up the bridge and TUN in the network namespace it
// runs in, attaches instances through its local API, and runs the datapath that
// resolves Service and Instance IPs, translates and tunnels packets.
//
// Data flow: instance -> bridge -> kernel route for the Service ranges -> TUN ->
// datapath.Engine (node/table picks the instance, node/conntrack keeps the flow) ->
// UDP tunnel to the chosen node -> its TUN -> its bridge -> the instance. The table is
// filled on demand by node/clusterlink queries and kept fresh by the cluster's pushes.
package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/datapath"
	"github.com/semnet/semnet/node/firewall"
	"github.com/semnet/semnet/node/localapi"
	"github.com/semnet/semnet/node/netsetup"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/geo"
)

// Config configures a node agent.
type Config struct {
	// ID is the worker id (MQTT client id and username).
	ID string
	// ClusterMQTT is the cluster broker's host:port; Password authenticates ID.
	ClusterMQTT string
	Password    string
	// TLS, when set, connects to the broker with TLS; a client certificate in it
	// authenticates ID (mutual TLS, certificate name = worker id) without a Password.
	TLS *tls.Config
	// HostIP is this node's address as the other nodes reach it (the tunnel's
	// destination); the node never discovers it by itself.
	HostIP netip.Addr
	// TunnelPort is the UDP port of the tunnel (default 50103).
	TunnelPort uint16
	// Location places the node for Closest (nil: ties broken by hash only).
	Location *geo.Point
	// Socket is the local API's unix socket path.
	Socket string
	// MTU of the TUN and the instances' interfaces (default 1450: see netsetup).
	MTU int
	// Bridge and TUN name the node's devices (defaults semnet0 and semnet-tun).
	Bridge, TUN string
	// IdleTimeout drops table entries no packet used (zero: table.DefaultIdleTimeout,
	// 10 s as the reference).
	IdleTimeout time.Duration
	// KeepAlive is the MQTT keepalive, the node's heartbeat (zero:
	// clusterlink.DefaultKeepAlive, 30 s as the reference). The cluster sees a node that
	// died without closing its connection gone after 1.5 × KeepAlive.
	KeepAlive time.Duration
	// Gateway, when set, makes this node a gateway for clients outside the platform.
	Gateway *GatewayConfig
	// Teardown makes Close remove the bridge and the instances' veths. Without it they
	// stay, as after a crash, and the next node started in this namespace takes them
	// over (see Start): a node that stops to restart cuts its instances off the overlay
	// only while it is down, and the platform need not deploy them again.
	Teardown bool
	Logger   *slog.Logger
}

func (c *Config) defaults() error {
	if c.ID == "" || c.ClusterMQTT == "" {
		return errors.New("node: --id and --cluster-mqtt are required")
	}
	if !c.HostIP.IsValid() {
		return errors.New("node: --host-ip is required: the address other nodes reach this one at (it is never discovered)")
	}
	if c.Socket == "" {
		return errors.New("node: --socket is required: the local API's unix socket path")
	}
	if c.TunnelPort == 0 {
		c.TunnelPort = 50103
	}
	if c.MTU == 0 {
		c.MTU = netsetup.DefaultMTU
	}
	if c.TUN == "" {
		c.TUN = netsetup.DefaultTUN
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Gateway != nil {
		return c.Gateway.defaults()
	}
	return nil
}

// Node is a running node agent.
type Node struct {
	serving atomic.Bool // Start finished: the table and flows exist (see refresh)
	cfg     Config
	log     *slog.Logger
	link    *clusterlink.Link
	host    *netsetup.Host
	addrs   *netsetup.Addresses
	table   *table.Table
	flows   *conntrack.Table
	fw      *firewall.Firewall // nil when nftables is unavailable on an ordinary node
	gw      *gatewayState      // nil on an ordinary node
	dp      *datapath.Datapath
	reg     *prometheus.Registry
	api     *http.Server
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu        sync.Mutex
	instances map[instanceKey]*instance
	following map[string]bool // jobs whose pushes the node follows

	updates struct{ pushes, applied, outdated, refused atomic.Uint64 } // for /metrics
	// changeDelay: root's change -> its push applied here (root's clock against ours)
	changeDelay prometheus.Histogram

	// followLocks serialise the subscription changes of one job (striped by its name):
	// an expiry's unfollow and a new follow of the job must not interleave.
	followLocks [64]sync.Mutex
	followSeed  maphash.Seed
}

type instanceKey struct {
	job    string
	number int
}

type instance struct {
	ns4, ns6 netip.Addr
	link     string // netsetup's instance name
}

// Start joins the cluster, sets up the devices and serves. It must run inside the
// node's own network namespace. Where an earlier node left its bridge (Config.Teardown),
// Start keeps that bridge's worker subnet pair and takes over the instances attached to
// it.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, instances: map[instanceKey]*instance{}, following: map[string]bool{},
		followSeed: maphash.MakeSeed(), changeDelay: newChangeDelay()}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			n.Close()
		}
	}()
	var err error
	lc := clusterlink.Config{
		Broker: cfg.ClusterMQTT, NodeID: cfg.ID, Password: cfg.Password, TLS: cfg.TLS, Logger: cfg.Logger,
		KeepAlive: cfg.KeepAlive, OnUpdate: n.onUpdate, OnConnect: n.announce,
	}
	if cfg.Gateway != nil {
		n.gw = newGatewayState(*cfg.Gateway)
		lc.OnGatewayConfig = n.onGatewayConfig
	}
	n.link, err = clusterlink.Dial(ctx, lc)
	if err != nil {
		return nil, err
	}
	subnet4, subnet6, err := n.subnets(ctx)
	if err != nil {
		return nil, err
	}
	if n.addrs, err = netsetup.NewAddresses(subnet4, subnet6); err != nil {
		return nil, err
	}
	dev, err := tun.CreateTUN(cfg.TUN, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("node: create TUN %s: %w", cfg.TUN, err)
	}
	services := netsetup.DefaultServiceRanges()
	n.host, err = netsetup.Setup(netsetup.Config{Bridge: cfg.Bridge, TUN: cfg.TUN, MTU: cfg.MTU,
		Subnet: subnet4, Subnet6: subnet6, ServiceRanges: services})
	if err != nil {
		dev.Close()
		return nil, err
	}
	n.table = table.New(table.Config{Location: cfg.Location, IdleTimeout: cfg.IdleTimeout})
	if n.flows, err = conntrack.New(conntrack.Config{}); err != nil {
		dev.Close()
		return nil, err
	}
	if err := n.takeOver(); err != nil {
		dev.Close()
		return nil, err
	}
	if n.fw, err = firewall.Open(n.firewallConfig(subnet4, subnet6)); err != nil {
		if cfg.Gateway != nil {
			dev.Close()
			return nil, fmt.Errorf("node: a gateway needs its firewall: %w", err)
		}
		n.log.Warn("no firewall: instances cannot reach addresses outside the overlay (no masquerade)", "err", err)
	}
	var nat *datapath.Gateway
	if cfg.Gateway != nil {
		if nat, err = n.newGateway(); err != nil {
			dev.Close()
			return nil, err
		}
	}
	n.dp = datapath.New(datapath.Config{
		TUN: dev, Bind: conn.NewStdNetBind(), Port: cfg.TunnelPort,
		Engine:  datapath.NewEngine(n.table, n.flows, services, nat),
		Resolve: n.resolve, Logger: cfg.Logger,
	})
	n.wg.Go(func() {
		if err := n.dp.Run(n.ctx); err != nil {
			n.log.Error("datapath stopped", "err", err)
		}
	})
	n.wg.Go(n.expire)
	if n.gw != nil {
		n.wg.Go(n.gatewayLoop)
		n.registerGateway(0)
	}

	n.reg = prometheus.NewRegistry()
	n.reg.MustRegister(newCollector(n), n.changeDelay)
	ln, err := localapi.Listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	n.api = &http.Server{Handler: localapi.Handler(n, localapi.Config{
		NodeID: cfg.ID, ClusterAddress: cfg.ClusterMQTT, Gatherer: n.reg, Logger: cfg.Logger,
		Ready: func(context.Context) error {
			if !n.link.Connected() {
				return errors.New("not connected to the cluster")
			}
			return nil
		},
	}), ReadHeaderTimeout: 10 * time.Second}
	n.wg.Go(func() {
		if err := n.api.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("local API stopped", "err", err)
		}
	})
	n.log.Info("node running", "id", cfg.ID, "subnet", subnet4, "subnet6", subnet6, "host", netip.AddrPortFrom(cfg.HostIP, cfg.TunnelPort), "socket", cfg.Socket)
	ok = true
	n.serving.Store(true)
	return n, nil
}

// Close stops the datapath, the API and the cluster link. The bridge and the instances'
// veths stay for the next node to take over, unless Config.Teardown asks to remove them
// (netsetup.Host.Teardown). Instances are not reported undeployed either way: a node
// that stops is not a decision to stop them.
func (n *Node) Close() {
	n.cancel()
	if n.api != nil {
		n.api.Close()
	}
	n.wg.Wait()
	if n.fw != nil {
		if err := n.fw.Close(); err != nil {
			n.log.Warn("remove firewall rules", "err", err)
		}
	}
	if n.host != nil {
		if n.cfg.Teardown {
			if err := n.host.Teardown(); err != nil {
				n.log.Warn("teardown", "err", err)
			}
		}
		n.host.Close()
	}
	if n.link != nil {
		n.link.Close()
	}
}

// subnets returns the node's worker subnet pair: the one its bridge still carries when
// an earlier node ran in this namespace (its instances may hold addresses in it, and
// root keeps it recorded for this node), otherwise a fresh one from the cluster.
func (n *Node) subnets(ctx context.Context) (netip.Prefix, netip.Prefix, error) {
	s4, s6, ok, err := netsetup.BridgeSubnets(n.cfg.Bridge, subnetBits4, subnetBits6)
	if err != nil {
		return s4, s6, fmt.Errorf("node: look for an earlier node's bridge: %w", err)
	}
	if ok {
		n.log.Info("keeping the worker subnet pair of the bridge an earlier node left", "bridge", n.cfg.Bridge, "subnet", s4, "subnet6", s6)
		return s4, s6, nil
	}
	sn, err := n.link.Subnet(ctx)
	if err != nil {
		return s4, s6, fmt.Errorf("node: get a worker subnet from the cluster: %w", err)
	}
	return netip.PrefixFrom(sn.Address, subnetBits4), netip.PrefixFrom(sn.AddressV6, subnetBits6), nil
}

// The worker subnets' lengths (ADDRESSING.md).
const (
	subnetBits4 = 26
	subnetBits6 = 120
)

// takeOver takes over the instances an earlier node attached: their Namespace IPs are
// taken again, they are local to the table, and the cluster hears they run here (with
// the next (re)connection's announce too). An attachment that cannot be taken over is
// detached, as a fresh node would have no record of it.
func (n *Node) takeOver() error {
	found, dropped, err := n.host.Recover()
	for _, err := range dropped {
		n.log.Warn("an earlier node's veth could not be accounted for; deleted", "err", err)
	}
	if err != nil {
		return fmt.Errorf("node: take over the instances an earlier node attached: %w", err)
	}
	for _, a := range found {
		k, err := parseInstanceName(a.Instance)
		if err == nil {
			var ips netsetup.NamespaceIPs
			if ips, err = n.addrs.Claim(a.NSIP); err == nil && ips.V6 != a.NSIP6 {
				err = fmt.Errorf("its IPv6 address %s is not %s's partner %s", a.NSIP6, a.NSIP, ips.V6)
				n.addrs.Release(a.NSIP)
			}
		}
		if err != nil {
			n.log.Warn("detaching an instance an earlier node attached", "instance", a.Instance, "veth", a.Link, "err", err)
			if err := n.host.Detach(a.Instance); err != nil {
				return fmt.Errorf("node: detach %s: %w", a.Instance, err)
			}
			continue
		}
		in := &instance{ns4: a.NSIP, ns6: a.NSIP6, link: a.Instance}
		n.mu.Lock()
		n.instances[k] = in
		n.mu.Unlock()
		n.table.AddLocal(k.job, k.number, in.ns4, in.ns6)
		n.follow(k.job)
		if err := n.link.Deployed(n.ctx, n.deployed(k, in)); err != nil {
			n.log.Warn("report an instance taken over", "job", k.job, "instance", k.number, "err", err)
		}
		n.log.Info("instance taken over from an earlier node", "job", k.job, "instance", k.number, "nsip", in.ns4, "nsipv6", in.ns6)
	}
	return nil
}

// resolve queries the cluster for an address packets wait for: an outbound destination,
// or the source of packets from the tunnel (called by the datapath, which must not
// block).
func (n *Node) resolve(dst netip.Addr) {
	n.wg.Go(func() {
		defer n.dp.Resolved(dst)
		r, err := n.link.Query(n.ctx, dst.String())
		if err != nil {
			n.log.Debug("resolve failed", "dst", dst, "err", err)
			return
		}
		n.apply(r)
		n.follow(r.AppName)
	})
}

// follow subscribes to a job's pushes once, then queries it again: a change between
// the first answer and the subscription would otherwise be missed. The caller has put
// the job in the table first (see unfollow).
func (n *Node) follow(job string) {
	n.mu.Lock()
	if n.following[job] {
		n.mu.Unlock()
		return
	}
	n.mu.Unlock()
	n.wg.Go(func() {
		l := n.followLock(job)
		l.Lock()
		n.mu.Lock()
		if n.following[job] { // another follow got here first
			n.mu.Unlock()
			l.Unlock()
			return
		}
		n.following[job] = true
		n.mu.Unlock()
		err := n.link.Follow(n.ctx, job)
		n.log.Debug("followed a job", "job", job, "err", err)
		if err != nil {
			n.mu.Lock()
			delete(n.following, job)
			n.mu.Unlock()
		}
		l.Unlock()
		if err != nil {
			n.log.Warn("follow job", "job", job, "err", err)
			return
		}
		if r, err := n.link.Query(n.ctx, job); err == nil {
			n.apply(r)
		}
	})
}

// apply installs an entry from the cluster and reports whether the table took it.
func (n *Node) apply(r *mqttapi.TableQueryResult) bool {
	gone, err := n.table.Apply(r, time.Now())
	if errors.Is(err, table.ErrOutdated) {
		n.updates.outdated.Add(1)
		return false
	}
	if err != nil {
		n.updates.refused.Add(1)
		n.log.Warn("table entry refused", "job", r.AppName, "err", err)
		return false
	}
	n.updates.applied.Add(1)
	n.forget(gone)
	return true
}

func (n *Node) forget(gone []netip.Addr) {
	for _, a := range gone {
		n.flows.Forget(a)
	}
}

// onUpdate applies a push: a semnet cluster carries the entry, a reference one only
// says "query again".
func (n *Node) onUpdate(key string, u mqttapi.UpdatesAvailable) {
	n.updates.pushes.Add(1)
	if n.log.Enabled(n.ctx, slog.LevelDebug) {
		var rev uint64
		if u.Table != nil {
			rev = u.Table.Revision
		}
		n.log.Debug("push", "key", key, "type", u.Type, "revision", rev)
	}
	switch {
	case u.Type == mqttapi.UpdateDeleted:
		n.forget(n.table.Delete(key))
		n.changed(u)
	case u.Table != nil && u.Table.Error == "":
		if n.apply(u.Table) {
			n.changed(u)
		}
	default:
		n.wg.Go(func() {
			if err := n.reread(key); err != nil {
				n.log.Debug("re-query after a push failed; keeping the entry", "key", key, "err", err)
			}
		})
	}
}

// changed records how long the change a push carried took to reach the table.
func (n *Node) changed(u mqttapi.UpdatesAvailable) {
	if !u.ChangedAt.IsZero() {
		n.changeDelay.Observe(time.Since(u.ChangedAt).Seconds())
	}
}

// expire drops entries no packet used and tells the cluster (interest/remove).
func (n *Node) expire() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case now := <-t.C:
			for _, e := range n.table.Expire(now) {
				n.forget(e.Gone)
				n.unfollow(e)
			}
		}
	}
}

// unfollow stops following an expired job and tells the cluster (interest/remove),
// unless a packet brought the job back meanwhile: a resolve that put it in the table
// again found it still followed and did not subscribe, so unsubscribing now would leave
// its entry without pushes for as long as packets use it. following is cleared before
// the table is checked, so a resolve that comes later subscribes again, after this.
func (n *Node) unfollow(e table.Expired) {
	l := n.followLock(e.Job)
	l.Lock()
	defer l.Unlock()
	n.mu.Lock()
	was := n.following[e.Job]
	delete(n.following, e.Job)
	n.mu.Unlock()
	if n.table.Known(e.Job) {
		n.mu.Lock()
		n.following[e.Job] = was
		n.mu.Unlock()
		n.log.Debug("an expired job is back in the table; still following it", "job", e.Job)
		return
	}
	n.log.Debug("unfollowing an expired job", "job", e.Job, "keys", e.Keys)
	for _, key := range e.Keys {
		if err := n.link.Unfollow(n.ctx, key); err != nil {
			n.log.Debug("interest/remove", "key", key, "err", err)
		}
	}
}

func (n *Node) followLock(job string) *sync.Mutex {
	return &n.followLocks[maphash.String(n.followSeed, job)%uint64(len(n.followLocks))]
}

// Deploy attaches an instance (local API).
func (n *Node) Deploy(ctx context.Context, req nodeapi.DeployRequest) (nodeapi.DeployResponse, error) {
	k := instanceKey{req.ServiceName, req.InstanceNumber}
	n.mu.Lock()
	if _, ok := n.instances[k]; ok {
		n.mu.Unlock()
		return nodeapi.DeployResponse{}, fmt.Errorf("%s instance %d: %w", k.job, k.number, localapi.ErrExists)
	}
	ips, err := n.addrs.Allocate()
	if err != nil {
		n.mu.Unlock()
		return nodeapi.DeployResponse{}, fmt.Errorf("%w: %v", localapi.ErrFull, err)
	}
	ns4, ns6 := ips.V4, ips.V6
	in := &instance{ns4: ns4, ns6: ns6, link: instanceName(k)}
	n.instances[k] = in
	n.mu.Unlock()
	if _, err := n.host.Attach(localapi.NamespacePath(req), ns4, ns6, in.link); err != nil {
		n.mu.Lock()
		delete(n.instances, k)
		n.mu.Unlock()
		n.addrs.Release(ns4)
		return nodeapi.DeployResponse{}, fmt.Errorf("node: attach %s instance %d: %w", k.job, k.number, err)
	}
	n.table.AddLocal(k.job, k.number, ns4, ns6)
	n.follow(k.job)
	if err := n.link.Deployed(ctx, n.deployed(k, in)); err != nil {
		// The instance is attached; the report goes again on the next reconnection.
		n.log.Warn("report deployment", "job", k.job, "instance", k.number, "err", err)
	}
	n.log.Info("instance attached", "job", k.job, "instance", k.number, "nsip", ns4, "nsipv6", ns6)
	return nodeapi.DeployResponse{ServiceName: k.job, NsAddress: ns4.String(), NsAddressV6: ns6.String()}, nil
}

func (n *Node) deployed(k instanceKey, in *instance) mqttapi.Deployed {
	d := mqttapi.Deployed{AppName: k.job, Status: "running", InstanceNumber: refapi.FlexInt(k.number),
		NSIP: in.ns4.String(), NSIPv6: in.ns6.String(), HostIP: n.cfg.HostIP.String(), HostPort: refapi.FlexInt(n.cfg.TunnelPort)}
	if n.cfg.Location != nil {
		d.Lat, d.Lon = &n.cfg.Location.Lat, &n.cfg.Location.Lon
	}
	return d
}

// Undeploy detaches an instance (local API).
func (n *Node) Undeploy(ctx context.Context, job string, number int) error {
	k := instanceKey{job, number}
	n.mu.Lock()
	in, ok := n.instances[k]
	delete(n.instances, k)
	n.mu.Unlock()
	if !ok {
		return fmt.Errorf("%s instance %d: %w", job, number, localapi.ErrNotFound)
	}
	n.table.RemoveLocal(job, number)
	n.forget([]netip.Addr{in.ns4, in.ns6})
	if err := n.host.Detach(in.link); err != nil {
		n.log.Warn("detach", "job", job, "instance", number, "err", err)
	}
	if err := n.addrs.Release(in.ns4); err != nil {
		n.log.Error("release namespace IPs", "job", job, "instance", number, "err", err)
	}
	if err := n.link.Undeployed(ctx, mqttapi.Undeployed{AppName: job, InstanceNumber: refapi.FlexInt(number),
		HostIP: n.cfg.HostIP.String(), HostPort: refapi.FlexInt(n.cfg.TunnelPort)}); err != nil {
		return fmt.Errorf("node: report %s instance %d undeployed: %w", job, number, err)
	}
	return nil
}

// announce re-reports every local instance after a (re)connection, and the gateway: a
// restarted cluster learns what runs here. Then it reads every entry of the table again:
// pushes published while the node was away are lost (clean sessions), and the cluster
// counts the node as interested in a job only from its queries (it forgot them when the
// node disconnected, or when it restarted), so without the query it could stop
// following a job this node still uses, whose entry would then never change again.
func (n *Node) announce() {
	defer n.refresh()
	n.registerGateway(0)
	n.mu.Lock()
	reports := make([]mqttapi.Deployed, 0, len(n.instances))
	for k, in := range n.instances {
		reports = append(reports, n.deployed(k, in))
	}
	n.mu.Unlock()
	for _, d := range reports {
		if err := n.link.Deployed(n.ctx, d); err != nil {
			n.log.Warn("re-announce", "job", d.AppName, "err", err)
		}
	}
}

// refresh queries every job in the table, one at a time (after a reconnection, where
// it is no hurry), and applies the answers. A failed query keeps the entry as it is: the
// cluster may only be unable to reach root for now. An "unknown service" answer drops
// it, as a "deleted" push would have: the job was deleted while the node was away, and
// that push went to nobody (a restarted cluster may also have missed the change).
func (n *Node) refresh() {
	if !n.serving.Load() { // the first connection: the table is not there yet, nor needed
		return
	}
	for _, job := range n.table.Jobs() {
		err := n.reread(job)
		if n.ctx.Err() != nil {
			return
		}
		if err != nil {
			n.log.Debug("re-reading a table entry after a reconnection failed; keeping it", "job", job, "err", err)
		}
	}
}

// reread queries key again and applies the answer. An answer that the key names nothing
// drops the entry, as a "deleted" push would have; any other failure returns the error
// and leaves the entry as it is.
func (n *Node) reread(key string) error {
	r, err := n.link.Query(n.ctx, key)
	switch {
	case errors.Is(err, clusterlink.ErrUnknown):
		n.log.Info("a job in the table is gone; dropping it", "key", key)
		n.forget(n.table.Delete(key))
		return nil
	case err != nil:
		return err
	}
	n.apply(r)
	return nil
}

// instanceName identifies an instance to netsetup, which derives its veth's name from it.
func instanceName(k instanceKey) string { return fmt.Sprintf("%s/%d", k.job, k.number) }

// parseInstanceName reverses instanceName.
func parseInstanceName(s string) (instanceKey, error) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return instanceKey{}, fmt.Errorf("instance name %q is not <job>/<number>", s)
	}
	num, err := strconv.Atoi(s[i+1:])
	if err != nil || num < 0 {
		return instanceKey{}, fmt.Errorf("instance name %q is not <job>/<number>", s)
	}
	return instanceKey{s[:i], num}, nil
}
