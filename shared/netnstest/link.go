package netnstest

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Link joins two namespaces with a veth pair: aName in a with addresses aAddrs, bName in
// b with bAddrs, both ends up. a and b may be the same namespace. IPv6 addresses are added
// with IFA_F_NODAD, so they are usable at once instead of after duplicate address
// detection.
func Link(t testing.TB, a *NS, aName string, aAddrs []netip.Prefix, b *NS, bName string, bAddrs []netip.Prefix) {
	t.Helper()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.fd),
	}
	if err := a.nl.LinkAdd(veth); err != nil {
		t.Fatalf("netnstest: veth %s (namespace %s) to %s (namespace %s): %v", aName, a.Name, bName, b.Name, err)
	}
	Configure(t, a, aName, aAddrs...)
	Configure(t, b, bName, bAddrs...)
}

// Configure sets the link ifName in ns up and adds addrs to it (IPv6 ones with
// IFA_F_NODAD).
func Configure(t testing.TB, ns *NS, ifName string, addrs ...netip.Prefix) {
	t.Helper()
	link, err := ns.nl.LinkByName(ifName)
	if err != nil {
		t.Fatalf("netnstest: link %s in namespace %s: %v", ifName, ns.Name, err)
	}
	// Up before the addresses: an IPv6 address added while its link was down was seen
	// (Linux 6.18, veth) to answer neighbour solicitations only about a second after the
	// link came up, even with IFA_F_NODAD, which fails a ping with -W1.
	if err := ns.nl.LinkSetUp(link); err != nil {
		t.Fatalf("netnstest: set %s up in namespace %s: %v", ifName, ns.Name, err)
	}
	for _, p := range addrs {
		if err := ns.nl.AddrAdd(link, Addr(p)); err != nil {
			t.Fatalf("netnstest: add %s to %s in namespace %s: %v", p, ifName, ns.Name, err)
		}
	}
}

// Addr converts p to a netlink address, with IFA_F_NODAD for IPv6.
func Addr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// Bridge creates a bridge named name in ns and sets it up.
func Bridge(t testing.TB, ns *NS, name string) *netlink.Bridge {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := ns.nl.LinkAdd(br); err != nil {
		t.Fatalf("netnstest: add bridge %s in namespace %s: %v", name, ns.Name, err)
	}
	if err := ns.nl.LinkSetUp(br); err != nil {
		t.Fatalf("netnstest: set bridge %s up in namespace %s: %v", name, ns.Name, err)
	}
	return br
}

// Underlay is a test's stand-in for the network between hosts: a namespace holding one
// bridge, to which each host namespace is joined by a veth pair. Hosts attached to one
// Underlay reach each other at layer 2 and nothing else.
type Underlay struct {
	// NS is the underlay's own namespace.
	NS *NS
	// Bridge is the name of the bridge inside NS.
	Bridge string

	mu    sync.Mutex
	ports int
}

// NewUnderlay creates an underlay namespace with its bridge up.
func NewUnderlay(t testing.TB) *Underlay {
	t.Helper()
	u := &Underlay{NS: New(t, "ul"), Bridge: "ul0"}
	Bridge(t, u.NS, u.Bridge)
	return u
}

// Attach joins ns to the underlay: a veth named ifName inside ns, holding addrs and up,
// whose peer is a port of the underlay's bridge.
func (u *Underlay) Attach(t testing.TB, ns *NS, ifName string, addrs ...netip.Prefix) {
	t.Helper()
	u.mu.Lock()
	u.ports++
	port := fmt.Sprintf("ulp%d", u.ports)
	u.mu.Unlock()

	br, err := u.NS.nl.LinkByName(u.Bridge)
	if err != nil {
		t.Fatalf("netnstest: underlay bridge %s: %v", u.Bridge, err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: br.Attrs().Index},
		PeerName:      ifName,
		PeerNamespace: netlink.NsFd(ns.fd),
	}
	if err := u.NS.nl.LinkAdd(veth); err != nil {
		t.Fatalf("netnstest: underlay port %s to %s (namespace %s): %v", port, ifName, ns.Name, err)
	}
	Configure(t, u.NS, port)
	Configure(t, ns, ifName, addrs...)
}
