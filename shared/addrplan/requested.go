package addrplan

import (
	"fmt"
	"net/netip"
)

// Requested-address fields of a deployment descriptor (ADDRESSING.md).
const (
	FieldRRIP        = "rr_ip"
	FieldClosestIP   = "closest_ip"
	FieldRRIPv6      = "rr_ip_v6"
	FieldClosestIPv6 = "closest_ip_v6"
)

// ParseRequested parses the address a deployment descriptor requests in field (rr_ip,
// closest_ip, rr_ip_v6 or closest_ip_v6). An empty value means nothing was requested and
// returns the zero Addr. The text must be exactly an address of the field's family in the
// field's prefix and outside the reserved prefixes: no spaces, no zone, no IPv4-mapped
// IPv6 form, because a request that was silently rewritten is not the one the operator
// made. Whether the address is free is the allocator's question, not the plan's.
func (pl Plan) ParseRequested(field, value string) (netip.Addr, error) {
	if value == "" {
		return netip.Addr{}, nil
	}
	var want netip.Prefix
	switch field {
	case FieldRRIP, FieldClosestIP:
		want = pl.ServiceV4
	case FieldRRIPv6:
		want = pl.RoundRobinV6
	case FieldClosestIPv6:
		want = pl.ClosestV6
	default:
		return netip.Addr{}, fmt.Errorf("%s is not a requested-address field (want %s, %s, %s or %s)", field, FieldRRIP, FieldClosestIP, FieldRRIPv6, FieldClosestIPv6)
	}
	wantV4 := want.Addr().Is4()
	fam := "IPv6"
	if wantV4 {
		fam = "IPv4"
	}
	a, err := netip.ParseAddr(value)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Errorf("%s %q is not an %s address; want one in %s", field, value, fam, want)
	case a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%s %q has a zone; want a plain %s address in %s", field, value, fam, want)
	case a.Is4In6():
		return netip.Addr{}, fmt.Errorf("%s %q is an IPv4-mapped IPv6 address; want an %s address in %s", field, value, fam, want)
	case a.Is4() != wantV4:
		return netip.Addr{}, fmt.Errorf("%s %q is not an %s address; want one in %s", field, value, fam, want)
	case !want.Contains(a):
		return netip.Addr{}, fmt.Errorf("%s %q is outside %s", field, value, want)
	}
	if wantV4 {
		if r, ok := reservedBy(a, pl.ReservedV4); ok {
			return netip.Addr{}, fmt.Errorf("%s %q is in reserved_v4 %s, which is never handed out; pick another address in %s", field, value, r, want)
		}
	}
	return a, nil
}

// reservedBy returns the prefix of ps that holds a.
func reservedBy(a netip.Addr, ps []netip.Prefix) (netip.Prefix, bool) {
	for _, p := range ps {
		if p.Contains(a) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
