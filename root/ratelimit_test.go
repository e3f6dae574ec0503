package root_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/httpapi/httpapitest"
)

// TestRootRateLimit runs a real root limiting each client to 2 requests/s in bursts of
// 3: a client going over gets 429 problems with Retry-After (the Go client sees a
// temporary ErrRateLimited); another source address and the health, readiness and
// metrics endpoints are unaffected; after the wait the client passes again; /metrics
// counts the refusals.
func TestRootRateLimit(t *testing.T) {
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Tokens: []string{adminToken},
		Plan: addrplan.Default(), RateLimit: 2, RateBurst: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	port := strconv.Itoa(srv.Addr.(*net.TCPAddr).Port)
	base := "http://127.0.0.1:" + port
	a, b := httpapitest.FromAddr("127.0.0.1"), httpapitest.FromAddr("127.0.0.2")
	pools := func(hc *http.Client) httpapitest.Answer {
		return httpapitest.Do(t, hc, http.MethodGet, base+"/api/v1/pools", adminToken, "")
	}

	// The burst of 3, then a refusal (a token comes back every 500 ms).
	httpapitest.SpendBurst(t, 3, 2, func() httpapitest.Answer { return pools(a) })

	rc, _ := client.New(base, adminToken, a)
	for range 4 { // the first call refused, unless a token came back meanwhile
		if _, err = rc.Pools(t.Context()); err != nil {
			break
		}
	}
	if !errors.Is(err, client.ErrRateLimited) || !client.Temporary(err) || errors.Is(err, client.ErrRejected) || client.RetryAfter(err) != time.Second {
		t.Errorf("Go client over the limit: %v (retry after %v); want a temporary ErrRateLimited, retry after 1s", err, client.RetryAfter(err))
	}

	// Health, readiness and metrics are never limited, even for this client.
	for range 5 {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if got := httpapitest.Do(t, a, http.MethodGet, base+path, "", ""); got.Code != http.StatusOK {
				t.Fatalf("GET %s from a limited client: %d", path, got.Code)
			}
		}
	}
	// Another address has a bucket of its own.
	if got := pools(b); got.Code != http.StatusOK {
		t.Errorf("another address: %d, want 200", got.Code)
	}

	time.Sleep(600 * time.Millisecond) // one token back
	if got := pools(a); got.Code != http.StatusOK {
		t.Errorf("after waiting: %d, want 200", got.Code)
	}

	m := httpapitest.Do(t, a, http.MethodGet, base+"/metrics", "", "")
	if !strings.Contains(string(m.Body), `semnet_root_http_rate_limited_total{scope="admin"}`) ||
		!regexp.MustCompile(`(?m)^semnet_root_http_rate_limit_clients [12]$`).Match(m.Body) {
		t.Errorf("/metrics lacks the rate limit metrics:\n%s", httpapitest.Lines(m.Body, "rate_limit"))
	}
}

// TestRateLimitValidated: negative limits are refused; zero is off.
func TestRateLimitValidated(t *testing.T) {
	base := root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Tokens: []string{adminToken}, Plan: addrplan.Default()}
	for _, c := range []struct {
		rate  float64
		burst int
		ok    bool
	}{{0, 0, true}, {10, 0, true}, {-1, 0, false}, {10, -1, false}} {
		cfg := base
		cfg.RateLimit, cfg.RateBurst = c.rate, c.burst
		if err := cfg.Validate(); (err == nil) != c.ok || err != nil && !strings.Contains(err.Error(), "--rate-limit") {
			t.Errorf("rate %v burst %d: %v", c.rate, c.burst, err)
		}
	}
	// Off: no bucket, no 429 however many requests.
	srv, err := root.Start(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for i := range 50 {
		if got := httpapitest.Do(t, http.DefaultClient, http.MethodGet, "http://"+srv.Addr.String()+"/api/v1/pools", adminToken, ""); got.Code != http.StatusOK {
			t.Fatalf("request %d without a limit: %d", i+1, got.Code)
		}
	}
}
