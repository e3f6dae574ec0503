// Package cluster runs semnet's cluster service: it registers the cluster with root,
// runs the embedded MQTT broker its worker nodes connect to, keeps the table entries
// they need in a cache (memory, or Redis shared by replicas) fresh from root's change
// stream, answers their queries, hands out subnets, relays instance status up to root
// and pushes changes down to the nodes that care.
//
// The pieces live in subpackages, in the order data flows through them: broker (MQTT
// with authentication, ACLs and limits), nodes (the worker-node contract over MQTT),
// table (cache + root + change stream), cache (memory and Redis), report (status reports
// to root, in order, through outages), subnets (worker subnets with spares), refapi (the
// reference cluster REST API and health endpoints).
package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/semnet/semnet/cluster/broker"
	"github.com/semnet/semnet/cluster/cache"
	redicache "github.com/semnet/semnet/cluster/cache/redis"
	"github.com/semnet/semnet/cluster/gateways"
	"github.com/semnet/semnet/cluster/nodes"
	"github.com/semnet/semnet/cluster/refapi"
	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/cluster/subnets"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/httpapi"
	"github.com/semnet/semnet/shared/listenaddr"
	"github.com/semnet/semnet/shared/tlsfiles"
)

// Config configures a cluster service.
type Config struct {
	ID   string // cluster id, as registered at root
	Name string
	// Address is where root reaches this cluster's REST API (registered at root); empty
	// means the host of Listen.
	Address string

	RootURL   string
	RootToken string
	// RootTLS verifies an https root (its CA; the system's roots when empty) and holds
	// the client certificate for a root that requires one.
	RootTLS tlsfiles.Client

	Listen string // REST API, host:port
	// TLS serves the REST API over HTTPS (and, with a client CA, only to clients with
	// a certificate it signed).
	TLS        tlsfiles.Server
	MQTTListen string // MQTT broker, host:port
	// Broker configures authentication, TLS and limits of the MQTT broker; its listen
	// address is MQTTListen.
	Broker broker.Config
	// Tokens, when set, are required on the cluster's /api (reference callers send none).
	Tokens []string
	// RateLimit is the requests per second each client may make of /api, RateBurst its
	// bucket (0: twice RateLimit); 0 turns limiting off, as for root (see root.Config). A
	// client is a token scope at a source address (see httpapi.ClientKey).
	RateLimit float64
	RateBurst int
	// Insecure lets any worker connect with just its client id (no password or
	// certificate); allowed only when the broker listens on loopback.
	Insecure bool

	Location geo.Point
	RadiusKM float64

	RedisURL string // empty: in-memory cache
	// HoldTTL is how long the holds by which replicas sharing the Redis cache keep the
	// cluster's interest in the jobs their nodes need outlast the replica that stopped
	// renewing them (cache.DefaultHoldTTL when zero; renewed every third of it).
	// `semnet cluster` keeps the default; tests shorten it.
	HoldTTL time.Duration

	StaleAfter time.Duration // answers are marked stale after this long without root
	// UnknownTTL is how long a key root knows no service by is answered unknown without
	// asking root again (table.Options.UnknownTTL: 2 s when zero, negative: never).
	UnknownTTL time.Duration
	Spares     int // spare worker subnets kept for root outages
	// NodeGrace is how long a worker node may stay disconnected before the instances it
	// announced are reported failed to root (`semnet cluster` uses DefaultNodeGrace). Zero
	// reports them at once; a negative grace never reports them (for worker nodes that do
	// not re-announce their instances when they reconnect, as semnet's nodes do). A node
	// is seen gone when its connection closes, or 1.5 × its keepalive after it fell
	// silent.
	NodeGrace time.Duration
	Logger    *slog.Logger
}

// DefaultNodeGrace is `semnet cluster`'s grace for disconnected nodes: long enough for
// a node to reconnect after a blip or a cluster restart (the node retries at least every
// 5 s), short enough to take a dead node's instances out of the choices soon.
const DefaultNodeGrace = 10 * time.Second

// minSweepDelay is the least time after its start a cluster waits before it reports failed
// the instances no node re-announced: a node reconnecting retries every 5 s at most.
const minSweepDelay = 6 * time.Second

// Validate refuses configurations that cannot work.
func (c Config) Validate() error {
	if c.ID == "" {
		return errors.New("cluster id is required (--id)")
	}
	if c.RootURL == "" {
		return errors.New("root URL is required (--root), e.g. http://root.example:10099")
	}
	if c.RootTLS.Enabled() && !strings.HasPrefix(c.RootURL, "https://") {
		return fmt.Errorf("--root-ca, --root-cert and --root-key are for an https root, but --root is %q: use https://", c.RootURL)
	}
	if err := c.TLS.Validate(); err != nil {
		return err
	}
	if err := c.rateLimit().Validate(); err != nil {
		return err
	}
	if err := c.Location.Validate(); err != nil {
		return fmt.Errorf("cluster location: %w", err)
	}
	if c.RadiusKM < 0 {
		return fmt.Errorf("radius %v km must not be negative", c.RadiusKM)
	}
	if c.Insecure && !listenaddr.IsLoopback(c.MQTTListen) {
		return fmt.Errorf("--insecure lets workers connect without credentials, so the broker only listens on loopback; %q is not a loopback address (try 127.0.0.1%s)", c.MQTTListen, listenaddr.Port(c.MQTTListen, ":10003"))
	}
	if !c.Insecure && !c.Broker.AllowAnonymous && c.Broker.CredentialsFile == "" && c.Broker.ClientCAFile == "" {
		return errors.New("workers have no way to authenticate: give --mqtt-auth (a credentials file), --mqtt-client-ca (mutual TLS), --mqtt-anonymous (trusted networks only) or, on loopback, --insecure")
	}
	return nil
}

