package httpapi

import (
	"container/list"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// DefaultMaxClients is how many clients a RateLimiter tracks at most by default.
const DefaultMaxClients = 10000

// RateLimit configures a RateLimiter: a token bucket per client.
type RateLimit struct {
	// Rate is the requests per second a client may make in the long run.
	Rate float64
	// Burst is the bucket's size: how many requests a client may make at once after a
	// quiet spell. 0 means twice Rate (at least 1).
	Burst int
	// MaxClients bounds the buckets kept (default DefaultMaxClients), so a flood from
	// ever new addresses cannot grow memory without bound.
	MaxClients int
	// Key names the client a request counts against, and a label for the metric of
	// refused requests (keep its values few). ClientKey is semnet's.
	Key func(r *http.Request) (client, label string)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Validate refuses negative limits (0 is no limit, and a Burst of 0 the default). The
// error names the command-line flags root and cluster set them with.
func (cfg RateLimit) Validate() error {
	if cfg.Rate < 0 || cfg.Burst < 0 {
		return fmt.Errorf("--rate-limit %g and --rate-burst %d must not be negative (--rate-limit 0 turns limiting off)", cfg.Rate, cfg.Burst)
	}
	return nil
}

// Middleware is how a server limits its API: a RateLimiter for cfg, its metrics
// registered with reg (nil: none) under namespace, and its Key, unless set, ClientKey
// over the server's admin and readOnly tokens. With a Rate of 0 or less it is no limit:
// the middleware hands every request on and nothing is registered.
func (cfg RateLimit) Middleware(admin, readOnly []string, reg prometheus.Registerer, namespace string) func(http.Handler) http.Handler {
	if cfg.Rate <= 0 {
		return func(next http.Handler) http.Handler { return next }
	}
	if cfg.Key == nil {
		cfg.Key = ClientKey(admin, readOnly)
	}
	return NewRateLimiter(cfg, reg, namespace).Middleware
}

// RateLimiter refuses a client's requests beyond its rate with 429 and a Retry-After
// header.
//
// Buckets are kept in least-recently-used order. A bucket idle for Burst/Rate seconds
// is full again, as a new one would be, so it is dropped (checked on every request, at
// the old end); beyond MaxClients the least recently used one is dropped too. Either
// way a dropped client starts over with a full bucket: eviction can only be lenient,
// never refuse a request a kept bucket would have allowed. Memory is bounded by
// MaxClients buckets (about 250 bytes each).
type RateLimiter struct {
	cfg     RateLimit
	idle    time.Duration // a bucket unused this long is full again
	limited *prometheus.CounterVec

	mu      sync.Mutex
	clients map[string]*list.Element // of *bucket
	lru     list.List                // most recently used at the front
}

type bucket struct {
	client string
	lim    *rate.Limiter
	last   time.Time
}

// NewRateLimiter builds a limiter; cfg.Rate must be positive. Its metrics are
// registered with reg (when not nil) under namespace: <namespace>_http_rate_limited_total
// (refused requests by label) and <namespace>_http_rate_limit_clients (buckets kept).
func NewRateLimiter(cfg RateLimit, reg prometheus.Registerer, namespace string) *RateLimiter {
	if cfg.Burst <= 0 {
		cfg.Burst = max(1, int(math.Ceil(2*cfg.Rate)))
	}
	if cfg.MaxClients <= 0 {
		cfg.MaxClients = DefaultMaxClients
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &RateLimiter{cfg: cfg, clients: map[string]*list.Element{},
		idle: max(time.Second, time.Duration(float64(cfg.Burst)/cfg.Rate*float64(time.Second))),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "http_rate_limited_total",
			Help: "Requests refused with 429 because their client exceeded its rate, by the client's token scope.",
		}, []string{"scope"}),
	}
	if reg != nil {
		reg.MustRegister(l.limited, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "http_rate_limit_clients",
			Help: "Clients whose request rate is being tracked (bounded; idle ones are forgotten).",
		}, func() float64 { return float64(l.Clients()) }))
	}
	return l
}

// Middleware refuses requests over their client's rate.
func (l *RateLimiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client, label := l.cfg.Key(r)
		now := l.cfg.Now()
		lim := l.limiterFor(client, now)
		if lim.AllowN(now, 1) {
			next.ServeHTTP(w, r)
			return
		}
		// The time until one token is back, in whole seconds as Retry-After wants them.
		wait := (1 - lim.TokensAt(now)) / l.cfg.Rate
		secs := max(1, int(math.Ceil(wait)))
		l.limited.WithLabelValues(label).Inc()
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		WriteProblem(w, r, Errorf(http.StatusTooManyRequests,
			"too many requests: each client may make %g requests/s (bursts of %d); retry in %d s",
			l.cfg.Rate, l.cfg.Burst, secs), nil)
	})
}

// limiterFor returns client's bucket, creating it, and forgets buckets idle long enough to
// be full again, and the least recently used beyond MaxClients.
func (l *RateLimiter) limiterFor(client string, now time.Time) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	for e := l.lru.Back(); e != nil && now.Sub(e.Value.(*bucket).last) >= l.idle; e = l.lru.Back() {
		l.forget(e)
	}
	if e, ok := l.clients[client]; ok {
		b := e.Value.(*bucket)
		b.last = now
		l.lru.MoveToFront(e)
		return b.lim
	}
	if l.lru.Len() >= l.cfg.MaxClients {
		l.forget(l.lru.Back())
	}
	b := &bucket{client: client, lim: rate.NewLimiter(rate.Limit(l.cfg.Rate), l.cfg.Burst), last: now}
	l.clients[client] = l.lru.PushFront(b)
	return b.lim
}

func (l *RateLimiter) forget(e *list.Element) {
	l.lru.Remove(e)
	delete(l.clients, e.Value.(*bucket).client)
}

// Clients returns how many clients' buckets are kept.
func (l *RateLimiter) Clients() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// ClientKey returns semnet's Key for a RateLimiter: a client is a token scope ("admin",
// "read", or "none" for a request without a valid token) at a source address. The scope,
// not the token alone, because every cluster and operator may share root's one admin
// token; the address, not the token alone, so one runaway script cannot throttle the
// clusters sharing its token, and requests with made-up tokens count against their
// sender's address, not against a bucket of their own. IPv6 addresses count per /64,
// the block a single host usually holds. The address is the connection's peer:
// forwarded headers are not trusted, so a proxy in front is one client.
func ClientKey(admin, readOnly []string) func(*http.Request) (client, label string) {
	return func(r *http.Request) (string, string) {
		scope := scopeNone
		if tok, ok := bearer(r); ok {
			scope = scopeOf(tok, admin, readOnly)
		}
		return scope + " " + peer(r.RemoteAddr), scope
	}
}

// peer is the client address of a request's RemoteAddr: the IPv4 address, or the /64 of
// an IPv6 one.
func peer(remote string) string {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return remote // not an IP (a unix socket): one client
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}
