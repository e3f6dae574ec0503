package broker

import (
	"os"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/semnet/semnet/proto/mqttapi"
)

// TestACLEnforced checks the ACL end to end with real clients. Negative checks do not
// wait for something not to happen: each is followed by a message that must arrive,
// and would have arrived after the refused one had it got through (each connection's
// packets are processed in order, and each client's messages are delivered in order).
func TestACLEnforced(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	cluster := collect(t, b)
	a := mustDial(t, b, clientOpts{id: "A"})
	bb := mustDial(t, b, clientOpts{id: "B"})
	c := mustDial(t, b, clientOpts{id: "C"})

	for _, f := range []string{"nodes/B/#", "#", "nodes/#", "nodes/+/net/#", "$SYS/#", "jobs/#", "nodes/+/net/tablequery/result"} {
		if granted, _ := subscribe(t, a, f); granted != 0x80 {
			t.Errorf("A subscribed to %s: granted 0x%02x, want 0x80", f, granted)
		}
	}
	aOwn := mustSubscribe(t, a, "nodes/A/#")
	aJobs := mustSubscribe(t, a, mqttapi.UpdatesFilter)
	bOwn := mustSubscribe(t, bb, "nodes/B/net/+/result")
	cJob := mustSubscribe(t, c, mqttapi.UpdatesTopic("x"))

	// B's own topics work both ways.
	publish(t, bb, 1, mqttapi.NodeTopic("B", mqttapi.SuffixSubnet), "b-request")
	if m := receive(t, cluster, "B's request"); m.client != "B" || m.payload != "b-request" {
		t.Errorf("cluster got %+v", m)
	}
	if err := b.Publish(mqttapi.NodeTopic("B", mqttapi.SuffixTableQueryResult), []byte("b-result")); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, bOwn, "B's result"); string(m.Payload()) != "b-result" {
		t.Errorf("B got %q", m.Payload())
	}
	// Neither the cluster's own publishes nor a node's messages outside its "net/"
	// topics reach the cluster: its next message is C's request.
	publish(t, c, 1, "nodes/C/private", "c-private")
	publish(t, c, 1, "nodes/C/network", "c-not-net")
	publish(t, c, 1, mqttapi.NodeTopic("C", mqttapi.SuffixSubnet), "c-request")
	if m := receive(t, cluster, "C's request"); m.client != "C" || m.payload != "c-request" {
		t.Errorf("cluster got %+v, want C's request (not its own result for B, nor C's other messages)", m)
	}

	// A received none of B's messages: its next message is the one for it.
	if err := b.Publish(mqttapi.NodeTopic("A", mqttapi.SuffixTableQueryResult), []byte("a-result")); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, aOwn, "A's result"); string(m.Payload()) != "a-result" {
		t.Errorf("A got %s %q, want its own result", m.Topic(), m.Payload())
	}

	// A cannot publish as B nor to a job's topic (QoS 0: dropped, A stays connected).
	publish(t, a, 0, mqttapi.NodeTopic("B", mqttapi.SuffixDeployed), "forged")
	publish(t, a, 0, mqttapi.UpdatesTopic("x"), "forged")
	publish(t, a, 1, mqttapi.NodeTopic("A", mqttapi.SuffixSubnet), "a-request")
	if m := receive(t, cluster, "A's request"); m.client != "A" || m.payload != "a-request" {
		t.Errorf("cluster got %+v, want A's own request", m)
	}
	if err := b.Publish(mqttapi.UpdatesTopic("x"), []byte("update")); err != nil {
		t.Fatal(err)
	}
	for name, ch := range map[string]<-chan paho.Message{"C": cJob, "A": aJobs} {
		if m := receive(t, ch, name+"'s update"); string(m.Payload()) != "update" {
			t.Errorf("%s got %q on %s, want the cluster's update", name, m.Payload(), m.Topic())
		}
	}
	if got := counter(b.m.aclDenied.WithLabelValues("publish")); got != 2 {
		t.Errorf("acl denied publish = %v, want 2", got)
	}
	if got := counter(b.m.aclDenied.WithLabelValues("subscribe")); got != 7 {
		t.Errorf("acl denied subscribe = %v, want 7", got)
	}

	// At QoS 1 an MQTT 3.1.1 client has no way to be told: mochi disconnects it.
	lost := make(chan error, 1)
	d := mustDial(t, b, clientOpts{id: "D", lost: lost})
	d.Publish(mqttapi.NodeTopic("B", mqttapi.SuffixDeployed), 1, false, "forged")
	receive(t, lost, "D to be disconnected")
	if got := counter(b.m.aclDenied.WithLabelValues("publish")); got != 3 {
		t.Errorf("acl denied publish = %v, want 3", got)
	}
	if got := counter(b.m.received); got != 5 {
		t.Errorf("messages received = %v, want 5 (B's request, C's three messages, A's request)", got)
	}
}