func (c Config) rateLimit() httpapi.RateLimit {
	return httpapi.RateLimit{Rate: c.RateLimit, Burst: c.RateBurst}
}

// Server is a running cluster service.
type Server struct {
	Addr     net.Addr // REST API
	MQTTAddr net.Addr // broker

	cancel  context.CancelFunc
	wg      sync.WaitGroup
	http    *http.Server
	broker  *broker.Broker
	cache   cache.Cache
	spares  *subnets.Pool
	table   *table.Table
	reports *report.Reporter
	log     *slog.Logger

	registered chan struct{} // closed once root accepted the registration
}

// Start starts the cluster service. It serves at once from whatever the cache holds,
// registering with root (and following its changes) in the background until root
// answers. Stop it with Close.
func Start(ctx context.Context, c Config) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rootTLS, err := c.RootTLS.Config("root-")
	if err != nil {
		return nil, err
	}
	rc, err := client.New(c.RootURL, c.RootToken, client.HTTPClient(rootTLS))
	if err != nil {
		return nil, err
	}
	tc, err := c.TLS.Config(log.With("component", "tls"))
	if err != nil {
		return nil, err
	}
	copt := cache.Options{HoldTTL: c.HoldTTL}.WithDefaults()
	var ch cache.Cache
	if c.RedisURL != "" {
		ch, err = redicache.New(ctx, c.RedisURL, "semnet:"+c.ID+":", copt)
		if err != nil {
			return nil, fmt.Errorf("open Redis cache: %w", err)
		}
	} else {
		ch = cache.NewMemory(copt)
	}
	host, _ := os.Hostname()
	replica := table.NewReplicaID(host)
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	started := time.Now()
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Server{cancel: cancel, cache: ch, log: log, registered: make(chan struct{})}
	fail := func(err error) (*Server, error) {
		s.Close()
		return nil, err
	}

	var nodeSrv *nodes.Server
	loc := c.Location
	s.broker, err = newBroker(c, log, promReg)
	if err != nil {
		return fail(err)
	}
	relay := gateways.New(rc, s.broker, c.ID, &loc, func(node string, gw api.Gateway) { nodeSrv.GatewayRunning(node, gw) },
		log.With("component", "gateways"))
	s.table = table.New(rc, ch, table.Options{
		ClusterID: c.ID, StaleAfter: c.StaleAfter, UnknownTTL: c.UnknownTTL, Logger: log.With("component", "table"),
		OnChange:   func(job string, e *cache.Entry, at time.Time) { nodeSrv.Changed(job, e, at) },
		OnGateways: relay.Changed,
		Replica:    replica, HoldRenew: copt.HoldTTL / 3, Registerer: promReg,
	})
	s.reports = report.New(rc, log.With("component", "report"), promReg)
	s.spares = subnets.New(rc, c.ID, c.Spares, log.With("component", "subnets"))
	nodeSrv = nodes.New(runCtx, s.table, s.broker, s.reports, s.spares, nodes.Options{
		Location: &loc, ClusterID: c.ID, Gateways: relay, Logger: log.With("component", "nodes"), Registerer: promReg,
		NodeGrace: c.NodeGrace, Presence: s.broker,
	})
	s.broker.OnDisconnect(nodeSrv.NodeGone)
	if err := s.broker.Handle(nodeSrv.Handle); err != nil {
		return fail(err)
	}
	if err := s.broker.Start(); err != nil {
		return fail(err)
	}
	s.MQTTAddr = s.broker.Addr()

	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		return fail(fmt.Errorf("listen on %s: %w", c.Listen, err))
	}
	s.Addr = ln.Addr()
	h := refapi.Handler(s.table, refapi.Config{
		Tokens: c.Tokens, Logger: log.With("component", "rest"), Registerer: promReg, Gatherer: promReg,
		Forget: nodeSrv.Release, RateLimit: c.rateLimit(),
	})
	s.http = httpapi.NewServer(h, tc, log)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := httpapi.Serve(s.http, ln); err != nil {
			log.Error("REST server stopped", "err", err)
		}
	}()

	address := c.Address
	if address == "" {
		address, _, _ = net.SplitHostPort(s.Addr.String())
	}
	port := s.Addr.(*net.TCPAddr).Port
	reg := api.ClusterRequest{ID: c.ID, Name: c.Name, Address: address, Port: port, Location: c.Location, RadiusKM: c.RadiusKM}
	s.goRun(runCtx, func(ctx context.Context) error { return s.reports.Run(ctx) })
	s.goRun(runCtx, s.table.RunHolds)
	s.goRun(runCtx, func(ctx context.Context) error {
		if err := s.register(ctx, rc, reg); err != nil {
			return err
		}
		s.goRun(ctx, s.table.Run)
		s.goRun(ctx, s.spares.Run)
		s.goRun(ctx, func(ctx context.Context) error { relay.Run(ctx); return nil })
		if c.NodeGrace >= 0 && c.RedisURL == "" {
			s.goRun(ctx, func(ctx context.Context) error {
				return s.sweep(ctx, nodeSrv, rc, started.Add(max(c.NodeGrace, minSweepDelay)))
			})
		}
		return s.heartbeat(ctx, rc, reg)
	})
	log.Info("cluster service started", "id", c.ID, "replica", replica, "rest", s.Addr, "rest_tls", tc != nil, "rate_limit", c.RateLimit, "mqtt", s.MQTTAddr, "root", c.RootURL, "cache", cacheKind(c.RedisURL))
	return s, nil
}

