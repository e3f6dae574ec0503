package broker

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"

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
