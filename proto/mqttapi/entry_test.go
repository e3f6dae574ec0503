package mqttapi

import (
	"net/netip"
	"testing"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/geo"
)

func TestResultFromEntry(t *testing.T) {
	ip := netip.MustParseAddr
	e := api.TableEntry{
		Service: api.Service{JobName: "a.b.c.d", RRIP: ip("10.30.0.1"), RRIPv6: ip("fdff:2000::1"), ClosestIP: ip("10.30.0.2"), ClosestIPv6: ip("fdff:1000::1")},
		Instances: []api.Instance{
			{Number: 0, InstanceIP: ip("10.30.0.3"), NamespaceIP: ip("10.18.0.2"), HostIP: ip("192.0.2.1"), HostPort: 50103, Status: "running", Location: &geo.Point{Lat: 48, Lon: 11}},
			{Number: 1, InstanceIP: ip("10.30.0.4"), NamespaceIP: ip("10.18.0.3"), HostIP: ip("192.0.2.1"), HostPort: 50103, Status: "stopped"},
			{Number: 2, InstanceIP: ip("10.30.0.5"), Status: "running"}, // not placed
		},
		Revision: 7,
	}
	r := ResultFromEntry(e, "10.30.0.1")
	if r.AppName != "a.b.c.d" || r.QueryKey != "10.30.0.1" || r.Revision != 7 || len(r.InstanceList) != 1 {
		t.Fatalf("result = %+v, want instance 0 only", r)
	}
	in := r.InstanceList[0]
	if in.InstanceNumber != 0 || in.Lat == nil || *in.Lat != 48 || len(in.ServiceIP) != 3 ||
		in.ServiceIP[0] != (ServiceIP{IPType: IPTypeRR, Address: ip("10.30.0.1"), AddressV6: ip("fdff:2000::1")}) ||
		in.ServiceIP[2] != (ServiceIP{IPType: IPTypeInstanceIP, Address: ip("10.30.0.3")}) {
		t.Errorf("instance = %+v", in)
	}
}
