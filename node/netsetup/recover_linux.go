package netsetup

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A restarted node takes over what the one before it left: the bridge keeps the worker
// subnet pair as its addresses, and each instance's host-side veth carries, as its
// alias (`ip link show` prints it), the instance's identity and Namespace IPs. The
// kernel is the record: a veth exists exactly as long as its instance's namespace, so
// nothing can go stale the way a state file could (a namespace that died while the
// node was down took its veth with it).

// aliasPrefix starts the alias Attach gives an instance's host-side veth:
// "semnet <nsIP> <nsIP6> <instance>". The identity goes last, so it may hold spaces.
const aliasPrefix = "semnet "

// maxAlias is the kernel's limit on a link alias (IFALIASZ, 256 with the NUL).
const maxAlias = 255

func attachAlias(nsIP, nsIP6 netip.Addr, instance string) (string, error) {
	a := aliasPrefix + nsIP.String() + " " + nsIP6.String() + " " + instance
	if len(a) > maxAlias {
		return "", fmt.Errorf("netsetup: instance identity %.40q… is too long to record on its veth (%d bytes of alias, the kernel keeps %d)", instance, len(a), maxAlias)
	}
	return a, nil
}

// Attachment is an instance attached to the bridge, as Recover finds it.
type Attachment struct {
	Instance    string // the identity Attach was given
	NSIP, NSIP6 netip.Addr
	Link        string // the host-side veth
}

// parseAlias reads what attachAlias wrote, and checks it against the link's name and
// the worker subnets.
func (c Config) parseAlias(link, alias string) (Attachment, error) {
	rest, ok := strings.CutPrefix(alias, aliasPrefix)
	if !ok {
		return Attachment{}, fmt.Errorf("no semnet alias (%q)", alias)
	}
	f := strings.SplitN(rest, " ", 3)
	if len(f) != 3 || f[2] == "" {
		return Attachment{}, fmt.Errorf("alias %q is not \"semnet <nsip> <nsipv6> <instance>\"", alias)
	}
	a := Attachment{Instance: f[2], Link: link}
	var err4, err6 error
	a.NSIP, err4 = netip.ParseAddr(f[0])
	a.NSIP6, err6 = netip.ParseAddr(f[1])
	if err := errors.Join(err4, err6); err != nil {
		return Attachment{}, fmt.Errorf("alias %q: %w", alias, err)
	}
	if VethName(a.Instance) != link {
		return Attachment{}, fmt.Errorf("alias names instance %q, whose veth is %s", a.Instance, VethName(a.Instance))
	}
	if err := errors.Join(checkNamespaceIP(a.NSIP, c.Subnet), checkNamespaceIP(a.NSIP6, c.Subnet6)); err != nil {
		return Attachment{}, err
	}
	return a, nil
}

// Recover lists the instances an earlier node attached to the bridge, as a restarted
// node does after Setup. A veth on the bridge it cannot account for (no alias, one that
// does not match the link's name, or Namespace IPs outside this node's worker subnets)
// is deleted, since its addresses would otherwise be handed out again while its
// instance still holds them; each deletion is reported in dropped.
func (h *Host) Recover() (found []Attachment, dropped []error, err error) {
	if h.nl == nil {
		return nil, nil, errors.New("netsetup: recover: the Host is closed")
	}
	br, err := h.nl.LinkByName(h.cfg.Bridge)
	if err != nil {
		return nil, nil, fmt.Errorf("netsetup: recover: find bridge %s: %w", h.cfg.Bridge, err)
	}
	links, err := dump(h.nl.LinkList)
	if err != nil {
		return nil, nil, fmt.Errorf("netsetup: recover: list links: %w", err)
	}
	for _, l := range links {
		at := l.Attrs()
		if at.MasterIndex != br.Attrs().Index || !strings.HasPrefix(at.Name, vethPrefix) {
			continue
		}
		a, perr := h.cfg.parseAlias(at.Name, at.Alias)
		if perr == nil {
			found = append(found, a)
			continue
		}
		if derr := h.nl.LinkDel(l); derr != nil && !isNotFound(derr) {
			return found, dropped, fmt.Errorf("netsetup: recover: delete veth %s (%v): %w", at.Name, perr, derr)
		}
		dropped = append(dropped, fmt.Errorf("netsetup: deleted veth %s on bridge %s: %w", at.Name, h.cfg.Bridge, perr))
	}
	return found, dropped, nil
}

// BridgeSubnets returns the worker subnet pair a bridge left by an earlier node carries
// (its addresses are the subnets' first hosts, with their lengths), for a restarted node
// to keep: its instances hold addresses in it. ok is false when there is no such bridge
// or it does not carry exactly one IPv4 and one IPv6 subnet of the given lengths. It
// looks in the calling thread's network namespace.
func BridgeSubnets(bridge string, bits4, bits6 int) (subnet, subnet6 netip.Prefix, ok bool, err error) {
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return subnet, subnet6, false, fmt.Errorf("netsetup: open netlink: %w", err)
	}
	defer nl.Close()
	br, err := nl.LinkByName(bridge)
	if isNotFound(err) {
		return subnet, subnet6, false, nil
	}
	if err != nil {
		return subnet, subnet6, false, fmt.Errorf("netsetup: find bridge %s: %w", bridge, err)
	}
	if br.Type() != "bridge" {
		return subnet, subnet6, false, nil
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return nl.AddrList(br, netlink.FAMILY_ALL) })
	if err != nil {
		return subnet, subnet6, false, fmt.Errorf("netsetup: list addresses of bridge %s: %w", bridge, err)
	}
	var v4, v6 []netip.Prefix
	for _, a := range addrs {
		p := prefixOf(a.IPNet)
		switch {
		case p.Addr().IsLinkLocalUnicast():
		case p.Addr().Is4() && p.Bits() == bits4 && Gateway(p.Masked()) == p.Addr():
			v4 = append(v4, p.Masked())
		case p.Addr().Is6() && p.Bits() == bits6 && Gateway(p.Masked()) == p.Addr():
			v6 = append(v6, p.Masked())
		default:
			return subnet, subnet6, false, nil
		}
	}
	if len(v4) != 1 || len(v6) != 1 {
		return subnet, subnet6, false, nil
	}
	return v4[0], v6[0], true, nil
}
