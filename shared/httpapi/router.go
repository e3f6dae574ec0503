package httpapi

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// RouterConfig configures NewRouter.
type RouterConfig struct {
	Logger *slog.Logger
	// Metrics, when set, measures every request; Gatherer, when set, is served on /metrics.
	Metrics  *Metrics
	Gatherer prometheus.Gatherer
	// Ready reports whether the server can do its work; /readyz answers 503 while it
	// fails (each check bounded to 2 s).
	Ready func(ctx context.Context) error
	// Hint is appended to the detail of a 404 for an unknown endpoint.
	Hint string
}

// NewRouter returns a chi router with what every semnet server has: request IDs, panic
// recovery, request logs and metrics, problem+json for unknown endpoints and methods,
// and /healthz, /readyz and /metrics.
func NewRouter(cfg RouterConfig) chi.Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := chi.NewRouter()
	r.Use(middleware.RequestID, middleware.Recoverer, Logger(cfg.Logger))
	if cfg.Metrics != nil {
		r.Use(cfg.Metrics.Middleware)
	}
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		WriteProblem(w, r, Errorf(http.StatusNotFound, "no such endpoint %s %s%s", r.Method, r.URL.Path, cfg.Hint), nil)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		WriteProblem(w, r, Errorf(http.StatusMethodNotAllowed, "method %s is not allowed on %s", r.Method, r.URL.Path), nil)
	})
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	r.Get("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if cfg.Ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := cfg.Ready(ctx); err != nil {
				WriteProblem(w, r, Errorf(http.StatusServiceUnavailable, "not ready: %v", err), nil)
				return
			}
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	if cfg.Gatherer != nil {
		r.Method(http.MethodGet, "/metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return r
}
