package addrplan

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

var mp = netip.MustParsePrefix

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Plan)
		want   []string // substrings of the error; none means valid
	}{
		{"default", func(*Plan) {}, nil},
		{"overlap v6 policies", func(p *Plan) { p.ClosestV6 = p.RoundRobinV6 },
			[]string{"closest_v6 fdff:2000::/21 overlaps round_robin_v6 fdff:2000::/21: every pool needs its own range"}},
		{"instance v6 inside subnets", func(p *Plan) { p.InstanceV6 = mp("fc00:1::/32") },
			[]string{"instance_v6 fc00:1::/32 overlaps subnet_v6 fc00::/8"}},
		{"service v4 inside subnets", func(p *Plan) { p.ServiceV4 = mp("10.19.0.0/16"); p.ReservedV4 = nil; p.GatewayV4 = netip.Addr{} },
			[]string{"service_v4 10.19.0.0/16 overlaps subnet_v4 10.18.0.0/15"}},
		{"host bits", func(p *Plan) { p.ServiceV4 = mp("10.30.0.1/16") },
			[]string{"service_v4: 10.30.0.1/16 has host bits set (did you mean 10.30.0.0/16?)"}},
		{"wrong family v6 field", func(p *Plan) { p.SubnetV6 = mp("10.40.0.0/16") },
			[]string{"subnet_v6: 10.40.0.0/16 is not an IPv6 prefix"}},
		{"wrong family v4 field", func(p *Plan) { p.ServiceV4 = mp("fdff:3000::/21") },
			[]string{"service_v4: fdff:3000::/21 is not an IPv4 prefix"}},
		{"not set", func(p *Plan) { p.ClosestV6 = netip.Prefix{} },
			[]string{"closest_v6: not set"}},
		{"reserved outside pool", func(p *Plan) { p.ReservedV4 = append(p.ReservedV4, mp("10.31.0.0/24")) },
			[]string{"reserved_v4: 10.31.0.0/24 is not inside service_v4 10.30.0.0/16"}},
		{"reserved larger than pool", func(p *Plan) { p.ReservedV4 = append(p.ReservedV4, mp("10.0.0.0/8")) },
			[]string{"reserved_v4: 10.0.0.0/8 is not inside service_v4 10.30.0.0/16"}},
		{"reserved subnet outside", func(p *Plan) { p.ReservedSubV4 = []netip.Prefix{mp("10.30.0.0/26")} },
			[]string{"reserved_subnet_v4: 10.30.0.0/26 is not inside subnet_v4 10.18.0.0/15"}},
		{"gateway not reserved", func(p *Plan) { p.GatewayV4 = netip.MustParseAddr("10.30.254.253") },
			[]string{"gateway_v4: 10.30.254.253 must lie in a reserved_v4 prefix"}},
		{"gateway unset is fine", func(p *Plan) { p.GatewayV4 = netip.Addr{} }, nil},
		{"gateway v6 in a pool", func(p *Plan) { p.GatewayV6 = netip.MustParseAddr("fdff:2000::fffd") },
			[]string{"gateway_v6: fdff:2000::fffd must be an IPv6 address outside"}},
		{"gateway v6 not IPv6", func(p *Plan) { p.GatewayV6 = netip.MustParseAddr("10.30.255.253") },
			[]string{"gateway_v6: 10.30.255.253"}},
		{"subnet bits too small", func(p *Plan) { p.SubnetV4Bits = 15 },
			[]string{"subnet_v4_bits: /15 does not fit in subnet_v4 10.18.0.0/15 (need /16../30)"}},
		{"subnet bits too large", func(p *Plan) { p.SubnetV4Bits = 31; p.SubnetV6Bits = 127 },
			[]string{"subnet_v4_bits: /31", "subnet_v6_bits: /127 does not fit in subnet_v6 fc00::/8"}},
		{"negative quarantine", func(p *Plan) { p.Quarantine = -time.Second },
			[]string{"quarantine: -1s is negative"}},
		{"several at once", func(p *Plan) { p.Quarantine = -1; p.GatewayV4 = netip.MustParseAddr("10.30.1.1") },
			[]string{"quarantine:", "gateway_v4: 10.30.1.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl := Default()
			tc.change(&pl)
			err := pl.Validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate accepted the plan; want an error containing %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate error\n  %v\ndoes not contain\n  %q", err, w)
				}
			}
		})
	}
}

