package clusterlink_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/broker"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/testpki"
)

// TestTLS connects to a cluster whose broker speaks only TLS and authenticates workers
// by client certificate alone, as the reference worker node connects: the right CA and a
// certificate naming the worker get answers; a wrong CA, or another worker's certificate,
// fail with an error saying why instead of a bare timeout.
func TestTLS(t *testing.T) {
	ca := testpki.NewCA(t, "semnet-test-ca")
	srv := ca.Server(t, "broker")
	p := clustertest.StartWith(t, func(c *cluster.Config) {
		c.Insecure = false // no anonymous workers: the certificate is the only credential
		c.Broker = broker.Config{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.File}
	})
	svc, err := p.RC.CreateService(t.Context(), api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	w1, w2 := ca.Client(t, "w1"), ca.Client(t, "w2")

	// No password: the certificate's name is the worker's identity.
	l := dial(t, p, "w1", clusterlink.Config{TLS: ca.ClientTLS(&w1)})
	if r, err := l.Query(t.Context(), svc.RRIP.String()); err != nil || r.AppName != svc.JobName {
		t.Fatalf("query over mutual TLS: %+v, %v", r, err)
	}

	for _, tc := range []struct {
		name, id string
		tls      *tls.Config
		err      string
	}{
		{"CA that did not sign the broker", "w1", testpki.NewCA(t, "other-ca").ClientTLS(&w1), "certificate signed by unknown authority"},
		// w2 cannot take w1's client id, so it cannot read w1's results or report for it.
		{"another worker's certificate", "w1", ca.ClientTLS(&w2), "not Authorized"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		_, err := clusterlink.Dial(ctx, clusterlink.Config{Broker: p.Cluster.MQTTAddr.String(), NodeID: tc.id, TLS: tc.tls})
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: Dial error %v, want one containing %q", tc.name, err, tc.err)
		}
	}
}
