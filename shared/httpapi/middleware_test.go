package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/semnet/semnet/shared/httpapi"
)

// TestScopedBearerAuth: an admin token may do anything, a read-only token only read
// (403 otherwise, with a problem saying so), and no or an unknown token is a 401.
func TestScopedBearerAuth(t *testing.T) {
	const admin, reader = "admin-token-0123456789", "read-token-0123456789"
	h := httpapi.ScopedBearerAuth([]string{admin}, []string{reader})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	for _, c := range []struct {
		method, token string
		want          int
	}{
		{http.MethodGet, admin, http.StatusNoContent},
		{http.MethodPost, admin, http.StatusNoContent},
		{http.MethodDelete, admin, http.StatusNoContent},
		{http.MethodGet, reader, http.StatusNoContent},
		{http.MethodHead, reader, http.StatusNoContent},
		{http.MethodPost, reader, http.StatusForbidden},
		{http.MethodPut, reader, http.StatusForbidden},
		{http.MethodDelete, reader, http.StatusForbidden},
		{http.MethodGet, "", http.StatusUnauthorized},
		{http.MethodGet, reader + "x", http.StatusUnauthorized},
		{http.MethodPost, "admin-token", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(c.method, "/api/v1/services", nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("%s with %q: %d, want %d", c.method, c.token, rec.Code, c.want)
			continue
		}
		if rec.Code == http.StatusForbidden || rec.Code == http.StatusUnauthorized {
			var p struct {
				Status int
				Detail string
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("%s with %q: content type %q", c.method, c.token, ct)
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Status != c.want || p.Detail == "" {
				t.Errorf("%s with %q: problem %s (%v)", c.method, c.token, rec.Body, err)
			}
			if c.want == http.StatusForbidden && !strings.Contains(p.Detail, "only read") {
				t.Errorf("403 detail %q does not say the token may only read", p.Detail)
			}
			if rec.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("%s with %q: no WWW-Authenticate challenge", c.method, c.token)
			}
		}
	}
	// No tokens at all: everything passes (root allows that only with --insecure).
	open := httpapi.ScopedBearerAuth(nil, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	rec := httptest.NewRecorder()
	open.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", nil))
	if rec.Code != http.StatusNoContent {
		t.Errorf("no tokens: %d", rec.Code)
	}
}
