package cluster_test

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
)

// gatewayConfig waits for the gateway's next configuration that satisfies ok.
func (n *node) gatewayConfig(ok func(mqttapi.GatewayConfig) bool) mqttapi.GatewayConfig {
	n.t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case b := <-n.inbox(mqttapi.NodeTopic(n.id, mqttapi.SuffixGatewayConfig)):
			var c mqttapi.GatewayConfig
			if err := json.Unmarshal(b, &c); err != nil {
				n.t.Fatalf("gateway config %s: %v", b, err)
			}
			if ok(c) {
				return c
			}
		case <-deadline:
			n.t.Fatalf("node %s: no matching gateway configuration", n.id)
		}
	}
}

func register(pub, ns string) string {
	b, _ := json.Marshal(mqttapi.GatewayRegister{PublicIP: netip.MustParseAddr(pub), NamespaceIP: netip.MustParseAddr(ns),
		HostIP: netip.MustParseAddr("127.0.0.9"), HostPort: 50103})
	return string(b)
}

// TestGatewayRelay: a gateway node registers over MQTT and gets its Instance IPs; the
// exposures root records come down to it, again after every change; bad registrations
// get an error on the configuration topic.
func TestGatewayRelay(t *testing.T) {
	p := startPlatform(t, time.Minute)
	ctx := t.Context()
	svc := deploy(t, p, "shop", 1)
	gw := connectNode(t, p, "gw1")
	gw.subscribe(mqttapi.NodeTopic("gw1", mqttapi.SuffixGatewayConfig))

	gw.publish(mqttapi.SuffixGatewayRegister, register("198.51.100.1", "10.18.0.2"))
	c := gw.gatewayConfig(func(mqttapi.GatewayConfig) bool { return true })
	if c.Error != "" || c.JobName != api.GatewayJobName || !c.InstanceIP.Is4() || !c.InstanceIPv6.Is6() || len(c.Exposures) != 0 {
		t.Fatalf("first configuration: %+v", c)
	}
	// Root made the gateway an instance of the system service, placed where it said.
	in, err := p.RC.Resolve(ctx, c.InstanceIP.String(), "")
	if err != nil || in.Service.JobName != api.GatewayJobName || in.MatchedInstance == nil || *in.MatchedInstance != c.InstanceNumber {
		t.Fatalf("resolve the gateway's Instance IP: %+v, %v", in, err)
	}

	e, err := p.RC.CreateExposure(ctx, svc.JobName, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: 8080, ServicePort: 80})
	if err != nil {
		t.Fatal(err)
	}
	c = gw.gatewayConfig(func(c mqttapi.GatewayConfig) bool { return len(c.Exposures) == 1 })
	x := c.Exposures[0]
	if x.ID != e.ID || x.PublicPort != 8080 || x.ServicePort != 80 || x.TargetIP != svc.RRIP || x.TargetIPv6 != svc.RRIPv6 || x.JobName != svc.JobName {
		t.Errorf("pushed exposure %+v, want tcp 8080 -> %s / %s port 80", x, svc.RRIP, svc.RRIPv6)
	}
	if err := p.RC.DeleteExposure(ctx, svc.JobName, e.ID); err != nil {
		t.Fatal(err)
	}
	gw.gatewayConfig(func(c mqttapi.GatewayConfig) bool { return len(c.Exposures) == 0 })

	// Registering again (a reconnection) keeps the instance and its addresses.
	gw.publish(mqttapi.SuffixGatewayRegister, register("198.51.100.1", "10.18.0.2"))
	again := gw.gatewayConfig(func(mqttapi.GatewayConfig) bool { return true })
	if again.InstanceNumber != c.InstanceNumber || again.InstanceIP != c.InstanceIP {
		t.Errorf("re-registration moved the gateway: %+v, was %+v", again, c)
	}

	for _, bad := range []string{
		`{"public_ip":`,                      // malformed
		register("2001:db8::1", "10.18.0.2"), // IPv6 as the IPv4 public address
		`{"namespace_ip":"10.18.0.2","host_ip":"127.0.0.9","host_port":50103}`, // no public address
	} {
		gw.publish(mqttapi.SuffixGatewayRegister, bad)
		// Pushes of the valid configuration may come in between (each registration is a
		// change at root): wait for the error, which must come.
		c := gw.gatewayConfig(func(c mqttapi.GatewayConfig) bool { return c.Error != "" })
		if c.JobName != "" || !strings.Contains(c.Error, "public") && !strings.Contains(c.Error, "malformed") {
			t.Errorf("registration %s answered %+v, want an error naming the problem", bad, c)
		}
	}
}

// TestGatewayDeath: root follows a gateway's liveness. A gateway node that stays away
// longer than the grace is reported failed (api.Gateway.Status), as its node's instances
// would be; registering again makes it run again. An operator's DNS in front of the
// public addresses can follow the status.
func TestGatewayDeath(t *testing.T) {
	p := startDeathPlatform(t, 300*time.Millisecond)
	ctx := t.Context()
	status := func(want string) func() bool {
		return func() bool {
			g, err := p.RC.Gateway(ctx, "gw1")
			return err == nil && g.Status == want
		}
	}
	registered := func() *node {
		gw := connectNode(t, p, "gw1")
		gw.subscribe(mqttapi.NodeTopic("gw1", mqttapi.SuffixGatewayConfig))
		gw.publish(mqttapi.SuffixGatewayRegister, register("198.51.100.1", "10.18.0.2"))
		if c := gw.gatewayConfig(func(mqttapi.GatewayConfig) bool { return true }); c.Error != "" {
			t.Fatalf("registration: %s", c.Error)
		}
		return gw
	}
	gw := registered()
	waitFor(t, "the gateway running at root", status("running"))
	gw.c.Disconnect(0)
	waitFor(t, "the gateway failed at root", status("failed"))
	// Failed for its node's death, not by the restart sweep a few seconds after start.
	if v := metric(t, p, `semnet_cluster_instances_reported_failed_total{cause="node_death"}`); v != "1" {
		t.Errorf("instances reported failed for a node's death: %s, want 1 (the gateway)", v)
	}
	registered()
	waitFor(t, "the gateway running again at root", status("running"))
}
