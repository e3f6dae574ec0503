package clusterlink_test

import (
	"bytes"
	"log/slog"
	"net"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/semnet/semnet/node/clusterlink"
	"github.com/semnet/semnet/proto/mqttapi"
)

// slowSubscribe lets every client in and holds every subscription to a job's updates for
// a while before the broker takes it, as a loaded broker may.
type slowSubscribe struct {
	mqtt.HookBase
	delay time.Duration
}

func (h *slowSubscribe) ID() string { return "slow-subscribe" }

func (h *slowSubscribe) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnSubscribe, mqtt.OnConnectAuthenticate, mqtt.OnACLCheck}, []byte{b})
}

func (h *slowSubscribe) OnConnectAuthenticate(*mqtt.Client, packets.Packet) bool { return true }

func (h *slowSubscribe) OnACLCheck(*mqtt.Client, string, bool) bool { return true }

func (h *slowSubscribe) OnSubscribe(_ *mqtt.Client, pk packets.Packet) packets.Packet {
	for _, f := range pk.Filters {
		if _, ok := mqttapi.ParseUpdatesTopic(f.Filter); ok {
			time.Sleep(h.delay)
		}
	}
	return pk
}

// serveMochi serves a plain mochi broker with hook on a free loopback port, until the
// test ends.
func serveMochi(t *testing.T, hook mqtt.Hook) (*mqtt.Server, string) {
	t.Helper()
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv, addr
}

// TestFollowWaitsForTheSubscription: a second Follow of a key whose subscription is on
// its way returns only once it holds, so a push sent after it returns is not lost (two
// concurrent queries of one job on one node raced so in the load run).
func TestFollowWaitsForTheSubscription(t *testing.T) {
	srv, addr := serveMochi(t, &slowSubscribe{delay: 500 * time.Millisecond})

	pushes := make(chan string, 4)
	l, err := clusterlink.Dial(t.Context(), clusterlink.Config{Broker: addr, NodeID: "w1",
		OnUpdate: func(key string, _ mqttapi.UpdatesAvailable) { pushes <- key }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	const job = "shop.prod.web.eu"
	first := make(chan error, 1)
	go func() { first <- l.Follow(t.Context(), job) }()
	time.Sleep(100 * time.Millisecond) // the first Follow's subscription is at the broker
	if err := l.Follow(t.Context(), job); err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish(mqttapi.UpdatesTopic(job), []byte(`{}`), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case key := <-pushes:
		if key != job {
			t.Errorf("push for %q, want %q", key, job)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the push sent after the second Follow returned never arrived")
	}
	if err := <-first; err != nil {
		t.Errorf("first Follow: %v", err)
	}
}

// TestFollowRetriesARefusedSubscription: mochi keeps the packet identifiers of its
// deliveries and of the client's own packets in one table, so it refuses a SUBSCRIBE
// that carries the identifier of a delivery the node has not acknowledged yet. Follow
// must not take that refusal for a subscription: it subscribes again, and the pushes
// come.
func TestFollowRetriesARefusedSubscription(t *testing.T) {
	srv, addr := serveMochi(t, &slowSubscribe{})

	// Pushes for "held" are not acknowledged until release: the node is busy.
	release := make(chan struct{})
	held := make(chan struct{}, 64)
	other := make(chan struct{}, 1)
	l, err := clusterlink.Dial(t.Context(), clusterlink.Config{Broker: addr, NodeID: "w1",
		OnUpdate: func(key string, _ mqttapi.UpdatesAvailable) {
			if key == "held" {
				held <- struct{}{}
				<-release
				return
			}
			other <- struct{}{}
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	if err := l.Follow(t.Context(), "held"); err != nil {
		t.Fatal(err)
	}
	// The broker's deliveries take identifiers 1..20, the node's packets so far 1 and 2
	// (its first subscriptions), so its next SUBSCRIBE carries one of the deliveries'.
	const n = 20
	for range n {
		if err := srv.Publish(mqttapi.UpdatesTopic("held"), []byte(`{}`), false, 1); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		select {
		case <-held:
		case <-time.After(5 * time.Second):
			t.Fatal("the held pushes did not arrive")
		}
	}
	go func() {
		time.Sleep(300 * time.Millisecond) // the node catches up, acknowledging them
		close(release)
	}()
	if err := l.Follow(t.Context(), "other"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Publish(mqttapi.UpdatesTopic("other"), []byte(`{}`), false, 1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-other:
	case <-time.After(5 * time.Second):
		t.Fatal("no push for a key Follow returned for: the broker refused the subscription and Follow took it for done")
	}
}
