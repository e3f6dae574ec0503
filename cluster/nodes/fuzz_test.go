package nodes_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/cluster/nodes"
	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/cluster/subnets"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/geo"
)

const (
	fuzzNode  = "n1"  // the node every input comes from (the broker's ACL binds topics to it)
	checkNode = "chk" // the node whose query after each input shows the server still works
	// replyWait bounds the wait for an answer that needs root (a query that missed the
	// cache); root runs in this process, so only a lost answer takes this long.
	replyWait = 10 * time.Second
)

// published is one message the server handed to the broker.
type published struct {
	topic   string
	payload []byte
}

// broker captures what the server publishes to the nodes, in order.
type broker struct{ ch chan published }

func (b *broker) Publish(topic string, payload []byte) error {
	b.ch <- published{topic, slices.Clone(payload)}
	return nil
}

// next returns the next message published, failing the test unless it comes within
// replyWait on topic.
func (b *broker) next(t *testing.T, topic string) []byte {
	t.Helper()
	select {
	case p := <-b.ch:
		if p.topic != topic {
			t.Fatalf("published on %s (%s), want an answer on %s", p.topic, p.payload, topic)
		}
		return p.payload
	case <-time.After(replyWait):
		t.Fatalf("no answer on %s within %v", topic, replyWait)
		return nil
	}
}

// none fails the test if anything was published that no check took.
func (b *broker) none(t *testing.T) {
	t.Helper()
	select {
	case p := <-b.ch:
		t.Fatalf("unexpected publish on %s: %s", p.topic, p.payload)
	default:
	}
}

// captured collects what the server hands on, for the checks to take.
type captured[T any] struct {
	mu  sync.Mutex
	got []T
}

func (c *captured[T]) add(v T) {
	c.mu.Lock()
	c.got = append(c.got, v)
	c.mu.Unlock()
}

func (c *captured[T]) take() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.got
	c.got = nil
	return out
}

// reports captures the instance status reports the server queues for root.
type reports struct{ captured[report.Report] }

func (r *reports) Enqueue(rep report.Report) { r.add(rep) }

// relay captures the gateway registrations the server hands to the relay.
type relay struct {
	captured[mqttapi.GatewayRegister]
}

func (g *relay) Register(_ string, req mqttapi.GatewayRegister) { g.add(req) }
func (g *relay) NodeGone(string)                                {}

