package netsetup

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/shared/nsthread"
	"golang.org/x/sys/unix"
)

// routeProtocol marks the routes Setup installs (`ip route` shows "proto 83"), so a
// restarted node can tell its own stale routes from anyone else's.
const routeProtocol netlink.RouteProtocol = 83

// vethPrefix starts the name of every instance's host-side veth.
const vethPrefix = "sv"

// Host is the datapath configuration of the node's network namespace, as Setup left it.
// Its methods may be called from any goroutine and thread: they work through netlink
// sockets opened inside the node's namespace by Setup.
type Host struct {
	cfg Config
	nl  *netlink.Handle
}

// Setup configures the network namespace of the calling thread (the node process's own)
// for the datapath, and may be called again on a namespace it already configured, as a
// restarted node does:
//
//   - sysctls: net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1, and rp_filter=0 for
//     all, the TUN and the bridge (packets from the TUN carry source addresses, such as
//     other nodes' Namespace IPs, whose reverse route is not the TUN);
//   - the bridge: created if missing, MTU, up, and exactly the addresses subnet+1/26 and
//     subnet6+1/120 besides its link-local one;
//   - the TUN, which the caller created with golang.zx2c4.com/wireguard/tun's
//     CreateTUN(cfg.TUN, mtu): its TUNAddrs, up;
//   - one route per service range into the TUN; routes Setup made for ranges no longer
//     configured are removed.
//
// The TUN's addresses and routes die with the TUN, which lives as long as the file the
// node process opened for it; the bridge, the veths and the sysctls outlive the process.
//
// Close the Host when done with it; Teardown removes what Setup made.
func Setup(cfg Config) (*Host, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// The sockets belong to the calling thread's namespace for their whole life.
	nl, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netsetup: open netlink: %w", err)
	}
	h := &Host{cfg: cfg, nl: nl}
	if err := h.setup(); err != nil {
		nl.Close()
		return nil, err
	}
	return h, nil
}

func (h *Host) setup() error {
	c := h.cfg
	tun, err := h.nl.LinkByName(c.TUN)
	if err != nil {
		if isNotFound(err) {
			return fmt.Errorf("netsetup: TUN device %s not found in this network namespace: create it first (wireguard tun.CreateTUN)", c.TUN)
		}
		return fmt.Errorf("netsetup: find TUN device %s: %w", c.TUN, err)
	}
	// First, so the links set up below never forward (or drop) with the wrong settings.
	for _, s := range [][]string{
		{"1", "net", "ipv4", "ip_forward"},
		{"1", "net", "ipv6", "conf", "all", "forwarding"},
		{"0", "net", "ipv4", "conf", "all", "rp_filter"},
		{"0", "net", "ipv4", "conf", c.TUN, "rp_filter"},
	} {
		if err := writeSysctl(s[0], s[1:]...); err != nil {
			return err
		}
	}
	if err := h.setupBridge(); err != nil {
		return err
	}

	if err := h.nl.LinkSetUp(tun); err != nil {
		return fmt.Errorf("netsetup: set TUN device %s up: %w", c.TUN, err)
	}
	for _, p := range c.TUNAddrs {
		if err := h.nl.AddrReplace(tun, nlAddr(p)); err != nil {
			return fmt.Errorf("netsetup: add %s to TUN device %s: %w", p, c.TUN, err)
		}
	}
	return h.setupRoutes(tun)
}

