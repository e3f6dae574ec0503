package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/testpki"
)

// TestRESTSecurityFlags: every TLS and rate limit flag is listed with its environment
// variable where it belongs (up serves plain HTTP: no TLS flags, no limit by default).
func TestRESTSecurityFlags(t *testing.T) {
	for _, c := range []struct {
		args  []string
		flags []string
		env   bool
	}{
		{[]string{"root"}, []string{"tls-cert", "tls-key", "tls-client-ca", "rate-limit", "rate-burst"}, true},
		{[]string{"cluster"}, []string{"tls-cert", "tls-key", "tls-client-ca", "root-ca", "root-cert", "root-key", "rate-limit", "rate-burst"}, true},
		{[]string{"ctl"}, []string{"ca", "cert", "key"}, true},
		{[]string{"probe"}, []string{"ca", "cert", "key", "insecure-skip-verify"}, false},
	} {
		out, err := execute(t, append(c.args, "--help")...)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range c.flags {
			if !strings.Contains(out, "--"+f+" ") || c.env && !strings.Contains(out, envName(f)+"]") {
				t.Errorf("%s --help lacks --%s or %s", c.args[0], f, envName(f))
			}
		}
	}
	for _, cmd := range []string{"root", "cluster"} {
		help, _ := execute(t, cmd, "--help")
		if i := strings.Index(help, "--rate-limit float"); i < 0 || !strings.Contains(help[i:i+strings.IndexByte(help[i:], '\n')], "(default 1000)") {
			t.Errorf("%s --help does not show --rate-limit's default 1000", cmd)
		}
	}
	up, _ := execute(t, "up", "--help")
	if strings.Contains(up, "--tls-cert") || strings.Contains(up, "(default 1000)") {
		t.Errorf("up --help offers TLS or a default rate limit:\n%s", up)
	}
}

// TestRESTSecurityFlagErrors: flags that cannot work together stop the command with an
// error naming them.
func TestRESTSecurityFlagErrors(t *testing.T) {
	clearSemnetEnv(t)
	ca := testpki.NewCA(t, "semnet-ca")
	cert := ca.Server(t, "root.example")
	rootArgs := []string{"root", "--token", ctlToken, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir()}
	clusterArgs := []string{"cluster", "--id", "c1", "--insecure", "--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0", "--log-level", "error"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{append(rootArgs, "--tls-cert", cert.CertFile), "--tls-cert needs --tls-key"},
		{append(rootArgs, "--tls-client-ca", ca.File), "--tls-client-ca (mutual TLS) needs TLS"},
		{append(rootArgs, "--rate-limit", "-5"), "must not be negative"},
		{append(clusterArgs, "--root", "http://127.0.0.1:1", "--root-ca", ca.File), "use https://"},
		{append(clusterArgs, "--root", "https://127.0.0.1:1", "--tls-key", cert.KeyFile), "--tls-key needs --tls-cert"},
		{append(clusterArgs, "--root", "http://127.0.0.1:1", "--rate-burst", "-1"), "must not be negative"},
		{[]string{"ctl", "--root", "http://127.0.0.1:1", "--ca", ca.File, "pools"}, "are for an https URL"},
		{[]string{"probe", "--insecure-skip-verify", "http://127.0.0.1:1/readyz"}, "--insecure-skip-verify is for an https URL"},
		{[]string{"probe", "--cert", cert.CertFile, "https://127.0.0.1:1/readyz"}, "--cert and --key go together"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := executeContext(ctx, c.args...)
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("semnet %s: %v, want %q", strings.Join(c.args, " "), err, c.want)
		}
	}
}