func newBroker(c Config, log *slog.Logger, reg prometheus.Registerer) (*broker.Broker, error) {
	bc := c.Broker
	bc.Listen = c.MQTTListen
	bc.AllowAnonymous = bc.AllowAnonymous || c.Insecure
	return broker.New(bc, log.With("component", "broker"), reg)
}

func cacheKind(redisURL string) string {
	if redisURL != "" {
		return "redis"
	}
	return "memory"
}

func (s *Server) goRun(ctx context.Context, fn func(context.Context) error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("cluster task stopped", "err", err)
		}
	}()
}

// register registers the cluster with root, retrying with backoff until root answers.
func (s *Server) register(ctx context.Context, rc *client.Client, req api.ClusterRequest) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 200*time.Millisecond, 10*time.Second, 0
	op := func() error {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := rc.RegisterCluster(cctx, req)
		if err != nil && !client.Temporary(err) && cctx.Err() == nil {
			return backoff.Permanent(err)
		}
		if err != nil {
			s.log.Warn("root unreachable; will retry registering", "err", err)
		}
		return err
	}
	if err := backoff.Retry(op, backoff.WithContext(bo, ctx)); err != nil {
		return fmt.Errorf("register cluster %s at root: %w", req.ID, err)
	}
	close(s.registered)
	s.log.Info("registered with root", "id", req.ID)
	return nil
}

// sweep reports failed, once at time at, the instances root has running in this cluster
// that no node announced since the start: their nodes died while the cluster was down
// (nodes.Server.Sweep). It retries until root answers. Replicas sharing a Redis cache
// skip it, since each knows only the nodes connected to itself.
func (s *Server) sweep(ctx context.Context, nodeSrv *nodes.Server, rc *client.Client, at time.Time) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(at)):
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = time.Second, 30*time.Second, 0
	return backoff.Retry(func() error {
		n, err := nodeSrv.Sweep(ctx, rc)
		if err != nil && ctx.Err() == nil {
			s.log.Warn("restart sweep failed; retrying", "reported", n, "err", err)
		} else if err == nil {
			s.log.Info("restart sweep done: instances here that no node announced were reported failed", "reported", n)
		}
		return err
	}, backoff.WithContext(bo, ctx))
}

// heartbeat tells root the cluster is alive every 10 s, re-registering when root forgot
// it (its database was replaced).
func (s *Server) heartbeat(ctx context.Context, rc *client.Client, req api.ClusterRequest) error {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		status := "ok"
		if s.table.Stale() {
			status = "degraded"
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := rc.Heartbeat(cctx, req.ID, status)
		if errors.Is(err, client.ErrNotFound) {
			_, err = rc.RegisterCluster(cctx, req)
		}
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("heartbeat to root failed", "err", err)
		}
	}
}

// ReloadCredentials re-reads the worker credentials file (logged on failure; the old
// credentials stay in force).
func (s *Server) ReloadCredentials() {
	if err := s.broker.Reload(); err != nil {
		s.log.Error("reloading worker credentials failed; keeping the previous ones", "err", err)
		return
	}
	s.log.Info("worker credentials reloaded")
}

// Registered is closed once root accepted the cluster's registration.
func (s *Server) Registered() <-chan struct{} { return s.registered }

// Close stops serving, gives spare subnets back to root and closes the cache. It does
// not release the replica's holds of jobs in the cache: they expire after HoldTTL, as
// a crashed replica's do, so a replica restarting at once finds the cluster's
// interests at root and its cached entries as it left them.
func (s *Server) Close() error {
	s.cancel()
	var errs []error
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, s.http.Shutdown(ctx))
		cancel()
	}
	if s.broker != nil {
		errs = append(errs, s.broker.Close())
	}
	s.wg.Wait()
	if s.spares != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		s.spares.Release(ctx)
		cancel()
	}
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	return errors.Join(errs...)
}
