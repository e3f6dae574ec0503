package httpapi

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// NewServer returns the http.Server semnet's REST APIs run in: h behind a header
// timeout (slow-loris clients), HTTPS when tc is not nil, and the server's own errors
// (failed TLS handshakes above all: a client with the wrong CA or no certificate) in
// log rather than on stderr.
func NewServer(h http.Handler, tc *tls.Config, log *slog.Logger) *http.Server {
	return &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn)}
}

// Serve serves srv on ln, with TLS when srv.TLSConfig is set, until srv shuts down
// (which is no error).
func Serve(srv *http.Server, ln net.Listener) error {
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "") // the certificate comes from TLSConfig
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
