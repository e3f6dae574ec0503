package netsetup

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseAlias(t *testing.T) {
	c := Config{Subnet: netip.MustParsePrefix("10.18.0.64/26"), Subnet6: netip.MustParsePrefix("fc00::100/120")}
	ip4, ip6 := netip.MustParseAddr("10.18.0.66"), netip.MustParseAddr("fc00::102")
	alias, err := attachAlias(ip4, ip6, "app.ns.svc with space/3")
	if err != nil {
		t.Fatal(err)
	}
	link := VethName("app.ns.svc with space/3")
	a, err := c.parseAlias(link, alias)
	if err != nil || a != (Attachment{Instance: "app.ns.svc with space/3", NSIP: ip4, NSIP6: ip6, Link: link}) {
		t.Errorf("parseAlias(attachAlias(…)) = %+v, %v", a, err)
	}
	for _, bad := range []struct{ link, alias, want string }{
		{link, "", "no semnet alias"},
		{link, "uplink to the lab", "no semnet alias"},
		{link, "semnet 10.18.0.66 fc00::102", "is not"},
		{link, "semnet 10.18.0.666 fc00::102 app.ns.svc with space/3", "ParseAddr"},
		{VethName("other/1"), alias, "whose veth is"},
		{VethName("x/1"), "semnet 10.18.1.2 fc00::102 x/1", "outside worker subnet"},
		{VethName("x/1"), "semnet 10.18.0.65 fc00::102 x/1", "bridge address"},
	} {
		if _, err := c.parseAlias(bad.link, bad.alias); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("parseAlias(%s, %q) = %v, want an error with %q", bad.link, bad.alias, err, bad.want)
		}
	}
	if _, err := attachAlias(ip4, ip6, strings.Repeat("x", 230)); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("attachAlias of a 230-byte identity = %v, want too long", err)
	}
}