func TestDisconnectCallback(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	events := make(chan string, 16)
	if err := b.Handle(func(id, _ string, payload []byte) { events <- id + ":" + string(payload) }); err != nil {
		t.Fatal(err)
	}
	b.OnDisconnect(func(id string) { events <- id + ":gone" })

	mustDial(t, b, clientOpts{id: "n1"})
	if !b.Connected("n1") || b.ConnectedClients() != 1 {
		t.Fatal("n1 not connected")
	}
	// The same node connects again (it lost its connection and came back before the
	// broker noticed): the old connection ends, but the node is not gone.
	n1 := mustDial(t, b, clientOpts{id: "n1"})
	eventually(t, "the old connection to end", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.conns) == 1
	})
	if !b.Connected("n1") {
		t.Error("n1 not connected after reconnecting")
	}
	// Its last message is handled before it is gone.
	publish(t, n1, 0, mqttapi.NodeTopic("n1", mqttapi.SuffixInterestRemove), "last")
	n1.Disconnect(1000)
	if e := receive(t, events, "n1's message"); e != "n1:last" {
		t.Errorf("first event %q, want n1:last (a replaced connection must not make the node gone)", e)
	}
	if e := receive(t, events, "n1 to be gone"); e != "n1:gone" {
		t.Errorf("second event %q, want n1:gone", e)
	}
	if b.Connected("n1") || b.ConnectedClients() != 0 {
		t.Error("n1 still connected")
	}
}

func TestClose(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	gone := make(chan string, 4)
	b.OnDisconnect(func(id string) { gone <- id })
	lost := make(chan error, 1)
	mustDial(t, b, clientOpts{id: "n1", lost: lost})
	raw, _ := rawDial(t, b.Addr().String(), 5, "n2", "", 30)

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waited for the disconnect callbacks.
	if len(gone) != 2 {
		t.Errorf("%d disconnect callbacks when Close returned, want 2", len(gone))
	}
	receive(t, lost, "n1 to lose its connection")
	if pk, err := raw.read(); err != nil || pk.ReasonCode != 0x8b {
		t.Errorf("MQTT 5 client got %+v, %v; want DISCONNECT 0x8b (server shutting down)", pk, err)
	}
	if err := b.Publish("jobs/x/updates_available", nil); err == nil {
		t.Error("Publish after Close succeeded")
	}
	if err := b.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestCloseWithoutStart(t *testing.T) {
	b, err := New(Config{AllowAnonymous: true}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Addr() != nil {
		t.Error("Addr before Start is not nil")
	}
	if err := b.Handle(func(string, string, []byte) {}); err != nil {
		t.Fatal(err) // the cluster subscribes before it starts the broker
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCredentialsReload(t *testing.T) {
	dir := t.TempDir()
	file := credentialsFile(t, dir, "worker-1", "pw-1")
	b := startBroker(t, Config{CredentialsFile: file, CredentialsPoll: -1})
	lost1 := make(chan error, 1)
	mustDial(t, b, clientOpts{id: "worker-1", user: "worker-1", pass: "pw-1", lost: lost1})
	refused(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "pw-2"}, codeBadCredentials)

	// The operator adds a node.
	credentialsFile(t, dir, "worker-1", "pw-1", "worker-2", "pw-2")
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	lost2 := make(chan error, 1)
	mustDial(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "pw-2", lost: lost2})

	// The operator removes worker-1: it is disconnected, worker-2 stays.
	credentialsFile(t, dir, "worker-2", "pw-2")
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	receive(t, lost1, "worker-1 to be disconnected")
	refused(t, b, clientOpts{id: "worker-1", user: "worker-1", pass: "pw-1"}, codeBadCredentials)

	// A broken file keeps the credentials in force.
	writeFile(t, dir, "credentials.yaml", "auth:\n  - {username: worker-2, password: pw-2}\n")
	if err := b.Reload(); err == nil {
		t.Error("broken file reloaded")
	}
	select {
	case err := <-lost2:
		t.Errorf("worker-2 lost its connection: %v", err)
	default:
	}
	refused(t, b, clientOpts{id: "worker-1", user: "worker-1", pass: "pw-1"}, codeBadCredentials)
	mustDial(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "pw-2"})
}

func TestCredentialsPolling(t *testing.T) {
	dir := t.TempDir()
	file := credentialsFile(t, dir, "worker-1", "pw-1")
	b := startBroker(t, Config{CredentialsFile: file, CredentialsPoll: 20 * time.Millisecond})
	refused(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "pw-2"}, codeBadCredentials)

	// Write the new file next to it and rename it into place, as operators should.
	tmp := credentialsFile(t, t.TempDir(), "worker-1", "pw-1", "worker-2", "pw-2")
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	eventually(t, "worker-2 to be admitted", func() bool {
		_, _, err := dial(t, b, clientOpts{id: "worker-2", user: "worker-2", pass: "pw-2"})
		return err == nil
	})
}
