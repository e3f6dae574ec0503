package broker

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// waitTimeout is how long tests wait for anything to happen: generous, because a loaded
// 2-core machine running the race detector is slow. Nothing waits this long when the
// code works.
const waitTimeout = 10 * time.Second

// startBroker starts a broker on a free loopback port with cfg; it is closed at the end
// of the test.
func startBroker(t testing.TB, cfg Config) *Broker {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	level := slog.LevelInfo
	if _, ok := t.(*testing.B); ok {
		level = slog.LevelWarn // a benchmark's output is its figures
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
	b, err := New(cfg, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// writeFile writes content to name in dir and returns its path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// credentialsFile writes a credentials file with the given username -> password entries.
func credentialsFile(t *testing.T, dir string, users ...string) string {
	t.Helper()
	var b bytes.Buffer
	b.WriteString("auth:\n")
	for i := 0; i+1 < len(users); i += 2 {
		fmt.Fprintf(&b, "  - username: %q\n    password: %q\n    allow: true\n", users[i], users[i+1])
	}
	return writeFile(t, dir, "credentials.yaml", b.String())
}

// counter reads a counter's value.
func counter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// eventually waits until cond holds, failing the test after waitTimeout.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// receive waits for the next value on ch.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// --- the cluster side ---------------------------------------------------------------

// message is what a Handler got.
type message struct{ client, topic, payload string }

// collect returns the messages the cluster gets (Broker.Handle).
func collect(t *testing.T, b *Broker) <-chan message {
	t.Helper()
	ch := make(chan message, 1024)
	if err := b.Handle(func(client, topic string, payload []byte) {
		ch <- message{client, topic, string(payload)}
	}); err != nil {
		t.Fatal(err)
	}
	return ch
}

// --- paho (the Go client semnet's node uses) ----------------------------------------

type clientOpts struct {
	id, user, pass string
	tls            *tls.Config
	noAutoAck      bool
	keepAlive      time.Duration
	will           string // will topic
	lost           chan<- error
}

// dial connects a paho MQTT 3.1.1 client; on refusal it returns the CONNACK return code
// (0 if the connection failed otherwise) and the error.
func dial(t *testing.T, b *Broker, o clientOpts) (paho.Client, byte, error) {
	t.Helper()
	scheme := "tcp"
	if o.tls != nil {
		scheme = "ssl"
	}
	opts := paho.NewClientOptions().AddBroker(scheme + "://" + b.Addr().String()).
		SetClientID(o.id).SetProtocolVersion(4).SetCleanSession(true).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(waitTimeout).
		SetWriteTimeout(waitTimeout).SetKeepAlive(30 * time.Second).SetOrderMatters(true)
	if o.user != "" {
		opts.SetUsername(o.user).SetPassword(o.pass)
	}
	if o.tls != nil {
		opts.SetTLSConfig(o.tls)
	}
	if o.noAutoAck {
		opts.SetAutoAckDisabled(true)
	}
	if o.keepAlive != 0 {
		opts.SetKeepAlive(o.keepAlive)
	}
	if o.will != "" {
		opts.SetWill(o.will, "gone", 1, false)
	}
	if o.lost != nil {
		opts.SetConnectionLostHandler(func(_ paho.Client, err error) { o.lost <- err })
	}
	c := paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("client %s: connect timed out", o.id)
	}
	if err := tok.Error(); err != nil {
		return nil, tok.(*paho.ConnectToken).ReturnCode(), err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, 0, nil
}

// mustDial connects a client that must be admitted.
func mustDial(t *testing.T, b *Broker, o clientOpts) paho.Client {
	t.Helper()
	c, code, err := dial(t, b, o)
	if err != nil {
		t.Fatalf("client %s: connect refused (return code %d): %v", o.id, code, err)
	}
	return c
}

// refused asserts that the client is refused with CONNACK return code want.
func refused(t *testing.T, b *Broker, o clientOpts, want byte) {
	t.Helper()
	_, code, err := dial(t, b, o)
	if err == nil {
		t.Fatalf("client %s: connected, want refusal with return code %d", o.id, want)
	}
	if code != want {
		t.Fatalf("client %s: return code %d (%v), want %d", o.id, code, err, want)
	}
}

// subscribe subscribes c to filter at QoS 1 and returns the granted QoS (0x80: refused)
// and the messages.
func subscribe(t *testing.T, c paho.Client, filter string) (byte, <-chan paho.Message) {
	t.Helper()
	ch := make(chan paho.Message, 1024)
	tok := c.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { ch <- m })
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("subscribe %s timed out", filter)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("subscribe %s: %v", filter, err)
	}
	return tok.(*paho.SubscribeToken).Result()[filter], ch
}

func mustSubscribe(t *testing.T, c paho.Client, filter string) <-chan paho.Message {
	t.Helper()
	granted, ch := subscribe(t, c, filter)
	if granted != 1 {
		t.Fatalf("subscribe %s: granted 0x%02x, want QoS 1", filter, granted)
	}
	return ch
}

// publish publishes and waits until the broker has it (QoS 1: PUBACK).
func publish(t *testing.T, c paho.Client, qos byte, topic, payload string) {
	t.Helper()
	tok := c.Publish(topic, qos, false, payload)
	if !tok.WaitTimeout(waitTimeout) {
		t.Fatalf("publish %s timed out", topic)
	}
	if err := tok.Error(); err != nil {
		t.Fatalf("publish %s: %v", topic, err)
	}
}

// --- raw MQTT, for what paho cannot do (MQTT 5, misbehaving clients) ----------------

type rawClient struct {
	net.Conn
	r       *bufio.Reader
	version byte
}

// rawDial connects with MQTT version (4 or 5) as id, with a password if pass != "", and
// returns the CONNACK.
func rawDial(t testing.TB, addr string, version byte, id, pass string, keepalive uint16) (*rawClient, packets.Packet) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{Conn: nc, r: bufio.NewReader(nc), version: version}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: version,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: keepalive, ClientIdentifier: id}}
	if pass != "" {
		pk.Connect.UsernameFlag, pk.Connect.Username = true, []byte(id)
		pk.Connect.PasswordFlag, pk.Connect.Password = true, []byte(pass)
	}
	c.send(t, pk)
	ack, err := c.read()
	if err != nil {
		t.Fatalf("read CONNACK: %v", err)
	}
	if ack.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", ack.FixedHeader.Type)
	}
	return c, ack
}

