// Package statuspage serves root's read-only web status page at /ui/: a map of clusters,
// nodes and gateways, and tables of services, instances and pool usage. The page is three
// static files embedded in the binary (HTML, one script, one stylesheet) and holds no
// data: its script reads root's own /api/v1 with the operator's bearer token, which it
// takes from the URL fragment (never sent to the server) or a form, and keeps in the
// tab's sessionStorage. So the files themselves need no authentication, and a strict
// Content-Security-Policy keeps the page from loading or sending anything anywhere else.
package statuspage

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/semnet/semnet/shared/httpapi"
)

//go:embed static
var static embed.FS

// Prefix is where the page is mounted.
const Prefix = "/ui/"

// ContentSecurityPolicy is sent with every file of the page: scripts, styles, images and
// API calls from root itself only; no plugins, no framing, no form submissions (the token
// form is handled by the script, so a token can never end up in a URL).
const ContentSecurityPolicy = "default-src 'self'; img-src 'self' data:; object-src 'none'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Files returns the page's files (index.html, status.js, status.css).
func Files() fs.FS {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // "static" is a valid path, embedded at build time
	}
	return sub
}

// Mount adds the page to r: Prefix serves the files, and "/" and "/ui" redirect to it.
func Mount(r chi.Router) {
	h := Handler()
	r.Get("/", redirect)
	r.Get("/ui", redirect)
	r.Get(Prefix+"*", h.ServeHTTP)
}

func redirect(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, Prefix, http.StatusFound)
}

// Handler serves the page's files for request paths under Prefix; Prefix itself is
// index.html. Anything else is a problem+json 404.
func Handler() http.Handler {
	files := Files()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		// The files change only with the binary; revalidating is cheap and means an
		// upgraded root never runs an old script against a new API.
		h.Set("Cache-Control", "no-cache")

		name, ok := strings.CutPrefix(r.URL.Path, Prefix)
		if !ok {
			httpapi.WriteProblem(w, r, httpapi.Errorf(http.StatusNotFound, "the status page is at %s", Prefix), nil)
			return
		}
		if name == "" {
			name = "index.html"
		}
		b, err := fs.ReadFile(files, name) // fs rejects "..", so nothing outside static/
		if err != nil {
			httpapi.WriteProblem(w, r, httpapi.Errorf(http.StatusNotFound, "the status page has no file %q", name), nil)
			return
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
	})
}
