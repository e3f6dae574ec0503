package main

import (
	"crypto/tls"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/semnet/semnet/node"
	"github.com/semnet/semnet/shared/testpki"
)

// nodeConfig parses args as the flags of `semnet node` and builds its configuration. It
// fails the test unless the error contains wantErr ("": no error), and returns true when
// there is a configuration to check.
func nodeConfig(t *testing.T, args []string, wantErr string) (node.Config, bool) {
	t.Helper()
	var f nodeFlags
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := f.config()
	switch {
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Errorf("%v: error %v, want one containing %q", args, err, wantErr)
	case wantErr == "" && err != nil:
		t.Errorf("%v: %v", args, err)
	}
	return c, wantErr == "" && err == nil
}

func TestNodeGatewayFlags(t *testing.T) {
	base := []string{"--id", "gw1", "--cluster-mqtt", "127.0.0.1:10003", "--host-ip", "127.0.0.1"}
	for _, tc := range []struct {
		args         []string
		err          string
		public4, in6 string
	}{
		{args: nil},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1"}, public4: "198.51.100.1"},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1,2001:db8::1", "--gateway-internal-ip", "fdff:ffff::fffd"},
			public4: "198.51.100.1", in6: "fdff:ffff::fffd"},
		{args: []string{"--gateway"}, err: "--gateway needs --public-ip"},
		{args: []string{"--public-ip", "198.51.100.1"}, err: "need --gateway"},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1", "--public-ip", "198.51.100.2"}, err: "of one family"},
		{args: []string{"--gateway", "--public-ip", "gateway.example"}, err: "--public-ip"},
	} {
		c, ok := nodeConfig(t, slices.Concat(base, tc.args), tc.err)
		if !ok {
			continue
		}
		if tc.public4 == "" {
			if c.Gateway != nil {
				t.Errorf("%v: a gateway config without --gateway", tc.args)
			}
			continue
		}
		if c.Gateway == nil || c.Gateway.PublicV4 != netip.MustParseAddr(tc.public4) {
			t.Errorf("%v: gateway config %+v, want public %s", tc.args, c.Gateway, tc.public4)
		}
		if tc.in6 != "" && c.Gateway.InternalV6 != netip.MustParseAddr(tc.in6) {
			t.Errorf("%v: internal v6 %v, want %s", tc.args, c.Gateway.InternalV6, tc.in6)
		}
	}
}

// TestNodeMQTTTLSFlags: the --mqtt-* flags build the TLS config the node dials the broker
// with, and every mistake is refused at startup naming its flag.
func TestNodeMQTTTLSFlags(t *testing.T) {
	ca := testpki.NewCA(t, "semnet-test-ca")
	w1, other := ca.Client(t, "w1"), ca.Client(t, "w2", "gw2")
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"--id", "w1", "--cluster-mqtt", "broker.example:10003", "--host-ip", "127.0.0.1"}
	for _, tc := range []struct {
		args       []string
		err        string
		tls, ca    bool   // a TLS config is expected; its RootCAs is exactly ca's
		clientCert bool   // it presents a client certificate
		serverName string // expected ServerName
	}{
		{args: nil},
		{args: []string{"--mqtt-ca", ca.File}, tls: true, ca: true},
		{args: []string{"--mqtt-ca", ca.File, "--mqtt-cert", w1.CertFile, "--mqtt-key", w1.KeyFile, "--mqtt-server-name", "broker"},
			tls: true, ca: true, clientCert: true, serverName: "broker"},
		// A broker with a publicly trusted certificate: the system's roots verify it.
		{args: []string{"--mqtt-cert", w1.CertFile, "--mqtt-key", w1.KeyFile}, tls: true, clientCert: true},
		// With a password the certificate is only transport security: any name will do.
		{args: []string{"--mqtt-ca", ca.File, "--mqtt-cert", other.CertFile, "--mqtt-key", other.KeyFile, "--password", "pw"},
			tls: true, ca: true, clientCert: true},
		{args: []string{"--mqtt-ca", ca.File, "--mqtt-cert", other.CertFile, "--mqtt-key", other.KeyFile},
			err: `is for "w2", "gw2", not for the worker id "w1"`},
		{args: []string{"--mqtt-ca", ca.File, "--mqtt-cert", w1.CertFile}, err: "--mqtt-cert and --mqtt-key go together"},
		{args: []string{"--mqtt-key", w1.KeyFile}, err: "--mqtt-cert and --mqtt-key go together"},
		{args: []string{"--mqtt-cert", w1.CertFile, "--mqtt-key", other.KeyFile}, err: "--mqtt-key " + other.KeyFile},
		{args: []string{"--mqtt-ca", filepath.Join(t.TempDir(), "missing.pem")}, err: "--mqtt-ca: open "},
		{args: []string{"--mqtt-ca", garbage}, err: "--mqtt-ca: " + garbage + " holds no PEM certificate"},
		{args: []string{"--mqtt-server-name", "broker"}, err: "--mqtt-server-name needs TLS"},
	} {
		c, ok := nodeConfig(t, slices.Concat(base, tc.args), tc.err)
		switch {
		case !ok: // an error, reported by nodeConfig
		case !tc.tls:
			if c.TLS != nil {
				t.Errorf("%v: a TLS config without TLS flags", tc.args)
			}
		case c.TLS == nil:
			t.Errorf("%v: no TLS config", tc.args)
		case c.TLS.MinVersion != tls.VersionTLS12 || c.TLS.ServerName != tc.serverName ||
			(len(c.TLS.Certificates) == 1) != tc.clientCert:
			t.Errorf("%v: TLS config %+v", tc.args, c.TLS)
		case tc.ca && !c.TLS.RootCAs.Equal(ca.Pool()), !tc.ca && c.TLS.RootCAs != nil:
			t.Errorf("%v: RootCAs %v, want the --mqtt-ca pool (or nil: the system's)", tc.args, c.TLS.RootCAs)
		}
	}

	out, err := execute(t, "node", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"mqtt-ca", "mqtt-cert", "mqtt-key", "mqtt-server-name"} {
		if !strings.Contains(out, "--"+flag) || !strings.Contains(out, envName(flag)) {
			t.Errorf("node --help lacks --%s or %s", flag, envName(flag))
		}
	}
}

// TestNodeKeepAliveFlag: --keepalive reaches the configuration; MQTT counts it in whole
// seconds, so anything else is refused at startup.
func TestNodeKeepAliveFlag(t *testing.T) {
	base := []string{"--id", "w1", "--cluster-mqtt", "127.0.0.1:10003", "--host-ip", "127.0.0.1"}
	for _, tc := range []struct {
		args []string
		want time.Duration
		err  string
	}{
		{args: nil, want: 30 * time.Second},
		{args: []string{"--keepalive", "5s"}, want: 5 * time.Second},
		{args: []string{"--keepalive", "1500ms"}, err: "--keepalive 1.5s must be whole seconds"},
		{args: []string{"--keepalive", "0s"}, err: "--keepalive"},
		{args: []string{"--keepalive", "20h"}, err: "--keepalive"},
	} {
		c, ok := nodeConfig(t, slices.Concat(base, tc.args), tc.err)
		if ok && c.KeepAlive != tc.want {
			t.Errorf("%v: keepalive %v, want %v", tc.args, c.KeepAlive, tc.want)
		}
	}
}
