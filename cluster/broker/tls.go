package broker

import (
	"crypto/tls"
	"log/slog"

	"github.com/semnet/semnet/shared/tlsfiles"
)

// loadTLS builds the listener's TLS configuration; nil means plain TCP. The
// certificate and the client CA are re-read when their files change (tlsfiles), so a
// renewed broker certificate needs no restart; connections already open keep theirs.
func loadTLS(cfg Config, log *slog.Logger) (*tls.Config, error) {
	// A certificate is verified if given (one from another CA fails the handshake);
	// clients without one may still use a password, or be anonymous if allowed.
	return tlsfiles.Server{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, ClientCAFile: cfg.ClientCAFile,
		ClientCertOptional: true, Flag: "mqtt-"}.Config(log)
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
