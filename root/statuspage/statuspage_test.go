package statuspage_test

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/semnet/semnet/root/statuspage"
)

func server(t *testing.T) *httptest.Server {
	t.Helper()
	r := chi.NewRouter()
	statuspage.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return srv
}

// get fetches path without following redirects.
func get(t *testing.T, srv *httptest.Server, path string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestPageIsServedWithAStrictContentSecurityPolicy(t *testing.T) {
	srv := server(t)
	for _, tc := range []struct{ path, ctype, has string }{
		{"/ui/", "text/html", `<script src="status.js"`},
		{"/ui/status.js", "text/javascript", "sessionStorage"},
		{"/ui/status.css", "text/css", "#map"},
	} {
		resp, body := get(t, srv, tc.path)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", tc.path, resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, tc.ctype) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, ct, tc.ctype)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") || strings.Contains(csp, "unsafe") {
			t.Errorf("GET %s: Content-Security-Policy %q, want default-src 'self' and nothing unsafe", tc.path, csp)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", tc.path, got)
		}
		if !strings.Contains(body, tc.has) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.has)
		}
	}
	for _, path := range []string{"/", "/ui"} {
		resp, _ := get(t, srv, path)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != statuspage.Prefix {
			t.Errorf("GET %s: %s to %q, want a redirect to %s", path, resp.Status, resp.Header.Get("Location"), statuspage.Prefix)
		}
	}
}

func TestUnknownFilesAreNotFound(t *testing.T) {
	srv := server(t)
	for _, path := range []string{"/ui/nope.js", "/ui/static/index.html", "/ui/../statuspage.go", "/ui/%2e%2e/statuspage.go", "/ui/status.js/"} {
		resp, body := get(t, srv, path)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", path, resp.Status)
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode == http.StatusNotFound && ct != "application/problem+json" {
			t.Errorf("GET %s: Content-Type %q, want problem+json: %s", path, ct, body)
		}
	}
}

// TestPageReferencesNothingOutsideRoot: the page may only load its own files. No
// absolute URL appears in any of them, and every src/href of the HTML names an embedded
// file (or is an inline data: URL).
func TestPageReferencesNothingOutsideRoot(t *testing.T) {
	files := statuspage.Files()
	absolute := regexp.MustCompile(`(?i)\b(https?|wss?|ftp):|(src|href|action)\s*=\s*["']?//|url\(\s*["']?//|@import`)
	names, err := fs.Glob(files, "*")
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 3 {
		t.Errorf("embedded files %v, want exactly index.html, status.js and status.css", names)
	}
	for _, name := range names {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			t.Fatal(err)
		}
		if m := absolute.FindString(string(b)); m != "" {
			t.Errorf("%s references something outside root: %q", name, m)
		}
	}
	html, err := fs.ReadFile(files, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(string(html), -1)
	if len(refs) < 2 {
		t.Fatalf("index.html has %d src/href references, want the script and the stylesheet", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if strings.HasPrefix(ref, "data:") {
			continue
		}
		if _, err := fs.Stat(files, ref); err != nil {
			t.Errorf("index.html references %q, which is not an embedded file", ref)
		}
	}
}
