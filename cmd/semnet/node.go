package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/semnet/semnet/node"
	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/node/netsetup"
	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/tlsfiles"
)

// nodeFlags are the flags of `semnet node`.
type nodeFlags struct {
	id, clusterMQTT, password, hostIP, socket, bridge, tunName string
	mqttCA, mqttCert, mqttKey, mqttServerName                  string
	tunnelPort, mtu                                            int
	lat, lon                                                   float64
	idle, keepAlive                                            time.Duration
	gateway, teardown                                          bool
	publicIPs, gatewayIPs                                      []string
	log                                                        logFlags
}

func (f *nodeFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "worker id: MQTT client id and username (required)")
	fs.StringVar(&f.clusterMQTT, "cluster-mqtt", "", "the cluster broker's host:port (required)")
	fs.StringVar(&f.password, "password", "", "the worker's MQTT password (as in the cluster's --mqtt-auth file)")
	fs.StringVar(&f.mqttCA, "mqtt-ca", "", "CA (PEM) that signed the broker's certificate: connect with TLS (without it, --mqtt-cert alone trusts the system's CAs)")
	fs.StringVar(&f.mqttCert, "mqtt-cert", "", "client certificate (PEM) for mutual TLS, naming the worker id (CN or DNS SAN); with --mqtt-key")
	fs.StringVar(&f.mqttKey, "mqtt-key", "", "key (PEM) of --mqtt-cert")
	fs.StringVar(&f.mqttServerName, "mqtt-server-name", "", "verify the broker's certificate for this name instead of the --cluster-mqtt host")
	fs.StringVar(&f.hostIP, "host-ip", "", "this node's address as other nodes reach it: the tunnel destination (required; never discovered)")
	fs.IntVar(&f.tunnelPort, "tunnel-port", 50103, "UDP port of the tunnel between nodes")
	fs.Float64Var(&f.lat, "lat", math.NaN(), "node location: latitude in degrees (for Closest)")
	fs.Float64Var(&f.lon, "lon", math.NaN(), "node location: longitude in degrees (for Closest)")
	fs.StringVar(&f.socket, "socket", "/run/semnet/node.sock", "unix socket of the local API the node engine attaches instances through")
	fs.IntVar(&f.mtu, "mtu", netsetup.DefaultMTU, "MTU of the TUN and the instances' interfaces: the underlay MTU minus the tunnel's 28 bytes (48 over IPv6)")
	fs.StringVar(&f.bridge, "bridge", netsetup.DefaultBridge, "name of the bridge instances attach to")
	fs.StringVar(&f.tunName, "tun", netsetup.DefaultTUN, "name of the TUN device carrying the Service and Instance ranges")
	fs.DurationVar(&f.idle, "idle-timeout", table.DefaultIdleTimeout, "drop a table entry no packet used for this long (and tell the cluster)")
	fs.DurationVar(&f.keepAlive, "keepalive", clusterlink.DefaultKeepAlive, "MQTT keepalive, whole seconds: the heartbeat the cluster sees this node by (silent for 1.5 × it, it counts as gone; the broker's minimum is 5 s)")
	fs.BoolVar(&f.teardown, "teardown-on-exit", false, "remove the bridge and the instances' links when the node stops (by default they stay, and a node started again in this namespace takes its instances over)")
	fs.BoolVar(&f.gateway, "gateway", false, "serve the platform's exposures to clients outside it on --public-ip (needs nftables)")
	fs.StringSliceVar(&f.publicIPs, "public-ip", nil, "the gateway's public address clients connect to: one IPv4, one IPv6 or both (repeat or comma-separate)")
	fs.StringSliceVar(&f.gatewayIPs, "gateway-internal-ip", nil, "where public traffic enters the datapath (default 10.30.255.253 and fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffd)")
	f.log.register(fs)
}

// gatewayConfig reads --public-ip and --gateway-internal-ip: at most one address of each
// family per flag.
func (f *nodeFlags) gatewayConfig() (*node.GatewayConfig, error) {
	if !f.gateway {
		if len(f.publicIPs) > 0 || len(f.gatewayIPs) > 0 {
			return nil, fmt.Errorf("--public-ip and --gateway-internal-ip need --gateway")
		}
		return nil, nil
	}
	var g node.GatewayConfig
	for _, fl := range []struct {
		name   string
		vals   []string
		v4, v6 *netip.Addr
	}{{"--public-ip", f.publicIPs, &g.PublicV4, &g.PublicV6}, {"--gateway-internal-ip", f.gatewayIPs, &g.InternalV4, &g.InternalV6}} {
		for _, v := range fl.vals {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", fl.name, err)
			}
			dst := fl.v6
			if a.Is4() {
				dst = fl.v4
			}
			if dst.IsValid() {
				return nil, fmt.Errorf("%s: %s and %s are of one family; give at most one IPv4 and one IPv6 address", fl.name, *dst, a)
			}
			*dst = a
		}
	}
	if !g.PublicV4.IsValid() && !g.PublicV6.IsValid() {
		return nil, fmt.Errorf("--gateway needs --public-ip")
	}
	return &g, nil
}

