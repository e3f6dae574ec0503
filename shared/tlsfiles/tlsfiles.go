// Package tlsfiles builds the TLS configurations of semnet's servers (root's and the
// cluster's REST APIs, the cluster's MQTT broker) and of their REST clients (the
// cluster's root client, `semnet ctl`, `semnet probe`) from the PEM files named on the
// command line. Errors name the flags, so the operator reads which file to fix: a REST
// server's are --tls-cert, --tls-key and --tls-client-ca, the broker's --mqtt-cert,
// --mqtt-key and --mqtt-client-ca (Server.Flag); a client's flags differ by command and
// are named with a prefix ("root-" for the cluster's --root-ca, --root-cert, --root-key;
// "" for ctl's --ca, --cert, --key).
//
// A server re-reads its certificate and key, and its client CA, when their files change,
// so a renewed certificate (cert-manager, certbot, a cron job) or a new CA bundle is
// served without a restart; connections already open keep what they were handshaken
// with. A client's files are read once at start.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// Server names the PEM files of a TLS server. The zero value means plain HTTP.
type Server struct {
	CertFile, KeyFile string
	// ClientCAFile turns on mutual TLS: every client must present a certificate this CA
	// signed, or the handshake fails (no HTTP answer at all).
	ClientCAFile string
	// ClientCertOptional lets clients without a certificate through the handshake, for a
	// server where they authenticate otherwise (the broker's workers, by password); a
	// certificate that is given must still be one the client CA signed.
	ClientCertOptional bool
	// Flag is the prefix of the flags naming the files, for errors: "tls-" (empty means
	// that: --tls-cert, --tls-key, --tls-client-ca) or "mqtt-" for the broker's.
	Flag string
}

// Enabled reports whether the server speaks TLS.
func (s Server) Enabled() bool { return s.CertFile != "" || s.KeyFile != "" }

// flag names the server's flag for the file kind ("cert", "key", "client-ca").
func (s Server) flag(kind string) string {
	if s.Flag == "" {
		return "--tls-" + kind
	}
	return "--" + s.Flag + kind
}

// Validate checks that the files go together, without reading them (Config does).
func (s Server) Validate() error {
	cert, key, ca := s.flag("cert"), s.flag("key"), s.flag("client-ca")
	switch {
	case s.CertFile != "" && s.KeyFile == "":
		return fmt.Errorf("%s needs %s: give the certificate's private key too", cert, key)
	case s.CertFile == "" && s.KeyFile != "":
		return fmt.Errorf("%s needs %s: give the certificate too", key, cert)
	case s.ClientCAFile != "" && !s.Enabled():
		return fmt.Errorf("%s (mutual TLS) needs TLS: give %s and %s too", ca, cert, key)
	}
	return nil
}

// Config loads the files into a server configuration (TLS 1.2 at least), or returns nil
// when TLS is off. The certificate and the client CA are re-read when their files change;
// log hears about reloads and about files that no longer load (what was loaded before
// stays in force).
func (s Server) Config(log *slog.Logger) (*tls.Config, error) {
	if err := s.Validate(); err != nil || !s.Enabled() {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pairFlags := fmt.Sprintf("(%s, %s)", s.flag("cert"), s.flag("key"))
	cert := &watched[*tls.Certificate]{
		what: "TLS certificate " + pairFlags, files: []string{s.CertFile, s.KeyFile}, log: log,
		read: func() (*tls.Certificate, error) {
			pair, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("load TLS certificate %s and key %s %s: %w", s.CertFile, s.KeyFile, pairFlags, err)
			}
			return &pair, nil
		},
		attrs: func(c *tls.Certificate) []any { return []any{"cert", s.CertFile, "not_after", c.Leaf.NotAfter} },
	}
	if err := cert.load(); err != nil {
		return nil, err
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.get(), nil }}
	if s.ClientCAFile == "" {
		return base, nil
	}
	auth := tls.RequireAndVerifyClientCert
	if s.ClientCertOptional {
		auth = tls.VerifyClientCertIfGiven
	}
	// The client CA is a field of the configuration itself, so a new one is a new
	// configuration, handed to each handshake by GetConfigForClient (the session ticket
	// keys stay base's, so resumption survives a reload).
	ca := &watched[*tls.Config]{
		what: "TLS client CA (" + s.flag("client-ca") + ")", files: []string{s.ClientCAFile}, log: log,
		read: func() (*tls.Config, error) {
			pool, err := LoadCAPool(s.ClientCAFile)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.flag("client-ca"), err)
			}
			tc := base.Clone()
			tc.ClientCAs, tc.ClientAuth = pool, auth
			return tc, nil
		},
		attrs: func(*tls.Config) []any { return []any{"client_ca", s.ClientCAFile} },
	}
	if err := ca.load(); err != nil {
		return nil, err
	}
	tc := ca.get().Clone() // right on its own too, for whoever reads its fields
	tc.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return ca.get(), nil }
	return tc, nil
}

