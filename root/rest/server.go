// Package rest adapts root's core (package registry) to its REST API: semnet's own
// /api/v1, described in proto/openapi.yaml, plus health, readiness and metrics endpoints.
// Handlers decode, call the registry, and encode; every failure is problem+json.
package rest

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/shared/httpapi"
)

// Config configures the REST server.
type Config struct {
	// Tokens accepted as bearer tokens on /api; empty disables auth (root allows that
	// only with --insecure on a loopback address).
	Tokens []string
	// ReadTokens may only read (GET): a status page, monitoring. A write is 403.
	ReadTokens []string
	Logger     *slog.Logger
	// Gatherer serves /metrics; Registerer receives the HTTP metrics.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Ready reports whether the backend can serve (e.g. the database answers a ping).
	Ready func(ctx context.Context) error
	// Mount adds more routes under the authenticated /api (the reference API).
	Mount func(r chi.Router)
	// Public adds routes outside /api that need no token: the status page's static
	// files, which hold no data (the page reads /api with the operator's token).
	Public func(r chi.Router)
	// MaxWait bounds change-stream long polls.
	MaxWait time.Duration
	// Closing, when done, ends long polls at once (with what they have) so a shutdown
	// does not wait for them.
	Closing context.Context
	// RateLimit, when its Rate is positive, limits each client's requests to /api
	// (health, readiness, metrics and the status page's files are never limited). Its
	// Key defaults to httpapi.ClientKey over the tokens.
	RateLimit httpapi.RateLimit
}

type server struct {
	reg *registry.Registry
	cfg Config
	log *slog.Logger
}

// Handler builds root's HTTP handler.
func Handler(reg *registry.Registry, cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 60 * time.Second
	}
	s := &server{reg: reg, cfg: cfg, log: cfg.Logger}
	m := httpapi.NewMetrics(cfg.Registerer, "semnet_root")

	r := httpapi.NewRouter(httpapi.RouterConfig{Logger: cfg.Logger, Metrics: m, Gatherer: cfg.Gatherer,
		Ready: cfg.Ready, Hint: " (see proto/openapi.yaml)"})
	r.Route("/api", func(r chi.Router) {
		// Before authentication, so requests with made-up tokens are limited too.
		r.Use(cfg.RateLimit.Middleware(cfg.Tokens, cfg.ReadTokens, cfg.Registerer, "semnet_root"))
		r.Use(httpapi.ScopedBearerAuth(cfg.Tokens, cfg.ReadTokens))
		r.Use(finishWrites)
		r.Route("/v1", s.routesV1)
		if cfg.Mount != nil {
			cfg.Mount(r)
		}
	})
	if cfg.Public != nil {
		cfg.Public(r)
	}
	return r
}

// WriteTimeout bounds a write request's work once started, whether or not its client
// still waits for the answer.
const WriteTimeout = 30 * time.Second

// finishWrites lets a write request run to its end when its client goes away: a change
// spans several writes in the MongoDB store, and one cancelled between them (a client
// timing out under load) would leave a service without its instances, or a lock held
// until it goes stale. Reads still stop with their client.
func finishWrites(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(w, r)
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), WriteTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// handle adapts a handler that returns an error to http.HandlerFunc, writing the error
// as problem+json and logging server-side failures.
func (s *server) handle(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			LogFailure(s.log, r, err)
			httpapi.WriteProblem(w, r, err, Classify)
		}
	}
}

// LogFailure logs the server-side failure of a request (not a problem it answered, nor
// an error Classify maps to a status): at error level, unless the request's client had
// gone by then (a read the caller cancelled or hung up on, whose store read was
// cancelled with it: not the server's failure), which is logged at debug level. A
// cluster that dies with reads in flight made root log one error per read.
func LogFailure(log *slog.Logger, r *http.Request, err error) {
	var p *httpapi.Problem
	if errors.As(err, &p) || Classify(err) != nil {
		return
	}
	level, msg := slog.LevelError, "request failed"
	if r.Context().Err() != nil {
		level, msg = slog.LevelDebug, "request abandoned by its client"
	}
	log.Log(context.WithoutCancel(r.Context()), level, msg, "method", r.Method, "path", r.URL.Path, "err", err,
		"request_id", middleware.GetReqID(r.Context()))
}
