package clusterlink

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/semnet/semnet/proto/mqttapi"
)

// message is an MQTT message as paho hands it to a subscription's handler.
type message struct {
	topic   string
	payload []byte
}

func (m message) Duplicate() bool   { return false }
func (m message) Qos() byte         { return 1 }
func (m message) Retained() bool    { return false }
func (m message) Topic() string     { return m.topic }
func (m message) MessageID() uint16 { return 1 }
func (m message) Payload() []byte   { return m.payload }
func (m message) Ack()              {}

const fuzzNode = "n1"

// fuzzKeys are the keys two queries wait on while each input arrives: a job name and a
// Service IP.
var fuzzKeys = []string{"app.ns.web.ns", "10.30.0.1"}

// FuzzRoute feeds the link's message handler (paho calls it for every message on the
// node's subscriptions) arbitrary topics and payloads while two table queries and a
// subnet request wait, and checks:
//   - a table query result reaches at most one waiting query, one whose key it names
//     (query key, job name or a Service IP), and reaches one whenever it names a waiting
//     key; nothing else reaches a query;
//   - a subnet result always reaches the waiting request, with an error when malformed;
//   - a gateway configuration always reaches the node, with an error when malformed;
//   - a push on jobs/<key>/updates_available reaches the node once, for that key, as
//     sent (a malformed one as a bare "query again");
//   - nothing is left waiting, and afterwards a well-formed result and subnet answer
//     still reach their waiters.
func FuzzRoute(f *testing.F) {
	type update struct {
		key string
		u   mqttapi.UpdatesAvailable
	}
	var updates []update
	var configs []mqttapi.GatewayConfig
	l := newLink(Config{NodeID: fuzzNode,
		OnUpdate:        func(key string, u mqttapi.UpdatesAvailable) { updates = append(updates, update{key, u}) },
		OnGatewayConfig: func(c mqttapi.GatewayConfig) { configs = append(configs, c) }})
	good, err := json.Marshal(mqttapi.TableQueryResult{AppName: fuzzKeys[0], QueryKey: fuzzKeys[0], InstanceList: []mqttapi.TableInstance{}})
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		updates, configs = nil, nil
		var results []<-chan *mqttapi.TableQueryResult
		var dones []func()
		for _, k := range fuzzKeys {
			ch, done := l.await(k)
			results, dones = append(results, ch), append(dones, done)
		}
		subnet, done := l.awaitSubnet()
		dones = append(dones, done)

		l.route(nil, message{topic, payload})

		var got []int // which queries got a result
		for i, ch := range results {
			select {
			case <-ch:
				got = append(got, i)
			default:
			}
		}
		var gotSubnet *mqttapi.SubnetResult
		select {
		case r := <-subnet:
			gotSubnet = &r
		default:
		}
		id, suffix, ok := mqttapi.ParseNodeTopic(topic)
		if !ok || id != fuzzNode {
			suffix = ""
		}
		key, isUpdate := mqttapi.ParseUpdatesTopic(topic)

		// Table query results.
		var r mqttapi.TableQueryResult
		if suffix == mqttapi.SuffixTableQueryResult && json.Unmarshal(payload, &r) == nil {
			names := resultKeys(r)
			named := slices.ContainsFunc(fuzzKeys, func(k string) bool { return slices.Contains(names, k) })
			if len(got) > 1 || len(got) == 1 && !slices.Contains(names, fuzzKeys[got[0]]) || named && len(got) == 0 {
				t.Fatalf("result naming %q reached queries %v of %q", names, got, fuzzKeys)
			}
		} else if len(got) != 0 {
			t.Fatalf("%s %q reached queries %v", topic, payload, got)
		}

		// Subnet results.
		var sr mqttapi.SubnetResult
		switch {
		case suffix != mqttapi.SuffixSubnetResult:
			if gotSubnet != nil {
				t.Fatalf("%s %q answered the subnet request: %+v", topic, payload, *gotSubnet)
			}
		case gotSubnet == nil:
			t.Fatalf("subnet result %q did not reach the request", payload)
		case json.Unmarshal(payload, &sr) != nil:
			if gotSubnet.Error == "" {
				t.Fatalf("malformed subnet result %q reached the request as %+v", payload, *gotSubnet)
			}
		case *gotSubnet != sr:
			t.Fatalf("subnet result %q reached the request as %+v", payload, *gotSubnet)
		}

		// Gateway configurations.
		var c mqttapi.GatewayConfig
		switch {
		case suffix != mqttapi.SuffixGatewayConfig:
			if len(configs) != 0 {
				t.Fatalf("%s %q configured the gateway: %+v", topic, payload, configs)
			}
		case len(configs) != 1:
			t.Fatalf("gateway configuration %q reached the node %d times", payload, len(configs))
		case json.Unmarshal(payload, &c) != nil:
			if configs[0].Error == "" {
				t.Fatalf("malformed gateway configuration %q reached the node as %+v", payload, configs[0])
			}
		case !reflect.DeepEqual(configs[0], c):
			t.Fatalf("gateway configuration %q reached the node as %+v", payload, configs[0])
		}

		// Pushes.
		if !isUpdate {
			if len(updates) != 0 {
				t.Fatalf("%s %q reached the node as pushes %+v", topic, payload, updates)
			}
		} else {
			var u mqttapi.UpdatesAvailable
			if json.Unmarshal(payload, &u) != nil {
				u = mqttapi.UpdatesAvailable{}
			}
			if len(updates) != 1 || updates[0].key != key || !reflect.DeepEqual(updates[0].u, u) {
				t.Fatalf("push %q on %s reached the node as %+v", payload, topic, updates)
			}
		}

		// Nothing left behind; well-formed answers still arrive.
		for _, done := range dones {
			done()
		}
		ch, done := l.await(fuzzKeys[0])
		l.route(nil, message{mqttapi.NodeTopic(fuzzNode, mqttapi.SuffixTableQueryResult), good})
		select {
		case r := <-ch:
			if r.AppName != fuzzKeys[0] {
				t.Fatalf("well-formed result after %s %q arrived as %+v", topic, payload, r)
			}
		default:
			t.Fatalf("well-formed result after %s %q did not arrive", topic, payload)
		}
		done()
		sub, done := l.awaitSubnet()
		l.route(nil, message{mqttapi.NodeTopic(fuzzNode, mqttapi.SuffixSubnetResult), []byte(`{"address":"10.18.0.64","addressv6":"fc00::100"}`)})
		select {
		case r := <-sub:
			if r.Error != "" || r.Address.String() != "10.18.0.64" {
				t.Fatalf("well-formed subnet answer after %s %q arrived as %+v", topic, payload, r)
			}
		default:
			t.Fatalf("well-formed subnet answer after %s %q did not arrive", topic, payload)
		}
		done()
		if len(l.waiting) != 0 || l.subnet != nil {
			t.Fatalf("after %s %q: left waiting: queries %v, subnet %v", topic, payload, l.waiting, l.subnet != nil)
		}
	})
}

// resultKeys are the keys a result answers, by the reference node's rule: its query key,
// its job name and every Service IP in it.
func resultKeys(r mqttapi.TableQueryResult) []string {
	keys := []string{r.QueryKey, r.AppName}
	for _, in := range r.InstanceList {
		for _, ip := range in.ServiceIP {
			for _, a := range []netip.Addr{ip.Address, ip.AddressV6} {
				if a.IsValid() {
					keys = append(keys, a.String())
				}
			}
		}
	}
	return keys
}
