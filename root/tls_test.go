package root_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/testpki"
	"github.com/semnet/semnet/shared/tlsfiles"
)

const adminToken = "root-test-admin-token-0123456789"

// startTLSRoot starts a root with an admin token serving HTTPS with files.
func startTLSRoot(t *testing.T, files tlsfiles.Server) *root.Server {
	t.Helper()
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Tokens: []string{adminToken},
		Plan: addrplan.Default(), TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// get GETs url with tc and returns the status, or the error when there is no answer.
func get(t *testing.T, url string, tc *tls.Config) (int, error) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestRootServesHTTPS: a client trusting root's CA reads the API (the Go client too); a
// client trusting another CA fails the handshake and gets no HTTP answer; plain HTTP
// gets no API.
func TestRootServesHTTPS(t *testing.T) {
	ca, other := testpki.NewCA(t, "root-ca"), testpki.NewCA(t, "other-ca")
	cert := ca.Server(t, "root.example")
	srv := startTLSRoot(t, tlsfiles.Server{CertFile: cert.CertFile, KeyFile: cert.KeyFile})
	base := "https://" + srv.Addr.String()

	for _, path := range []string{"/readyz", "/api/v1/pools"} {
		if code, err := get(t, base+path, ca.ClientTLS(nil)); err != nil || code != http.StatusOK {
			t.Errorf("GET %s trusting root's CA: %d, %v", path, code, err)
		}
	}
	rc, err := client.New(base, adminToken, client.HTTPClient(ca.ClientTLS(nil)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"}); err != nil {
		t.Errorf("Go client over HTTPS: %v", err)
	}

	code, err := get(t, base+"/readyz", other.ClientTLS(nil))
	var unknown x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknown) {
		t.Errorf("client trusting another CA: %d, %v; want an unknown-authority TLS error and no answer", code, err)
	}
	rcOther, _ := client.New(base, adminToken, client.HTTPClient(other.ClientTLS(nil)))
	if _, err := rcOther.Pools(t.Context()); !errors.As(err, &unknown) {
		t.Errorf("Go client trusting another CA: %v, want an unknown-authority error", err)
	}

	// Plain HTTP on the TLS port is answered 400 by Go's server, never by the API.
	if code, err := get(t, "http://"+srv.Addr.String()+"/api/v1/pools", nil); err == nil && code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the HTTPS port: %d", code)
	}
}

// TestRootMutualTLS: with a client CA, a client without a certificate, or with one from
// another CA, is refused in the handshake (health endpoints included); a client with a
// certificate the CA signed is served.
func TestRootMutualTLS(t *testing.T) {
	ca, other := testpki.NewCA(t, "root-ca"), testpki.NewCA(t, "other-ca")
	cert := ca.Server(t, "root.example")
	good, foreign := ca.Client(t, "cluster-c1"), other.Client(t, "cluster-c1")
	srv := startTLSRoot(t, tlsfiles.Server{CertFile: cert.CertFile, KeyFile: cert.KeyFile, ClientCAFile: ca.File})
	base := "https://" + srv.Addr.String()

	// Go's client sends only a certificate of a CA the server named: make it send the
	// foreign one anyway, as another client could.
	withForeign := ca.ClientTLS(nil)
	withForeign.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign.Pair, nil }
	for name, tc := range map[string]*tls.Config{"no certificate": ca.ClientTLS(nil), "another CA's certificate": withForeign} {
		for _, path := range []string{"/readyz", "/api/v1/pools"} {
			code, err := get(t, base+path, tc)
			var op *net.OpError
			if err == nil || !errors.As(err, &op) || op.Op != "remote error" || !strings.Contains(op.Err.Error(), "certificate") {
				t.Errorf("%s, GET %s: %d, %v; want a TLS alert about the certificate and no answer", name, path, code, err)
			}
		}
	}
	for _, path := range []string{"/readyz", "/api/v1/pools"} {
		if code, err := get(t, base+path, ca.ClientTLS(&good)); err != nil || code != http.StatusOK {
			t.Errorf("good client certificate, GET %s: %d, %v", path, code, err)
		}
	}
}

// TestRootTLSConfigErrors: TLS files that do not go together, or do not load, stop root
// from starting with an error naming the flag.
func TestRootTLSConfigErrors(t *testing.T) {
	ca := testpki.NewCA(t, "root-ca")
	cert := ca.Server(t, "root.example")
	for _, c := range []struct {
		files tlsfiles.Server
		want  string
	}{
		{tlsfiles.Server{CertFile: cert.CertFile}, "--tls-cert needs --tls-key"},
		{tlsfiles.Server{KeyFile: cert.KeyFile}, "--tls-key needs --tls-cert"},
		{tlsfiles.Server{ClientCAFile: ca.File}, "--tls-client-ca (mutual TLS) needs TLS"},
		{tlsfiles.Server{CertFile: cert.CertFile, KeyFile: ca.File}, "--tls-key"},
		{tlsfiles.Server{CertFile: cert.CertFile, KeyFile: cert.KeyFile, ClientCAFile: cert.KeyFile}, "--tls-client-ca: " + cert.KeyFile + " holds no PEM certificate"},
	} {
		_, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Tokens: []string{adminToken},
			Plan: addrplan.Default(), TLS: c.files})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.files, err, c.want)
		}
	}
}
