package rest_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/semnet/semnet/proto/api"
	rootclient "github.com/semnet/semnet/proto/api/client"
)

const gwBody = `{"cluster_id":"c1","public_ip":"127.0.0.1","public_ip_v6":"2001:db8::1","namespace_ip":"10.18.0.2","namespace_ip_v6":"fc00::2","host_ip":"127.0.0.1","host_port":50103,"location":{"lat":48.1,"lon":11.6}}`

func TestGatewaysOverREST(t *testing.T) {
	srv, _ := newServer(t)
	c := client{t, srv.URL + "/api/v1"}
	c.expectProblem("PUT", "/gateways/gw1", gwBody, 404, "cluster c1 is not registered")
	c.do("POST", "/clusters", `{"id":"c1","address":"127.0.0.1","port":10110}`, nil)

	var g api.Gateway
	st, h := c.do("PUT", "/gateways/gw1", gwBody, &g)
	if st != 201 || h.Get("Location") != "/api/v1/gateways/gw1" || g.ID != "gw1" || g.InstanceNumber != 0 || !g.InstanceIP.IsValid() || !g.InstanceIPv6.IsValid() ||
		g.NamespaceIP.String() != "10.18.0.2" || g.HostPort != 50103 || g.PublicIPv6.String() != "2001:db8::1" || g.Location == nil {
		t.Fatalf("register: %d %+v", st, g)
	}
	var again api.Gateway
	if st, _ := c.do("PUT", "/gateways/gw1", gwBody, &again); st != 200 || again.InstanceIP != g.InstanceIP || again.InstanceIPv6 != g.InstanceIPv6 {
		t.Fatalf("re-register: %d %+v, want 200 with Instance IPs %s %s", st, again, g.InstanceIP, g.InstanceIPv6)
	}
	var list []api.Gateway
	if st, _ := c.do("GET", "/gateways", "", &list); st != 200 || len(list) != 1 || list[0].InstanceIP != g.InstanceIP {
		t.Fatalf("list: %d %+v", st, list)
	}
	var one api.Gateway
	if st, _ := c.do("GET", "/gateways/gw1", "", &one); st != 200 || one.ID != "gw1" || one.HostIP.String() != "127.0.0.1" {
		t.Fatalf("get: %d %+v", st, one)
	}
	c.expectProblem("GET", "/gateways/nope", "", 404, "unknown gateway nope")
	c.expectProblem("PUT", "/gateways/gw2", `{"cluster_id":`, 400, "truncated")
	c.expectProblem("PUT", "/gateways/gw2", `{"cluster_id":"c1","namespace_ip":"10.18.0.3","host_ip":"127.0.0.1","host_port":1}`, 400, "needs a public address")
	c.expectProblem("PUT", "/gateways/gw2", `{"cluster_id":"c1","public_ip":"2001:db8::2","namespace_ip":"10.18.0.3","host_ip":"127.0.0.1","host_port":1}`, 400, "public_ip 2001:db8::2 must be a unicast IPv4 address")
	c.expectProblem("PUT", "/gateways/a.b", gwBody, 400, `gateway id "a.b"`)

	var svc api.Service
	c.do("POST", "/services", `{"app":"shop","app_ns":"prod","service":"web","service_ns":"eu"}`, &svc)
	c.do("POST", "/services", `{"app":"shop","app_ns":"prod","service":"api","service_ns":"eu"}`, nil)
	c.expectProblem("POST", "/services", `{"app":"semnet","app_ns":"system","service":"web","service_ns":"eu"}`, 400, "semnet.system holds semnet's own services")

	var x api.Exposure
	st, h = c.do("POST", "/services/shop.prod.web.eu/exposures", `{"protocol":"tcp","public_port":8080,"service_port":80,"gateway":"gw1"}`, &x)
	if st != 201 || x.ID != "tcp-8080" || h.Get("Location") != "/api/v1/services/"+svc.ID+"/exposures/tcp-8080" || x.Policy != "round_robin" ||
		x.TargetIP != svc.RRIP || x.TargetIPv6 != svc.RRIPv6 || x.JobName != "shop.prod.web.eu" || x.Gateway != "gw1" || x.InstanceNumber != nil || x.Revision == 0 {
		t.Fatalf("expose: %d %+v (Location %q)", st, x, h.Get("Location"))
	}
	c.expectProblem("POST", "/services/shop.prod.api.eu/exposures", `{"protocol":"tcp","public_port":8080,"service_port":80}`, 409, "tcp port 8080 is already exposed by service shop.prod.web.eu")
	c.expectProblem("POST", "/services/shop.prod.nope.eu/exposures", `{"protocol":"tcp","public_port":8081,"service_port":80}`, 404, "shop.prod.nope.eu")
	c.expectProblem("POST", "/services/shop.prod.web.eu/exposures", `{"protocol":"tcp",`, 400, "truncated")
	c.expectProblem("POST", "/services/shop.prod.web.eu/exposures", `{"protocol":"tcp","public_port":"80"}`, 400, "field public_port")
	c.expectProblem("POST", "/services/shop.prod.web.eu/exposures", `{"protocol":"sctp","public_port":8081,"service_port":80}`, 400, `protocol "sctp"`)
	c.expectProblem("POST", "/services/shop.prod.web.eu/exposures", `{"protocol":"tcp","public_port":8081,"service_port":80,"gateway":"gw9"}`, 404, "unknown gateway gw9")
	c.expectProblem("POST", "/services/"+api.GatewayJobName+"/exposures", `{"protocol":"tcp","public_port":8081,"service_port":80}`, 400, "cannot be exposed")
	c.expectProblem("DELETE", "/services/"+api.GatewayJobName, "", 400, "delete the gateways instead")

	var xl api.ExposureList
	if st, _ := c.do("GET", "/services/"+svc.RRIP.String()+"/exposures", "", &xl); st != 200 || len(xl.Items) != 1 || xl.Items[0].ID != "tcp-8080" || xl.Revision < x.Revision {
		t.Fatalf("service exposures: %d %+v", st, xl)
	}
	if st, _ := c.do("GET", "/services/shop.prod.api.eu/exposures", "", &xl); st != 200 || xl.Items == nil || len(xl.Items) != 0 {
		t.Fatalf("exposures of a service with none: %d %+v, want an empty list", st, xl)
	}
	var one1 api.Exposure
	if st, _ := c.do("GET", "/services/shop.prod.web.eu/exposures/tcp-8080", "", &one1); st != 200 || one1.ID != "tcp-8080" {
		t.Fatalf("get exposure: %d %+v", st, one1)
	}
	c.expectProblem("GET", "/services/shop.prod.api.eu/exposures/tcp-8080", "", 404, "service shop.prod.api.eu has no exposure tcp-8080")
	if st, _ := c.do("GET", "/exposures?gateway=gw1", "", &xl); st != 200 || len(xl.Items) != 1 {
		t.Fatalf("exposures of gw1: %d %+v", st, xl)
	}
	c.expectProblem("GET", "/exposures?gateway=nope", "", 404, "unknown gateway nope")

	// The gateway is named by an exposure: deleting it needs force, which takes the
	// exposure along.
	c.expectProblem("DELETE", "/gateways/gw1", "", 409, "tcp-8080")
	c.expectProblem("DELETE", "/gateways/gw1?force=maybe", "", 400, "force")
	if st, _ := c.do("DELETE", "/gateways/gw1?force=true", "", nil); st != 204 {
		t.Fatalf("forced gateway delete: %d", st)
	}
	if st, _ := c.do("GET", "/exposures", "", &xl); st != 200 || len(xl.Items) != 0 {
		t.Fatalf("exposures after the forced delete: %d %+v", st, xl)
	}
	c.expectProblem("DELETE", "/gateways/gw1", "", 404, "unknown gateway gw1")

	// Clusters follow gateways and exposures whatever their interests.
	var b api.ChangeBatch
	c.do("GET", "/clusters/c1/changes?since=0", "", &b)
	objects := map[string]bool{}
	for _, ch := range b.Changes {
		if ch.Kind == "gateway" || ch.Kind == "exposure" {
			objects[ch.Kind+" "+ch.Op+" "+ch.Object] = true
		}
	}
	for _, want := range []string{"gateway put gw1", "exposure put tcp-8080", "exposure delete tcp-8080", "gateway delete gw1"} {
		if !objects[want] {
			t.Errorf("change stream lacks %q: %v", want, objects)
		}
	}
}