func (h *Host) setupBridge() error {
	c := h.cfg
	br, err := h.nl.LinkByName(c.Bridge)
	switch {
	case err == nil:
		if br.Type() != "bridge" {
			return fmt.Errorf("netsetup: %s exists but is a %s link, not a bridge: delete it or configure another bridge name", c.Bridge, br.Type())
		}
		if br.Attrs().MTU != c.MTU {
			if err := h.nl.LinkSetMTU(br, c.MTU); err != nil {
				return fmt.Errorf("netsetup: set MTU %d on bridge %s: %w", c.MTU, c.Bridge, err)
			}
		}
	case isNotFound(err):
		// A bridge takes the lowest MAC address of its ports unless it is given one, and
		// so changes it as instances come and go, leaving every instance's neighbour entry
		// for its gateway stale. An address set at creation stays.
		attrs := netlink.LinkAttrs{Name: c.Bridge, MTU: c.MTU, HardwareAddr: randomMAC()}
		if err := h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
			return fmt.Errorf("netsetup: create bridge %s: %w", c.Bridge, err)
		}
		if br, err = h.nl.LinkByName(c.Bridge); err != nil {
			return fmt.Errorf("netsetup: find bridge %s after creating it: %w", c.Bridge, err)
		}
	default:
		return fmt.Errorf("netsetup: find bridge %s: %w", c.Bridge, err)
	}
	if err := writeSysctl("0", "net", "ipv4", "conf", c.Bridge, "rp_filter"); err != nil {
		return err
	}
	// Up before addresses: an IPv6 address added while its link was down was seen (Linux
	// 6.18, veth) to answer neighbour solicitations only about a second after the link
	// came up, even with IFA_F_NODAD.
	if err := h.nl.LinkSetUp(br); err != nil {
		return fmt.Errorf("netsetup: set bridge %s up: %w", c.Bridge, err)
	}

	want := []netip.Prefix{
		netip.PrefixFrom(Gateway(c.Subnet), c.Subnet.Bits()),
		netip.PrefixFrom(Gateway(c.Subnet6), c.Subnet6.Bits()),
	}
	have, err := dump(func() ([]netlink.Addr, error) { return h.nl.AddrList(br, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("netsetup: list addresses of bridge %s: %w", c.Bridge, err)
	}
	// A node given other subnets than before must not keep answering for the old ones.
	for _, a := range have {
		p := prefixOf(a.IPNet)
		if p.Addr().IsLinkLocalUnicast() || slices.Contains(want, p) {
			continue
		}
		if err := h.nl.AddrDel(br, &a); err != nil {
			return fmt.Errorf("netsetup: remove stale address %s from bridge %s: %w", p, c.Bridge, err)
		}
	}
	for _, p := range want {
		if err := h.nl.AddrReplace(br, nlAddr(p)); err != nil {
			return fmt.Errorf("netsetup: add %s to bridge %s: %w", p, c.Bridge, err)
		}
	}
	return nil
}

func (h *Host) setupRoutes(tun netlink.Link) error {
	c := h.cfg
	ours, err := h.routes(tun)
	if err != nil {
		return err
	}
	for _, r := range ours {
		if !slices.Contains(c.ServiceRanges, prefixOf(r.Dst)) {
			if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("netsetup: remove stale route %s via TUN device %s: %w", r.Dst, c.TUN, err)
			}
		}
	}
	for _, p := range c.ServiceRanges {
		if err := h.nl.RouteReplace(tunRoute(tun, p)); err != nil {
			return fmt.Errorf("netsetup: route %s into TUN device %s: %w", p, c.TUN, err)
		}
	}
	return nil
}

// routes lists the routes Setup made into the TUN.
func (h *Host) routes(tun netlink.Link) ([]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: tun.Attrs().Index, Protocol: routeProtocol}
	rs, err := dump(func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return nil, fmt.Errorf("netsetup: list routes via TUN device %s: %w", h.cfg.TUN, err)
	}
	return rs, nil
}

func tunRoute(tun netlink.Link, p netip.Prefix) *netlink.Route {
	scope := netlink.SCOPE_LINK // as `ip route add … dev` makes it; IPv6 ignores scope
	if p.Addr().Is6() {
		scope = netlink.SCOPE_UNIVERSE
	}
	return &netlink.Route{LinkIndex: tun.Attrs().Index, Dst: ipNet(p), Scope: scope, Protocol: routeProtocol}
}

// Config returns the configuration the Host was set up with, defaults filled in.
func (h *Host) Config() Config { return h.cfg }

// Close releases the Host's netlink sockets and leaves the namespace configured, as a
// node that stops to restart does. The Host is unusable afterwards.
func (h *Host) Close() error {
	if h.nl != nil {
		h.nl.Close()
		h.nl = nil
	}
	return nil
}

