package broker

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/crypto/bcrypt"

	"github.com/semnet/semnet/proto/mqttapi"
)

func TestACL(t *testing.T) {
	pub := []struct {
		topic string
		ok    bool
	}{
		{mqttapi.NodeTopic("a", mqttapi.SuffixTableQuery), true},
		{mqttapi.NodeTopic("a", mqttapi.SuffixSubnet), true},
		{"nodes/a/anything/else", true},
		{"nodes/a/", true},
		{"nodes/a", false},
		{"nodes/ab/net/subnet", false},
		{mqttapi.NodeTopic("b", mqttapi.SuffixTableQuery), false},
		{mqttapi.UpdatesTopic("app.ns.svc.ns"), false},
		{"jobs/x/updates_available", false},
		{"$SYS/broker/version", false},
		{"nodes/a/+", false},
		{"nodes/a/#", false},
		{"", false},
		{"other", false},
	}
	for _, c := range pub {
		if got := mayPublish("a", c.topic); got != c.ok {
			t.Errorf("mayPublish(a, %q) = %v, want %v", c.topic, got, c.ok)
		}
	}
	sub := []struct {
		filter string
		ok     bool
	}{
		{"nodes/a/#", true},
		{"nodes/a/net/+", true},
		{mqttapi.NodeTopic("a", mqttapi.SuffixTableQueryResult), true},
		{mqttapi.UpdatesTopic("app.ns.svc.ns"), true},
		{mqttapi.UpdatesTopic("10.30.0.1"), true},
		{mqttapi.UpdatesTopic("fdff:2000::1"), true},
		{mqttapi.UpdatesFilter, true},
		{"#", false},
		{"+/#", false},
		{"nodes/#", false},
		{"nodes/+/net/#", false},
		{"nodes/+/net/#", false}, // what the reference cluster subscribes to
		{"nodes/b/#", false},
		{"nodes/ab/#", false},
		{"nodes/a", false},
		{"nodes/+/net/tablequery/result", false},
		{"jobs/#", false},
		{"jobs/+/#", false},
		{"jobs/x/#", false},
		{"jobs/x/y/updates_available", false},
		{"jobs/#/updates_available", false},
		{"jobs/a+/updates_available", false},
		{"jobs//updates_available", false},
		{"jobs/x/updates_available/more", false},
		{"$SYS/#", false},
		{"$share/g/nodes/a/#", false},
		{"", false},
	}
	for _, c := range sub {
		if got := maySubscribe("a", c.filter); got != c.ok {
			t.Errorf("maySubscribe(a, %q) = %v, want %v", c.filter, got, c.ok)
		}
	}
	// Asked for every message and every delivery: no allocation.
	id, own := string([]byte("a")), mqttapi.NodeTopic("a", mqttapi.SuffixTableQueryResult)
	if n := testing.AllocsPerRun(100, func() { _, _ = mayPublish(id, own), maySubscribe(id, own) }); n != 0 {
		t.Errorf("ACL checks allocate %v times, want 0", n)
	}
}

// TestACLNeverReachesOtherNodes checks the ACL's promise as a property: no filter a node
// may subscribe to matches a topic of another node, and no topic it may publish to is
// another node's or a job's.
func TestACLNeverReachesOtherNodes(t *testing.T) {
	levels := []string{"nodes", "jobs", "a", "b", "net", "+", "#", "updates_available", "$SYS", "", "x"}
	others := []string{"nodes/b/net/subnet", "nodes/b/x", "nodes/b", "nodes/ab/net/x", "$SYS/x", "jobs/x/y"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		parts := make([]string, 1+r.IntN(5))
		for i := range parts {
			parts[i] = levels[r.IntN(len(levels))]
		}
		f := strings.Join(parts, "/")
		if i := strings.Index(f, "#"); i >= 0 && i != len(f)-1 {
			continue // not a valid filter: mochi refuses it before asking the ACL
		}
		if maySubscribe("a", f) {
			for _, topic := range others {
				if matches(f, topic) {
					t.Fatalf("node a may subscribe to %q, which matches %q", f, topic)
				}
			}
		}
		if mayPublish("a", f) && !strings.HasPrefix(f, "nodes/a/") {
			t.Fatalf("node a may publish to %q", f)
		}
	}
}

// matches is MQTT topic matching ([MQTT-4.7]): '+' one level, '#' the rest (and the
// parent), '$' topics not matched by a leading wildcard.
func matches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	fs, ts := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, f := range fs {
		if f == "#" {
			return true
		}
		if i >= len(ts) || (f != "+" && f != ts[i]) {
			return false
		}
	}
	return len(fs) == len(ts)
}

func TestCheckIdentity(t *testing.T) {
	for _, id := range []string{"worker-1", "65f0a1b2c3d4e5f6a7b8c9d0", "node.example.org", "München 1"} {
		if err := checkIdentity(id); err != nil {
			t.Errorf("checkIdentity(%q) = %v, want nil", id, err)
		}
	}
	for _, id := range []string{"", "a/b", "a+", "#", "inline", "$sys", "a\x00b", "a\nb", "\xff", strings.Repeat("x", 257)} {
		if err := checkIdentity(id); err == nil {
			t.Errorf("checkIdentity(%q) = nil, want an error", id)
		}
	}
}

