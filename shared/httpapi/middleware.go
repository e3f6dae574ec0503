package httpapi

import (
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

// BearerAuth refuses requests that do not carry "Authorization: Bearer <token>" with one
// of the given tokens (401 with a WWW-Authenticate challenge). With no tokens it lets
// everything through: callers decide whether that is allowed (root only does it for
// --insecure on loopback).
func BearerAuth(tokens ...string) func(http.Handler) http.Handler {
	return ScopedBearerAuth(tokens, nil)
}

// ScopedBearerAuth is BearerAuth with two scopes: a token of admin may do anything, a
// token of readOnly only read (GET, HEAD, OPTIONS); anything else it asks is refused
// with 403, since the token is valid but not for that. With no tokens at all it lets
// everything through, as BearerAuth.
func ScopedBearerAuth(admin, readOnly []string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		if len(admin) == 0 && len(readOnly) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got, ok := bearer(r)
			if !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="semnet"`)
				WriteProblem(w, r, Errorf(http.StatusUnauthorized, "missing bearer token: send Authorization: Bearer <token>"), nil)
				return
			}
			switch scopeOf(got, admin, readOnly) {
			case scopeAdmin:
				next.ServeHTTP(w, r)
			case scopeRead:
				if r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions {
					next.ServeHTTP(w, r)
					return
				}
				w.Header().Set("WWW-Authenticate", `Bearer realm="semnet", error="insufficient_scope"`)
				WriteProblem(w, r, Errorf(http.StatusForbidden, "this token may only read (GET): %s needs an admin token", r.Method), nil)
			default:
				w.Header().Set("WWW-Authenticate", `Bearer realm="semnet", error="invalid_token"`)
				WriteProblem(w, r, Errorf(http.StatusUnauthorized, "invalid bearer token"), nil)
			}
		})
	}
}

// The scopes of a bearer token. scopeNone is no token or an unknown one.
const (
	scopeNone  = "none"
	scopeAdmin = "admin"
	scopeRead  = "read"
)

// bearer returns the request's bearer token, if it carries one.
func bearer(r *http.Request) (string, bool) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return got, ok && got != ""
}

// scopeOf returns the scope token grants.
func scopeOf(token string, admin, readOnly []string) string {
	switch {
	case oneOf(token, admin):
		return scopeAdmin
	case oneOf(token, readOnly):
		return scopeRead
	}
	return scopeNone
}

// oneOf reports whether got is one of tokens, comparing in constant time so a token
// can't be guessed byte by byte from timing.
func oneOf(got string, tokens []string) bool {
	found := 0
	for _, t := range tokens {
		found |= subtle.ConstantTimeCompare([]byte(got), []byte(t))
	}
	return found == 1
}

// Metrics records request latency by route pattern (not raw path, which would explode
// the label space with addresses and IDs), method and status.
type Metrics struct {
	latency *prometheus.HistogramVec
}

// NewMetrics registers the HTTP metrics of one server under namespace (e.g. "semnet_root").
func NewMetrics(reg prometheus.Registerer, namespace string) *Metrics {
	m := &Metrics{latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace,
		Name:      "http_request_duration_seconds",
		Help:      "REST request latency by route, method and status code.",
		Buckets:   []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"route", "method", "code"})}
	reg.MustRegister(m.latency)
	return m
}

// Middleware observes every request; it must sit inside a chi router so the route
// pattern is known when the request ends.
func (m *Metrics) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := chi.RouteContext(r.Context()).RoutePattern()
		if route == "" {
			route = "unmatched"
		}
		m.latency.WithLabelValues(route, r.Method, strconv.Itoa(ww.Status())).Observe(time.Since(start).Seconds())
	})
}

// Logger logs every request at debug level and server errors at error level.
func Logger(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
			next.ServeHTTP(ww, r)
			lvl := slog.LevelDebug
			if ww.Status() >= 500 {
				lvl = slog.LevelError
			}
			log.Log(r.Context(), lvl, "http request", "method", r.Method, "path", r.URL.Path,
				"status", ww.Status(), "duration", time.Since(start), "remote", r.RemoteAddr,
				"request_id", middleware.GetReqID(r.Context()))
		})
	}
}
