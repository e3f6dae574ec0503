package httpapi_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/shared/fakeclock"
	"github.com/semnet/semnet/shared/httpapi"
)

const admin, reader = "admin-token-0123456789", "read-token-0123456789"

// limited builds a limiter of rate/s and burst on a fake clock over a handler that
// answers 204, keyed by ClientKey with the test's tokens.
func limited(t *testing.T, rate float64, burst, maxClients int) (http.Handler, *httpapi.RateLimiter, *fakeclock.Clock, *prometheus.Registry) {
	t.Helper()
	clock := fakeclock.New()
	reg := prometheus.NewRegistry()
	l := httpapi.NewRateLimiter(httpapi.RateLimit{Rate: rate, Burst: burst, MaxClients: maxClients,
		Key: httpapi.ClientKey([]string{admin}, []string{reader}), Now: clock.Now}, reg, "semnet_test")
	return l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})), l, clock, reg
}

// send makes one request from remote (ip:port) with token (none when empty).
func send(h http.Handler, remote, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodGet, "/api/v1/services", nil)
	req.RemoteAddr = remote
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestRateLimitPerClient: a client gets its burst, then 429 problems with a Retry-After
// that is long enough; other clients (another address, another token scope at the same
// address) are unaffected; after the wait it passes again.
func TestRateLimitPerClient(t *testing.T) {
	h, _, clock, reg := limited(t, 0.5, 3, 0) // one request per 2 s
	const a, b = "192.0.2.1:40000", "192.0.2.2:40000"
	for i := range 3 {
		if rec := send(h, a, admin); rec.Code != http.StatusNoContent {
			t.Fatalf("request %d of the burst: %d", i+1, rec.Code)
		}
	}
	rec := send(h, a, admin)
	if rec.Code != http.StatusTooManyRequests {
		t.Fatalf("request over the burst: %d, want 429", rec.Code)
	}
	var p httpapi.Problem
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("429 content type %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Status != http.StatusTooManyRequests || !strings.Contains(p.Detail, "0.5 requests/s") {
		t.Errorf("429 problem %s (%v)", rec.Body, err)
	}
	retry, err := strconv.Atoi(rec.Header().Get("Retry-After"))
	if err != nil || retry != 2 {
		t.Errorf("Retry-After %q, want 2 (one token at 0.5/s)", rec.Header().Get("Retry-After"))
	}
	// The same address with the same port or another: the same client.
	if rec := send(h, "192.0.2.1:40001", admin); rec.Code != http.StatusTooManyRequests {
		t.Errorf("same address, other port: %d, want 429", rec.Code)
	}
	// Another address, and another scope at the same address, have buckets of their own.
	for _, c := range []struct{ remote, token string }{{b, admin}, {a, reader}, {a, ""}, {a, "made-up-token-0123456789"}} {
		if rec := send(h, c.remote, c.token); rec.Code != http.StatusNoContent {
			t.Errorf("%s with %q: %d, want 204 (a client of its own)", c.remote, c.token, rec.Code)
		}
	}
	// A made-up token counts as no token: the sender's address, scope "none". Two of
	// its burst of 3 are spent above.
	if rec := send(h, a, "another-made-up-token-01234"); rec.Code != http.StatusNoContent {
		t.Errorf("third unauthenticated request: %d (burst 3)", rec.Code)
	}
	if rec := send(h, a, "yet-another-made-up-token"); rec.Code != http.StatusTooManyRequests {
		t.Errorf("fourth unauthenticated request from one address with different tokens: %d, want 429", rec.Code)
	}
	clock.Advance(time.Duration(retry)*time.Second - time.Millisecond)
	if rec := send(h, a, admin); rec.Code != http.StatusTooManyRequests {
		t.Errorf("just before Retry-After: %d, want 429", rec.Code)
	}
	clock.Advance(time.Millisecond)
	if rec := send(h, a, admin); rec.Code != http.StatusNoContent {
		t.Errorf("after Retry-After: %d, want 204", rec.Code)
	}
	if got := metric(t, reg, "semnet_test_http_rate_limited_total", "admin"); got != 3 {
		t.Errorf("semnet_test_http_rate_limited_total{scope=admin} = %v, want 3", got)
	}
	if got := metric(t, reg, "semnet_test_http_rate_limited_total", "none"); got != 1 {
		t.Errorf("semnet_test_http_rate_limited_total{scope=none} = %v, want 1", got)
	}
}