// TestFramer feeds a stream of packets split at random points and checks that the
// framer finds the first oversized packet exactly where it starts.
func TestFramer(t *testing.T) {
	const max = 200
	publish := func(n int) []byte {
		pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 4,
			TopicName: "nodes/a/x", Payload: bytes.Repeat([]byte{'p'}, n)}
		var buf bytes.Buffer
		if err := pk.PublishEncode(&buf); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	ping := []byte{0xc0, 0x00}
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 2000 {
		var stream []byte
		for range r.IntN(6) {
			if r.IntN(3) == 0 {
				stream = append(stream, ping...)
			} else {
				stream = append(stream, publish(r.IntN(max-20))...) // all at most max
			}
		}
		overAt := -1
		big := 0
		if r.IntN(2) == 0 {
			overAt = len(stream)
			big = max - 12 + r.IntN(20000) // from just under the limit to many times it
			p := publish(big)
			if len(p) <= max {
				overAt = -1
			}
			stream = append(stream, p...)
			stream = append(stream, ping...)
		}
		var f framer
		found, pos := -1, 0
		for pos < len(stream) {
			n := 1 + r.IntN(40)
			chunk := stream[pos:min(pos+n, len(stream))]
			if at, size, over := f.scan(chunk, max); over {
				// The header may have come in an earlier chunk (at most the header byte and
				// 3 length bytes before): at is then 0.
				found = pos + at
				if at > 0 && pos+at != overAt || at == 0 && (overAt > pos || pos-overAt > 4) {
					t.Fatalf("round %d: oversized packet reported at %d+%d, it starts at %d", round, pos, at, overAt)
				}
				if size != len(publish(big)) {
					t.Fatalf("round %d: size %d, want %d", round, size, len(publish(big)))
				}
				break
			}
			pos += len(chunk)
		}
		if (found >= 0) != (overAt >= 0) {
			t.Fatalf("round %d: found oversized packet at %d, want %d", round, found, overAt)
		}
	}
}

func TestParseCredentials(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("hashed-pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	yamlFile := `
# one entry per worker node
auth:
  - username: worker-1
    password: s3cret
    allow: true
  - username: worker-2
    password: "` + string(hash) + `"
    allow: true
  - username: worker-3
    password: blocked
    allow: false
`
	jsonFile := `{"auth": [{"username": "worker-1", "password": "s3cret", "allow": true}]}`
	for name, data := range map[string]string{"yaml": yamlFile, "json": jsonFile} {
		cs, err := parseCredentials([]byte(data))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !cs.check("worker-1", "s3cret") || cs.check("worker-1", "s3cret ") || cs.check("worker-1", "") || cs.check("nobody", "s3cret") {
			t.Errorf("%s: plain password checks wrong", name)
		}
	}
	cs, _ := parseCredentials([]byte(yamlFile))
	if !cs.check("worker-2", "hashed-pw") || cs.check("worker-2", string(hash)) {
		t.Error("bcrypt password checks wrong")
	}
	if cs.check("worker-3", "blocked") {
		t.Error("allow: false admitted")
	}
	if cs, err := parseCredentials(nil); err != nil || len(cs.users) != 0 {
		t.Errorf("empty file: %v, %v", cs, err)
	}

	for _, c := range []struct{ name, data, want string }{
		{"no allow", "auth:\n  - {username: w, password: p}\n", "allow is missing"},
		{"no password", "auth:\n  - {username: w, allow: true}\n", "password is missing"},
		{"no username", "auth:\n  - {password: p, allow: true}\n", "username is missing"},
		{"duplicate", "auth:\n  - {username: w, password: p, allow: true}\n  - {username: w, password: q, allow: true}\n", "already in entry 1"},
		{"pattern", "auth:\n  - {username: 'w*', password: p, allow: true}\n", "patterns are not supported"},
		{"bad id", "auth:\n  - {username: a/b, password: p, allow: true}\n", "not a usable worker id"},
		{"acl", "auth: []\nacl:\n  - {username: w}\n", "acl"},
		{"remote", "auth:\n  - {username: w, password: p, allow: true, remote: 127.0.0.1}\n", "remote"},
		{"broken hash", "auth:\n  - {username: w, password: '$2a$99$" + strings.Repeat("x", 53) + "', allow: true}\n", "bcrypt"},
		{"not yaml", "auth: [", "yaml"},
	} {
		_, err := parseCredentials([]byte(c.data))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	cfg, err := Config{AllowAnonymous: true}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":10003" || cfg.MaxPacketSize != 256<<10 || cfg.MaxPendingBytes < 2*cfg.MaxPacketSize {
		t.Errorf("defaults: %+v", cfg)
	}
	for name, c := range map[string]Config{
		"no auth":          {},
		"inflight":         {AllowAnonymous: true, MaxInflight: 70000},
		"pending < packet": {AllowAnonymous: true, MaxPacketSize: 1 << 20, MaxPendingBytes: 1 << 20},
		"keepalive":        {AllowAnonymous: true, KeepAliveMin: time.Minute, KeepAliveMax: time.Second},
	} {
		if _, err := c.withDefaults(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := New(Config{AllowAnonymous: true, ClientCAFile: "ca.pem"}, nil, nil); err == nil || !strings.Contains(err.Error(), "needs TLS") {
		t.Errorf("client CA without TLS: %v", err)
	}
	if _, err := New(Config{CredentialsFile: "/nonexistent/creds.yaml"}, nil, nil); err == nil || !strings.HasPrefix(err.Error(), "broker: ") {
		t.Errorf("missing credentials file: %v", err)
	}
}
