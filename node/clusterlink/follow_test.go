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

// TestFollowWaitsForTheSubscription: a second Follow of a key whose subscription is on
// its way returns only once it holds, so a push sent after it returns is not lost (two
// concurrent queries of one job on one node raced so in the load run).
func TestFollowWaitsForTheSubscription(t *testing.T) {
	srv := mqtt.New(&mqtt.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(&slowSubscribe{delay: 500 * time.Millisecond}, nil); err != nil {
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
