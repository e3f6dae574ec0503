// Package root runs semnet's root service: it opens the store (embedded bolt by default,
// MongoDB when given a URI), builds the registry over it, and serves the REST API. The
// pieces live in subpackages: registry (allocate, record, resolve), store (persist),
// rest (/api/v1), refapi (the reference platform's /api/net), notify (reference pushes),
// statuspage (the read-only web page at /ui/).
package root

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/semnet/semnet/root/notify"
	"github.com/semnet/semnet/root/refapi"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/root/statuspage"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/bolt"
	"github.com/semnet/semnet/root/store/mongo"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/httpapi"
	"github.com/semnet/semnet/shared/listenaddr"
	"github.com/semnet/semnet/shared/tlsfiles"
)

// Config configures a root service.
type Config struct {
	Listen   string // host:port
	DataDir  string // embedded store directory (when MongoURI is empty)
	MongoURI string
	MongoDB  string // database name
	// NoMigrate skips applying MongoDB migrations at start (run `semnet root migrate`).
	NoMigrate bool
	// Tokens are the accepted bearer tokens. Empty is allowed only with Insecure, and
	// then only on a loopback listen address.
	Tokens []string
	// ReadTokens may only read (GET) the API: for the status page, monitoring and
	// `semnet ctl ... list`; anything else they ask is refused with 403.
	ReadTokens []string
	Insecure   bool
	// TLS serves HTTPS (and, with a client CA, requires client certificates) instead
	// of plain HTTP.
	TLS tlsfiles.Server
	// RateLimit is the requests per second each client may make of /api, RateBurst its
	// bucket (0: twice RateLimit); 0 turns limiting off. A client is a token scope at a
	// source address (see httpapi.ClientKey).
	RateLimit float64
	RateBurst int
	// ReconcileInterval is how often root repairs its store while it runs, besides at
	// start (MongoDB: leases a create left when it failed half way, see
	// mongo.Store.Reconcile); zero means DefaultReconcileInterval. Not a flag: it only
	// bounds how long an outage's leftovers hold their addresses, and the default keeps
	// that well below the address quarantine.
	ReconcileInterval time.Duration
	// StoreWait is how long root keeps trying to open MongoDB while the server is
	// unreachable or too busy to answer (not started yet, restarting, SQLITE_BUSY on
	// FerretDB), with backoff, before it gives up; zero tries once. Errors that cannot
	// pass (a bad URI, a dirty migration) end the start at once.
	StoreWait time.Duration
	// ChangeRetention is how long the change log keeps a change (DefaultChangeRetention
	// when zero; negative keeps every change). A cluster that falls further behind than
	// that re-reads everything it caches.
	ChangeRetention time.Duration
	// StoreWatch is, on MongoDB, how often root reads the store's newest revision while
	// clusters wait on the change stream, to hear at once of changes other root
	// processes on the database made (registry.WatchStore); zero means
	// DefaultStoreWatch. Not a flag: it trades two small reads per period for up to
	// that much delay in propagating another root's changes.
	StoreWatch time.Duration
	// Peers are the base URLs of the other root processes on the same MongoDB
	// (http://host:port): this one tells them of each change it logs, so that clusters
	// following any of them hear of it at once rather than at their store watch's next
	// read. They must accept this process's first token (replicas share their tokens).
	Peers []string
	// PeerTLS verifies https peers (the CA that signed their certificates; the system's
	// roots when empty) and gives the client certificate peers that require one
	// (--tls-client-ca) check: --peer-ca, --peer-cert, --peer-key.
	PeerTLS tlsfiles.Client
	Plan    addrplan.Plan
	Logger  *slog.Logger
}

// DefaultReconcileInterval is how often root repairs its store unless told otherwise.
const DefaultReconcileInterval = 5 * time.Minute

// DefaultStoreWatch is how often root looks for other root processes' changes on a
// shared store while clusters wait (Config.StoreWatch).
const DefaultStoreWatch = 50 * time.Millisecond

