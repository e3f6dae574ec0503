// Package netsetup configures a node's own network namespace for the datapath, through
// netlink: a bridge that carries the node's worker subnets (the instances' default
// gateway), the TUN device that the routes for Service IPs and Instance IPs lead into,
// the sysctls that let packets be forwarded between the two, and one veth pair per
// instance that joins the instance's namespace to the bridge (ADDRESSING.md).
//
//	instance netns           node netns                         node process
//	eth0 10.18.0.66/26 ─veth─ sv… ─┐
//	eth0 10.18.0.67/26 ─veth─ sv… ─┴ semnet0 10.18.0.65/26 ⇄ semnet-tun ⇄ proxy (10.30.0.0/16, fdff::/16)
//
// The node process runs inside the namespace it configures: Setup binds to the network
// namespace of the calling thread and never switches it. The only other namespaces it
// touches are instances': Attach creates the veth's peer directly inside one, and
// configures it through netlink sockets that a short-lived goroutine, locked to its
// thread, opens inside it.
//
// Addresses hands out the Namespace IPs of a node's subnets; it is pure and needs no
// privileges, while Setup and Host need CAP_NET_ADMIN.
package netsetup

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Defaults for Config's zero fields.
const (
	// DefaultBridge is the bridge that holds the node's worker subnets.
	DefaultBridge = "semnet0"
	// DefaultTUN is the TUN device the node's proxy reads and writes.
	DefaultTUN = "semnet-tun"
	// DefaultInstanceIf is the name of an instance's end of its veth pair.
	DefaultInstanceIf = "eth0"
	// DefaultMTU is the inner MTU of every link semnet configures (the reference
	// datapath's). The tunnel wraps each packet in an outer IPv4 and a UDP header,
	// 20 + 8 = 28 bytes (48 with an IPv6 outer header), so 1450 inner bytes make at most
	// 1478 (1498) outer bytes: they fit a 1500-byte underlay whichever family carries it.
	DefaultMTU = 1450
)

// DefaultServiceRanges are the prefixes of Service IPs and Instance IPs (ADDRESSING.md):
// every packet to them goes into the TUN, where the proxy translates it.
func DefaultServiceRanges() []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16"), netip.MustParsePrefix("fdff::/16")}
}

// Config says what Setup builds. Subnet and Subnet6 are required; every other zero field
// takes its default.
type Config struct {
	// Bridge names the bridge (default "semnet0").
	Bridge string
	// TUN names the TUN device (default "semnet-tun"). The caller creates it, with
	// golang.zx2c4.com/wireguard/tun's CreateTUN(name, MTU), before Setup.
	TUN string
	// InstanceIf names an instance's end of its veth pair (default "eth0").
	InstanceIf string
	// MTU is set on the bridge and on both ends of every veth pair (default 1450, see
	// DefaultMTU). The TUN keeps the MTU it was created with.
	MTU int
	// Subnet is the node's IPv4 worker subnet (a /26 from the cluster); the bridge takes
	// its first host address (subnet+1), instances the ones above.
	Subnet netip.Prefix
	// Subnet6 is the node's IPv6 worker subnet (a /120), used like Subnet.
	Subnet6 netip.Prefix
	// ServiceRanges are routed into the TUN (default 10.30.0.0/16 and fdff::/16).
	ServiceRanges []netip.Prefix
	// TUNAddrs are optional addresses for the TUN device. The routes into the TUN need
	// none; the reference datapath uses 10.19.1.254/12 and fcef::dead:beef/7.
	TUNAddrs []netip.Prefix
}

