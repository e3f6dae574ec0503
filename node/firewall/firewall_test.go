package firewall

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// Validate is tested directly, not through Open: a Config that wrongly passed would have
// Open change the test process's own namespace.
func TestValidate(t *testing.T) {
	v4, v6 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8::1")
	in4, in6 := netip.MustParseAddr("10.30.255.253"), netip.MustParseAddr("fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffd")
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for a valid Config
	}{
		{"empty", Config{}, ""},
		{"full", Config{PublicV4: v4, InternalV4: in4, PublicV6: v6, InternalV6: in6,
			InstancesV4: netip.MustParsePrefix("10.18.0.0/26"), InstancesV6: netip.MustParsePrefix("fc00::/120")}, ""},
		{"internal without public serves nothing", Config{InternalV4: in4}, ""},
		{"public without internal", Config{PublicV4: v4}, "PublicV4 198.51.100.1 is set but InternalV4 is not"},
		{"IPv6 public in the IPv4 field", Config{PublicV4: v6, InternalV4: in4}, "PublicV4 2001:db8::1 is not an IPv4 address"},
		{"IPv4 internal in the IPv6 field", Config{PublicV6: v6, InternalV6: in4}, "InternalV6 10.30.255.253 is not an IPv6 address"},
		{"IPv4-mapped public", Config{PublicV6: netip.MustParseAddr("::ffff:198.51.100.1"), InternalV6: in6}, "is not an IPv6 address"},
		{"IPv6 instances in the IPv4 field", Config{InstancesV4: netip.MustParsePrefix("fc00::/120")}, "InstancesV4 fc00::/120 is not an IPv4 prefix"},
		{"IPv4 overlay in the IPv6 field", Config{OverlayV6: netip.MustParsePrefix("10.0.0.0/8")}, "OverlayV6 10.0.0.0/8 is not an IPv6 prefix"},
		{"table name with NUL", Config{Table: "a\x00b"}, "table name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestWithDefaults(t *testing.T) {
	c := Config{InstancesV4: netip.MustParsePrefix("10.18.0.7/26")}.withDefaults()
	if c.Table != DefaultTable || c.OverlayV4 != DefaultOverlayV4() || c.OverlayV6 != DefaultOverlayV6() {
		t.Errorf("defaults: table %q, overlays %s %s", c.Table, c.OverlayV4, c.OverlayV6)
	}
	// The rule compares the masked source, so the prefix must be masked too.
	if want := netip.MustParsePrefix("10.18.0.0/26"); c.InstancesV4 != want {
		t.Errorf("InstancesV4 = %s, want %s", c.InstancesV4, want)
	}
}

func TestPortSet(t *testing.T) {
	got, err := portSet("TCP", []uint16{443, 80, 443, 8080, 80})
	if err != nil || !slices.Equal(got, []uint16{80, 443, 8080}) {
		t.Errorf("portSet = %v, %v; want [80 443 8080]", got, err)
	}
	if _, err := portSet("UDP", []uint16{53, 0}); err == nil || !strings.Contains(err.Error(), "UDP port 0") {
		t.Errorf("portSet with port 0 = %v, want an error naming it", err)
	}
	if got, err := portSet("TCP", nil); err != nil || len(got) != 0 {
		t.Errorf("portSet(nil) = %v, %v; want empty", got, err)
	}
}
