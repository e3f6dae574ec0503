package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// loadTLS builds the listener's TLS configuration; nil means plain TCP.
func loadTLS(cfg Config) (*tls.Config, error) {
	if cfg.CertFile == "" && cfg.KeyFile == "" {
		if cfg.ClientCAFile != "" {
			return nil, errors.New("a client CA (mutual TLS) needs TLS: set the certificate and key files too")
		}
		return nil, nil
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, errors.New("TLS needs both a certificate file and a key file")
	}
	cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %s and key %s: %w", cfg.CertFile, cfg.KeyFile, err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if cfg.ClientCAFile != "" {
		pem, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA file %s holds no PEM certificate", cfg.ClientCAFile)
		}
		tc.ClientCAs = pool
		// A certificate is verified if given (one from another CA fails the handshake);
		// clients without one may still use a password, or be anonymous if allowed.
		tc.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return tc, nil
}

// certNames returns the names a verified client certificate gives its holder: its
// Common Name and DNS SANs. nil means no verified certificate.
func certNames(cs tls.ConnectionState) []string {
	if len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return nil
	}
	leaf := cs.PeerCertificates[0]
	names := make([]string, 0, 1+len(leaf.DNSNames))
	if leaf.Subject.CommonName != "" {
		names = append(names, leaf.Subject.CommonName)
	}
	return append(names, leaf.DNSNames...)
}
