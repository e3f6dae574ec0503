package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/broker"
	"github.com/semnet/semnet/shared/geo"
)

// clusterFlags are the flags of `semnet cluster`; `semnet up` reuses some.
type clusterFlags struct {
	id, name, address, rootURL, rootToken, listen, mqttListen  string
	mqttAuth, mqttCert, mqttKey, mqttClientCA, redisURL, token string
	lat, lon, radiusKM                                         float64
	insecure, mqttAnonymous                                    bool
	staleAfter, nodeGrace, unknownTTL                          time.Duration
	spares, maxPacket, publishBurst                            int
	publishRate                                                float64
	tls                                                        tlsServerFlags
	rate                                                       rateLimitFlags
	rootTLS                                                    tlsClientFlags
	log                                                        logFlags
}

func (f *clusterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "cluster id, as registered at root (required)")
	fs.StringVar(&f.name, "name", "", "cluster name (default: the id)")
	fs.StringVar(&f.address, "address", "", "address root reaches this cluster's REST API at (default: the --listen host)")
	fs.StringVar(&f.rootURL, "root", "", "root's URL, e.g. http://root.example:10099, or https://... when root serves TLS (required)")
	fs.StringVar(&f.rootToken, "root-token", "", "bearer token for root's API")
	f.rootTLS.register(fs, "root-", "root")
	fs.StringVar(&f.listen, "listen", ":10110", "address the cluster's REST API listens on")
	f.tls.register(fs)
	f.rate.register(fs, defaultRateLimit)
	fs.StringVar(&f.mqttListen, "mqtt-listen", broker.DefaultListen, "address the MQTT broker for worker nodes listens on")
	fs.StringVar(&f.mqttAuth, "mqtt-auth", "", "worker credentials file (YAML or JSON; see cluster/broker); reloaded when it changes or on SIGHUP")
	fs.StringVar(&f.mqttCert, "mqtt-cert", "", "TLS certificate (PEM) of the broker; with --mqtt-key the broker speaks only TLS; re-read when the file changes")
	fs.StringVar(&f.mqttKey, "mqtt-key", "", "TLS key (PEM) of the broker")
	fs.StringVar(&f.mqttClientCA, "mqtt-client-ca", "", "CA (PEM) for worker client certificates: mutual TLS, certificate name = worker id; re-read when the file changes")
	fs.BoolVar(&f.mqttAnonymous, "mqtt-anonymous", false, "admit workers without credentials, identified by their client id (trusted networks only; ACLs still apply)")
	fs.BoolVar(&f.insecure, "insecure", false, "like --mqtt-anonymous, for local demos: allowed only when the broker listens on loopback")
	fs.IntVar(&f.maxPacket, "mqtt-max-packet", broker.DefaultMaxPacketSize, "largest MQTT packet a worker may send, in bytes; larger ones disconnect it")
	fs.Float64Var(&f.publishRate, "mqtt-publish-rate", broker.DefaultPublishRate, "messages per second one worker connection may publish on average; beyond, they are refused and counted (0: no limit)")
	fs.IntVar(&f.publishBurst, "mqtt-publish-burst", 0, "messages a worker may publish at once above the rate (default: twice --mqtt-publish-rate)")
	fs.StringVar(&f.token, "token", "", "bearer token the cluster's /api requires (reference callers send none: leave empty and restrict --listen instead)")
	fs.Float64Var(&f.lat, "lat", 0, "cluster location: latitude in degrees")
	fs.Float64Var(&f.lon, "lon", 0, "cluster location: longitude in degrees")
	fs.Float64Var(&f.radiusKM, "radius-km", 0, "radius of the area the cluster serves, in km")
	fs.StringVar(&f.redisURL, "redis-url", "", "Redis URL (redis://host:6379/0) for a cache shared by cluster replicas; default in memory")
	fs.DurationVar(&f.staleAfter, "stale-after", 30*time.Second, "answers are marked stale after this long without hearing from root")
	fs.DurationVar(&f.unknownTTL, "unknown-ttl", 2*time.Second, "how long a name or address root knows no service by is answered unknown without asking root again (negative: ask every time)")
	fs.IntVar(&f.spares, "spare-subnets", 2, "worker subnets kept ahead for nodes that start while root is unreachable")
	fs.DurationVar(&f.nodeGrace, "node-grace", cluster.DefaultNodeGrace, "how long a disconnected worker node may stay away before its instances are reported failed; 0 at once, negative never (worker nodes that do not re-announce their instances on reconnecting)")
	f.log.register(fs)
}

