package tlsfiles_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/semnet/semnet/shared/testpki"
	"github.com/semnet/semnet/shared/tlsfiles"
)

// TestServerValidate: files that do not go together are refused naming the flags.
func TestServerValidate(t *testing.T) {
	for _, c := range []struct {
		s    tlsfiles.Server
		want string
	}{
		{tlsfiles.Server{}, ""},
		{tlsfiles.Server{CertFile: "c", KeyFile: "k"}, ""},
		{tlsfiles.Server{CertFile: "c", KeyFile: "k", ClientCAFile: "ca"}, ""},
		{tlsfiles.Server{CertFile: "c"}, "--tls-cert needs --tls-key"},
		{tlsfiles.Server{KeyFile: "k"}, "--tls-key needs --tls-cert"},
		{tlsfiles.Server{ClientCAFile: "ca"}, "--tls-client-ca (mutual TLS) needs TLS"},
		{tlsfiles.Server{CertFile: "c", Flag: "mqtt-"}, "--mqtt-cert needs --mqtt-key"},
		{tlsfiles.Server{ClientCAFile: "ca", Flag: "mqtt-"}, "--mqtt-client-ca (mutual TLS) needs TLS: give --mqtt-cert and --mqtt-key too"},
	} {
		err := c.s.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.s, err, c.want)
		}
	}
}

