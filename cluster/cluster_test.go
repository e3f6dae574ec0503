package cluster_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/testservers"
)

type platform = clustertest.Platform

func startRoot(t *testing.T, listen, dir string) *root.Server {
	return clustertest.StartRoot(t, listen, dir)
}

func startPlatform(t *testing.T, staleAfter time.Duration) *platform {
	return clustertest.Start(t, staleAfter)
}

// node is a worker node's MQTT client (paho, MQTT 3.1.1, QoS 1, like the reference node).
type node struct {
	t   *testing.T
	id  string
	c   paho.Client
	mu  sync.Mutex
	got map[string]chan []byte // topic -> messages
}

func connectNode(t *testing.T, p *platform, id string) *node {
	t.Helper()
	return dialNode(t, p.Cluster.MQTTAddr.String(), id, 30*time.Second)
}

// dialNode connects a node to the broker at addr with the given keepalive.
func dialNode(t *testing.T, addr, id string, keepAlive time.Duration) *node {
	t.Helper()
	n := &node{t: t, id: id, got: map[string]chan []byte{}}
	opts := paho.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(id).
		SetCleanSession(true).SetKeepAlive(keepAlive).SetAutoReconnect(false).SetProtocolVersion(4)
	opts.SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { n.inbox(m.Topic()) <- m.Payload() })
	n.c = paho.NewClient(opts)
	if tok := n.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("node %s connect: %v", id, tok.Error())
	}
	t.Cleanup(func() { n.c.Disconnect(100) })
	n.subscribe(mqttapi.NodePrefix(id) + "net/+/result")
	n.subscribe(mqttapi.NodeTopic(id, mqttapi.SuffixSubnetResult))
	return n
}

func (n *node) inbox(topic string) chan []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.got[topic]
	if ch == nil {
		ch = make(chan []byte, 100)
		n.got[topic] = ch
	}
	return ch
}