// metric returns the value of the counter or gauge name in reg, of the series whose
// first label is label ("" for a series without labels).
func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() != name || (label != "" && m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no %s{%s}", name, label)
	return 0
}

// TestRateLimitIPv6PerPrefix: addresses of one IPv6 /64 are one client (a host holds a
// whole /64 and could cycle through it); another /64 is another.
func TestRateLimitIPv6PerPrefix(t *testing.T) {
	h, _, _, _ := limited(t, 1, 1, 0)
	if rec := send(h, "[2001:db8:1:2::1]:443", admin); rec.Code != http.StatusNoContent {
		t.Fatalf("first: %d", rec.Code)
	}
	if rec := send(h, "[2001:db8:1:2:ffff::9]:443", admin); rec.Code != http.StatusTooManyRequests {
		t.Errorf("same /64: %d, want 429", rec.Code)
	}
	if rec := send(h, "[2001:db8:1:3::1]:443", admin); rec.Code != http.StatusNoContent {
		t.Errorf("another /64: %d, want 204", rec.Code)
	}
	// An IPv4-mapped address is its IPv4 address.
	send(h, "192.0.2.7:1", admin)
	if rec := send(h, "[::ffff:192.0.2.7]:2", admin); rec.Code != http.StatusTooManyRequests {
		t.Errorf("IPv4-mapped form of a limited address: %d, want 429", rec.Code)
	}
}

// TestRateLimitClientsBounded: a flood from ever new addresses keeps at most MaxClients
// buckets (dropping the least recently used, so the latest clients stay limited), and
// buckets idle long enough to be full again are forgotten.
func TestRateLimitClientsBounded(t *testing.T) {
	h, l, clock, reg := limited(t, 10, 5, 100)
	for range 5 {
		send(h, "198.51.100.1:1", admin)
	}
	for i := range 1000 {
		send(h, fmt.Sprintf("10.%d.%d.1:1", i/256, i%256), "")
		if n := l.Clients(); n > 100 {
			t.Fatalf("after %d addresses: %d buckets, want at most 100", i+1, n)
		}
	}
	if n := l.Clients(); n != 100 {
		t.Errorf("%d buckets, want 100", n)
	}
	if got := metric(t, reg, "semnet_test_http_rate_limit_clients", ""); got != 100 {
		t.Errorf("semnet_test_http_rate_limit_clients = %v, want 100", got)
	}
	// The latest address still has its (spent) bucket.
	last := fmt.Sprintf("10.%d.%d.1:1", 999/256, 999%256)
	for range 4 {
		send(h, last, "")
	}
	if rec := send(h, last, ""); rec.Code != http.StatusTooManyRequests {
		t.Errorf("the most recent client was forgotten: %d, want 429", rec.Code)
	}
	// Burst 5 at 10/s is full again after 0.5 s; idle buckets go (the limiter's floor
	// for forgetting is 1 s).
	clock.Advance(time.Second)
	send(h, "203.0.113.1:1", "")
	if n := l.Clients(); n != 1 {
		t.Errorf("after every bucket idled: %d buckets, want 1", n)
	}
}

// BenchmarkRateLimiter measures what the limiter adds to a request that passes: the
// client key (token scope in constant time, address) and the bucket.
func BenchmarkRateLimiter(b *testing.B) {
	l := httpapi.NewRateLimiter(httpapi.RateLimit{Rate: 1e9, Burst: 1e9,
		Key: httpapi.ClientKey([]string{admin}, []string{reader})}, nil, "semnet_bench")
	h := l.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	req := httptest.NewRequest(http.MethodGet, "/api/v1/services", nil)
	req.RemoteAddr = "192.0.2.1:40000"
	req.Header.Set("Authorization", "Bearer "+admin)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		h.ServeHTTP(w, req)
	}
}