// TestRootOverMutualTLS runs `semnet root` with HTTPS, mutual TLS and a rate limit, and
// talks to it with `semnet probe` and `semnet ctl`: the right CA and certificate work,
// the wrong ones fail with a hint, the environment carries ctl's TLS files, and a
// client over its rate gets root's 429 explained.
func TestRootOverMutualTLS(t *testing.T) {
	clearSemnetEnv(t)
	ca, other := testpki.NewCA(t, "semnet-ca"), testpki.NewCA(t, "other-ca")
	srv, op := ca.Server(t, "root.example"), ca.Client(t, "operator")
	addr := loopbackPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := executeContext(ctx, "root", "--token", ctlToken, "--listen", addr, "--data-dir", t.TempDir(), "--log-level", "error",
			"--tls-cert", srv.CertFile, "--tls-key", srv.KeyFile, "--tls-client-ca", ca.File,
			"--rate-limit", "0.2", "--rate-burst", "4") // a token every 5 s: the test spends its burst long before
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("semnet root: %v", err)
		}
	})
	url := "https://" + addr
	withCert := []string{"--ca", ca.File, "--cert", op.CertFile, "--key", op.KeyFile}
	probe := func(args ...string) error {
		_, err := execute(t, append(append([]string{"probe", "--timeout", "2s"}, args...), url+"/readyz")...)
		return err
	}
	ready := false
	for i := 0; i < 200 && !ready; i++ {
		if ready = probe(withCert...) == nil; !ready {
			time.Sleep(25 * time.Millisecond)
		}
	}
	if !ready {
		t.Fatal("root over mutual TLS never answered semnet probe with its certificate")
	}
	if err := probe("--insecure-skip-verify", "--cert", op.CertFile, "--key", op.KeyFile); err != nil {
		t.Errorf("probe --insecure-skip-verify with a certificate: %v", err)
	}
	for name, args := range map[string][]string{
		"no client certificate": {"--ca", ca.File},
		"another CA":            {"--ca", other.File, "--cert", op.CertFile, "--key", op.KeyFile},
		"system CAs":            {"--cert", op.CertFile, "--key", op.KeyFile},
	} {
		if err := probe(args...); err == nil {
			t.Errorf("probe with %s succeeded", name)
		}
	}

	// ctl: wrong or missing TLS files fail before any request reaches the API (no rate
	// spent), with a hint naming the flag.
	ctl := func(args ...string) (string, error) {
		return execute(t, append([]string{"ctl", "--root", url, "--token", ctlToken}, args...)...)
	}
	if _, err := ctl(append([]string{"--ca", other.File, "--cert", op.CertFile, "--key", op.KeyFile}, "pools")...); err == nil || !strings.Contains(err.Error(), "--ca") {
		t.Errorf("ctl trusting another CA: %v, want a hint naming --ca", err)
	}
	if _, err := ctl("--ca", ca.File, "pools"); err == nil || !strings.Contains(err.Error(), "--cert and --key") {
		t.Errorf("ctl without a client certificate: %v, want a hint naming --cert and --key", err)
	}
	if out, err := ctl(append(withCert, "pools")...); err != nil || !strings.Contains(out, "service_v4") {
		t.Errorf("ctl with the CA and a certificate: %v\n%s", err, out)
	}
	t.Setenv("SEMNET_CA", ca.File)
	t.Setenv("SEMNET_CERT", op.CertFile)
	t.Setenv("SEMNET_KEY", op.KeyFile)
	if out, err := ctl("pools"); err != nil || !strings.Contains(out, "service_v4") {
		t.Errorf("ctl with SEMNET_CA, SEMNET_CERT, SEMNET_KEY: %v\n%s", err, out)
	}
	// Two of the burst of 4 are spent: the next few run out.
	var err error
	for range 4 {
		if _, err = ctl("pools"); err != nil {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "429 Too Many Requests") || !strings.Contains(err.Error(), "--rate-limit") {
		t.Errorf("ctl over root's rate limit: %v, want the 429 explained", err)
	}
	if err := probe(withCert...); err != nil {
		t.Errorf("probe of /readyz while the client is over its limit: %v", err)
	}
}
