package broker

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/semnet/semnet/proto/mqttapi"
)

func TestOversizedPacket(t *testing.T) {
	const max = 1024
	b := startBroker(t, Config{AllowAnonymous: true, MaxPacketSize: max})
	cluster := collect(t, b)
	other := mustDial(t, b, clientOpts{id: "other"})
	otherOwn := mustSubscribe(t, other, "nodes/other/net/+/result")

	// A packet of exactly the maximum size passes (QoS 1 PUBLISH: header byte, 2 length
	// bytes, topic length and topic, packet id, payload).
	lost := make(chan error, 1)
	big := mustDial(t, b, clientOpts{id: "big", lost: lost})
	topic := mqttapi.NodeTopic("big", mqttapi.SuffixDeployed)
	publish(t, big, 1, topic, strings.Repeat("x", max-1-2-2-len(topic)-2))
	if m := receive(t, cluster, "the largest allowed message"); m.client != "big" || len(m.payload) != max-7-len(topic) {
		t.Errorf("cluster got %d bytes from %s", len(m.payload), m.client)
	}

	// One byte more: the client is disconnected, counted; nothing reaches the cluster.
	big.Publish(topic, 1, false, strings.Repeat("x", max-6-len(topic)))
	receive(t, lost, "the client sending a too large packet to be disconnected")
	eventually(t, "the oversized packet to be counted", func() bool { return counter(b.m.oversized) == 1 })

	// Other clients are unaffected.
	publish(t, other, 1, mqttapi.NodeTopic("other", mqttapi.SuffixSubnet), "fine")
	if m := receive(t, cluster, "the other client's message"); m.client != "other" || m.payload != "fine" {
		t.Errorf("cluster got %+v, want the other client's message (not the oversized one)", m)
	}
	if err := b.Publish(mqttapi.NodeTopic("other", mqttapi.SuffixSubnetResult), []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if m := receive(t, otherOwn, "the reply"); string(m.Payload()) != "ok" {
		t.Errorf("other got %q", m.Payload())
	}

	// MQTT 5: told why, with reason code Packet Too Large.
	v5, ack := rawDial(t, b.Addr().String(), 5, "big5", "", 30)
	if ack.Properties.MaximumPacketSize != max {
		t.Errorf("CONNACK maximum packet size %d, want %d", ack.Properties.MaximumPacketSize, max)
	}
	v5.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish},
		TopicName: mqttapi.NodeTopic("big5", "x"), Payload: bytes.Repeat([]byte{'x'}, 4*max)})
	pk, err := v5.read()
	if err != nil || pk.FixedHeader.Type != packets.Disconnect || pk.ReasonCode != packets.ErrPacketTooLarge.Code {
		t.Errorf("MQTT 5 client got %+v, %v; want DISCONNECT 0x95", pk.FixedHeader, err)
	}
	if _, err := v5.read(); err == nil {
		t.Error("connection still open after DISCONNECT")
	}
	eventually(t, "the second oversized packet to be counted", func() bool { return counter(b.m.oversized) == 2 })

	// The cluster cannot publish more than clients may.
	if err := b.Publish(mqttapi.UpdatesTopic("x"), make([]byte, max)); err == nil {
		t.Error("Publish of an oversized message succeeded")
	}
}

// TestSlowClientDoesNotStallOthers: a client subscribes and then stops reading its
// socket. With plain mochi the cluster's Publish would block, once the kernel's buffers
// are full, until the write timed out at 1.5 times that client's keepalive, and with it
// every other delivery. Here every Publish returns at once, the healthy client gets each
// message and the cluster's handlers keep answering, until the slow client is
// disconnected.
func TestSlowClientDoesNotStallOthers(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, MaxPendingBytes: 512 << 10, WriteTimeout: time.Minute})
	// The cluster answers every request, as its table query handler does.
	if err := b.Handle(func(id, topic string, payload []byte) {
		if err := b.Publish(mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult), payload); err != nil {
			t.Error(err)
		}
	}); err != nil {
		t.Fatal(err)
	}
	slow, _ := rawDial(t, b.Addr().String(), 4, "slow", "", 60)
	slow.subscribe(t, mqttapi.UpdatesFilter, 1) // and never reads again
	healthy := mustDial(t, b, clientOpts{id: "healthy"})
	updates := mustSubscribe(t, healthy, mqttapi.UpdatesFilter)
	results := mustSubscribe(t, healthy, mqttapi.NodeTopic("healthy", mqttapi.SuffixTableQueryResult))

	payload := bytes.Repeat([]byte{'u'}, 200<<10)
	for i := 0; b.Connected("slow"); i++ {
		if i == 1000 {
			t.Fatal("slow client still connected after 1000 messages of 200 KiB")
		}
		copy(payload, fmt.Sprintf("%06d", i))
		done := make(chan error, 1)
		go func() { done <- b.Publish(mqttapi.UpdatesTopic("job"), payload) }()
		if err := receive(t, done, fmt.Sprintf("Publish of message %d to return", i)); err != nil {
			t.Fatal(err)
		}
		if m := receive(t, updates, fmt.Sprintf("message %d at the healthy client", i)); string(m.Payload()[:6]) != fmt.Sprintf("%06d", i) {
			t.Fatalf("healthy client got message %q, want %06d", m.Payload()[:6], i)
		}
		req := fmt.Sprintf("query %d", i)
		publish(t, healthy, 1, mqttapi.NodeTopic("healthy", mqttapi.SuffixTableQuery), req)
		if m := receive(t, results, "the cluster's answer"); string(m.Payload()) != req {
			t.Fatalf("answer %q, want %q", m.Payload(), req)
		}
	}
	if got := counter(b.m.slowDisconnects.WithLabelValues(string(dropWriteBuffer))); got != 1 {
		t.Errorf("slow client disconnects (write_buffer) = %v, want 1", got)
	}
}