// FuzzHandle feeds the cluster's node message handler (the function the broker calls for
// every publish under nodes/+/net/#) arbitrary topics and payloads from node n1, with the
// cluster's real table (memory cache), subnet pool and a real root holding one job; what
// it publishes, reports and registers is captured. It checks:
//   - a table query or subnet request gets exactly one answer on its result topic, an
//     error unless the request was well formed; a gateway registration either reaches
//     the relay well formed or is answered with an error on gateway/config;
//   - a query the job answers carries the job as root has it, a subnet is recorded at
//     root for the node;
//   - every report queued for root is one root can take (job name, instance number,
//     status, addresses and port), and when the node goes away exactly the instances it
//     announced running are reported failed;
//   - nothing else is published, and afterwards another node's query still answers with
//     the job.
func FuzzHandle(f *testing.F) {
	j := clustertest.StartJob(f, "c1")
	tb := table.New(j.RC, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1"})
	pub := &broker{ch: make(chan published, 16)}
	reps, gws := &reports{}, &relay{}
	loc := geo.Point{Lat: 48.14, Lon: 11.58}
	// Grace 0: a node that goes is reported at once, so each input's reports are known
	// when NodeGone returns.
	srv := nodes.New(f.Context(), tb, pub, reps, subnets.New(j.RC, "c1", 0, nil),
		nodes.Options{Location: &loc, ClusterID: "c1", Gateways: gws, NodeGrace: 0})
	job := j.Service.JobName
	known := map[string]bool{job: true, j.Service.ID: true}
	for _, a := range []fmt.Stringer{j.Service.RRIP, j.Service.RRIPv6, j.Service.ClosestIP, j.Service.ClosestIPv6, j.Instance.InstanceIP, j.Instance.InstanceIPv6} {
		known[a.String()] = true
	}
	// answersJob checks a query result is the job's entry.
	answersJob := func(t *testing.T, r mqttapi.TableQueryResult) {
		t.Helper()
		if r.Error != "" || r.AppName != job || len(r.InstanceList) != 1 || r.InstanceList[0].InstanceIP != j.Instance.InstanceIP ||
			r.InstanceList[0].NamespaceIP != j.Instance.NamespaceIP {
			t.Fatalf("answer %+v is not %s with instance %v", r, job, j.Instance.InstanceIP)
		}
	}

	f.Fuzz(func(t *testing.T, topic string, payload []byte) {
		srv.Handle(fuzzNode, topic, payload)
		id, suffix, ok := mqttapi.ParseNodeTopic(topic)
		if !ok || id != fuzzNode {
			suffix = "" // not a request of this node: nothing may happen
		}
		switch suffix {
		case mqttapi.SuffixTableQuery:
			r := decodeResult(t, pub.next(t, mqttapi.NodeTopic(fuzzNode, mqttapi.SuffixTableQueryResult)))
			var q mqttapi.TableQuery
			wellFormed := json.Unmarshal(payload, &q) == nil && q.Key() != ""
			switch {
			case r.Error == "" && !wellFormed:
				t.Fatalf("query %q answered without an error: %+v", payload, r)
			case r.Error == "":
				answersJob(t, r)
				if r.QueryKey != q.Key() {
					t.Fatalf("query by %q answered for key %q", q.Key(), r.QueryKey)
				}
			case wellFormed && known[q.Key()]:
				t.Fatalf("query by %q, a key of %s, answered %q", q.Key(), job, r.Error)
			}
		case mqttapi.SuffixSubnet:
			var sr mqttapi.SubnetResult
			b := pub.next(t, mqttapi.NodeTopic(fuzzNode, mqttapi.SuffixSubnetResult))
			if err := json.Unmarshal(b, &sr); err != nil {
				t.Fatalf("subnet answer %s: %v", b, err)
			}
			var req mqttapi.SubnetRequest
			if json.Unmarshal(payload, &req) != nil || req.Method != mqttapi.SubnetMethodGet {
				if sr.Error == "" || sr.Address.IsValid() {
					t.Fatalf("subnet request %q answered %+v, want an error", payload, sr)
				}
				break
			}
			if sr.Error != "" || !sr.Address.Is4() || !sr.AddressV6.Is6() {
				t.Fatalf("subnet request %q answered %+v, want an address pair", payload, sr)
			}
			releaseSubnet(t, j, sr)
		case mqttapi.SuffixGatewayRegister:
			got := gws.take()
			select {
			case p := <-pub.ch:
				var c mqttapi.GatewayConfig
				if p.topic != mqttapi.NodeTopic(fuzzNode, mqttapi.SuffixGatewayConfig) || json.Unmarshal(p.payload, &c) != nil || c.Error == "" || len(got) != 0 {
					t.Fatalf("registration %q: published %s %s and relayed %+v; want an error or a relayed registration", payload, p.topic, p.payload, got)
				}
			default:
				if len(got) != 1 {
					t.Fatalf("registration %q: no error, and %d relayed", payload, len(got))
				}
				if err := checkGateway(got[0]); err != nil {
					t.Fatalf("registration %q relayed: %v", payload, err)
				}
			}
		}
		if got := gws.take(); len(got) != 0 {
			t.Fatalf("%s %q relayed gateway registrations %+v", topic, payload, got)
		}
		running := checkReports(t, suffix, payload, reps.take(), job)
		srv.NodeGone(fuzzNode)
		checkDeaths(t, running, reps.take())
		pub.none(t)

		srv.Handle(checkNode, mqttapi.NodeTopic(checkNode, mqttapi.SuffixTableQuery), []byte(`{"sname":"`+job+`","sip":""}`))
		answersJob(t, decodeResult(t, pub.next(t, mqttapi.NodeTopic(checkNode, mqttapi.SuffixTableQueryResult))))
	})
}

// decodeResult decodes a table query answer; every answer carries an instance list, if
// only an empty one (reference nodes iterate it).
func decodeResult(t *testing.T, b []byte) mqttapi.TableQueryResult {
	t.Helper()
	var r mqttapi.TableQueryResult
	if err := json.Unmarshal(b, &r); err != nil || r.InstanceList == nil {
		t.Fatalf("answer %s: not a result with an instance list (%v)", b, err)
	}
	return r
}

// releaseSubnet checks root recorded the subnet answered for the fuzz node, and gives it
// back so the inputs never run the plan dry.
func releaseSubnet(t *testing.T, j *clustertest.Job, sr mqttapi.SubnetResult) {
	t.Helper()
	sns, err := j.RC.Subnets(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range sns {
		if sn.SubnetV4.Addr() == sr.Address {
			if sn.NodeID != fuzzNode || sn.ClusterID != "c1" || sn.SubnetV6.Addr() != sr.AddressV6 {
				t.Fatalf("subnet %+v answered, root has %+v", sr, sn)
			}
			if err := j.RC.ReleaseSubnet(t.Context(), sn.SubnetV4); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("subnet %+v answered, root has no record of it", sr)
}

// checkGateway: what reaches the relay is a registration root can take.
func checkGateway(r mqttapi.GatewayRegister) error {
	switch {
	case !r.PublicIP.IsValid() && !r.PublicIPv6.IsValid():
		return fmt.Errorf("no public address")
	case r.PublicIP.IsValid() && !r.PublicIP.Is4(), r.PublicIPv6.IsValid() && !r.PublicIPv6.Is6():
		return fmt.Errorf("public addresses of the wrong family: %v %v", r.PublicIP, r.PublicIPv6)
	case !r.NamespaceIP.Is4() || !r.HostIP.IsValid():
		return fmt.Errorf("namespace_ip %v, host_ip %v", r.NamespaceIP, r.HostIP)
	case r.HostPort < 1 || r.HostPort > 65535:
		return fmt.Errorf("host_port %d", r.HostPort)
	}
	return checkLocation(r.Lat, r.Lon)
}

func checkLocation(lat, lon *float64) error {
	if (lat == nil) != (lon == nil) {
		return fmt.Errorf("only one of lat and lon")
	}
	if lat != nil {
		return (&geo.Point{Lat: *lat, Lon: *lon}).Validate()
	}
	return nil
}

// instance names one instance a node announced running, where.
type instance struct {
	job    string
	number int
	host   string
}

// checkReports checks the reports one message queued: only the status messages queue
// any, at most one each, and each is one root can take. It returns the instance the
// message announced running, if any.
func checkReports(t *testing.T, suffix string, payload []byte, got []report.Report, job string) []instance {
	t.Helper()
	if len(got) > 1 || len(got) == 1 && !slices.Contains([]string{mqttapi.SuffixDeployed, mqttapi.SuffixUndeployed, mqttapi.SuffixAddressChanged}, suffix) {
		t.Fatalf("%s %q queued %d reports: %+v", suffix, payload, len(got), got)
	}
	var running []instance
	for _, r := range got {
		p := r.Placement
		err := refapi.CheckJobName(r.Job)
		switch {
		case err != nil:
		case r.Node != fuzzNode || p.ClusterID != "c1" || r.Instance < 0:
			err = fmt.Errorf("node %q, cluster %q, instance %d", r.Node, p.ClusterID, r.Instance)
		case p.HostIP.IsValid() && (p.HostPort < 1 || p.HostPort > 65535):
			err = fmt.Errorf("host_port %d", p.HostPort)
		case p.Location != nil && p.Location.Validate() != nil:
			err = p.Location.Validate()
		case p.Status == "running":
			if !p.NamespaceIP.IsValid() || !p.HostIP.IsValid() {
				err = fmt.Errorf("running without namespace_ip and host_ip")
			}
			running = append(running, instance{r.Job, r.Instance, p.HostIP.String()})
		case p.Status == "failed" && suffix == mqttapi.SuffixDeployed, p.Status == "stopped" && suffix == mqttapi.SuffixUndeployed:
		default:
			err = fmt.Errorf("status %q from %s", p.Status, suffix)
		}
		if err == nil && suffix == mqttapi.SuffixAddressChanged && r.Job != job {
			err = fmt.Errorf("address change of %s, which root does not know", r.Job)
		}
		if err != nil {
			t.Fatalf("%s %q queued a report root cannot take: %v: %+v", suffix, payload, err, r)
		}
	}
	return running
}

// checkDeaths: when the node goes, exactly the instances it announced running are
// reported failed, at the host it announced.
func checkDeaths(t *testing.T, running []instance, got []report.Report) {
	t.Helper()
	var failed []instance
	for _, r := range got {
		if r.Placement.Status != "failed" {
			t.Fatalf("node gone: report %+v is no failure", r)
		}
		failed = append(failed, instance{r.Job, r.Instance, r.Placement.HostIP.String()})
	}
	if !slices.Equal(failed, running) {
		t.Fatalf("node gone: reported failed %+v, announced running %+v", failed, running)
	}
}
