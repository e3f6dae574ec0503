package refapi

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestFlexInt(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  string
	}{
		{`{"host_port":50103}`, 50103, ""},
		{`{"host_port":"50103"}`, 50103, ""},
		{`{"host_port":" 7 "}`, 7, ""},
		{`{"host_port":null}`, 0, ""},
		{`{}`, 0, ""},
		{`{"host_port":"ten"}`, 0, "host_port"},
		{`{"host_port":1.5}`, 0, "host_port"},
		{`{"host_port":true}`, 0, "host_port"},
	} {
		var d DeployedInstance
		err := json.Unmarshal([]byte(tc.in), &d)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one naming %s", tc.in, err, tc.err)
		case tc.err == "" && int(d.HostPort) != tc.want:
			t.Errorf("%s: %d, want %d", tc.in, d.HostPort, tc.want)
		}
	}
	// Encoded as a number.
	b, err := json.Marshal(ClusterRegistration{ClusterPort: 10110})
	if err != nil || !strings.Contains(string(b), `"cluster_port":10110`) {
		t.Fatalf("%s %v", b, err)
	}
}

func TestDescriptorFallbacks(t *testing.T) {
	var d DeploymentDescriptor
	if err := json.Unmarshal([]byte(`{"app_name":"a","app_ns":"b","service_name":"c","service_ns":"d",
		"RR_ip":null,"addresses":{"rr_ip":"10.30.1.1","rr_ip_v6":"fdff:2000::1","closest_ip":"10.30.1.2"},"closest_ip_v6":"fdff:1000::2"}`), &d); err != nil {
		t.Fatal(err)
	}
	if a, b, c, e := d.Names(); a+"."+b+"."+c+"."+e != "a.b.c.d" {
		t.Fatalf("names %s %s %s %s", a, b, c, e)
	}
	if rr, rr6, cl, cl6 := d.Requested(); rr != "10.30.1.1" || rr6 != "fdff:2000::1" || cl != "10.30.1.2" || cl6 != "fdff:1000::2" {
		t.Fatalf("requested %s %s %s %s", rr, rr6, cl, cl6)
	}
	d = DeploymentDescriptor{MicroserviceName: "web", ServiceName: "old", RRIP: "10.30.0.9", Addresses: &RequestedAddresses{RRIP: "10.30.0.8"}}
	if _, _, c, _ := d.Names(); c != "web" {
		t.Fatalf("microservice_name should win over service_name, got %s", c)
	}
	if rr, _, _, _ := d.Requested(); rr != "10.30.0.9" {
		t.Fatalf("RR_ip should win over addresses.rr_ip, got %s", rr)
	}
}
