// Package tlsfiles builds the TLS configurations of semnet's REST servers (root, cluster)
// and of their clients (the cluster's root client, `semnet ctl`, `semnet probe`) from the
// PEM files named on the command line. Errors name the flags, so the operator reads
// which file to fix: a server's are always --tls-cert, --tls-key and --tls-client-ca; a
// client's flags differ by command and are named with a prefix ("root-" for the cluster's
// --root-ca, --root-cert, --root-key; "" for ctl's --ca, --cert, --key).
//
// A server re-reads its certificate and key when their files change, so a renewed
// certificate (cert-manager, certbot, a cron job) is served without a restart; the
// client CA and a client's files are read once at start.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Server names the PEM files of a TLS server. The zero value means plain HTTP.
type Server struct {
	CertFile, KeyFile string
	// ClientCAFile turns on mutual TLS: every client must present a certificate this CA
	// signed, or the handshake fails (no HTTP answer at all).
	ClientCAFile string
}

// Enabled reports whether the server speaks TLS.
func (s Server) Enabled() bool { return s.CertFile != "" || s.KeyFile != "" }

// Validate checks that the files go together, without reading them (Config does).
func (s Server) Validate() error {
	switch {
	case s.CertFile != "" && s.KeyFile == "":
		return errors.New("--tls-cert needs --tls-key: give the certificate's private key too")
	case s.CertFile == "" && s.KeyFile != "":
		return errors.New("--tls-key needs --tls-cert: give the certificate too")
	case s.ClientCAFile != "" && !s.Enabled():
		return errors.New("--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too")
	}
	return nil
}

// Config loads the files into a server configuration (TLS 1.2 at least), or returns nil
// when TLS is off. The certificate is re-read when its files change; log hears about
// reloads and about files that no longer load (the previous certificate stays).
func (s Server) Config(log *slog.Logger) (*tls.Config, error) {
	if err := s.Validate(); err != nil || !s.Enabled() {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src := &certSource{certFile: s.CertFile, keyFile: s.KeyFile, log: log}
	if err := src.load(); err != nil {
		return nil, err
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: src.get}
	if s.ClientCAFile != "" {
		pool, err := LoadCAPool(s.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
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

// certSource serves a certificate and key pair from files, re-reading them when either
// file's modification time or size changes. It checks on every handshake: two stats
// cost microseconds, a handshake a millisecond, and keep-alive makes handshakes rare.
type certSource struct {
	certFile, keyFile string
	log               *slog.Logger

	mu    sync.Mutex
	cert  *tls.Certificate
	stamp [2]fileStamp // of the files when last read, loaded or not
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

// load reads the pair the first time; a failure here is fatal to the caller.
func (s *certSource) load() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.reload()
	return err
}

// reload re-reads the files if they changed since the last attempt; changed reports
// whether it tried. Called with mu held.
func (s *certSource) reload() (changed bool, err error) {
	var now [2]fileStamp
	for i, f := range []string{s.certFile, s.keyFile} {
		if now[i], err = stampOf(f); err != nil {
			return s.cert == nil, fmt.Errorf("TLS certificate: %w", err)
		}
	}
	if s.cert != nil && now == s.stamp {
		return false, nil
	}
	// Remember the attempt even if it fails: a pair caught half-written (certificate
	// replaced, key not yet) is retried when the next file changes, and logged once.
	s.stamp = now
	pair, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return true, fmt.Errorf("load TLS certificate %s and key %s (--tls-cert, --tls-key): %w", s.certFile, s.keyFile, err)
	}
	s.cert = &pair
	return true, nil
}

func (s *certSource) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch changed, err := s.reload(); {
	case err != nil && changed:
		s.log.Error("TLS certificate files changed but do not load; serving the previous certificate", "err", err)
	case err == nil && changed:
		s.log.Info("TLS certificate reloaded", "cert", s.certFile, "not_after", s.cert.Leaf.NotAfter)
	}
	return s.cert, nil
}