// Teardown removes what Setup and Attach made: the routes into the TUN, the TUN's
// addresses, every instance veth on the bridge, and the bridge. The TUN itself belongs
// to its creator, and the sysctls stay (they belong to the namespace, not to a link).
// Teardown tolerates what is already gone, so it may be repeated after a failure; Close
// the Host afterwards.
func (h *Host) Teardown() error {
	if h.nl == nil {
		return errors.New("netsetup: teardown: the Host is closed")
	}
	c := h.cfg
	var errs []error
	if tun, err := h.nl.LinkByName(c.TUN); err == nil {
		ours, err := h.routes(tun)
		errs = append(errs, err)
		for _, r := range ours {
			if err := h.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("netsetup: remove route %s via TUN device %s: %w", r.Dst, c.TUN, err))
			}
		}
		for _, p := range c.TUNAddrs {
			if err := h.nl.AddrDel(tun, nlAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("netsetup: remove %s from TUN device %s: %w", p, c.TUN, err))
			}
		}
	} else if !isNotFound(err) {
		errs = append(errs, fmt.Errorf("netsetup: find TUN device %s: %w", c.TUN, err))
	}

	br, err := h.nl.LinkByName(c.Bridge)
	if isNotFound(err) {
		return errors.Join(errs...)
	}
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("netsetup: find bridge %s: %w", c.Bridge, err))...)
	}
	// Deleting a bridge only frees its ports; the instances' veths go explicitly.
	links, err := dump(h.nl.LinkList)
	if err != nil {
		errs = append(errs, fmt.Errorf("netsetup: list links: %w", err))
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index && strings.HasPrefix(l.Attrs().Name, vethPrefix) {
			if err := h.nl.LinkDel(l); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("netsetup: delete veth %s: %w", l.Attrs().Name, err))
			}
		}
	}
	if err := h.nl.LinkDel(br); err != nil && !isNotFound(err) {
		errs = append(errs, fmt.Errorf("netsetup: delete bridge %s: %w", c.Bridge, err))
	}
	return errors.Join(errs...)
}

// VethName returns the name of the host-side veth of the instance with the given
// identity (such as "<job>/<instance>"): "sv" and 12 hex digits of its SHA-256, 14
// characters, within the kernel's 15. A restarted node finds its instances' links by it.
func VethName(instance string) string {
	sum := sha256.Sum256([]byte(instance))
	return vethPrefix + hex.EncodeToString(sum[:6])
}

// Attach joins an instance to the bridge and returns the name of its host-side veth
// (VethName(instance)). nsPath is the instance's network namespace, such as
// /proc/<pid>/ns/net or /var/run/netns/<name>; nsIP and nsIP6 are its Namespace IPs from
// Addresses.
//
// The veth's peer is created directly inside the instance's namespace under its final
// name (Config.InstanceIf, default eth0), so no half-configured link ever shows up in the
// node's namespace under a clashing name. There it gets nsIP and nsIP6 with the worker
// subnets' lengths (/26, /120; IPv6 without duplicate address detection, so it is usable
// at once), lo and itself up, and default routes via the bridge's addresses. Both ends
// have the configured MTU.
//
// The host-side veth's alias records the instance and its Namespace IPs, which is how a
// restarted node finds it again (Recover); the identity must fit (about 200 bytes).
//
// A host-side veth left by an earlier Attach of the same instance is replaced. On error
// nothing Attach made is left behind.
func (h *Host) Attach(nsPath string, nsIP, nsIP6 netip.Addr, instance string) (string, error) {
	if h.nl == nil {
		return "", errors.New("netsetup: attach: the Host is closed")
	}
	if instance == "" {
		return "", errors.New("netsetup: attach: empty instance identity")
	}
	c, name := h.cfg, VethName(instance)
	alias, err := attachAlias(nsIP.Unmap(), nsIP6, instance)
	if err != nil {
		return "", err
	}
	if err := checkNamespaceIP(nsIP.Unmap(), c.Subnet); err != nil {
		return "", fmt.Errorf("netsetup: attach veth %s: %w", name, err)
	}
	if err := checkNamespaceIP(nsIP6, c.Subnet6); err != nil {
		return "", fmt.Errorf("netsetup: attach veth %s: %w", name, err)
	}
	br, err := h.nl.LinkByName(c.Bridge)
	if err != nil {
		return "", fmt.Errorf("netsetup: attach veth %s: find bridge %s (did Setup run?): %w", name, c.Bridge, err)
	}

	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return "", fmt.Errorf("netsetup: attach veth %s: open network namespace %s: %w", name, nsPath, err)
	}
	defer target.Close()
	inst, err := handleAt(target)
	if err != nil {
		return "", fmt.Errorf("netsetup: attach veth %s: netlink in namespace %s: %w", name, nsPath, err)
	}
	defer inst.Close()

	if err := h.Detach(instance); err != nil {
		return "", err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name, MTU: c.MTU}, // the peer gets the same MTU
		PeerName:      c.InstanceIf,
		PeerNamespace: netlink.NsFd(target),
	}
	if err := h.nl.LinkAdd(veth); err != nil {
		hint := ""
		if errors.Is(err, unix.EEXIST) {
			hint = fmt.Sprintf(" (does namespace %s already have a link %s?)", nsPath, c.InstanceIf)
		}
		return "", fmt.Errorf("netsetup: create veth %s with peer %s in namespace %s%s: %w", name, c.InstanceIf, nsPath, hint, err)
	}
	if err := h.configure(veth, br, inst, nsPath, nsIP.Unmap(), nsIP6, alias); err != nil {
		if derr := h.nl.LinkDel(veth); derr != nil && !isNotFound(derr) {
			err = errors.Join(err, fmt.Errorf("netsetup: delete veth %s after a failed attach: %w", name, derr))
		}
		return "", err
	}
	return name, nil
}