// Client names the PEM files of a TLS client. The zero value means the system's roots
// verify the server and no client certificate is sent.
type Client struct {
	// CAFile holds the CA(s) that signed the server's certificate; empty trusts the
	// system's roots.
	CAFile string
	// CertFile and KeyFile are the client certificate for mutual TLS.
	CertFile, KeyFile string
	// InsecureSkipVerify accepts any server certificate: only for a health probe, which
	// sends nothing secret and only wants to know whether the server answers.
	InsecureSkipVerify bool
}

// Enabled reports whether any file (or InsecureSkipVerify) is set.
func (c Client) Enabled() bool {
	return c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.InsecureSkipVerify
}

// Config loads the files into a client configuration (TLS 1.2 at least), or returns nil
// when none are set. flag is the prefix of the command's flags in errors ("root-" names
// --root-ca, --root-cert and --root-key).
func (c Client) Config(flag string) (*tls.Config, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, fmt.Errorf("--%scert and --%skey go together: give both for mutual TLS, or neither", flag, flag)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: c.InsecureSkipVerify}
	if c.CAFile != "" {
		pool, err := LoadCAPool(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--%sca: %w", flag, err)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--%scert %s and --%skey %s: %w", flag, c.CertFile, flag, c.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// LoadCAPool reads a PEM file of one or more CA certificates.
func LoadCAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// watched is a value read from files (a certificate and its key, a CA bundle), read
// again when any file's modification time or size changes. get checks on every call, that
// is every handshake: a stat per file costs microseconds, a handshake a millisecond, and
// keep-alive makes handshakes rare.
type watched[T any] struct {
	what  string   // names the value and its flags, in errors and logs
	files []string // the files read holds
	read  func() (T, error)
	attrs func(T) []any // what a reload logs of the new value
	log   *slog.Logger

	mu     sync.Mutex
	val    T
	loaded bool
	stamp  []fileStamp // of the files when last read, loaded or not
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func stampOf(file string) (fileStamp, error) {
	fi, err := os.Stat(file)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// load reads the value the first time; a failure here is fatal to the caller.
func (w *watched[T]) load() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, err := w.reload()
	return err
}

// reload re-reads the files if they changed since the last attempt; changed reports
// whether it tried. Called with mu held.
func (w *watched[T]) reload() (changed bool, err error) {
	now := make([]fileStamp, len(w.files))
	for i, f := range w.files {
		if now[i], err = stampOf(f); err != nil {
			return !w.loaded, fmt.Errorf("%s: %w", w.what, err)
		}
	}
	if w.loaded && slices.Equal(now, w.stamp) {
		return false, nil
	}
	// Remember the attempt even if it fails: files caught half-written (certificate
	// replaced, key not yet) are retried when the next one changes, and logged once.
	w.stamp = now
	v, err := w.read()
	if err != nil {
		return true, err
	}
	w.val, w.loaded = v, true
	return true, nil
}

// get returns the value, re-read first if its files changed; if they no longer load, the
// previous value (logged once per change).
func (w *watched[T]) get() T {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch changed, err := w.reload(); {
	case err != nil && changed:
		w.log.Error(w.what+": files changed but do not load; keeping the previous one", "err", err)
	case err == nil && changed:
		w.log.Info(w.what+" reloaded", w.attrs(w.val)...)
	}
	return w.val
}