func TestParseRequested(t *testing.T) {
	pl := Default()
	for _, tc := range []struct {
		field, value string
		want         string // the address, or "" for the zero Addr
		err          string // the exact error text; "" for none
	}{
		{"rr_ip", "", "", ""},
		{"rr_ip_v6", "", "", ""},
		{"bogus", "", "", ""}, // nothing requested: nothing to check
		{"rr_ip", "10.30.0.1", "10.30.0.1", ""},
		{"closest_ip", "10.30.254.254", "10.30.254.254", ""},
		{"rr_ip_v6", "fdff:2000::1", "fdff:2000::1", ""},
		{"rr_ip_v6", "fdff:27ff:ffff:ffff:ffff:ffff:ffff:ffff", "fdff:27ff:ffff:ffff:ffff:ffff:ffff:ffff", ""},
		{"rr_ip_v6", "FDFF:2000:0:0::A", "fdff:2000::a", ""},
		{"closest_ip_v6", "fdff:1000::7", "fdff:1000::7", ""},

		{"rr_ip", "10.31.0.1", "", `rr_ip "10.31.0.1" is outside 10.30.0.0/16`},
		{"closest_ip", "10.29.255.255", "", `closest_ip "10.29.255.255" is outside 10.30.0.0/16`},
		{"rr_ip", "10.30.0.0", "", `rr_ip "10.30.0.0" is in reserved_v4 10.30.0.0/32, which is never handed out; pick another address in 10.30.0.0/16`},
		{"closest_ip", "10.30.255.253", "", `closest_ip "10.30.255.253" is in reserved_v4 10.30.255.0/24, which is never handed out; pick another address in 10.30.0.0/16`},
		{"rr_ip", " 10.30.0.1", "", `rr_ip " 10.30.0.1" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"rr_ip", "10.30.0.1\n", "", `rr_ip "10.30.0.1\n" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"rr_ip", "10.30.0.01", "", `rr_ip "10.30.0.01" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"rr_ip", "10.30.0.1/32", "", `rr_ip "10.30.0.1/32" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"rr_ip", "fdff:2000::1", "", `rr_ip "fdff:2000::1" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"rr_ip", "::ffff:10.30.0.1", "", `rr_ip "::ffff:10.30.0.1" is an IPv4-mapped IPv6 address; want an IPv4 address in 10.30.0.0/16`},
		{"rr_ip_v6", "::ffff:10.30.0.1", "", `rr_ip_v6 "::ffff:10.30.0.1" is an IPv4-mapped IPv6 address; want an IPv6 address in fdff:2000::/21`},
		{"rr_ip_v6", "10.30.0.1", "", `rr_ip_v6 "10.30.0.1" is not an IPv6 address; want one in fdff:2000::/21`},
		{"rr_ip_v6", "fdff:2000::1%eth0", "", `rr_ip_v6 "fdff:2000::1%eth0" has a zone; want a plain IPv6 address in fdff:2000::/21`},
		{"closest_ip_v6", "fe80::1%eth0", "", `closest_ip_v6 "fe80::1%eth0" has a zone; want a plain IPv6 address in fdff:1000::/21`},
		{"rr_ip_v6", "fdff:1000::1", "", `rr_ip_v6 "fdff:1000::1" is outside fdff:2000::/21`},
		{"closest_ip_v6", "fdff:2000::1", "", `closest_ip_v6 "fdff:2000::1" is outside fdff:1000::/21`},
		{"rr_ip_v6", "fdff:2800::", "", `rr_ip_v6 "fdff:2800::" is outside fdff:2000::/21`},
		{"rr_ip", "garbage", "", `rr_ip "garbage" is not an IPv4 address; want one in 10.30.0.0/16`},
		{"instance_ip", "10.30.0.1", "", `instance_ip is not a requested-address field (want rr_ip, closest_ip, rr_ip_v6 or closest_ip_v6)`},
	} {
		got, err := pl.ParseRequested(tc.field, tc.value)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if gotErr != tc.err {
			t.Errorf("ParseRequested(%q, %q) error\n  %q\nwant\n  %q", tc.field, tc.value, gotErr, tc.err)
		}
		var want netip.Addr
		if tc.want != "" {
			want = netip.MustParseAddr(tc.want)
		}
		if got != want {
			t.Errorf("ParseRequested(%q, %q) = %v, want %v", tc.field, tc.value, got, want)
		}
	}
}

// FuzzParseRequested: ParseRequested never panics, and whatever it accepts is in the
// field's prefix and family, not reserved, and survives a round trip through its text.
func FuzzParseRequested(f *testing.F) {
	for _, s := range []struct {
		field uint8
		value string
	}{
		{0, "10.30.0.1"}, {0, "10.30.255.253"}, {1, "10.30.12.34"}, {2, "fdff:2000::1"},
		{3, "fdff:1000::ffff"}, {2, "fe80::1%eth0"}, {3, "::ffff:10.30.0.1"}, {0, " 10.30.0.1"},
		{4, "10.30.0.1"}, {2, ""},
	} {
		f.Add(s.field, s.value)
	}
	pl := Default()
	fields := []string{FieldRRIP, FieldClosestIP, FieldRRIPv6, FieldClosestIPv6, "rr_ip "}
	f.Fuzz(func(t *testing.T, field uint8, value string) {
		name := fields[int(field)%len(fields)]
		a, err := pl.ParseRequested(name, value)
		if err != nil {
			if a.IsValid() {
				t.Fatalf("ParseRequested(%q, %q) returned %s with error %v", name, value, a, err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("error %q does not name the field %q", err, name)
			}
			return
		}
		if value == "" {
			if a.IsValid() {
				t.Fatalf("ParseRequested(%q, \"\") = %s, want the zero Addr", name, a)
			}
			return
		}
		var want netip.Prefix
		switch name {
		case FieldRRIP, FieldClosestIP:
			want = pl.ServiceV4
			if !a.Is4() {
				t.Fatalf("%s %q accepted as %s, not IPv4", name, value, a)
			}
			for _, r := range pl.ReservedV4 {
				if r.Contains(a) {
					t.Fatalf("%s %q accepted though in reserved %s", name, value, r)
				}
			}
		case FieldRRIPv6:
			want = pl.RoundRobinV6
		case FieldClosestIPv6:
			want = pl.ClosestV6
		default:
			t.Fatalf("field %q accepted", name)
		}
		if !want.Contains(a) {
			t.Fatalf("%s %q accepted as %s, outside %s", name, value, a, want)
		}
		if want.Addr().Is6() && (!a.Is6() || a.Is4In6() || a.Zone() != "") {
			t.Fatalf("%s %q accepted as %s: not a plain IPv6 address", name, value, a)
		}
		back, err := netip.ParseAddr(a.String())
		if err != nil || back != a {
			t.Fatalf("%s %q: %s does not round-trip through its text (%s, %v)", name, value, a, back, err)
		}
		if again, err := pl.ParseRequested(name, a.String()); err != nil || again != a {
			t.Fatalf("%s: canonical text %s is refused (%v) or changes (%s)", name, a, err, again)
		}
	})
}