func (f *clusterFlags) config() (cluster.Config, error) {
	log, err := f.log.logger(os.Stderr)
	if err != nil {
		return cluster.Config{}, err
	}
	name := f.name
	if name == "" {
		name = f.id
	}
	c := cluster.Config{
		ID: f.id, Name: name, Address: f.address, RootURL: f.rootURL, RootToken: f.rootToken, RootTLS: f.rootTLS.files,
		Listen: f.listen, TLS: f.tls.files, RateLimit: f.rate.limit, RateBurst: f.rate.burst, MQTTListen: f.mqttListen, Insecure: f.insecure,
		Broker: broker.Config{
			CertFile: f.mqttCert, KeyFile: f.mqttKey, ClientCAFile: f.mqttClientCA,
			CredentialsFile: f.mqttAuth, AllowAnonymous: f.mqttAnonymous, MaxPacketSize: f.maxPacket,
			PublishRate: publishRate(f.publishRate), PublishBurst: f.publishBurst,
		},
		Location: geo.Point{Lat: f.lat, Lon: f.lon}, RadiusKM: f.radiusKM,
		RedisURL: f.redisURL, StaleAfter: f.staleAfter, UnknownTTL: f.unknownTTL, Spares: f.spares, NodeGrace: f.nodeGrace, Logger: log,
	}
	if f.token != "" {
		c.Tokens = []string{f.token}
	}
	return c, nil
}

func newClusterCommand() *cobra.Command {
	var (
		f clusterFlags
		c cluster.Config
	)
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Run a cluster service: MQTT broker for worker nodes, table cache, relay to root",
		Long: `The cluster service registers the cluster with root, runs the embedded MQTT broker its
worker nodes connect to, caches the table entries they need (in memory, or in Redis shared
by replicas) and keeps them fresh from root's change stream, answers table queries, hands
out worker subnets, relays instance status to root and pushes changes to interested nodes.

Workers authenticate with a password from --mqtt-auth (username = worker id = client id),
a client certificate (--mqtt-client-ca; certificate name = worker id), or, on trusted
networks, by client id alone (--mqtt-anonymous). Send SIGHUP to reload --mqtt-auth.
The broker re-reads --mqtt-cert, --mqtt-key and --mqtt-client-ca when they change: the
next connection is served the new certificate; open connections keep theirs.

A worker node that disconnects (or falls silent for 1.5 × its keepalive) and stays away
longer than --node-grace has its instances reported failed to root, which takes them out
of every node's choices; when it comes back, its re-announce makes them running again.

An https --root is verified with --root-ca (default: the system's CAs); --root-cert and
--root-key answer a root requiring client certificates. --tls-cert and --tls-key serve
the cluster's own REST API over HTTPS, --tls-client-ca requires client certificates.
Each client of that API (token scope + source address) may make --rate-limit requests/s
of /api in bursts of --rate-burst; beyond, the cluster answers 429 with Retry-After.
/healthz, /readyz and /metrics are never limited.

It answers /readyz with 200 once it serves.`,
		Args:    cobra.NoArgs,
		PreRunE: checkConfig(&c, f.config),
		RunE: func(cmd *cobra.Command, _ []string) error {
			srv, err := cluster.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			reloadOnHangup(cmd.Context(), srv)
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	f.register(cmd.Flags())
	for _, name := range []string{"id", "root"} {
		_ = cmd.MarkFlagRequired(name)
	}
	bindEnv(cmd)
	return cmd
}

// reloadOnHangup reloads the worker credentials on SIGHUP until ctx ends.
func reloadOnHangup(ctx context.Context, srv *cluster.Server) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				srv.ReloadCredentials()
			}
		}
	}()
}

// publishRate maps --mqtt-publish-rate to broker.Config.PublishRate: on the command line 0
// turns the limit off, as --rate-limit 0 does for root's API; in the Config, 0 means the
// default and a negative rate none.
func publishRate(flag float64) float64 {
	if flag <= 0 {
		return -1
	}
	return flag
}