// TestPublishSize: the cluster's messages go out at QoS 0 (whatever QoS the node
// subscribed at), and Publish takes one of exactly MaxPacketSize bytes (as an MQTT 5
// PUBLISH, the larger form) and refuses one byte more.
func TestPublishSize(t *testing.T) {
	const max = 1024
	b := startBroker(t, Config{AllowAnonymous: true, MaxPacketSize: max})
	c := mustDial(t, b, clientOpts{id: "w1"})
	topic := mqttapi.NodeTopic("w1", mqttapi.SuffixTableQueryResult)
	results := mustSubscribe(t, c, topic) // at QoS 1
	// Header byte, 2 remaining-length bytes, topic length and topic, property length.
	payload := strings.Repeat("x", max-3-2-len(topic)-1)
	if err := b.Publish(topic, []byte(payload)); err != nil {
		t.Fatalf("publish of exactly the maximum size: %v", err)
	}
	if m := receive(t, results, "the largest message"); len(m.Payload()) != len(payload) || m.Qos() != 0 {
		t.Errorf("got %d bytes at QoS %d, want %d at QoS 0", len(m.Payload()), m.Qos(), len(payload))
	}
	if err := b.Publish(topic, []byte(payload+"x")); err == nil || !strings.Contains(err.Error(), "maximum packet size") {
		t.Errorf("publish of one byte more: %v, want refused for its size", err)
	}
}

// TestUnacknowledgingClientDisconnected: a client that reads but never acknowledges its
// QoS 1 messages is disconnected when MaxInflight of them are outstanding. The cluster
// publishes at QoS 0, so the QoS 1 deliveries here are of the client's own messages on
// its own topic (what the ACL lets a node receive at QoS 1).
func TestUnacknowledgingClientDisconnected(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, MaxInflight: 8})
	lost := make(chan error, 1)
	lazy := mustDial(t, b, clientOpts{id: "lazy", noAutoAck: true, lost: lost})
	lazyTopic := mqttapi.NodeTopic("lazy", "loop")
	mustSubscribe(t, lazy, lazyTopic)
	healthy := mustDial(t, b, clientOpts{id: "healthy"})
	healthyTopic := mqttapi.NodeTopic("healthy", "loop")
	echoes := mustSubscribe(t, healthy, healthyTopic)
	for i := 0; b.Connected("lazy"); i++ {
		if i == 100 {
			t.Fatal("client not acknowledging still connected after 100 messages")
		}
		lazy.Publish(lazyTopic, 1, false, "unacknowledged") // its PUBACK may never come: the client is cut
		publish(t, healthy, 1, healthyTopic, "acknowledged")
		receive(t, echoes, "the healthy client's own message")
		// paho acknowledges from a queue of its own: on a loaded machine the healthy
		// client too could lag MaxInflight acknowledgements behind and be cut.
		waitAcked(t, b, "healthy")
		eventually(t, "the lazy client's message to be delivered back to it", func() bool {
			cl, ok := b.mqtt.Clients.Get("lazy")
			return !ok || cl.State.Inflight.Len() > i || !b.Connected("lazy")
		})
	}
	receive(t, lost, "the lazy client to lose its connection")
	if got := counter(b.m.slowDisconnects.WithLabelValues(string(dropInflight))); got != 1 {
		t.Errorf("slow client disconnects (inflight) = %v, want 1", got)
	}
	if counter(b.m.dropped) < 1 {
		t.Error("no dropped message counted")
	}
}

