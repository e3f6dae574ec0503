package tlsfiles_test

import (
	"bytes"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	install := func(c testpki.Cert, cert, key bool) {
		t.Helper()
		for _, f := range []struct {
			from, to string
			do       bool
		}{{c.CertFile, certFile, cert}, {c.KeyFile, keyFile, key}} {
			if !f.do {
				continue
			}
			b, err := os.ReadFile(f.from)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(f.to, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	first, second, third := testpki.NewCA(t, "ca1").Server(t, "root"), testpki.NewCA(t, "ca2").Server(t, "root"), testpki.NewCA(t, "ca3").Server(t, "root")
	install(first, true, true)
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
	// Same-second writes may keep the modification time; the size or a later time tells.
	bump := func() {
		later := time.Now().Add(time.Minute)
		for _, f := range []string{certFile, keyFile} {
			if err := os.Chtimes(f, later, later); err != nil {
				t.Fatal(err)
			}
		}
	}
	install(second, true, true)
	bump()
	if got := served(); got != serial(second) {
		t.Fatalf("after replacing the files: serves %s, want %s", got, serial(second))
	}
	install(third, true, false) // certificate replaced, key not yet
	later := time.Now().Add(2 * time.Minute)
	_ = os.Chtimes(certFile, later, later)
	for range 3 {
		if got := served(); got != serial(second) {
			t.Fatalf("half-written pair: serves %s, want the previous %s", got, serial(second))
		}
	}
	if n := strings.Count(logs.String(), "do not load"); n != 1 {
		t.Errorf("half-written pair logged %d times, want once:\n%s", n, logs.String())
	}
	install(third, false, true)
	later = later.Add(time.Minute)
	_ = os.Chtimes(keyFile, later, later)
	if got := served(); got != serial(third) {
		t.Fatalf("after the key followed: serves %s, want %s", got, serial(third))
	}
}
