package broker

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/semnet/semnet/proto/mqttapi"
)

// TestDeliveries: the cluster's messages reach exactly the subscriptions that match
// them, once per client, whichever way Publish delivers them (itself when every
// subscriber speaks MQTT 3.1.1, else through mochi): once with an exact and a wildcard
// subscription, not without one or after unsubscribing, and with its subscription
// identifier to an MQTT 5 client (and then to the others as well).
func TestDeliveries(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	addr := b.Addr().String()
	result := func(id string) string { return mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult) }
	job, job2 := mqttapi.UpdatesTopic("job"), mqttapi.UpdatesTopic("job2")
	// next reads c's next packet and checks it is want on topic, at QoS 0.
	next := func(c *rawClient, name, topic, want string) packets.Packet {
		t.Helper()
		pk, err := c.read()
		if err != nil {
			t.Fatalf("%s: read: %v", name, err)
		}
		if pk.FixedHeader.Type != packets.Publish || pk.TopicName != topic || string(pk.Payload) != want {
			t.Fatalf("%s got packet type %d %s %q, want %q on %s", name, pk.FixedHeader.Type, pk.TopicName, pk.Payload, want, topic)
		}
		if pk.FixedHeader.Qos != 0 {
			t.Errorf("%s got QoS %d, want 0", name, pk.FixedHeader.Qos)
		}
		return pk
	}
	publish := func(topic, payload string) {
		t.Helper()
		if err := b.Publish(topic, []byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	identifiers := func(name string, pk packets.Packet, want int) {
		t.Helper()
		if got := pk.Properties.SubscriptionIdentifier; len(got) != 1 || got[0] != want {
			t.Errorf("%s got subscription identifiers %v, want [%d]", name, got, want)
		}
	}

	exact, _ := rawDial(t, addr, 4, "exact", "", 60)
	exact.subscribe(t, result("exact"), 1)
	both, _ := rawDial(t, addr, 4, "both", "", 60)
	both.subscribe(t, result("both"), 1)
	both.subscribe(t, "nodes/both/#", 0)
	both.subscribe(t, mqttapi.UpdatesFilter, 1)
	both.subscribe(t, job, 0)
	none, _ := rawDial(t, addr, 4, "none", "", 60)
	none.subscribe(t, mqttapi.UpdatesFilter, 1)
	v5, _ := rawDial(t, addr, 5, "v5", "", 60)
	for i, f := range []string{result("v5"), job2} {
		v5.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: uint16(i + 1),
			Properties: packets.Properties{SubscriptionIdentifier: []int{7 + i}},
			Filters:    packets.Subscriptions{{Filter: f, Qos: 1, Identifier: 7 + i}}})
		if ack, err := v5.read(); err != nil || ack.FixedHeader.Type != packets.Suback {
			t.Fatalf("v5 subscribe: %+v, %v", ack, err)
		}
	}

	sent := counter(b.m.sent)
	for _, id := range []string{"exact", "both", "none", "v5"} {
		publish(result(id), "answer for "+id)
	}
	publish(job, "push")
	next(exact, "exact", result("exact"), "answer for exact")
	next(both, "both", result("both"), "answer for both")
	next(both, "both", job, "push")
	next(none, "none", job, "push") // not the answer it did not subscribe to
	identifiers("v5", next(v5, "v5", result("v5"), "answer for v5"), 7)
	// mochi counts after its write returns, which the client may beat.
	eventually(t, "5 messages counted sent (three answers, the push to its two subscribers)", func() bool {
		return counter(b.m.sent)-sent == 5
	})

	// "both" got its answer and the push once: its next message is the next one.
	publish(job2, "push 2")
	next(both, "both", job2, "push 2")
	next(none, "none", job2, "push 2")
	identifiers("v5", next(v5, "v5", job2, "push 2"), 8)

	// Unsubscribed, "exact" gets no more answers.
	exact.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: 2,
		Filters: packets.Subscriptions{{Filter: result("exact")}}})
	if ack, err := exact.read(); err != nil || ack.FixedHeader.Type != packets.Unsuback {
		t.Fatalf("unsubscribe: %+v, %v", ack, err)
	}
	exact.subscribe(t, mqttapi.UpdatesFilter, 1)
	publish(result("exact"), "after unsubscribing")
	publish(job, "push 3")
	next(exact, "exact", job, "push 3")
}

// TestSlowClientOwnTopic: answers the broker writes to a node's connection itself are
// bounded like every delivery: a node that stops reading is disconnected once MaxPendingBytes
// wait for it, and Publish never blocks on it.
func TestSlowClientOwnTopic(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, MaxPendingBytes: 512 << 10, WriteTimeout: time.Minute})
	slow, _ := rawDial(t, b.Addr().String(), 4, "slow", "", 60)
	slow.subscribe(t, mqttapi.NodeTopic("slow", mqttapi.SuffixTableQueryResult), 1) // and never reads again

	payload := bytes.Repeat([]byte{'a'}, 200<<10)
	for i := 0; b.Connected("slow"); i++ {
		if i == 1000 {
			t.Fatal("slow client still connected after 1000 answers of 200 KiB")
		}
		done := make(chan error, 1)
		go func() { done <- b.Publish(mqttapi.NodeTopic("slow", mqttapi.SuffixTableQueryResult), payload) }()
		if err := receive(t, done, fmt.Sprintf("Publish of answer %d to return", i)); err != nil {
			t.Fatal(err)
		}
	}
	if got := counter(b.m.slowDisconnects.WithLabelValues(string(dropWriteBuffer))); got != 1 {
		t.Errorf("slow client disconnects (write_buffer) = %v, want 1", got)
	}
}
