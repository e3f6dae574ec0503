// Package httpapitest holds what tests of semnet's REST servers (root, cluster) need to
// be their clients: several clients from one machine, whole answers (status, headers,
// body), requests served in process for fuzz targets, and the checks that a client going
// over its rate limit is refused, and that a client's mistake is answered, as
// shared/httpapi promises.
package httpapitest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// FromAddr is an HTTP client whose connections come from the loopback address src
// (Linux routes all of 127.0.0.0/8 to lo), so that one test can be several clients of a
// server that tells them apart by address.
func FromAddr(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
}

// Answer is what a server answered.
type Answer struct {
	Code        int
	RetryAfter  string // the Retry-After header
	ContentType string
	Body        []byte
}

// Do sends method url with body (none when empty, JSON otherwise) and token as the
// bearer token (none when empty), and reads the whole answer. Failing to get one ends
// the test.
func Do(t testing.TB, hc *http.Client, method, url, token, body string) Answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, url, err)
	}
	return Answer{resp.StatusCode, resp.Header.Get("Retry-After"), resp.Header.Get("Content-Type"), b}
}

// Serve serves one request with h in process, without a listener, so that a fuzz
// target can send thousands a second, and returns the whole answer. body is sent as
// JSON, token (when not empty) as the bearer token.
func Serve(h http.Handler, method, path, token string, body []byte) Answer {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return Answer{rec.Code, rec.Header().Get("Retry-After"), rec.Header().Get("Content-Type"), rec.Body.Bytes()}
}

// CheckClientError checks the answer to a request whose only possible fault is the
// client's (the server and what it depends on are up): no 5xx; a 4xx is
// application/problem+json whose status matches and whose detail says what was wrong;
// a 2xx is JSON, or empty for 204.
func CheckClientError(a Answer) error {
	switch {
	case a.Code >= 500:
		return fmt.Errorf("server error %d for a client's request: %s", a.Code, a.Body)
	case a.Code >= 400:
		if a.ContentType != "application/problem+json" {
			return fmt.Errorf("%d with Content-Type %q, want application/problem+json: %s", a.Code, a.ContentType, a.Body)
		}
		var p struct {
			Status int
			Detail string
		}
		if err := json.Unmarshal(a.Body, &p); err != nil {
			return fmt.Errorf("%d: the problem does not decode (%v): %s", a.Code, err, a.Body)
		}
		if p.Status != a.Code || strings.TrimSpace(p.Detail) == "" {
			return fmt.Errorf("%d: problem %s lacks a matching status or a detail", a.Code, a.Body)
		}
	case a.Code == http.StatusNoContent:
	case a.Code >= 200 && a.Code < 300:
		if !strings.HasPrefix(a.ContentType, "application/json") || !json.Valid(a.Body) {
			return fmt.Errorf("%d with Content-Type %q and a body that is not JSON: %s", a.Code, a.ContentType, a.Body)
		}
	default:
		return fmt.Errorf("unexpected status %d: %s", a.Code, a.Body)
	}
	return nil
}

// SpendBurst sends requests with send, each answered with success until the client's
// burst is spent, until one is refused, and returns the refusal after checking it is what
// httpapi.RateLimiter promises: 429 problem+json naming the rate, with a Retry-After of
// whole seconds no longer than a token takes to come back. A refusal within the burst, an
// answer other than success or 429, or no refusal within a few requests past the burst
// fails the test. Tokens come back at rate per second meanwhile: keep it low enough that
// a few requests outpace it, even on a slow machine.
func SpendBurst(t testing.TB, burst int, rate float64, send func() Answer) Answer {
	t.Helper()
	for i := range burst + 3 {
		got := send()
		switch {
		case got.Code < 300:
			continue
		case got.Code != http.StatusTooManyRequests:
			t.Fatalf("request %d: %d %s", i+1, got.Code, got.Body)
		case i < burst:
			t.Errorf("refused after %d requests, within the burst of %d", i, burst)
		}
		var p struct {
			Status int
			Detail string
		}
		rateText := strconv.FormatFloat(rate, 'g', -1, 64) + " requests/s"
		if err := json.Unmarshal(got.Body, &p); err != nil || p.Status != http.StatusTooManyRequests ||
			!strings.Contains(p.Detail, rateText) || got.ContentType != "application/problem+json" {
			t.Errorf("429 answer %s %s (%v); want a problem+json with status 429 naming %s", got.ContentType, got.Body, err, rateText)
		}
		if secs, err := strconv.Atoi(got.RetryAfter); err != nil || secs < 1 || secs > max(1, int(math.Ceil(1/rate))) {
			t.Errorf("Retry-After %q; want whole seconds from 1 to %g (a token comes back every %g s)", got.RetryAfter, math.Ceil(1/rate), 1/rate)
		}
		return got
	}
	t.Fatalf("%d quick requests at %g/s with a burst of %d were all served", burst+3, rate, burst)
	return Answer{}
}

// Lines returns the lines of b that contain s (of /metrics, say, for an error message).
func Lines(b []byte, s string) string {
	var out []string
	for line := range strings.Lines(string(b)) {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "")
}
