package broker

import (
	"crypto/tls"
	"path/filepath"
	"strings"
	"testing"

	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/testpki"
)

// TestTLSReload: the broker re-reads its certificate and its client CA when their files
// change, as when a certificate is renewed under a new CA: the next worker to connect
// (paho, mutual TLS) is served the new certificate and verified against the new CA; a
// worker trusting only the old CA, or presenting a certificate of the old CA, fails the
// handshake; and a worker connected before keeps its connection and goes on publishing.
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, caFile := filepath.Join(dir, "broker.crt"), filepath.Join(dir, "broker.key"), filepath.Join(dir, "workers-ca.pem")
	old, renewed := testpki.NewCA(t, "ca-old"), testpki.NewCA(t, "ca-new")
	oldCert, newCert := old.Server(t, "broker"), renewed.Server(t, "broker")
	oldCert.Install(t, certFile, keyFile)
	old.Install(t, caFile)
	b := startBroker(t, Config{CertFile: certFile, KeyFile: keyFile, ClientCAFile: caFile})
	msgs := collect(t, b)

	// served hears the serial number of the certificate each verified handshake saw.
	served := make(chan string, 8)
	verified := func(ca *testpki.CA, client testpki.Cert) *tls.Config {
		tc := ca.ClientTLS(&client)
		tc.VerifyConnection = func(cs tls.ConnectionState) error {
			served <- cs.PeerCertificates[0].SerialNumber.String()
			return nil
		}
		return tc
	}
	serial := func(c testpki.Cert) string { return c.Pair.Leaf.SerialNumber.String() }

	before := mustDial(t, b, clientOpts{id: "worker-1", tls: verified(old, old.Client(t, "worker-1"))})
	if got := receive(t, served, "the first handshake"); got != serial(oldCert) {
		t.Fatalf("first worker was served certificate %s, want %s", got, serial(oldCert))
	}
	publish(t, before, 1, mqttapi.NodeTopic("worker-1", mqttapi.SuffixDeployed), `{"n":1}`)
	receive(t, msgs, "the first worker's message")

	newCert.Install(t, certFile, keyFile)
	renewed.Install(t, caFile)

	mustDial(t, b, clientOpts{id: "worker-2", tls: verified(renewed, renewed.Client(t, "worker-2"))})
	if got := receive(t, served, "the handshake after the renewal"); got != serial(newCert) {
		t.Errorf("worker connecting after the renewal was served certificate %s, want the new %s", got, serial(newCert))
	}
	w3 := old.Client(t, "worker-3")
	if _, _, err := dial(t, b, clientOpts{id: "worker-3", tls: old.ClientTLS(&w3)}); err == nil ||
		!strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("worker trusting only the old CA: %v, want the new certificate refused as of an unknown authority", err)
	}
	// Go's client sends no certificate the server's CAs did not sign: insist, as a worker
	// not yet given its new certificate would.
	stale := old.Client(t, "worker-4")
	tc := renewed.ClientTLS(nil)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stale.Pair, nil }
	if _, _, err := dial(t, b, clientOpts{id: "worker-4", tls: tc}); err == nil {
		t.Error("a certificate of the old CA was admitted after the client CA file was replaced")
	}
	eventually(t, "both refused handshakes to be counted", func() bool {
		return counter(b.m.refused.WithLabelValues(refusedTLS.String())) == 2
	})

	if !before.IsConnectionOpen() {
		t.Fatal("the worker connected before the renewal was disconnected")
	}
	publish(t, before, 1, mqttapi.NodeTopic("worker-1", mqttapi.SuffixDeployed), `{"n":2}`)
	if m := receive(t, msgs, "the first worker's message after the renewal"); m.client != "worker-1" || m.payload != `{"n":2}` {
		t.Errorf("after the renewal the cluster got %+v from the worker connected before", m)
	}
}
