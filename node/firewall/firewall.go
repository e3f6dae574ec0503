// Package firewall installs a node's nftables rules through netlink (no `nft` binary):
// the gateway's DNAT from its public address to its internal one, masquerade for
// instances reaching addresses outside the overlay, and a TCP MSS clamp on forwarded SYNs
// (FLOWS.md, "External client to service, through the gateway" and "Service to external
// client").
//
// Everything lives in one `inet` table (default "semnet"), so it never touches rules
// anyone else installed and can be replaced or deleted whole:
//
//	table inet semnet {
//		set tcp_ports { type inet_service }
//		set udp_ports { type inet_service }
//		chain prerouting { type nat hook prerouting priority dstnat
//			ip daddr PublicV4 tcp dport @tcp_ports dnat ip to InternalV4
//			ip daddr PublicV4 udp dport @udp_ports dnat ip to InternalV4
//			ip6 daddr PublicV6 tcp dport @tcp_ports dnat ip6 to InternalV6
//			ip6 daddr PublicV6 udp dport @udp_ports dnat ip6 to InternalV6 }
//		chain postrouting { type nat hook postrouting priority srcnat
//			ip saddr InstancesV4 ip daddr != OverlayV4 masquerade
//			ip6 saddr InstancesV6 ip6 daddr != OverlayV6 masquerade }
//		chain forward { type filter hook forward priority mangle
//			tcp flags syn tcp option maxseg size set rt mtu }
//	}
//
// A rule is left out when its addresses are not configured. The DNAT keeps the port: the
// node routes the internal address into its TUN, where its own NAPT maps the port to a
// service.
//
// Removing a port from the sets (SetPorts) stops new connections at once: their packets
// are no longer translated, reach the gateway's own stack at the public address, and are
// refused there. Established connections keep working, because the kernel evaluates NAT
// chains only for a connection's first packet and conntrack keeps its binding.
//
// Open, SetPorts and Close need CAP_NET_ADMIN in the namespace; the kernel needs
// nf_tables with NAT in the inet family (Linux 5.2 or later).
package firewall

import (
	"fmt"
	"net/netip"
	"slices"
)

// Defaults for Config's zero fields.
const (
	// DefaultTable is the nftables table that holds every rule of this package.
	DefaultTable = "semnet"
)

// DefaultOverlayV4 and DefaultOverlayV6 are the addresses inside the platform (worker
// subnets, Service IPs, Instance IPs, ADDRESSING.md): traffic to them is never
// masqueraded, because the other end must see the instance's own address.
func DefaultOverlayV4() netip.Prefix { return netip.MustParsePrefix("10.0.0.0/8") }

// DefaultOverlayV6 is DefaultOverlayV4 for IPv6: fc00::/7 holds the worker subnets
// (fc00::/8) and the Service and Instance IPs (fdff::/16).
func DefaultOverlayV6() netip.Prefix { return netip.MustParsePrefix("fc00::/7") }

// Config says what Open installs. Every field is optional; a family whose addresses are
// zero gets no rule.
type Config struct {
	// Table names the nftables table (family inet) that Open creates, replacing one of
	// the same name, and Close deletes. Default "semnet".
	Table string

	// PublicV4 and PublicV6 are the gateway's public addresses: TCP and UDP packets
	// arriving for one of them on a port in the exposed sets are DNATed to InternalV4 or
	// InternalV6, keeping the port. A zero public address leaves that family unserved;
	// a public address needs the internal address of its family.
	PublicV4, PublicV6 netip.Addr
	// InternalV4 and InternalV6 are the gateway's internal addresses (10.30.255.253 in
	// the default address plan), which the node routes into its TUN.
	InternalV4, InternalV6 netip.Addr

	// InstancesV4 and InstancesV6 are the subnets of the node's instances: their packets
	// to addresses outside OverlayV4 / OverlayV6 leave with the node's own address
	// (masquerade). A zero prefix masquerades nothing for that family.
	InstancesV4, InstancesV6 netip.Prefix
	// OverlayV4 and OverlayV6 are the platform's own addresses, never masqueraded;
	// defaults DefaultOverlayV4 (10.0.0.0/8) and DefaultOverlayV6 (fc00::/7).
	OverlayV4, OverlayV6 netip.Prefix

	// NetNS, when non-zero, is an open file descriptor of the network namespace to
	// configure; the caller keeps it open until Open returns. Zero means the namespace of
	// the OS thread that calls Open: a goroutine may move between threads, so a caller
	// that switched one thread into another namespace (nsthread.Do) must call Open on that
	// locked thread. Either way the netlink socket is opened once, by Open, and keeps its
	// namespace, so SetPorts and Close act on it from any goroutine.
	NetNS int
}

