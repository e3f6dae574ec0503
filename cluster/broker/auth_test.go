package broker

import (
	"crypto/tls"
	"testing"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/testpki"
)

// MQTT 3.1.1 CONNACK return codes ([MQTT-3.2.2-5]).
const (
	codeIDRejected     = 0x02
	codeBadCredentials = 0x04
	codeNotAuthorized  = 0x05
)

func TestPasswordAuthentication(t *testing.T) {
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("hashed-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	file := writeFile(t, dir, "credentials.yaml", `auth:
  - {username: worker-1, password: pw-1, allow: true}
  - {username: worker-2, password: pw-2, allow: true}
  - {username: worker-3, password: '`+string(hash)+`', allow: true}
  - {username: worker-4, password: pw-4, allow: false}
`)
	b := startBroker(t, Config{CredentialsFile: file})
	msgs := collect(t, b)

	c := mustDial(t, b, clientOpts{id: "worker-1", user: "worker-1", pass: "pw-1"})
	publish(t, c, 1, mqttapi.NodeTopic("worker-1", mqttapi.SuffixSubnet), `{"METHOD":"GET"}`)
	if m := receive(t, msgs, "the node's message"); m.client != "worker-1" || m.topic != "nodes/worker-1/net/subnet" || m.payload != `{"METHOD":"GET"}` {
		t.Errorf("handler got %+v", m)
	}
	mustDial(t, b, clientOpts{id: "worker-3", user: "worker-3", pass: "hashed-pw"})

	refused(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "wrong"}, codeBadCredentials)
	refused(t, b, clientOpts{id: "worker-9", user: "worker-9", pass: "pw-1"}, codeBadCredentials)
	refused(t, b, clientOpts{id: "worker-4", user: "worker-4", pass: "pw-4"}, codeBadCredentials)
	refused(t, b, clientOpts{id: "worker-3", user: "worker-3", pass: string(hash)}, codeBadCredentials)
	refused(t, b, clientOpts{id: "worker-1", user: "worker-2", pass: "pw-2"}, codeNotAuthorized) // right password, other id
	refused(t, b, clientOpts{id: "worker-2"}, codeNotAuthorized)                                 // anonymous is off
	if got := counter(b.m.refused.WithLabelValues("bad_credentials")); got != 4 {
		t.Errorf("refused bad_credentials = %v, want 4", got)
	}
	if got := counter(b.m.refused.WithLabelValues("client_id_mismatch")); got != 1 {
		t.Errorf("refused client_id_mismatch = %v, want 1", got)
	}
	if got := counter(b.m.refused.WithLabelValues("no_credentials")); got != 1 {
		t.Errorf("refused no_credentials = %v, want 1", got)
	}
	if got := b.ConnectedClients(); got != 2 {
		t.Errorf("ConnectedClients = %d, want 2", got)
	}
}

func TestMQTT5RefusalCodes(t *testing.T) {
	file := credentialsFile(t, t.TempDir(), "worker-1", "pw-1")
	b := startBroker(t, Config{CredentialsFile: file})
	for _, c := range []struct {
		id, pass string
		want     packets.Code
	}{
		{"worker-1", "wrong", packets.ErrBadUsernameOrPassword},
		{"worker-1", "", packets.ErrNotAuthorized},
		{"a/b", "", packets.ErrClientIdentifierNotValid},
	} {
		_, ack := rawDial(t, b.Addr().String(), 5, c.id, c.pass, 30)
		if ack.ReasonCode != c.want.Code {
			t.Errorf("%s: CONNACK reason 0x%02x, want 0x%02x", c.id, ack.ReasonCode, c.want.Code)
		}
	}
	_, ack := rawDial(t, b.Addr().String(), 5, "worker-1", "pw-1", 30)
	if ack.ReasonCode != 0 || ack.Properties.MaximumPacketSize != uint32(b.cfg.MaxPacketSize) {
		t.Errorf("admitted: reason 0x%02x, maximum packet size %d", ack.ReasonCode, ack.Properties.MaximumPacketSize)
	}
}

func TestAnonymous(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	msgs := collect(t, b)
	c := mustDial(t, b, clientOpts{id: "worker-7"})
	publish(t, c, 1, mqttapi.NodeTopic("worker-7", mqttapi.SuffixTableQuery), `{"sname":"a.b.c.d","sip":""}`)
	if m := receive(t, msgs, "the node's message"); m.client != "worker-7" {
		t.Errorf("handler got %+v", m)
	}
	// The ACL applies to anonymous clients as to any other.
	if granted, _ := subscribe(t, c, "nodes/+/net/#"); granted != 0x80 {
		t.Errorf("anonymous client subscribed to nodes/+/net/#: granted 0x%02x", granted)
	}
	// Without a password file, a username cannot be checked: refused, not ignored.
	refused(t, b, clientOpts{id: "worker-8", user: "worker-8", pass: "x"}, codeBadCredentials)
}

func TestInvalidClientIDs(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	for _, id := range []string{"a/b", "inline", "+", "$SYS"} {
		refused(t, b, clientOpts{id: id}, codeIDRejected)
	}
	// An empty client id: mochi would make one up; the identity would be meaningless.
	if _, ack := rawDial(t, b.Addr().String(), 4, "", "", 30); ack.ReasonCode != codeIDRejected {
		t.Errorf("empty client id: return code 0x%02x", ack.ReasonCode)
	}
	if got := counter(b.m.refused.WithLabelValues("invalid_client_id")); got != 5 {
		t.Errorf("refused invalid_client_id = %v, want 5", got)
	}
}

func TestWillMustBeOwnTopic(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	refused(t, b, clientOpts{id: "a", will: mqttapi.NodeTopic("b", mqttapi.SuffixUndeployed)}, codeNotAuthorized)
	refused(t, b, clientOpts{id: "a", will: mqttapi.UpdatesTopic("x")}, codeNotAuthorized)

	// A will on its own topic is accepted, and reaches the cluster when the client dies.
	msgs := collect(t, b)
	mustDial(t, b, clientOpts{id: "a", will: mqttapi.NodeTopic("a", "gone")})
	for _, c := range b.mqtt.Clients.GetAll() {
		if c.ID == "a" {
			c.Stop(nil) // as if the connection broke: mochi sends the will
		}
	}
	if m := receive(t, msgs, "the will"); m.client != "a" || m.topic != "nodes/a/net/gone" {
		t.Errorf("handler got %+v", m)
	}
}

func TestMutualTLS(t *testing.T) {
	ca := testpki.NewCA(t, "semnet-test-ca")
	srv := ca.Server(t, "broker")
	creds := credentialsFile(t, t.TempDir(), "pw-node", "pw")
	b := startBroker(t, Config{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.File, CredentialsFile: creds})
	msgs := collect(t, b)

	w1 := ca.Client(t, "worker-1")
	san := ca.Client(t, "some-host", "worker-3")
	foreign := testpki.NewCA(t, "other-ca").Client(t, "worker-5")

	// The reference worker node: MQTT 3.1.1, client id = worker id, no username, a
	// client certificate naming it.
	c := mustDial(t, b, clientOpts{id: "worker-1", tls: ca.ClientTLS(&w1)})
	publish(t, c, 1, mqttapi.NodeTopic("worker-1", mqttapi.SuffixDeployed), `{}`)
	if m := receive(t, msgs, "the node's message"); m.client != "worker-1" {
		t.Errorf("handler got %+v", m)
	}
	mustDial(t, b, clientOpts{id: "worker-3", tls: ca.ClientTLS(&san)})                            // DNS SAN
	mustDial(t, b, clientOpts{id: "pw-node", user: "pw-node", pass: "pw", tls: ca.ClientTLS(nil)}) // password over TLS

	refused(t, b, clientOpts{id: "worker-2", tls: ca.ClientTLS(&w1)}, codeNotAuthorized) // certificate of another node
	refused(t, b, clientOpts{id: "worker-2", tls: ca.ClientTLS(nil)}, codeNotAuthorized) // no certificate
	// Go's client sends no certificate the server's CAs did not sign: insist.
	tc := ca.ClientTLS(nil)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign.Pair, nil }
	if _, _, err := dial(t, b, clientOpts{id: "worker-5", tls: tc}); err == nil {
		t.Error("certificate from another CA admitted")
	}
	if got := counter(b.m.refused.WithLabelValues("client_id_mismatch")); got != 1 {
		t.Errorf("refused client_id_mismatch = %v, want 1", got)
	}
	if got := counter(b.m.refused.WithLabelValues("no_credentials")); got != 1 {
		t.Errorf("refused no_credentials = %v, want 1", got)
	}
	eventually(t, "the TLS refusal to be counted", func() bool {
		return counter(b.m.refused.WithLabelValues("tls_handshake")) == 1
	})
}
