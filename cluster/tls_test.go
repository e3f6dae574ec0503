package cluster_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/testpki"
	"github.com/semnet/semnet/shared/tlsfiles"
)

const rootToken = "cluster-test-root-token-0123456789"

// TestClusterWithTLSRoot: a cluster registers with a root that serves HTTPS, requires
// client certificates and a token, follows it and answers a node's cache miss through
// it; the cluster's own REST API serves HTTPS with mutual TLS too.
func TestClusterWithTLSRoot(t *testing.T) {
	ca := testpki.NewCA(t, "semnet-ca")
	rootCert, clusterCert := ca.Server(t, "root.example"), ca.Server(t, "cluster.example")
	clusterClient, ctl := ca.Client(t, "cluster-c1"), ca.Client(t, "operator")
	p := clustertest.StartWithRoot(t, func(c *root.Config) {
		c.Insecure, c.Tokens = false, []string{rootToken}
		c.TLS = tlsfiles.Server{CertFile: rootCert.CertFile, KeyFile: rootCert.KeyFile, ClientCAFile: ca.File}
	}, func(c *cluster.Config) {
		c.RootToken = rootToken
		c.RootTLS = tlsfiles.Client{CAFile: ca.File, CertFile: clusterClient.CertFile, KeyFile: clusterClient.KeyFile}
		c.TLS = tlsfiles.Server{CertFile: clusterCert.CertFile, KeyFile: clusterCert.KeyFile, ClientCAFile: ca.File}
	})
	if got, err := p.RC.Cluster(t.Context(), "c1"); err != nil || got.ID != "c1" {
		t.Fatalf("root does not know the cluster: %+v, %v", got, err)
	}
	svc := deploy(t, p, "secure", 1)
	w := connectNode(t, p, "w1")
	if r := w.query(svc.JobName, ""); r.AppName != svc.JobName {
		t.Errorf("a node's cache miss through the TLS root: %+v", r)
	}

	// The cluster's REST API: HTTPS, and only to clients with a certificate.
	base := "https://" + p.Cluster.Addr.String()
	post := func(tc *tls.Config) (int, string, error) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
		resp, err := hc.Post(base+"/api/net/deployment", "application/json", strings.NewReader(fmt.Sprintf(`{"job_name":%q}`, svc.JobName)))
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := post(ca.ClientTLS(&ctl)); err != nil || code != http.StatusOK || !strings.Contains(body, svc.RRIP.String()) {
		t.Errorf("cluster REST with a client certificate: %d %s %v", code, body, err)
	}
	var op *net.OpError
	if code, _, err := post(ca.ClientTLS(nil)); !errors.As(err, &op) || op.Op != "remote error" {
		t.Errorf("cluster REST without a client certificate: %d, %v; want a TLS alert", code, err)
	}
}

// TestClusterRefusesUntrustedRoot: a cluster trusting another CA never registers with
// an HTTPS root (the handshake fails), and root knows no cluster.
func TestClusterRefusesUntrustedRoot(t *testing.T) {
	ca, other := testpki.NewCA(t, "semnet-ca"), testpki.NewCA(t, "other-ca")
	rootCert := ca.Server(t, "root.example")
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true,
		Plan: addrplan.Default(), TLS: tlsfiles.Server{CertFile: rootCert.CertFile, KeyFile: rootCert.KeyFile}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cl, err := cluster.Start(t.Context(), cluster.Config{ID: "c1", RootURL: "https://" + srv.Addr.String(),
		RootTLS: tlsfiles.Client{CAFile: other.File}, Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	select {
	case <-cl.Registered():
		t.Fatal("registered with a root whose certificate it does not trust")
	case <-time.After(time.Second):
	}
	rc, _ := client.New("https://"+srv.Addr.String(), "", client.HTTPClient(ca.ClientTLS(nil)))
	if cs, err := rc.Clusters(t.Context()); err != nil || len(cs) != 0 {
		t.Errorf("root's clusters: %v, %v; want none", cs, err)
	}
}

// TestClusterTLSConfigValidated: TLS settings that cannot work are refused at start,
// naming the flag.
func TestClusterTLSConfigValidated(t *testing.T) {
	ca := testpki.NewCA(t, "semnet-ca")
	cert, cl := ca.Server(t, "cluster.example"), ca.Client(t, "c1")
	base := cluster.Config{ID: "c1", RootURL: "https://root.example:10099", Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0",
		Insecure: true, Location: geo.Point{}}
	for _, c := range []struct {
		edit func(*cluster.Config)
		want string
	}{
		{func(c *cluster.Config) { c.RootURL = "http://root.example:10099"; c.RootTLS.CAFile = ca.File }, "use https://"},
		{func(c *cluster.Config) { c.RootTLS = tlsfiles.Client{CertFile: cl.CertFile} }, "--root-cert and --root-key go together"},
		{func(c *cluster.Config) { c.RootTLS = tlsfiles.Client{CAFile: cl.KeyFile} }, "--root-ca: " + cl.KeyFile + " holds no PEM certificate"},
		{func(c *cluster.Config) { c.TLS = tlsfiles.Server{CertFile: cert.CertFile} }, "--tls-cert needs --tls-key"},
		{func(c *cluster.Config) { c.TLS = tlsfiles.Server{ClientCAFile: ca.File} }, "--tls-client-ca (mutual TLS) needs TLS"},
	} {
		cfg := base
		c.edit(&cfg)
		srv, err := cluster.Start(t.Context(), cfg)
		if err == nil {
			srv.Close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", cfg, err, c.want)
		}
	}
}
