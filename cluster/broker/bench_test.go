package broker

import (
	"bytes"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/semnet/semnet/proto/mqttapi"
)

// BenchmarkRequestAnswer: a node's QoS 1 request reaches the cluster's handler, which
// answers with 600 bytes on the node's result topic, as a cache hit does; an op is one
// round trip (PUBACK and answer read back). Clients are raw MQTT 3.1.1 connections, so
// the time and allocations are mostly the broker's; -benchmem shows what the broker
// allocates per query.
//
//	go test -run '^$' -bench RequestAnswer -benchmem ./cluster/broker/
func BenchmarkRequestAnswer(b *testing.B) {
	br := startBroker(b, Config{AllowAnonymous: true, PublishRate: -1})
	answer := bytes.Repeat([]byte{'x'}, 600)
	if err := br.Handle(func(id, _ string, _ []byte) {
		_ = br.Publish(mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult), answer)
	}); err != nil {
		b.Fatal(err)
	}
	var clients atomic.Int32
	b.SetParallelism(4) // 4 × GOMAXPROCS nodes, each with one query in flight
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := fmt.Sprintf("n%d", clients.Add(1))
		c, _ := rawDial(b, br.Addr().String(), 4, id, "", 60)
		c.subscribe(b, mqttapi.NodeTopic(id, mqttapi.SuffixTableQueryResult), 1)
		var req bytes.Buffer
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 1,
			TopicName: mqttapi.NodeTopic(id, mqttapi.SuffixTableQuery), Payload: []byte(`{"sname":"x","sip":""}`), ProtocolVersion: 4}
		if err := pk.PublishEncode(&req); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if _, err := c.Write(req.Bytes()); err != nil {
				b.Error(err)
				return
			}
			for got := 0; got < 2; got++ { // the PUBACK and the answer, in either order
				if _, err := c.read(); err != nil {
					b.Error(err)
					return
				}
			}
		}
	})
}

// BenchmarkPush: the cluster pushes 600 bytes on a job's topic to the 200 nodes
// subscribed to it; an op is one push, until every node read it. -benchmem shows what
// the broker allocates per push (the nodes' reads allocate nothing).
//
//	go test -run '^$' -bench Push -benchmem ./cluster/broker/
func BenchmarkPush(b *testing.B) {
	const nodes = 200
	br := startBroker(b, Config{AllowAnonymous: true})
	topic, payload := mqttapi.UpdatesTopic("job"), bytes.Repeat([]byte{'x'}, 600)
	var frame bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: payload, ProtocolVersion: 4}
	if err := pk.PublishEncode(&frame); err != nil {
		b.Fatal(err)
	}
	got := make(chan struct{}, nodes)
	for i := range nodes {
		c, _ := rawDial(b, br.Addr().String(), 4, fmt.Sprintf("n%d", i), "", 60)
		c.subscribe(b, topic, 1)
		_ = c.SetReadDeadline(time.Time{})
		go func() { // read whole pushes, one signal each
			buf := make([]byte, frame.Len())
			for {
				if _, err := io.ReadFull(c.r, buf); err != nil {
					return
				}
				got <- struct{}{}
			}
		}()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := br.Publish(topic, payload); err != nil {
			b.Fatal(err)
		}
		for range nodes {
			<-got
		}
	}
}
