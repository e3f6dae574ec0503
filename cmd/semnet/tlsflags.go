package main

import (
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"github.com/semnet/semnet/shared/tlsfiles"
)

// tlsServerFlags are the HTTPS flags of a REST server (root, cluster).
type tlsServerFlags struct{ files tlsfiles.Server }

func (f *tlsServerFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.files.CertFile, "tls-cert", "", "TLS certificate (PEM, with its chain) of the REST API: with --tls-key it serves HTTPS only; re-read when the file changes")
	fs.StringVar(&f.files.KeyFile, "tls-key", "", "TLS private key (PEM) of --tls-cert")
	fs.StringVar(&f.files.ClientCAFile, "tls-client-ca", "", "CA (PEM) for client certificates: mutual TLS, every client (health probes too) must present a certificate it signed; re-read when the file changes")
}

// tlsClientFlags are the flags of a TLS client of a REST server: <prefix>ca,
// <prefix>cert and <prefix>key; server names the server in their help.
type tlsClientFlags struct {
	prefix string
	files  tlsfiles.Client
}

func (f *tlsClientFlags) register(fs *pflag.FlagSet, prefix, server string) {
	f.prefix = prefix
	fs.StringVar(&f.files.CAFile, prefix+"ca", "", "CA (PEM) that signed "+server+"'s certificate, for an https URL (default: the system's CAs)")
	fs.StringVar(&f.files.CertFile, prefix+"cert", "", "client certificate (PEM) for "+server+" requiring mutual TLS")
	fs.StringVar(&f.files.KeyFile, prefix+"key", "", "private key (PEM) of --"+prefix+"cert")
}

// config loads the files for a client of url; nil means the defaults.
func (f *tlsClientFlags) config(url string) (*tls.Config, error) {
	if f.files.Enabled() && !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("--%sca, --%scert and --%skey are for an https URL, not %q", f.prefix, f.prefix, f.prefix, url)
	}
	return f.files.Config(f.prefix)
}