// configure finishes Attach once the veth pair exists.
func (h *Host) configure(veth *netlink.Veth, br netlink.Link, inst *netlink.Handle, nsPath string, nsIP, nsIP6 netip.Addr, alias string) error {
	c, name := h.cfg, veth.Name
	// What a restarted node recovers the instance by (Recover); set first, so a veth on
	// the bridge always has it.
	if err := h.nl.LinkSetAlias(veth, alias); err != nil {
		return fmt.Errorf("netsetup: set alias of veth %s: %w", name, err)
	}
	if err := h.nl.LinkSetMaster(veth, br); err != nil {
		return fmt.Errorf("netsetup: attach veth %s to bridge %s: %w", name, c.Bridge, err)
	}
	if err := h.nl.LinkSetUp(veth); err != nil {
		return fmt.Errorf("netsetup: set veth %s up: %w", name, err)
	}

	in := func(err error, format string, args ...any) error {
		return fmt.Errorf("netsetup: attach veth %s: %s in namespace %s: %w", name, fmt.Sprintf(format, args...), nsPath, err)
	}
	lo, err := inst.LinkByName("lo")
	if err == nil {
		err = inst.LinkSetUp(lo)
	}
	if err != nil {
		return in(err, "set lo up")
	}
	eth, err := inst.LinkByName(c.InstanceIf)
	if err != nil {
		return in(err, "find %s", c.InstanceIf)
	}
	// Up before addresses: see setupBridge.
	if err := inst.LinkSetUp(eth); err != nil {
		return in(err, "set %s up", c.InstanceIf)
	}
	for _, p := range []netip.Prefix{
		netip.PrefixFrom(nsIP, c.Subnet.Bits()),
		netip.PrefixFrom(nsIP6, c.Subnet6.Bits()),
	} {
		if err := inst.AddrReplace(eth, nlAddr(p)); err != nil {
			return in(err, "add %s to %s", p, c.InstanceIf)
		}
	}
	for _, gw := range []netip.Addr{Gateway(c.Subnet), Gateway(c.Subnet6)} {
		dflt := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if gw.Is6() {
			dflt = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: ipNet(dflt), Gw: gw.AsSlice()}
		if err := inst.RouteReplace(r); err != nil {
			return in(err, "default route via %s", gw)
		}
	}
	return nil
}

// Detach deletes the host-side veth of the instance; its peer in the instance's namespace
// goes with it. An instance that is not attached is no error.
func (h *Host) Detach(instance string) error {
	if h.nl == nil {
		return errors.New("netsetup: detach: the Host is closed")
	}
	name := VethName(instance)
	l, err := h.nl.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err == nil {
		err = h.nl.LinkDel(l)
	}
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("netsetup: delete veth %s: %w", name, err)
	}
	return nil
}

// handleAt opens netlink sockets inside ns (netlink.NewHandleAt, done on a thread that
// is discarded if it cannot return; see nsthread).
func handleAt(ns netns.NsHandle) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := nsthread.Do(ns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		if h != nil {
			h.Close()
		}
		return nil, err
	}
	return h, nil
}

// writeSysctl sets the sysctl named by parts (net, ipv4, conf, <interface>, rp_filter)
// in the calling thread's network namespace: files under /proc/sys/net belong to the
// namespace of the thread that opens them. Parts, not a dotted key, because interface
// names may hold dots.
func writeSysctl(value string, parts ...string) error {
	if err := os.WriteFile("/proc/sys/"+strings.Join(parts, "/"), []byte(value), 0); err != nil {
		return fmt.Errorf("netsetup: sysctl %s=%s: %w", strings.Join(parts, "."), value, err)
	}
	return nil
}

// dump runs a netlink dump again while the kernel reports it was interrupted by a
// concurrent change (netlink.ErrDumpInterrupted), which would leave it incomplete.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	for attempt := 0; ; attempt++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && attempt < 5 {
			continue
		}
		return v, err
	}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// randomMAC returns a random locally administered unicast MAC address.
func randomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	_, _ = rand.Read(mac) // crypto/rand.Read never fails on Linux
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once: nobody else is on the bridge to clash
	}
	return a
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}
