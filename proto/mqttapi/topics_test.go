package mqttapi

import "testing"

func TestParseNodeTopic(t *testing.T) {
	for _, c := range []struct {
		topic, id, suffix string
		ok                bool
	}{
		{NodeTopic("w1", SuffixTableQuery), "w1", "tablequery/request", true},
		{"nodes/w1/net/subnet", "w1", "subnet", true},
		{"nodes//net/subnet", "", "", false},
		{"nodes/w1/net/", "", "", false},
		{"nodes/w1/other/subnet", "", "", false},
		{"jobs/a.b.c.d/updates_available", "", "", false},
		{"nodes/w1", "", "", false},
	} {
		id, suffix, ok := ParseNodeTopic(c.topic)
		if id != c.id || suffix != c.suffix || ok != c.ok {
			t.Errorf("ParseNodeTopic(%q) = %q, %q, %v; want %q, %q, %v", c.topic, id, suffix, ok, c.id, c.suffix, c.ok)
		}
	}
}

func TestParseUpdatesTopic(t *testing.T) {
	for _, c := range []struct {
		topic, key string
		ok         bool
	}{
		{UpdatesTopic("app.ns.svc.ns"), "app.ns.svc.ns", true},
		{UpdatesTopic("10.30.0.7"), "10.30.0.7", true},
		{"jobs//updates_available", "", false},
		{"jobs/a/b/updates_available", "", false},
		{"jobs/a/updates", "", false},
	} {
		key, ok := ParseUpdatesTopic(c.topic)
		if key != c.key || ok != c.ok {
			t.Errorf("ParseUpdatesTopic(%q) = %q, %v; want %q, %v", c.topic, key, ok, c.key, c.ok)
		}
	}
}

func TestToCluster(t *testing.T) {
	for _, c := range []struct {
		topic string
		want  bool
	}{
		{NodeTopic("w1", SuffixTableQuery), true},
		{NodeTopic("w1", SuffixTableQueryResult), true}, // the handler tells requests from answers
		{"nodes/w1/net", true},
		{"nodes/w1/net/", true},
		{"nodes/w1/network/x", false},
		{"nodes/w1/other", false},
		{"nodes/w10/net/subnet", false}, // another node's
		{"nodes/w/net/subnet", false},
		{"jobs/w1/net/x", false},
		{"nodes/w1", false},
	} {
		if got := ToCluster(c.topic, "w1"); got != c.want {
			t.Errorf("ToCluster(%q, w1) = %v, want %v", c.topic, got, c.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { ToCluster("nodes/w1/net/subnet", "w1") }); n != 0 {
		t.Errorf("ToCluster allocates %v times per call", n)
	}
}
