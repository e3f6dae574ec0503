package root_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
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
)

// fromAddr is an HTTP client whose connections come from the loopback address src
// (Linux routes all of 127.0.0.0/8 to lo), so a test can be several clients.
func fromAddr(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

type answer struct {
	code       int
	retryAfter string
	body       []byte
}

func call(t *testing.T, hc *http.Client, url, token string) answer {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header.Get("Retry-After"), b}
}

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
	a, b := fromAddr("127.0.0.1"), fromAddr("127.0.0.2")

	// The burst of 3, then a refusal: within a few requests even on a slow machine (a
	// token comes back every 500 ms).
	var refused answer
	for i := 0; i < 6 && refused.code == 0; i++ {
		switch got := call(t, a, base+"/api/v1/pools", adminToken); got.code {
		case http.StatusOK:
		case http.StatusTooManyRequests:
			refused = got
			if i < 3 {
				t.Errorf("refused after %d requests, within the burst of 3", i)
			}
		default:
			t.Fatalf("request %d: %d %s", i+1, got.code, got.body)
		}
	}
	if refused.code == 0 {
		t.Fatal("6 quick requests at 2/s with a burst of 3 were all served")
	}
	var p struct {
		Status int
		Detail string
	}
	if err := json.Unmarshal(refused.body, &p); err != nil || p.Status != http.StatusTooManyRequests || !strings.Contains(p.Detail, "2 requests/s") {
		t.Errorf("429 body %s (%v)", refused.body, err)
	}
	if refused.retryAfter != "1" {
		t.Errorf("Retry-After %q, want 1 (a token every 500 ms, rounded up)", refused.retryAfter)
	}

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
			if got := call(t, a, base+path, ""); got.code != http.StatusOK {
				t.Fatalf("GET %s from a limited client: %d", path, got.code)
			}
		}
	}
	// Another address has a bucket of its own.
	if got := call(t, b, base+"/api/v1/pools", adminToken); got.code != http.StatusOK {
		t.Errorf("another address: %d, want 200", got.code)
	}

	time.Sleep(600 * time.Millisecond) // one token back
	if got := call(t, a, base+"/api/v1/pools", adminToken); got.code != http.StatusOK {
		t.Errorf("after waiting: %d, want 200", got.code)
	}

	m := call(t, a, base+"/metrics", "")
	if !strings.Contains(string(m.body), `semnet_root_http_rate_limited_total{scope="admin"}`) ||
		!regexp.MustCompile(`(?m)^semnet_root_http_rate_limit_clients [12]$`).Match(m.body) {
		t.Errorf("/metrics lacks the rate limit metrics:\n%s", grep(m.body, "rate_limit"))
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
		if got := call(t, http.DefaultClient, "http://"+srv.Addr.String()+"/api/v1/pools", adminToken); got.code != http.StatusOK {
			t.Fatalf("request %d without a limit: %d", i+1, got.code)
		}
	}
}

// grep returns the lines of b containing s.
func grep(b []byte, s string) string {
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}