// Validate refuses configurations that would be unsafe or cannot work.
func (c Config) Validate() error {
	if err := c.Plan.Validate(); err != nil {
		return fmt.Errorf("address plan: %w", err)
	}
	if len(c.Tokens) == 0 {
		if !c.Insecure {
			return errors.New("no API token: set --token (or SEMNET_TOKEN), or pass --insecure for a local demo on a loopback address")
		}
		if !listenaddr.IsLoopback(c.Listen) {
			return fmt.Errorf("--insecure serves the API without authentication, so it only listens on loopback; %q is not a loopback address (try 127.0.0.1%s)", c.Listen, listenaddr.Port(c.Listen, ":10099"))
		}
	}
	if len(c.ReadTokens) > 0 && len(c.Tokens) == 0 {
		return errors.New("a read-only token (--read-token) needs an admin token (--token) too: clusters and deployment tools write")
	}
	for _, t := range append(slices.Clone(c.Tokens), c.ReadTokens...) {
		if len(t) < 16 {
			return errors.New("API token is shorter than 16 characters; use a long random token (e.g. `openssl rand -hex 32`)")
		}
	}
	for _, t := range c.ReadTokens {
		if slices.Contains(c.Tokens, t) {
			return errors.New("a token is both an admin token (--token) and a read-only one (--read-token); give each scope its own")
		}
	}
	if err := c.TLS.Validate(); err != nil {
		return err
	}
	if len(c.Peers) > 0 && c.MongoURI == "" {
		return errors.New("--peer names other root processes on the same MongoDB; it needs --mongo-uri (the embedded store has no other writers)")
	}
	for _, p := range c.Peers {
		if err := validPeer(p); err != nil {
			return err
		}
	}
	if c.PeerTLS.Enabled() && len(c.Peers) == 0 {
		return errors.New("--peer-ca, --peer-cert and --peer-key are for notifying peers; name them with --peer")
	}
	if err := c.rateLimit().Validate(); err != nil {
		return err
	}
	if c.StoreWait < 0 {
		return fmt.Errorf("store wait %v must not be negative (0: try once)", c.StoreWait)
	}
	if c.ReconcileInterval < 0 {
		return fmt.Errorf("reconcile interval %v must not be negative (0: every %v)", c.ReconcileInterval, DefaultReconcileInterval)
	}
	if c.MongoURI == "" && c.DataDir == "" {
		return errors.New("no store: set --data-dir for the embedded store or --mongo-uri for MongoDB")
	}
	return nil
}

func (c Config) rateLimit() httpapi.RateLimit {
	return httpapi.RateLimit{Rate: c.RateLimit, Burst: c.RateBurst}
}

// OpenStore opens the configured backend.
func OpenStore(ctx context.Context, c Config) (store.Store, error) {
	return openStore(ctx, c, nil)
}