func (c *rawClient) send(t testing.TB, pk packets.Packet) {
	t.Helper()
	pk.ProtocolVersion = c.version
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		pk.FixedHeader.Qos = 1 // [MQTT-3.8.1-1]
		err = pk.SubscribeEncode(&buf)
	case packets.Unsubscribe:
		pk.FixedHeader.Qos = 1 // [MQTT-3.10.1-1]
		err = pk.UnsubscribeEncode(&buf)
	case packets.Publish:
		err = pk.PublishEncode(&buf)
	case packets.Puback:
		err = pk.PubackEncode(&buf)
	default:
		t.Fatalf("rawClient cannot send packet type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(waitTimeout))
	if _, err := c.Write(buf.Bytes()); err != nil {
		t.Fatalf("send packet type %d: %v", pk.FixedHeader.Type, err)
	}
}

// read reads the next packet, decoding the types the tests look at.
func (c *rawClient) read() (packets.Packet, error) {
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	var pk packets.Packet
	b, err := c.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(c.r)
	if err != nil {
		return pk, err
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(c.r, body); err != nil {
		return pk, err
	}
	pk.ProtocolVersion = c.version
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Unsuback:
		err = pk.UnsubackDecode(body)
	}
	return pk, err
}

// subscribe subscribes at qos and checks the SUBACK.
func (c *rawClient) subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	c.send(t, packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: filter, Qos: qos}}})
	ack, err := c.read()
	if err != nil || ack.FixedHeader.Type != packets.Suback || len(ack.ReasonCodes) != 1 || ack.ReasonCodes[0] != qos {
		t.Fatalf("subscribe %s: %+v, %v", filter, ack, err)
	}
}