func TestKeepAliveBounds(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, KeepAliveMin: 2 * time.Second, KeepAliveMax: 2 * time.Second})
	// MQTT 5 clients are told the keepalive to use.
	for _, asked := range []uint16{0, 1, 600} {
		_, ack := rawDial(t, b.Addr().String(), 5, fmt.Sprintf("v5-%d", asked), "", asked)
		if !ack.Properties.ServerKeepAliveFlag || ack.Properties.ServerKeepAlive != 2 {
			t.Errorf("asked for %d s: CONNACK server keepalive %v %d, want 2", asked, ack.Properties.ServerKeepAliveFlag, ack.Properties.ServerKeepAlive)
		}
	}
	// An MQTT 3 client asking for no keepalive that then stays silent is disconnected
	// after 1.5 times the maximum (not never).
	silent, _ := rawDial(t, b.Addr().String(), 4, "silent", "", 0)
	if _, err := silent.read(); err == nil {
		t.Error("silent client got a packet, want its connection closed")
	}
	if b.Connected("silent") {
		eventually(t, "the silent client to be gone", func() bool { return !b.Connected("silent") })
	}
}

func TestConnectTimeout(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, ConnectTimeout: 200 * time.Millisecond})
	nc, err := net.DialTimeout("tcp", b.Addr().String(), waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := nc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("connection without CONNECT: read %v, want it closed by the broker", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestPublishFlood: a client publishing faster than PublishRate gets its messages beyond
// the token bucket refused and counted (MQTT 5: PUBACK 0x87; MQTT 3.1.1 QoS 0: dropped;
// QoS 1: disconnected), while another client's messages keep reaching the cluster.
func TestPublishFlood(t *testing.T) {
	const rate, burst, flood = 20, 40, 400
	b := startBroker(t, Config{AllowAnonymous: true, PublishRate: rate, PublishBurst: burst})
	cluster := collect(t, b)
	other := mustDial(t, b, clientOpts{id: "other"})

	// MQTT 5, QoS 1: every publish is answered; those beyond the bucket with 0x87.
	start := time.Now()
	v5, _ := rawDial(t, b.Addr().String(), 5, "flood5", "", 30)
	topic := mqttapi.NodeTopic("flood5", mqttapi.SuffixTableQuery)
	go func() {
		for i := range flood {
			v5.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
				PacketID: uint16(i + 1), TopicName: topic, Payload: []byte("{}")})
		}
	}()
	accepted, refusedN := 0, 0
	for range flood {
		pk, err := v5.read()
		if err != nil {
			t.Fatalf("after %d acks: %v", accepted+refusedN, err)
		}
		switch {
		case pk.FixedHeader.Type != packets.Puback:
			t.Fatalf("got packet type %d, want PUBACK", pk.FixedHeader.Type)
		case pk.ReasonCode == packets.ErrNotAuthorized.Code:
			refusedN++
		case pk.ReasonCode == 0:
			accepted++
		default:
			t.Fatalf("PUBACK reason 0x%02x", pk.ReasonCode)
		}
	}
	// A token bucket admits at most its burst plus what refills meanwhile.
	if most := burst + int(rate*time.Since(start).Seconds()) + 1; accepted > most || accepted < burst {
		t.Errorf("accepted %d of %d publishes; the bucket allows %d to %d", accepted, flood, burst, most)
	}
	if got := counter(b.m.rateLimited); got != float64(refusedN) || refusedN == 0 {
		t.Errorf("rate-limited counter %v, refused PUBACKs %d", got, refusedN)
	}
	// The cluster saw exactly the accepted ones, and the other client is unaffected.
	publish(t, other, 1, mqttapi.NodeTopic("other", mqttapi.SuffixSubnet), "fine")
	fromFlooder := 0
	for m := receive(t, cluster, "the other client's message"); m.client != "other"; m = receive(t, cluster, "the other client's message") {
		fromFlooder++
	}
	if fromFlooder != accepted {
		t.Errorf("cluster got %d messages from the flooder, %d were acknowledged", fromFlooder, accepted)
	}

	// MQTT 3.1.1, QoS 1: a refused publish cannot be acknowledged negatively, so mochi
	// disconnects the client.
	lost := make(chan error, 1)
	v3 := mustDial(t, b, clientOpts{id: "flood3", lost: lost})
	for range 2 * burst {
		v3.Publish(mqttapi.NodeTopic("flood3", mqttapi.SuffixTableQuery), 1, false, "{}")
	}
	receive(t, lost, "the MQTT 3.1.1 flooder to be disconnected")
	publish(t, other, 1, mqttapi.NodeTopic("other", mqttapi.SuffixSubnet), "still fine")
	for m := receive(t, cluster, "the other client's message"); m.payload != "still fine"; m = receive(t, cluster, "the other client's message") {
		if m.client != "flood3" {
			t.Fatalf("unexpected message %+v", m)
		}
	}
}