// withDefaults returns c with its zero fields set to the defaults.
func (c Config) withDefaults() Config {
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.TUN == "" {
		c.TUN = DefaultTUN
	}
	if c.InstanceIf == "" {
		c.InstanceIf = DefaultInstanceIf
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.ServiceRanges == nil {
		c.ServiceRanges = DefaultServiceRanges()
	}
	return c
}

// Validate reports the first problem with c after defaults are applied, naming the field.
func (c Config) Validate() error {
	c = c.withDefaults()
	for _, n := range []struct{ field, name string }{
		{"bridge", c.Bridge}, {"tun", c.TUN}, {"instance interface", c.InstanceIf},
	} {
		if err := checkLinkName(n.name); err != nil {
			return fmt.Errorf("netsetup: %s name: %w", n.field, err)
		}
	}
	if c.Bridge == c.TUN {
		return fmt.Errorf("netsetup: bridge and TUN are both named %q", c.Bridge)
	}
	// IPv6 needs at least 1280 on every link; 65535 is the largest an IPv4 packet can be.
	if c.MTU < 1280 || c.MTU > 65535 {
		return fmt.Errorf("netsetup: MTU %d is outside 1280…65535 (IPv6 needs at least 1280)", c.MTU)
	}
	if err := checkSubnet(c.Subnet, false); err != nil {
		return err
	}
	if err := checkSubnet(c.Subnet6, true); err != nil {
		return err
	}
	for _, r := range c.ServiceRanges {
		if !r.IsValid() || r != r.Masked() {
			return fmt.Errorf("netsetup: service range %s is not a prefix in canonical form (want %s)", r, r.Masked())
		}
		for _, s := range []netip.Prefix{c.Subnet, c.Subnet6} {
			if r.Overlaps(s) {
				return fmt.Errorf("netsetup: service range %s overlaps worker subnet %s", r, s)
			}
		}
	}
	for _, a := range c.TUNAddrs {
		if !a.IsValid() {
			return fmt.Errorf("netsetup: TUN address %s is not valid", a)
		}
	}
	return nil
}

// checkSubnet checks a worker subnet: the right family, canonical, and room for the
// network address, the bridge, one instance and (IPv4) the broadcast address.
func checkSubnet(p netip.Prefix, v6 bool) error {
	family, maxBits, example := "IPv4", 30, "10.18.0.64/26"
	if v6 {
		family, maxBits, example = "IPv6", 126, "fc00::100/120"
	}
	switch {
	case !p.IsValid():
		return fmt.Errorf("netsetup: %s worker subnet is missing (such as %s)", family, example)
	case p.Addr().Is6() != v6 || p.Addr().Is4In6():
		return fmt.Errorf("netsetup: worker subnet %s is not %s", p, family)
	case p != p.Masked():
		return fmt.Errorf("netsetup: worker subnet %s is not in canonical form (want %s)", p, p.Masked())
	case p.Bits() > maxBits:
		return fmt.Errorf("netsetup: worker subnet %s is too small for a bridge and an instance (at most /%d)", p, maxBits)
	}
	return nil
}

// checkLinkName applies the kernel's rules for interface names (dev_valid_name).
func checkLinkName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case len(name) > 15:
		return fmt.Errorf("%q is longer than the kernel's 15 characters", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("%q holds '/', ':' or white space", name)
	}
	return nil
}

// Gateway returns a worker subnet's first host address (subnet+1): the bridge's address
// and the instances' default gateway.
func Gateway(subnet netip.Prefix) netip.Addr {
	return subnet.Addr().Next()
}

// errNotInstance is wrapped by every error about an address that an instance may not hold.
var errNotInstance = errors.New("not an instance address")

// checkNamespaceIP checks that ip may be an instance's address in subnet: inside it, and
// neither the network address, the bridge (subnet+1) nor the IPv4 broadcast address.
func checkNamespaceIP(ip netip.Addr, subnet netip.Prefix) error {
	if !subnet.Contains(ip) {
		return fmt.Errorf("netsetup: %s is outside worker subnet %s: %w", ip, subnet, errNotInstance)
	}
	off := offset(subnet, ip)
	if off < firstOffset {
		return fmt.Errorf("netsetup: %s is the network or bridge address of worker subnet %s: %w", ip, subnet, errNotInstance)
	}
	if ip.Is4() && off == subnetSize(subnet)-1 {
		return fmt.Errorf("netsetup: %s is the broadcast address of worker subnet %s: %w", ip, subnet, errNotInstance)
	}
	return nil
}