func (n *node) subscribe(filter string) {
	n.t.Helper()
	if tok := n.c.Subscribe(filter, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		n.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

func (n *node) publish(suffix string, payload string) {
	n.t.Helper()
	if tok := n.c.Publish(mqttapi.NodeTopic(n.id, suffix), 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		n.t.Fatalf("publish %s: %v", suffix, tok.Error())
	}
}

// next waits for the next message on topic and decodes it into v.
func (n *node) next(topic string, v any) {
	n.t.Helper()
	select {
	case b := <-n.inbox(topic):
		if err := json.Unmarshal(b, v); err != nil {
			n.t.Fatalf("%s: decode %s: %v", topic, b, err)
		}
	case <-time.After(10 * time.Second):
		n.t.Fatalf("node %s: nothing on %s", n.id, topic)
	}
}

func (n *node) query(sname, sip string) mqttapi.TableQueryResult {
	n.t.Helper()
	b, _ := json.Marshal(mqttapi.TableQuery{SName: sname, SIP: sip})
	n.publish(mqttapi.SuffixTableQuery, string(b))
	var r mqttapi.TableQueryResult
	n.next(mqttapi.NodeTopic(n.id, mqttapi.SuffixTableQueryResult), &r)
	return r
}

func deploy(t *testing.T, p *platform, app string, instances int) api.Service {
	t.Helper()
	svc, err := p.RC.CreateService(t.Context(), api.ServiceRequest{App: app, AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	for range instances {
		if _, err := p.RC.CreateInstance(t.Context(), svc.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	return svc
}

// TestWorkerContract drives the node contract end to end: queries by name and by each
// kind of IP (hit and miss), unknown services, subnets, a deployment reported by a node
// reaching root and coming back to interested nodes as a push carrying the entry, and
// interest bookkeeping down to root.
func TestWorkerContract(t *testing.T) {
	p := startPlatform(t, time.Minute)
	ctx := t.Context()
	svc := deploy(t, p, "shop", 1)
	w1, w2 := connectNode(t, p, "w1"), connectNode(t, p, "w2")

	// Miss (root answers, the cluster registers interest), then hits by each IP.
	r := w1.query(svc.JobName, "")
	if r.Error != "" || r.AppName != svc.JobName || r.QueryKey != svc.JobName || len(r.InstanceList) != 0 {
		t.Fatalf("query by name: %+v", r)
	}
	for _, ip := range []netip.Addr{svc.RRIP, svc.RRIPv6, svc.ClosestIP, svc.ClosestIPv6} {
		if r := w2.query("", ip.String()); r.Error != "" || r.AppName != svc.JobName || r.QueryKey != ip.String() {
			t.Errorf("query by %s: %+v", ip, r)
		}
	}
	if ids, err := p.RC.Interests(ctx, "c1"); err != nil || len(ids) != 1 || ids[0] != svc.ID {
		t.Fatalf("cluster interests at root: %v %v", ids, err)
	}
	if r := w1.query("no.such.service.here", ""); !strings.Contains(r.Error, "unknown service") || r.ErrorCode != mqttapi.QueryErrUnknown || r.QueryKey != "no.such.service.here" {
		t.Errorf("unknown service: %+v", r)
	}
	w1.publish(mqttapi.SuffixTableQuery, `{"sname": 42}`)
	var bad mqttapi.TableQueryResult
	w1.next(mqttapi.NodeTopic("w1", mqttapi.SuffixTableQueryResult), &bad)
	if !strings.Contains(bad.Error, "malformed") || bad.ErrorCode != mqttapi.QueryErrInvalid {
		t.Errorf("malformed query answered %+v", bad)
	}

	// A subnet pair from root.
	w1.publish(mqttapi.SuffixSubnet, `{"METHOD":"GET"}`)
	var sn mqttapi.SubnetResult
	w1.next(mqttapi.NodeTopic("w1", mqttapi.SuffixSubnetResult), &sn)
	if sn.Error != "" || !sn.Address.Is4() || !sn.AddressV6.Is6() {
		t.Fatalf("subnet: %+v", sn)
	}

	// w2 watches the job; w1 reports the instance deployed; the push carries the entry.
	updates := mqttapi.UpdatesTopic(svc.JobName)
	w2.subscribe(updates)
	w1.publish(mqttapi.SuffixDeployed, fmt.Sprintf(`{"appname":%q,"status":"DEPLOYED","instance_number":0,"nsip":"%s","nsipv6":"%s","host_ip":"127.0.0.1","host_port":"50103"}`,
		svc.JobName, sn.Address.Next().Next(), sn.AddressV6.Next().Next()))
	var up mqttapi.UpdatesAvailable
	w2.next(updates, &up)
	if up.Type != mqttapi.UpdateChanged || up.Table == nil || len(up.Table.InstanceList) != 1 {
		t.Fatalf("push after deployment: %+v", up)
	}
	in := up.Table.InstanceList[0]
	if in.NamespaceIP != sn.Address.Next().Next() || in.HostPort != 50103 || in.Lat == nil || *in.Lat != 48.14 {
		t.Errorf("pushed instance %+v (location should default to the cluster's)", in)
	}
	if types := ipTypes(in.ServiceIP); types != "RR,Closest,instance_ip" {
		t.Errorf("service_ip types %s, want exactly RR,Closest,instance_ip (the reference node matches them)", types)
	}
	// A query by the Instance IP now hits and shows the instance.
	if r := w1.query("", in.InstanceIPv6.String()); len(r.InstanceList) != 1 || r.InstanceList[0].InstanceNumber != 0 {
		t.Errorf("query by instance IPv6: %+v", r)
	}

	// Interests: w1 still runs the job, so removing every query interest keeps the
	// cluster's interest; once w1 undeploys, root forgets the cluster's interest.
	w1.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, svc.JobName))
	w1.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, in.InstanceIPv6))
	for _, ip := range []netip.Addr{svc.RRIP, svc.RRIPv6, svc.ClosestIP, svc.ClosestIPv6} {
		w2.publish(mqttapi.SuffixInterestRemove, fmt.Sprintf(`{"appname":%q}`, ip))
	}
	time.Sleep(200 * time.Millisecond) // let the messages land (asserting nothing changed)
	if ids, _ := p.RC.Interests(ctx, "c1"); len(ids) != 1 {
		t.Fatalf("interest dropped while w1 runs an instance: %v", ids)
	}
	// A stop from a host the instance does not run on (it migrated from there) is ignored.
	w2.publish(mqttapi.SuffixUndeployed, fmt.Sprintf(`{"appname":%q,"instance_number":0,"host_ip":"127.0.0.2","host_port":50103}`, svc.JobName))
	time.Sleep(200 * time.Millisecond)
	if e, err := p.RC.Resolve(ctx, svc.JobName, ""); err != nil || len(e.Instances) != 1 || e.Instances[0].ClusterID != "c1" {
		t.Fatalf("after a stop from elsewhere: %+v, %v; want the instance running in c1", e.Instances, err)
	}
	w1.publish(mqttapi.SuffixUndeployed, fmt.Sprintf(`{"appname":%q,"instance_number":0,"host_ip":"127.0.0.1","host_port":50103}`, svc.JobName))
	waitFor(t, "root to drop the cluster's interest", func() bool {
		ids, err := p.RC.Interests(ctx, "c1")
		return err == nil && len(ids) == 0
	})
	waitFor(t, "root to record the instance stopped", func() bool {
		e, err := p.RC.Resolve(ctx, svc.JobName, "")
		return err == nil && len(e.Instances) == 0
	})
}

func ipTypes(ips []mqttapi.ServiceIP) string {
	var s []string
	for _, ip := range ips {
		s = append(s, ip.IPType)
	}
	return strings.Join(s, ",")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRootOutage stops root mid-stream: the cluster keeps answering from its cache (marked
// stale after the bound), queues the nodes' status reports, and delivers all of them in
// order once root is back.
func TestRootOutage(t *testing.T) {
	p := startPlatform(t, 300*time.Millisecond)
	ctx := t.Context()
	const n = 8
	svc := deploy(t, p, "shop", n)
	w := connectNode(t, p, "w1")
	if r := w.query(svc.JobName, ""); r.Error != "" {
		t.Fatal(r.Error)
	}
	addr := p.Root.Addr.String()
	waitFor(t, "the cluster to hold a spare subnet", func() bool {
		resp, err := http.Get("http://" + addr + "/api/v1/subnets")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var sns []api.Subnet
		return json.NewDecoder(resp.Body).Decode(&sns) == nil && len(sns) == 1 && sns[0].NodeID == "_spare"
	})
	p.Root.Close()

	// A node starting now still gets a subnet: the spare.
	w.publish(mqttapi.SuffixSubnet, `{"METHOD":"GET"}`)
	var sn mqttapi.SubnetResult
	w.next(mqttapi.NodeTopic("w1", mqttapi.SuffixSubnetResult), &sn)
	if sn.Error != "" || !sn.Address.IsValid() {
		t.Fatalf("subnet during the outage: %+v", sn)
	}

	// Reports while root is down: each instance placed, then instance 0 moved.
	for i := range n {
		w.publish(mqttapi.SuffixDeployed, fmt.Sprintf(`{"appname":%q,"status":"DEPLOYED","instance_number":%d,"nsip":"10.18.0.%d","host_ip":"127.0.0.1","host_port":"50103"}`, svc.JobName, i, 2+i))
	}
	w.publish(mqttapi.SuffixDeployed, fmt.Sprintf(`{"appname":%q,"status":"DEPLOYED","instance_number":0,"nsip":"10.18.0.60","host_ip":"127.0.0.2","host_port":"50104"}`, svc.JobName))
	waitFor(t, "answers marked stale", func() bool { return w.query(svc.JobName, "").Stale })
	// A key not cached cannot be looked up now; the answer says so, and not that the key
	// names nothing (a node would drop its entry on that).
	if r := w.query("not.cached.here", ""); !strings.Contains(r.Error, "root is unreachable") || r.ErrorCode != mqttapi.QueryErrUnavailable {
		t.Errorf("query of an uncached key while root is down: %+v", r)
	}

	p.Root = startRoot(t, addr, p.RootDir)
	waitFor(t, "every report delivered in order", func() bool {
		e, err := p.RC.Resolve(ctx, svc.JobName, "")
		if err != nil || len(e.Instances) != n {
			return false
		}
		for _, in := range e.Instances {
			if in.Number == 0 && (in.NamespaceIP.String() != "10.18.0.60" || in.HostPort != 50104) {
				return false // the later report must win
			}
		}
		return true
	})
	waitFor(t, "fresh answers again", func() bool {
		r := w.query(svc.JobName, "")
		return !r.Stale && len(r.InstanceList) == n
	})
}

// TestMosquittoClientQueries: a third-party MQTT client speaks the contract.
func TestMosquittoClientQueries(t *testing.T) {
	bin, err := exec.LookPath("mosquitto_rr")
	if err != nil {
		t.Skip("mosquitto_rr not installed (apt-get install mosquitto-clients)")
	}
	p := startPlatform(t, time.Minute)
	svc := deploy(t, p, "shop", 0)
	host, port, _ := strings.Cut(p.Cluster.MQTTAddr.String(), ":")
	out, err := exec.CommandContext(t.Context(), bin, "-h", host, "-p", port, "-V", "mqttv311", "-q", "1", "-i", "wm", "-W", "10",
		"-t", mqttapi.NodeTopic("wm", mqttapi.SuffixTableQuery), "-e", mqttapi.NodeTopic("wm", mqttapi.SuffixTableQueryResult),
		"-m", fmt.Sprintf(`{"sname":"","sip":%q}`, svc.ClosestIP)).CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_rr: %v: %s", err, out)
	}
	var r mqttapi.TableQueryResult
	if err := json.Unmarshal(out, &r); err != nil || r.AppName != svc.JobName {
		t.Fatalf("mosquitto_rr got %s (%v)", out, err)
	}
}

// TestReferenceClusterREST: the reference orchestrator's and root's calls to the cluster.
func TestReferenceClusterREST(t *testing.T) {
	p := startPlatform(t, time.Minute)
	svc := deploy(t, p, "shop", 1)
	base := "http://" + p.Cluster.Addr.String()
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := call("POST", "/api/net/deployment", fmt.Sprintf(`{"job_name":%q}`, svc.JobName)); st != 200 || !strings.Contains(body, svc.RRIP.String()) {
		t.Fatalf("prefetch: %d %s", st, body)
	}
	if ids, _ := p.RC.Interests(t.Context(), "c1"); len(ids) != 1 {
		t.Errorf("prefetch did not register the cluster's interest: %v", ids)
	}
	if st, body := call("POST", "/api/net/deployment", `{"job_name":"no.such.job.here"}`); st != 404 || !strings.Contains(body, "unknown service") {
		t.Errorf("prefetch of an unknown job: %d %s", st, body)
	}
	if st, body := call("POST", "/api/net/deployment", `{"job_name":`); st != 400 || !strings.Contains(body, "problem") && !strings.Contains(body, "JSON") {
		t.Errorf("malformed body: %d %s", st, body)
	}
	// Root's job update makes the cluster re-read the job and push it to nodes.
	w := connectNode(t, p, "w1")
	w.subscribe(mqttapi.UpdatesTopic(svc.JobName))
	if st, body := call("POST", "/api/net/job/update", fmt.Sprintf(`{"job_name":%q,"instance_number":0,"type":"DEPLOYMENT"}`, svc.JobName)); st != 200 {
		t.Fatalf("job update: %d %s", st, body)
	}
	var up mqttapi.UpdatesAvailable
	w.next(mqttapi.UpdatesTopic(svc.JobName), &up)
	if up.Table == nil || up.Table.AppName != svc.JobName {
		t.Errorf("push after job update: %+v", up)
	}
	if st, _ := call("POST", "/api/net/job/update", `{"job_name":"x","type":"SOMETHING"}`); st != 400 {
		t.Errorf("job update with a bad type: %d", st)
	}
	// The orchestrator drops the job; no node asked for it, so root forgets the interest.
	if st, body := call("DELETE", "/api/net/deployment/"+svc.JobName, ""); st != 200 {
		t.Fatalf("drop: %d %s", st, body)
	}
	if ids, _ := p.RC.Interests(t.Context(), "c1"); len(ids) != 0 {
		t.Errorf("interest kept after the orchestrator dropped the job: %v", ids)
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if st, _ := call("GET", path, ""); st != 200 {
			t.Errorf("GET %s: %d", path, st)
		}
	}
}

// TestReplicasShareRedis: a second replica of the cluster, sharing the first one's Redis
// cache, answers from it even while root is down.
func TestReplicasShareRedis(t *testing.T) {
	url := testservers.RedisURL(t)
	rsrv := startRoot(t, "127.0.0.1:0", t.TempDir())
	defer rsrv.Close()
	rc, _ := client.New("http://"+rsrv.Addr.String(), "", nil)
	id := fmt.Sprintf("redis%d", time.Now().UnixNano()%1e9) // the key prefix: runs don't share
	start := func() *platform {
		cl, err := cluster.Start(t.Context(), cluster.Config{
			ID: id, RootURL: "http://" + rsrv.Addr.String(), Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0",
			Insecure: true, RedisURL: url, StaleAfter: time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cl.Close() })
		<-cl.Registered()
		return &platform{Root: rsrv, Cluster: cl, RC: rc}
	}
	a := start()
	svc, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "r", AppNS: "b", Service: "c", ServiceNS: "d"})
	if err != nil {
		t.Fatal(err)
	}
	if r := connectNode(t, a, "w1").query(svc.JobName, ""); r.Error != "" {
		t.Fatal(r.Error)
	}
	b := start()
	rsrv.Close()
	if r := connectNode(t, b, "w2").query("", svc.RRIPv6.String()); r.Error != "" || r.AppName != svc.JobName {
		t.Fatalf("replica b with root down: %+v", r)
	}
}
