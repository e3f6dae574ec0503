package httpapi

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// NewServer returns the http.Server semnet's REST APIs run in: h behind a header
// timeout (slow-loris clients), HTTPS when tc is not nil, and the server's own errors
// (failed TLS handshakes above all: a client with the wrong CA or no certificate) in
// log rather than on stderr. Its Shutdown does not wait for connections that have not
// sent a request (see unused).
func NewServer(h http.Handler, tc *tls.Config, log *slog.Logger) *http.Server {
	u := &unused{conns: map[net.Conn]struct{}{}}
	srv := &http.Server{Handler: h, TLSConfig: tc, ReadHeaderTimeout: 10 * time.Second, ConnState: u.track,
		ErrorLog: slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelWarn)}
	srv.RegisterOnShutdown(u.close)
	return srv
}

// unused tracks the connections that have not sent a request yet (http.StateNew), to
// close them when the server shuts down. http.Server.Shutdown treats such a connection
// as busy until it is 5 s old, so a client that dialled one for a request it then
// dropped (a long poll cancelled before it was sent, a speculative dial) held every
// shutdown up for up to 5 s. The server has started no request from such a
// connection; a client still sending one gets an error, as from a server that stopped
// listening.
type unused struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (u *unused) track(c net.Conn, st http.ConnState) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if st == http.StateNew {
		u.conns[c] = struct{}{}
	} else {
		delete(u.conns, c)
	}
}

// close closes them. Shutdown calls it after closing the listeners, so no new one
// comes after.
func (u *unused) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for c := range u.conns {
		c.Close()
		delete(u.conns, c)
	}
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