// openStore opens the configured backend; with reg set, the MongoDB store's commands
// are timed there.
func openStore(ctx context.Context, c Config, reg prometheus.Registerer) (store.Store, error) {
	opt := store.Options{Quarantine: c.Plan.Quarantine}
	if c.MongoURI != "" {
		mo := mongo.Options{Options: opt, SkipMigrate: c.NoMigrate, Logger: c.Logger}
		if reg != nil {
			mo.Monitor = newStoreCommands(reg).monitor()
		}
		return openMongo(ctx, c, mo)
	}
	if err := os.MkdirAll(c.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	st, err := bolt.Open(filepath.Join(c.DataDir, "root.db"), opt)
	if err != nil {
		return nil, fmt.Errorf("open embedded store in %s: %w", c.DataDir, err)
	}
	return st, nil
}

// openMongo opens the MongoDB store, retrying while the server is unavailable for up
// to c.StoreWait: in a deployment root often starts before its database is ready, or
// restarts while the database is loaded; a supervisor restarting root would only add
// its own delay.
func openMongo(ctx context.Context, c Config, opt mongo.Options) (store.Store, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 250*time.Millisecond, 5*time.Second, c.StoreWait
	var b backoff.BackOff = bo
	if c.StoreWait == 0 {
		b = &backoff.StopBackOff{}
	}
	attempts := 0
	st, err := backoff.RetryNotifyWithData(func() (*mongo.Store, error) {
		attempts++
		st, err := mongo.Open(ctx, c.MongoURI, c.MongoDB, opt)
		if err != nil && (!errors.Is(err, store.ErrUnavailable) || ctx.Err() != nil) {
			return nil, backoff.Permanent(err)
		}
		return st, err
	}, backoff.WithContext(b, ctx), func(err error, wait time.Duration) {
		if c.Logger != nil {
			c.Logger.Warn("MongoDB unavailable; retrying", "attempt", attempts, "retry_in", wait.Round(time.Millisecond), "store_wait", c.StoreWait, "err", err)
		}
	})
	if err != nil {
		if attempts > 1 {
			return nil, fmt.Errorf("open MongoDB store (gave up after %d attempts in --store-wait %v): %w", attempts, c.StoreWait, err)
		}
		return nil, fmt.Errorf("open MongoDB store: %w", err)
	}
	return st, nil
}

// Server is a running root service.
type Server struct {
	Addr net.Addr // where it listens

	http  *http.Server
	ln    net.Listener
	store store.Store
	notif *notify.Notifier
	log   *slog.Logger
}

// Start opens the store, builds the registry and starts serving. Stop it with Close.
func Start(ctx context.Context, c Config) (*Server, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc, err := c.TLS.Config(log.With("component", "tls"))
	if err != nil {
		return nil, err
	}
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	st, err := openStore(ctx, c, promReg)
	if err != nil {
		return nil, err
	}
	notif := notify.New(notify.Options{Logger: log.With("component", "notify"), Registerer: promReg})
	metrics := newMetrics(promReg)
	obs := observers{metrics, notif}
	var ps *peers
	if len(c.Peers) > 0 {
		ptc, err := c.PeerTLS.Config("peer-")
		if err != nil {
			st.Close()
			return nil, err
		}
		if ps, err = newPeers(c.Peers, firstOr(c.Tokens, ""), ptc, log.With("component", "peers"), promReg); err != nil {
			st.Close()
			return nil, err
		}
		obs = append(obs, ps)
	}
	reg, err := registry.New(ctx, c.Plan, st, registry.Options{Logger: log.With("component", "registry"), Observer: obs,
		Shared: c.MongoURI != ""})
	if err != nil {
		st.Close()
		return nil, err
	}
	notif.SetRegistry(reg)
	metrics.watchPools(promReg, reg)
	closing, stopPolls := context.WithCancel(context.Background())
	h := handler(closing, c, reg, promReg, log)
	ln, err := net.Listen("tcp", c.Listen)
	if err != nil {
		stopPolls()
		st.Close()
		return nil, fmt.Errorf("listen on %s: %w", c.Listen, err)
	}
	s := &Server{Addr: ln.Addr(), ln: ln, store: st, notif: notif, log: log,
		http: httpapi.NewServer(h, tc, log)}
	s.http.IdleTimeout = 2 * time.Minute
	s.http.RegisterOnShutdown(stopPolls)
	go notif.Run(context.WithoutCancel(ctx))
	if retention := c.ChangeRetention; retention >= 0 {
		if retention == 0 {
			retention = DefaultChangeRetention
		}
		cp := &compactor{log: st, retention: retention, now: time.Now}
		go every(closing, max(retention/10, 10*time.Millisecond), "compacting the change log", log, cp.tick)
	}
	if ps != nil {
		ps.run(closing)
	}
	if c.MongoURI != "" { // only a shared store has other writers
		every := c.StoreWatch
		if every <= 0 {
			every = DefaultStoreWatch
		}
		go reg.WatchStore(closing, every)
	}
	if r, ok := st.(reconciler); ok {
		interval := c.ReconcileInterval
		if interval == 0 {
			interval = DefaultReconcileInterval
		}
		// Reconciling frees addresses a failed create left leased without a restart.
		go every(closing, interval, "store reconcile", log, r.Reconcile)
	}
	go func() {
		if err := httpapi.Serve(s.http, ln); err != nil {
			log.Error("HTTP server stopped", "err", err)
		}
	}()
	log.Info("root serving", "addr", ln.Addr().String(), "store", storeName(c), "auth", len(c.Tokens) > 0,
		"tls", tc != nil, "mutual_tls", c.TLS.ClientCAFile != "", "rate_limit", c.RateLimit)
	return s, nil
}

// handler builds root's HTTP handler over reg: /api/v1, the reference API under /api,
// the status page, health, readiness and metrics. Long polls end when closing does. The
// fuzz tests drive this very handler.
func handler(closing context.Context, c Config, reg *registry.Registry, promReg *prometheus.Registry, log *slog.Logger) http.Handler {
	return rest.Handler(reg, rest.Config{
		Closing: closing,
		Tokens:  c.Tokens, ReadTokens: c.ReadTokens, Logger: log.With("component", "rest"),
		Registerer: promReg, Gatherer: promReg,
		Ready:     reg.Ping,
		Mount:     func(r chi.Router) { refapi.Mount(r, reg, refapi.Options{Logger: log.With("component", "refapi")}) },
		Public:    statuspage.Mount,
		RateLimit: c.rateLimit(),
	})
}

// reconciler is a store that can repair what interrupted writers leave behind (the
// MongoDB store: leases of creates that failed half way, when the server went away).
type reconciler interface {
	Reconcile(ctx context.Context) error
}

// every runs fn every interval until ctx ends, logging its failures (what names the
// job): the store's periodic upkeep, which the next run retries.
func every(ctx context.Context, interval time.Duration, what string, log *slog.Logger, fn func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				log.Warn(what+" failed; retrying at the next run", "err", err)
			}
		}
	}
}

func storeName(c Config) string {
	if c.MongoURI != "" {
		return "mongodb"
	}
	return "embedded:" + c.DataDir
}

// Close stops serving (letting requests in flight finish for a few seconds) and closes
// the store.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.http.Shutdown(ctx)
	s.notif.Close()
	return errors.Join(err, s.store.Close())
}

// observers fans registry events out to several observers.
type observers []registry.Observer

func (o observers) Allocated(pool string) {
	for _, x := range o {
		x.Allocated(pool)
	}
}

func (o observers) Changed(c store.Change) {
	for _, x := range o {
		x.Changed(c)
	}
}

// firstOr returns the first of xs, or def when there is none.
func firstOr(xs []string, def string) string {
	if len(xs) == 0 {
		return def
	}
	return xs[0]
}
