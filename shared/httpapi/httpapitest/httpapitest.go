// Package httpapitest holds what tests of semnet's REST servers (root, cluster) need to
// be their clients: several clients from one machine, whole answers (status, headers,
// body) and the check that a client going over its rate limit is refused as
// shared/httpapi promises.
package httpapitest

import (
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
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