// TestGatewayClient drives the routes through proto/api/client, as cluster services do.
func TestGatewayClient(t *testing.T) {
	srv, _ := newServer(t)
	ctx := t.Context()
	rc, err := rootclient.New(srv.URL, token, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}); err != nil {
		t.Fatal(err)
	}
	req := api.GatewayRequest{ClusterID: "c1", PublicIP: netip.MustParseAddr("127.0.0.1"), NamespaceIP: netip.MustParseAddr("10.18.0.2"),
		HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103}
	g, err := rc.RegisterGateway(ctx, "gw1", req)
	if err != nil || g.ID != "gw1" || !g.InstanceIP.IsValid() {
		t.Fatalf("RegisterGateway: %+v, %v", g, err)
	}
	if gs, err := rc.Gateways(ctx); err != nil || len(gs) != 1 || gs[0].InstanceIP != g.InstanceIP {
		t.Fatalf("Gateways: %+v, %v", gs, err)
	}
	if _, err := rc.CreateService(ctx, api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"}); err != nil {
		t.Fatal(err)
	}
	x, err := rc.CreateExposure(ctx, "shop.prod.web.eu", api.ExposureRequest{Protocol: api.ProtocolUDP, PublicPort: 53, ServicePort: 5353, Gateway: "gw1"})
	if err != nil || x.ID != "udp-53" {
		t.Fatalf("CreateExposure: %+v, %v", x, err)
	}
	if _, err := rc.CreateExposure(ctx, "shop.prod.web.eu", api.ExposureRequest{Protocol: api.ProtocolUDP, PublicPort: 53, ServicePort: 1}); !errors.Is(err, rootclient.ErrConflict) {
		t.Fatalf("CreateExposure of a taken port: %v, want ErrConflict", err)
	}
	for _, gw := range []string{"", "gw1"} {
		if l, err := rc.Exposures(ctx, gw); err != nil || len(l.Items) != 1 || l.Revision == 0 {
			t.Fatalf("Exposures(%q): %+v, %v", gw, l, err)
		}
	}
	if _, err := rc.Exposures(ctx, "gw9"); !errors.Is(err, rootclient.ErrNotFound) {
		t.Fatalf("Exposures of an unknown gateway: %v, want ErrNotFound", err)
	}
	if l, err := rc.ServiceExposures(ctx, "shop.prod.web.eu"); err != nil || len(l.Items) != 1 {
		t.Fatalf("ServiceExposures: %+v, %v", l, err)
	}
	if err := rc.DeleteGateway(ctx, "gw1", false); !errors.Is(err, rootclient.ErrConflict) {
		t.Fatalf("DeleteGateway named by an exposure: %v, want ErrConflict", err)
	}
	if err := rc.DeleteExposure(ctx, "shop.prod.web.eu", "udp-53"); err != nil {
		t.Fatalf("DeleteExposure: %v", err)
	}
	if err := rc.DeleteExposure(ctx, "shop.prod.web.eu", "udp-53"); !errors.Is(err, rootclient.ErrNotFound) {
		t.Fatalf("DeleteExposure twice: %v, want ErrNotFound", err)
	}
	if err := rc.DeleteGateway(ctx, "gw1", false); err != nil {
		t.Fatalf("DeleteGateway: %v", err)
	}
	if gs, err := rc.Gateways(ctx); err != nil || len(gs) != 0 {
		t.Fatalf("Gateways after delete: %+v, %v", gs, err)
	}
}