// TestConfigErrors: unreadable or mismatched files are refused naming the flag and file.
func TestConfigErrors(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	srv, cl := ca.Server(t, "root"), ca.Client(t, "ctl")
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	for _, c := range []struct {
		name string
		load func() (*tls.Config, error)
		want string
	}{
		{"server ok", func() (*tls.Config, error) {
			return tlsfiles.Server{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.File}.Config(nil)
		}, ""},
		{"server key of another cert", func() (*tls.Config, error) {
			return tlsfiles.Server{CertFile: srv.CertFile, KeyFile: cl.KeyFile}.Config(nil)
		}, "(--tls-cert, --tls-key)"},
		{"server missing cert", func() (*tls.Config, error) {
			return tlsfiles.Server{CertFile: missing, KeyFile: srv.KeyFile}.Config(nil)
		}, "missing.pem"},
		{"server garbage client CA", func() (*tls.Config, error) {
			return tlsfiles.Server{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: garbage}.Config(nil)
		}, "--tls-client-ca: " + garbage + " holds no PEM certificate"},
		{"client ok", func() (*tls.Config, error) {
			return tlsfiles.Client{CAFile: ca.File, CertFile: cl.CertFile, KeyFile: cl.KeyFile}.Config("root-")
		}, ""},
		{"client cert without key", func() (*tls.Config, error) {
			return tlsfiles.Client{CAFile: ca.File, CertFile: cl.CertFile}.Config("root-")
		}, "--root-cert and --root-key go together"},
		{"client missing CA", func() (*tls.Config, error) { return tlsfiles.Client{CAFile: missing}.Config("") }, "--ca: open "},
		{"client garbage CA", func() (*tls.Config, error) { return tlsfiles.Client{CAFile: garbage}.Config("") }, "holds no PEM certificate"},
		{"client mismatched pair", func() (*tls.Config, error) {
			return tlsfiles.Client{CertFile: cl.CertFile, KeyFile: srv.KeyFile}.Config("")
		}, "--cert " + cl.CertFile + " and --key " + srv.KeyFile},
	} {
		tc, err := c.load()
		switch {
		case c.want == "" && (err != nil || tc == nil || tc.MinVersion != tls.VersionTLS12):
			t.Errorf("%s: %v, %+v", c.name, err, tc)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if tc, err := (tlsfiles.Client{}).Config(""); tc != nil || err != nil {
		t.Errorf("no client files: %v, %v; want nil, nil (plain defaults)", tc, err)
	}
	if tc, err := (tlsfiles.Server{}).Config(nil); tc != nil || err != nil {
		t.Errorf("no server files: %v, %v; want nil, nil (plain HTTP)", tc, err)
	}
}

// TestServerReloadsChangedCertificate: a certificate replaced on disk is served from the
// next handshake; a pair caught half-written keeps the previous one (logged once) until
// the key follows.
func TestServerReloadsChangedCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	first, second, third := testpki.NewCA(t, "ca1").Server(t, "root"), testpki.NewCA(t, "ca2").Server(t, "root"), testpki.NewCA(t, "ca3").Server(t, "root")
	first.Install(t, certFile, keyFile)
	var logs bytes.Buffer
	tc, err := tlsfiles.Server{CertFile: certFile, KeyFile: keyFile}.Config(slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	served := func() string {
		t.Helper()
		c, err := tc.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || c == nil {
			t.Fatalf("GetCertificate: %v, %v", c, err)
		}
		return c.Leaf.SerialNumber.String()
	}
	serial := func(c testpki.Cert) string { return c.Pair.Leaf.SerialNumber.String() }
	if got := served(); got != serial(first) {
		t.Fatalf("serves %s, want the first certificate %s", got, serial(first))
	}
	second.Install(t, certFile, keyFile)
	if got := served(); got != serial(second) {
		t.Fatalf("after replacing the files: serves %s, want %s", got, serial(second))
	}
	testpki.Replace(t, third.CertFile, certFile) // certificate replaced, key not yet
	for range 3 {
		if got := served(); got != serial(second) {
			t.Fatalf("half-written pair: serves %s, want the previous %s", got, serial(second))
		}
	}
	if n := strings.Count(logs.String(), "do not load"); n != 1 {
		t.Errorf("half-written pair logged %d times, want once:\n%s", n, logs.String())
	}
	testpki.Replace(t, third.KeyFile, keyFile)
	if got := served(); got != serial(third) {
		t.Fatalf("after the key followed: serves %s, want %s", got, serial(third))
	}
}

// TestServerReloadsClientCA: a client CA file replaced on disk is what the next handshake
// verifies client certificates against (GetConfigForClient), with the server's client
// authentication kept; one that no longer loads keeps the previous CA.
func TestServerReloadsClientCA(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), filepath.Join(dir, "clients.pem")
	first, second := testpki.NewCA(t, "clients1"), testpki.NewCA(t, "clients2")
	first.Server(t, "broker").Install(t, certFile, keyFile)
	first.Install(t, caFile)
	var logs bytes.Buffer
	for _, optional := range []bool{false, true} {
		tc, err := tlsfiles.Server{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile, ClientCertOptional: optional}.Config(slog.New(slog.NewTextHandler(&logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]tls.ClientAuthType{false: tls.RequireAndVerifyClientCert, true: tls.VerifyClientCertIfGiven}[optional]
		verifies := func(ca *testpki.CA) bool {
			t.Helper()
			c, err := tc.GetConfigForClient(&tls.ClientHelloInfo{})
			if err != nil || c == nil || c.ClientAuth != want || c.GetCertificate == nil {
				t.Fatalf("GetConfigForClient: %+v, %v; want client auth %v and the certificate", c, err, want)
			}
			return c.ClientCAs.Equal(ca.Pool())
		}
		if tc.ClientAuth != want || !tc.ClientCAs.Equal(first.Pool()) || !verifies(first) {
			t.Fatalf("optional %v: the configuration does not verify against the first CA with %v", optional, want)
		}
		second.Install(t, caFile)
		if !verifies(second) {
			t.Errorf("optional %v: after replacing the CA file, clients are not verified against the new CA", optional)
		}
		testpki.Replace(t, keyFile, caFile) // no certificate in it
		if !verifies(second) {
			t.Errorf("optional %v: a CA file that does not load replaced the previous CA", optional)
		}
		first.Install(t, caFile) // for the next round
	}
	if n := strings.Count(logs.String(), "do not load"); n != 2 || !strings.Contains(logs.String(), "--tls-client-ca") {
		t.Errorf("unloadable CA files logged %d times, want once per server, naming the flag:\n%s", n, logs.String())
	}
}