// tlsConfig reads the --mqtt-* TLS flags; nil means plain MQTT. TLS is on with --mqtt-ca
// or a client certificate; without --mqtt-ca the system's roots verify the broker (one
// with a publicly trusted certificate).
func (f *nodeFlags) tlsConfig() (*tls.Config, error) {
	files := tlsfiles.Client{CAFile: f.mqttCA, CertFile: f.mqttCert, KeyFile: f.mqttKey}
	if !files.Enabled() {
		if f.mqttServerName != "" {
			return nil, errors.New("--mqtt-server-name needs TLS: give --mqtt-ca (or --mqtt-cert and --mqtt-key)")
		}
		return nil, nil
	}
	tc, err := files.Config("mqtt-")
	if err != nil {
		return nil, err
	}
	tc.ServerName = f.mqttServerName
	if len(tc.Certificates) == 0 {
		return tc, nil
	}
	// Without a password the broker takes the certificate's name as the worker id and
	// refuses any other client id with a bare "not authorized": say so here instead.
	leaf := tc.Certificates[0].Leaf
	names := append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
	if f.password == "" && !slices.Contains(names, f.id) {
		return nil, fmt.Errorf("--mqtt-cert %s is for \"%s\", not for the worker id %q: without --password the cluster takes a worker's id from its certificate (Common Name or DNS name)",
			f.mqttCert, strings.Join(slices.DeleteFunc(names, func(n string) bool { return n == "" }), `", "`), f.id)
	}
	return tc, nil
}

func (f *nodeFlags) config() (node.Config, error) {
	log, err := f.log.logger(os.Stderr)
	if err != nil {
		return node.Config{}, err
	}
	c := node.Config{
		ID: f.id, ClusterMQTT: f.clusterMQTT, Password: f.password, Socket: f.socket, MTU: f.mtu,
		Bridge: f.bridge, TUN: f.tunName, IdleTimeout: f.idle, KeepAlive: f.keepAlive, Logger: log,
		Teardown: f.teardown,
	}
	if f.keepAlive < time.Second || f.keepAlive%time.Second != 0 || f.keepAlive > 65535*time.Second {
		return c, fmt.Errorf("--keepalive %v must be whole seconds from 1s to 65535s (MQTT counts it in seconds)", f.keepAlive)
	}
	if f.hostIP != "" {
		if c.HostIP, err = netip.ParseAddr(f.hostIP); err != nil {
			return c, fmt.Errorf("--host-ip: %w", err)
		}
	}
	if f.tunnelPort < 1 || f.tunnelPort > 65535 {
		return c, fmt.Errorf("--tunnel-port %d is not a UDP port", f.tunnelPort)
	}
	c.TunnelPort = uint16(f.tunnelPort)
	if math.IsNaN(f.lat) != math.IsNaN(f.lon) {
		return c, fmt.Errorf("give both --lat and --lon, or neither")
	}
	if !math.IsNaN(f.lat) {
		p := geo.Point{Lat: f.lat, Lon: f.lon}
		if err := p.Validate(); err != nil {
			return c, fmt.Errorf("--lat/--lon: %w", err)
		}
		c.Location = &p
	}
	if c.TLS, err = f.tlsConfig(); err != nil {
		return c, err
	}
	c.Gateway, err = f.gatewayConfig()
	return c, err
}

func newNodeCommand() *cobra.Command {
	var (
		f nodeFlags
		c node.Config
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a worker node: the datapath that resolves, translates and tunnels Service IP traffic",
		Long: `The node agent joins its cluster's MQTT broker, takes a worker subnet pair, creates a
bridge for local instances and a TUN device carrying the Service and Instance ranges
(10.30.0.0/16, fdff::/16), and tunnels translated packets to other nodes over UDP.

The platform's node engine attaches instances through the local API on --socket
(POST /container/deploy {pid or netns, serviceName, instanceNumber}); /metrics is served
there too. Run it inside the network namespace it should manage (it needs CAP_NET_ADMIN
there); it touches nothing outside it.

A node that stops leaves the bridge and its instances attached (unless
--teardown-on-exit): started again in the same namespace, it keeps its worker subnet,
takes the instances over and reports them running, so a restart interrupts their
overlay traffic only while the node is down.

The MQTT keepalive (--keepalive) is the node's heartbeat: a node that dies without
closing its connection is seen gone 1.5 × --keepalive later, and its instances are
reported failed once the cluster's --node-grace has passed too.

With --mqtt-ca the node connects to the broker over TLS; --mqtt-cert and --mqtt-key add
a client certificate (mutual TLS) whose name is the worker id, which is how the reference
worker node authenticates: no password is needed then.

With --gateway the node also serves the platform's exposures (POST
/api/v1/services/{job}/exposures at root) on its --public-ip: nftables sends an exposed
port to the datapath, which gives each client flow a port of its own and balances it to
the service like any other flow.`,
		Args:    cobra.NoArgs,
		PreRunE: checkConfig(&c, f.config),
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := node.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			n.Close()
			return nil
		},
	}
	f.register(cmd.Flags())
	for _, name := range []string{"id", "cluster-mqtt", "host-ip"} {
		_ = cmd.MarkFlagRequired(name)
	}
	bindEnv(cmd)
	return cmd
}