// withDefaults fills the zero fields that have defaults.
func (c Config) withDefaults() Config {
	if c.Table == "" {
		c.Table = DefaultTable
	}
	if !c.OverlayV4.IsValid() {
		c.OverlayV4 = DefaultOverlayV4()
	}
	if !c.OverlayV6.IsValid() {
		c.OverlayV6 = DefaultOverlayV6()
	}
	c.InstancesV4, c.InstancesV6 = c.InstancesV4.Masked(), c.InstancesV6.Masked()
	c.OverlayV4, c.OverlayV6 = c.OverlayV4.Masked(), c.OverlayV6.Masked()
	return c
}

// Validate reports the first field that Open could not turn into a rule, saying how to
// fix it; zero fields are read as their defaults.
func (c Config) Validate() error {
	c = c.withDefaults()
	// The kernel limits table names to NFT_NAME_MAXLEN (256) bytes with the NUL.
	if len(c.Table) > 255 || slices.Contains([]byte(c.Table), 0) {
		return fmt.Errorf("firewall: table name %q must be 1 to 255 bytes without NUL", c.Table)
	}
	for _, f := range []struct {
		name            string
		public, private netip.Addr
		want4           bool
	}{
		{"V4", c.PublicV4, c.InternalV4, true},
		{"V6", c.PublicV6, c.InternalV6, false},
	} {
		if !f.public.IsValid() {
			continue
		}
		if !isFamily(f.public, f.want4) {
			return fmt.Errorf("firewall: Public%s %s is not an %s address", f.name, f.public, familyName(f.want4))
		}
		if !f.private.IsValid() {
			return fmt.Errorf("firewall: Public%s %s is set but Internal%s is not: the gateway needs the internal address to DNAT to", f.name, f.public, f.name)
		}
		if !isFamily(f.private, f.want4) {
			return fmt.Errorf("firewall: Internal%s %s is not an %s address", f.name, f.private, familyName(f.want4))
		}
	}
	for _, f := range []struct {
		name  string
		p     netip.Prefix
		want4 bool
	}{
		{"InstancesV4", c.InstancesV4, true},
		{"InstancesV6", c.InstancesV6, false},
		{"OverlayV4", c.OverlayV4, true},
		{"OverlayV6", c.OverlayV6, false},
	} {
		if f.p.IsValid() && !isFamily(f.p.Addr(), f.want4) {
			return fmt.Errorf("firewall: %s %s is not an %s prefix", f.name, f.p, familyName(f.want4))
		}
	}
	return nil
}

// isFamily refuses IPv4-mapped IPv6 addresses as either family: the kernel compares the
// header's raw bytes, so such an address would never match.
func isFamily(a netip.Addr, want4 bool) bool {
	if want4 {
		return a.Is4()
	}
	return a.Is6() && !a.Is4In6()
}

func familyName(want4 bool) string {
	if want4 {
		return "IPv4"
	}
	return "IPv6"
}

// portSet returns ports sorted without duplicates, refusing port 0, which no exposure
// can use.
func portSet(proto string, ports []uint16) ([]uint16, error) {
	out := slices.Clone(ports)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > 0 && out[0] == 0 {
		return nil, fmt.Errorf("firewall: %s port 0 cannot be exposed", proto)
	}
	return out, nil
}
