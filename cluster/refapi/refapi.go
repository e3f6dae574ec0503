// Package refapi serves the cluster's REST API: the reference platform's cluster
// network endpoints (CONTRACT.md "Cluster REST"), called by the cluster orchestrator and
// by a reference root, plus /healthz, /readyz and /metrics.
//
//	POST   /api/net/deployment {job_name}   prefetch and follow a job before its instances start
//	DELETE /api/net/deployment/{job_name}   the orchestrator no longer needs it
//	POST   /api/net/job/update {job_name, instance_number, type}   root says a job changed
//
// The reference answered these with a bare 200; semnet answers JSON (the cached entry
// where there is one) and problem+json errors: 400 for a malformed body, 404 for a job
// root does not know, 503 when root cannot be reached.
package refapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/httpapi"
)

// Table is what the API needs of the cluster's table (a *table.Table).
type Table interface {
	Prefetch(ctx context.Context, key string) (*cache.Entry, error)
	Refresh(ctx context.Context, key string) error
}

// Config configures the handler.
type Config struct {
	// Tokens, when set, are required as bearer tokens on /api (reference callers send
	// none: leave it empty for them and restrict the listen address instead).
	Tokens []string
	// Forget is called when the orchestrator drops a job (DELETE /api/net/deployment).
	Forget     func(ctx context.Context, job string) error
	Ready      func(ctx context.Context) error
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// RateLimit, when its Rate is positive, limits each client's requests to /api as
	// root's are (health, readiness and metrics are never limited). Its Key defaults to
	// httpapi.ClientKey over Tokens: without tokens every caller is scope "none", one
	// client per source address.
	RateLimit httpapi.RateLimit
}

type server struct {
	table Table
	cfg   Config
	log   *slog.Logger
}

// Handler builds the cluster's HTTP handler.
func Handler(t Table, cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{table: t, cfg: cfg, log: cfg.Logger}
	var m *httpapi.Metrics
	if cfg.Registerer != nil {
		m = httpapi.NewMetrics(cfg.Registerer, "semnet_cluster")
	}
	r := httpapi.NewRouter(httpapi.RouterConfig{Logger: cfg.Logger, Metrics: m, Gatherer: cfg.Gatherer, Ready: cfg.Ready})
	r.Route("/api/net", func(r chi.Router) {
		// Before authentication, so requests with made-up tokens are limited too.
		r.Use(cfg.RateLimit.Middleware(cfg.Tokens, nil, cfg.Registerer, "semnet_cluster"))
		if len(cfg.Tokens) > 0 {
			r.Use(httpapi.BearerAuth(cfg.Tokens...))
		}
		r.Post("/deployment", s.handle(s.deploy))
		r.Delete("/deployment/{job}", s.handle(s.undeploy))
		r.Post(strings.TrimPrefix(refapi.JobUpdatePath, "/api/net"), s.handle(s.jobUpdate))
	})
	return r
}

func (s *server) handle(fn func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := fn(w, r); err != nil {
			httpapi.WriteProblem(w, r, err, classify)
			var p *httpapi.Problem
			if !errors.As(err, &p) || p.Status >= 500 {
				s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
		}
	}
}

// classify maps the table's and root's errors onto statuses.
func classify(err error) *httpapi.Problem {
	switch {
	case errors.Is(err, table.ErrUnknown):
		return httpapi.Errorf(http.StatusNotFound, "%v", err)
	case client.Temporary(err), errors.Is(err, context.DeadlineExceeded):
		return httpapi.Errorf(http.StatusServiceUnavailable, "root is unreachable: %v", err)
	}
	return nil
}

// deployment is the body of POST /api/net/deployment.
type deployment struct {
	JobName string `json:"job_name"`
}

func (s *server) deploy(w http.ResponseWriter, r *http.Request) error {
	var d deployment
	if err := httpapi.DecodeJSON(w, r, &d); err != nil {
		return err
	}
	if d.JobName == "" {
		return httpapi.Errorf(http.StatusBadRequest, "field job_name is required")
	}
	e, err := s.table.Prefetch(r.Context(), d.JobName)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, e.Table)
	return nil
}

func (s *server) undeploy(w http.ResponseWriter, r *http.Request) error {
	job := chi.URLParam(r, "job")
	if s.cfg.Forget != nil {
		if err := s.cfg.Forget(r.Context(), job); err != nil {
			return err
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"job_name": job})
	return nil
}

func (s *server) jobUpdate(w http.ResponseWriter, r *http.Request) error {
	var u refapi.JobUpdate
	if err := httpapi.DecodeJSON(w, r, &u); err != nil {
		return err
	}
	if u.JobName == "" {
		return httpapi.Errorf(http.StatusBadRequest, "field job_name is required")
	}
	if u.Type != refapi.UpdateDeployment && u.Type != refapi.UpdateUndeployment {
		return httpapi.Errorf(http.StatusBadRequest, "type %q must be %q or %q", u.Type, refapi.UpdateDeployment, refapi.UpdateUndeployment)
	}
	if err := s.table.Refresh(r.Context(), u.JobName); err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"job_name": u.JobName})
	return nil
}