// TestPublishRateOff: a negative PublishRate turns the bound off.
func TestPublishRateOff(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true, PublishRate: -1})
	cluster := collect(t, b)
	got := make(chan int)
	go func() { // drain as they come: the handler blocks on a full channel
		n := 0
		for m := range cluster {
			if m.payload == "last" {
				got <- n
				return
			}
			n++
		}
	}()
	c := mustDial(t, b, clientOpts{id: "fast"})
	const n = 3 * DefaultPublishRate
	for range n {
		c.Publish(mqttapi.NodeTopic("fast", mqttapi.SuffixTableQuery), 0, false, "{}")
	}
	publish(t, c, 1, mqttapi.NodeTopic("fast", mqttapi.SuffixSubnet), "last")
	if g := receive(t, got, "the last message"); g != n || counter(b.m.rateLimited) != 0 {
		t.Errorf("cluster got %d of %d QoS 0 messages; rate-limited %v", g, n, counter(b.m.rateLimited))
	}
}

// waitAcked waits until client id has acknowledged every QoS 1 message sent to it.
func waitAcked(t *testing.T, b *Broker, id string) {
	t.Helper()
	for deadline := time.Now().Add(waitTimeout); ; time.Sleep(time.Millisecond) {
		cl, ok := b.mqtt.Clients.Get(id)
		if !ok || cl.State.Inflight.Len() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s left %d messages unacknowledged", id, cl.State.Inflight.Len())
		}
	}
}

// TestPacketIDCollision: a SUBSCRIBE or UNSUBSCRIBE whose packet identifier is that of
// a delivery the client has not acknowledged yet (legal: each side numbers its own
// packets) takes effect, though mochi alone would refuse it.
func TestPacketIDCollision(t *testing.T) {
	b := startBroker(t, Config{AllowAnonymous: true})
	c, _ := rawDial(t, b.Addr().String(), 4, "w1", "", 30)
	c.subscribe(t, mqttapi.UpdatesTopic("a"), 1)
	next := func(what string) packets.Packet {
		t.Helper()
		pk, err := c.read()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return pk
	}
	// The cluster publishes at QoS 0: a QoS 1 delivery, holding a packet identifier, is
	// one of the client's own messages delivered back to it.
	own := mqttapi.NodeTopic("w1", "loop")
	c.subscribe(t, own, 1)
	c.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1,
		TopicName: own, Payload: []byte("1")})
	var held packets.Packet
	for range 2 { // its PUBACK and its delivery, in either order
		if pk := next("the PUBACK and the delivery"); pk.FixedHeader.Type == packets.Publish {
			held = pk // not acknowledged for now
		}
	}
	if held.FixedHeader.Qos != 1 || held.PacketID == 0 {
		t.Fatalf("got %+v, want a QoS 1 PUBLISH", held)
	}

	c.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: held.PacketID,
		Filters: packets.Subscriptions{{Filter: mqttapi.UpdatesTopic("b"), Qos: 1}}})
	if ack := next("SUBACK"); ack.FixedHeader.Type != packets.Suback || ack.PacketID != held.PacketID {
		t.Fatalf("got %+v, want the SUBACK", ack)
	}
	if err := b.Publish(mqttapi.UpdatesTopic("b"), []byte("2")); err != nil {
		t.Fatal(err)
	}
	if pk := next("the delivery on b"); pk.FixedHeader.Type != packets.Publish || pk.TopicName != mqttapi.UpdatesTopic("b") {
		t.Fatalf("got %+v, want the PUBLISH on b: the subscription did not take", pk)
	}

	c.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe}, PacketID: held.PacketID,
		Filters: packets.Subscriptions{{Filter: mqttapi.UpdatesTopic("a")}}})
	if ack := next("UNSUBACK"); ack.FixedHeader.Type != packets.Unsuback || ack.PacketID != held.PacketID {
		t.Fatalf("got %+v, want the UNSUBACK", ack)
	}
	// Deliveries to one client keep their order: had the unsubscription not taken, a's
	// would come first.
	for _, key := range []string{"a", "b"} {
		if err := b.Publish(mqttapi.UpdatesTopic(key), []byte("3")); err != nil {
			t.Fatal(err)
		}
	}
	if pk := next("the next delivery"); pk.TopicName != mqttapi.UpdatesTopic("b") {
		t.Fatalf("got a delivery on %q, want b's: the unsubscription did not take", pk.TopicName)
	}
	for _, p := range []string{"subscribe", "unsubscribe"} {
		if got := counter(b.m.idCollisions.WithLabelValues(p)); got != 1 {
			t.Errorf("%s collisions counted: %v, want 1", p, got)
		}
	}
}
