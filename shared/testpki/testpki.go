// Package testpki issues throwaway certificates for tests of TLS and mutual TLS between
// worker nodes and the cluster broker: a CA, server certificates valid for loopback, and
// client certificates naming a worker. Everything is written to the test's temporary
// directory as PEM, because the broker and `semnet node` take files, and returned loaded
// too, for Go clients.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority living for one test.
type CA struct {
	// Cert is the CA's certificate; File holds it as PEM (a --mqtt-ca or
	// --mqtt-client-ca file).
	Cert *x509.Certificate
	File string

	key *ecdsa.PrivateKey
	dir string // where the CA and the certificates it issues are written
}

// Cert is an issued certificate: its PEM files and the loaded pair.
type Cert struct {
	CertFile, KeyFile string
	Pair              tls.Certificate
}

// NewCA creates a CA whose Common Name is name, in a temporary directory of its own (so
// two CAs may issue certificates for the same name).
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testpki: create CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testpki: parse CA %s: %v", name, err)
	}
	ca := &CA{Cert: cert, key: key, dir: t.TempDir()}
	ca.File = write(t, ca.dir, name+".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return ca
}

// Server issues a server certificate for name (a DNS SAN, for a TLS server name other
// than the address dialled) that is valid for 127.0.0.1, ::1 and localhost too.
func (ca *CA) Server(t testing.TB, name string) Cert {
	t.Helper()
	return ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name},
		DNSNames:    []string{name, "localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
}

// Client issues a client certificate with Common Name cn and the DNS SANs dnsNames: the
// broker takes either as the worker id.
func (ca *CA) Client(t testing.TB, cn string, dnsNames ...string) Cert {
	t.Helper()
	return ca.issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
}

// Pool is a certificate pool holding just this CA.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// ClientTLS is a client's TLS configuration trusting servers this CA signed, presenting
// client when it is not nil (mutual TLS).
func (ca *CA) ClientTLS(client *Cert) *tls.Config {
	tc := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	if client != nil {
		tc.Certificates = []tls.Certificate{client.Pair}
	}
	return tc
}

// Install copies the certificate and key to certFile and keyFile, as a renewal replaces
// a server's files (see Replace).
func (c Cert) Install(t testing.TB, certFile, keyFile string) {
	t.Helper()
	Replace(t, c.CertFile, certFile)
	Replace(t, c.KeyFile, keyFile)
}

// Install copies the CA's certificate to file, as a new CA bundle replaces a server's.
func (ca *CA) Install(t testing.TB, file string) {
	t.Helper()
	Replace(t, ca.File, file)
}

// Replace writes the content of from to to, dated now or, if that is sooner, a second
// after the file it replaces: files written within one tick of a coarse file system clock
// keep their modification time, and two certificates of one kind often have one size, so
// without this a server watching the file could miss the change.
func Replace(t testing.TB, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatalf("testpki: %v", err)
	}
	mod := time.Now()
	if fi, err := os.Stat(to); err == nil {
		mod = later(mod, fi.ModTime().Add(time.Second))
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatalf("testpki: %v", err)
	}
	if err := os.Chtimes(to, mod, mod); err != nil {
		t.Fatalf("testpki: %v", err)
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// issue signs tmpl with a fresh key and writes the certificate and key to
// <CN>.crt and <CN>.key in the CA's directory.
func (ca *CA) issue(t testing.TB, tmpl *x509.Certificate) Cert {
	t.Helper()
	cn := tmpl.Subject.CommonName
	key := newKey(t)
	tmpl.SerialNumber = serial(t)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("testpki: issue %s: %v", cn, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testpki: marshal the key of %s: %v", cn, err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("testpki: load %s: %v", cn, err)
	}
	return Cert{CertFile: write(t, ca.dir, cn+".crt", certPEM), KeyFile: write(t, ca.dir, cn+".key", keyPEM), Pair: pair}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testpki: generate key: %v", err)
	}
	return key
}

// serial is a random serial number: certificates from one CA must not share one.
func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("testpki: serial number: %v", err)
	}
	return n
}

func write(t testing.TB, dir, name string, content []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, content, 0o600); err != nil {
		t.Fatalf("testpki: %v", err)
	}
	return p
}
