package cluster_test

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/shared/httpapi/httpapitest"
)

// TestClusterRateLimit runs a real cluster (and root) limiting each client of its REST
// API to 2 requests/s in bursts of 3, and posts the orchestrator's deployment prefetch
// as two clients (source addresses): the one going over gets 429 problems with
// Retry-After, the other is served; health, readiness and metrics are never limited;
// after the wait the first passes again; /metrics counts the refusals.
func TestClusterRateLimit(t *testing.T) {
	p := clustertest.StartWith(t, func(c *cluster.Config) { c.RateLimit, c.RateBurst = 2, 3 })
	svc := deploy(t, p, "limited", 1)
	base := "http://" + p.Cluster.Addr.String()
	a, b := httpapitest.FromAddr("127.0.0.1"), httpapitest.FromAddr("127.0.0.2")
	prefetch := func(hc *http.Client) httpapitest.Answer {
		return httpapitest.Do(t, hc, http.MethodPost, base+"/api/net/deployment", "", fmt.Sprintf(`{"job_name":%q}`, svc.JobName))
	}

	// The burst of 3, then a refusal (a token comes back every 500 ms).
	httpapitest.SpendBurst(t, 3, 2, func() httpapitest.Answer { return prefetch(a) })

	for range 5 {
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if got := httpapitest.Do(t, a, http.MethodGet, base+path, "", ""); got.Code != http.StatusOK {
				t.Fatalf("GET %s from a limited client: %d", path, got.Code)
			}
		}
	}
	if got := prefetch(b); got.Code != http.StatusOK || !strings.Contains(string(got.Body), svc.RRIP.String()) {
		t.Errorf("another address: %d %s, want 200 with the entry", got.Code, got.Body)
	}

	time.Sleep(600 * time.Millisecond) // one token back
	if got := prefetch(a); got.Code != http.StatusOK {
		t.Errorf("after waiting: %d %s, want 200", got.Code, got.Body)
	}

	// The orchestrator sends no token: its scope is "none".
	m := httpapitest.Do(t, a, http.MethodGet, base+"/metrics", "", "")
	if !regexp.MustCompile(`(?m)^semnet_cluster_http_rate_limited_total\{scope="none"\} [1-9]`).Match(m.Body) ||
		!regexp.MustCompile(`(?m)^semnet_cluster_http_rate_limit_clients [12]$`).Match(m.Body) {
		t.Errorf("/metrics lacks the rate limit metrics:\n%s", httpapitest.Lines(m.Body, "rate_limit"))
	}
}

// TestClusterRateLimitOff: a rate limit of 0 (the Config's zero value; `semnet cluster
// --rate-limit 0`) is no limit, with no limiter metrics; negative limits are refused
// naming the flag.
func TestClusterRateLimitOff(t *testing.T) {
	p := clustertest.Start(t, time.Minute)
	svc := deploy(t, p, "unlimited", 1)
	url := "http://" + p.Cluster.Addr.String()
	for i := range 50 {
		if got := httpapitest.Do(t, http.DefaultClient, http.MethodPost, url+"/api/net/deployment", "", fmt.Sprintf(`{"job_name":%q}`, svc.JobName)); got.Code != http.StatusOK {
			t.Fatalf("request %d without a limit: %d %s", i+1, got.Code, got.Body)
		}
	}
	if m := httpapitest.Do(t, http.DefaultClient, http.MethodGet, url+"/metrics", "", ""); strings.Contains(string(m.Body), "http_rate_limit") {
		t.Errorf("a cluster without a limit exports limiter metrics:\n%s", httpapitest.Lines(m.Body, "http_rate_limit"))
	}

	cfg := cluster.Config{ID: "c1", RootURL: "http://127.0.0.1:1", Insecure: true, MQTTListen: "127.0.0.1:0", RateLimit: 10, RateBurst: -1}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--rate-burst -1 must not be negative") {
		t.Errorf("a negative burst: %v, want it refused naming --rate-burst", err)
	}
}
