package netsetup

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/netnstest"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/tun"
)

// node is a node namespace with its TUN, set up by Setup.
type node struct {
	ns      *netnstest.NS
	host    *Host
	tun     tun.Device
	packets chan []byte // what the kernel routed into the TUN
}

// hostState is what must not change in the test process's own namespace.
func hostState(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, l := range links {
		fmt.Fprintf(&b, "link %d:%s\n", l.Attrs().Index, l.Attrs().Name)
	}
	for _, f := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/rp_filter"} {
		v, err := os.ReadFile("/proc/sys/" + f)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s=%s", f, v)
	}
	return b.String()
}

// newNode creates a node namespace holding a TUN made as the node process makes it, and
// runs Setup inside it. The TUN's packets are collected in packets.
func newNode(t *testing.T, cfg Config) *node {
	t.Helper()
	n := &node{ns: netnstest.New(t, "node"), packets: make(chan []byte, 64)}
	name := cfg.TUN
	if name == "" {
		name = DefaultTUN
	}
	if err := n.ns.Do(func() error {
		var err error
		n.tun, err = tun.CreateTUN(name, DefaultMTU)
		return err
	}); err != nil {
		t.Fatalf("create TUN in %s: %v", n.ns, err)
	}
	t.Cleanup(func() { _ = n.tun.Close() })
	go n.readTUN()
	n.host = n.setup(t, cfg)
	return n
}

func (n *node) setup(t *testing.T, cfg Config) *Host {
	t.Helper()
	var h *Host
	if err := n.ns.Do(func() error {
		var err error
		h, err = Setup(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func (n *node) readTUN() {
	const offset = 16 // room for the virtio header the device writes in front
	bufs := make([][]byte, n.tun.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	sizes := make([]int, len(bufs))
	for {
		c, err := n.tun.Read(bufs, sizes, offset)
		if err != nil {
			close(n.packets)
			return
		}
		for i := range c {
			select {
			case n.packets <- slices.Clone(bufs[i][offset : offset+sizes[i]]):
			default: // nobody is looking; drop
			}
		}
	}
}

// expectPacket waits for a UDP packet from src to dst in the TUN, skipping others (the
// kernel sends IPv6 router solicitations and MLD reports there too).
func (n *node) expectPacket(t *testing.T, src, dst netip.Addr) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case p, ok := <-n.packets:
			if !ok {
				t.Fatal("TUN closed")
			}
			s, d, proto := parseIP(p)
			if s == src && d == dst && proto == 17 {
				return
			}
		case <-deadline:
			t.Fatalf("no UDP packet %s -> %s reached the TUN", src, dst)
		}
	}
}

func (n *node) write(t *testing.T, pkt []byte) {
	t.Helper()
	const offset = 16
	buf := append(make([]byte, offset), pkt...)
	if _, err := n.tun.Write([][]byte{buf}, offset); err != nil {
		t.Fatalf("write into the TUN: %v", err)
	}
}

func TestSetupAttach(t *testing.T) {
	netnstest.Require(t)
	netnstest.RequireTool(t, "ping", "iputils-ping")
	before := hostState(t)

	n := newNode(t, Config{Subnet: subnet, Subnet6: subnet6})
	bridgeMAC := func() string {
		br, err := n.ns.Handle().LinkByName(DefaultBridge)
		if err != nil {
			t.Fatal(err)
		}
		return br.Attrs().HardwareAddr.String()
	}
	mac := bridgeMAC()
	addrs, err := NewAddresses(subnet, subnet6)
	if err != nil {
		t.Fatal(err)
	}
	type instance struct {
		ns   *netnstest.NS
		ips  NamespaceIPs
		link string
	}
	var insts []instance
	for i := 1; i <= 2; i++ {
		ns := netnstest.New(t, fmt.Sprintf("inst%d", i))
		ips, err := addrs.Allocate()
		if err != nil {
			t.Fatal(err)
		}
		// Called from the test goroutine, not inside the node namespace: the Host works
		// through its own sockets.
		link, err := n.host.Attach(ns.Path, ips.V4, ips.V6, fmt.Sprintf("job/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if link != VethName(fmt.Sprintf("job/%d", i)) {
			t.Errorf("Attach returned %q, want VethName", link)
		}
		insts = append(insts, instance{ns, ips, link})
	}
	a, b := insts[0], insts[1]
	if got := bridgeMAC(); got != mac {
		t.Errorf("the bridge's MAC address changed from %s to %s as ports joined: instances' neighbour entries for the gateway go stale", mac, got)
	}

	t.Run("node namespace", func(t *testing.T) {
		out := n.ns.Run(t, "ip", "-d", "addr", "show", "semnet0")
		for _, want := range []string{"mtu 1450", "bridge", "inet 10.18.0.65/26", "inet6 fc00::101/120", ",UP"} {
			if !strings.Contains(out, want) {
				t.Errorf("semnet0 lacks %q:\n%s", want, out)
			}
		}
		for _, inst := range insts {
			out := n.ns.Run(t, "ip", "link", "show", inst.link)
			if !strings.Contains(out, "master semnet0") || !strings.Contains(out, "mtu 1450") || !strings.Contains(out, "state UP") {
				t.Errorf("%s is not an up port of semnet0 with MTU 1450:\n%s", inst.link, out)
			}
		}
		for _, s := range []struct{ file, want string }{
			{"net/ipv4/ip_forward", "1"},
			{"net/ipv6/conf/all/forwarding", "1"},
			{"net/ipv4/conf/all/rp_filter", "0"},
			{"net/ipv4/conf/semnet-tun/rp_filter", "0"},
		} {
			if got := strings.TrimSpace(n.ns.Run(t, "cat", "/proc/sys/"+s.file)); got != s.want {
				t.Errorf("%s = %s in the node namespace, want %s", s.file, got, s.want)
			}
		}
	})

	t.Run("service routes lead into the TUN", func(t *testing.T) {
		tunLink, err := n.ns.Handle().LinkByName(DefaultTUN)
		if err != nil {
			t.Fatal(err)
		}
		for _, dst := range []string{"10.30.0.7", "10.30.255.253", "fdff:2000::7"} {
			rs, err := n.ns.Handle().RouteGet(net.ParseIP(dst))
			if err != nil {
				t.Fatal(err)
			}
			if len(rs) != 1 || rs[0].LinkIndex != tunLink.Attrs().Index {
				t.Errorf("route to %s = %v, want via %s (index %d)", dst, rs, DefaultTUN, tunLink.Attrs().Index)
			}
		}
		if out := n.ns.Run(t, "ip", "route", "show", "10.30.0.0/16"); !strings.Contains(out, "dev semnet-tun proto 83 scope link") {
			t.Errorf("ip route show 10.30.0.0/16 = %q", out)
		}
	})

	t.Run("instance namespace", func(t *testing.T) {
		out := a.ns.Run(t, "ip", "addr", "show", "eth0")
		for _, want := range []string{"mtu 1450", "inet " + a.ips.V4.String() + "/26", "inet6 " + a.ips.V6.String() + "/120", "state UP"} {
			if !strings.Contains(out, want) {
				t.Errorf("eth0 lacks %q:\n%s", want, out)
			}
		}
		if out := a.ns.Run(t, "ip", "route", "show", "default"); !strings.Contains(out, "default via 10.18.0.65 dev eth0") {
			t.Errorf("IPv4 default route = %q", out)
		}
		if out := a.ns.Run(t, "ip", "-6", "route", "show", "default"); !strings.Contains(out, "default via fc00::101 dev eth0") {
			t.Errorf("IPv6 default route = %q", out)
		}
		if out := a.ns.Run(t, "ip", "-o", "link", "show"); strings.Count(out, "\n") != 2 || !strings.Contains(out, "lo: <LOOPBACK,UP") {
			t.Errorf("the instance should hold exactly lo (up) and eth0:\n%s", out)
		}
	})

	t.Run("ping across the bridge", func(t *testing.T) {
		for _, dst := range []netip.Addr{b.ips.V4, b.ips.V6, Gateway(subnet), Gateway(subnet6)} {
			a.ns.Run(t, "ping", "-c1", "-W1", dst.String())
		}
		b.ns.Run(t, "ping", "-c1", "-W1", a.ips.V6.String())
	})

	// The sysctls at work: the node forwards between the bridge and the TUN both ways.
	t.Run("instance to TUN", func(t *testing.T) {
		for _, dst := range []string{"10.30.0.7:53", "[fdff:2000::7]:53"} {
			c, err := a.ns.Dial("udp", dst)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Write([]byte("hello"))
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			ap := netip.MustParseAddrPort(dst)
			src := a.ips.V4
			if ap.Addr().Is6() {
				src = a.ips.V6
			}
			n.expectPacket(t, src, ap.Addr())
		}
	})
	t.Run("TUN to instance", func(t *testing.T) {
		for _, pair := range [][2]netip.Addr{
			{netip.MustParseAddr("10.30.0.7"), a.ips.V4},
			{netip.MustParseAddr("fdff:2000::7"), a.ips.V6},
		} {
			pc, err := a.ns.ListenPacket("udp", netip.AddrPortFrom(pair[1], 0).String())
			if err != nil {
				t.Fatal(err)
			}
			port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			n.write(t, udpPacket(pair[0], pair[1], 4242, port, []byte("from the proxy")))
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			m, from, err := pc.ReadFrom(buf)
			pc.Close()
			if err != nil {
				t.Fatalf("%s -> %s: %v", pair[0], pair[1], err)
			}
			if string(buf[:m]) != "from the proxy" || netip.MustParseAddrPort(from.String()).Addr() != pair[0] {
				t.Errorf("got %q from %v, want the packet from %s", buf[:m], from, pair[0])
			}
		}
	})

	t.Run("setup again", func(t *testing.T) {
		// A restarted node finds its bridge and keeps its instances attached.
		h2 := n.setup(t, Config{Subnet: subnet, Subnet6: subnet6})
		if out := n.ns.Run(t, "ip", "-o", "addr", "show", "semnet0"); strings.Count(out, "\n") != 3 {
			t.Errorf("semnet0 should hold its two addresses and a link-local one:\n%s", out)
		}
		if out := n.ns.Run(t, "ip", "route", "show", "dev", DefaultTUN); strings.Count(out, "\n") != 1 {
			t.Errorf("routes via the TUN:\n%s", out)
		}
		a.ns.Run(t, "ping", "-c1", "-W1", b.ips.V4.String())
		_ = h2.Close()
	})

	t.Run("recover", func(t *testing.T) {
		var (
			s4, s6 netip.Prefix
			ok     bool
		)
		if err := n.ns.Do(func() (err error) { s4, s6, ok, err = BridgeSubnets(DefaultBridge, 26, 120); return err }); err != nil {
			t.Fatal(err)
		}
		if !ok || s4 != subnet || s6 != subnet6 {
			t.Errorf("BridgeSubnets = %v %v %v, want %v %v", s4, s6, ok, subnet, subnet6)
		}
		if err := n.ns.Do(func() (err error) { _, _, ok, err = BridgeSubnets("nobridge", 26, 120); return err }); err != nil || ok {
			t.Errorf("BridgeSubnets of a missing bridge = %v, %v; want not found", ok, err)
		}
		// A veth on the bridge nobody can account for: made by hand, no alias.
		n.ns.Run(t, "ip", "link", "add", "sv0123456789ab", "type", "veth", "peer", "name", "stray")
		n.ns.Run(t, "ip", "link", "set", "sv0123456789ab", "master", DefaultBridge)

		found, dropped, err := n.host.Recover()
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(found, func(x, y Attachment) int { return strings.Compare(x.Instance, y.Instance) })
		want := []Attachment{
			{Instance: "job/1", NSIP: a.ips.V4, NSIP6: a.ips.V6, Link: a.link},
			{Instance: "job/2", NSIP: b.ips.V4, NSIP6: b.ips.V6, Link: b.link},
		}
		if !slices.Equal(found, want) {
			t.Errorf("Recover found %+v, want %+v", found, want)
		}
		if len(dropped) != 1 || !strings.Contains(dropped[0].Error(), "sv0123456789ab") {
			t.Errorf("Recover dropped %v, want the stray veth", dropped)
		}
		if _, err := n.ns.Handle().LinkByName("sv0123456789ab"); err == nil {
			t.Error("the stray veth is still there")
		}
		a.ns.Run(t, "ping", "-c1", "-W1", b.ips.V4.String()) // the recovered ones are untouched
	})

	t.Run("detach", func(t *testing.T) {
		if err := n.host.Detach("job/1"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.ns.Handle().LinkByName(a.link); err == nil {
			t.Errorf("%s still exists after Detach", a.link)
		}
		if _, err := a.ns.Handle().LinkByName("eth0"); err == nil {
			t.Error("the instance's eth0 outlived its veth peer")
		}
		if err := n.host.Detach("job/1"); err != nil {
			t.Errorf("Detach of a detached instance = %v", err)
		}
		if err := addrs.Release(a.ips.V4); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("teardown", func(t *testing.T) {
		if err := n.host.Teardown(); err != nil {
			t.Fatal(err)
		}
		out := n.ns.Run(t, "ip", "-o", "link", "show")
		if strings.Contains(out, "semnet0") || strings.Contains(out, b.link) {
			t.Errorf("bridge or veth left after Teardown:\n%s", out)
		}
		if out := n.ns.Run(t, "ip", "route", "show", "dev", DefaultTUN); out != "" {
			t.Errorf("routes via the TUN left after Teardown:\n%s", out)
		}
		if err := n.host.Teardown(); err != nil {
			t.Errorf("second Teardown = %v", err)
		}
	})

	if after := hostState(t); after != before {
		t.Errorf("the host namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestSetupChangedConfig(t *testing.T) {
	netnstest.Require(t)
	before := hostState(t)
	tunAddr := netip.MustParsePrefix("10.19.1.254/12")
	n := newNode(t, Config{Subnet: subnet, Subnet6: subnet6, TUNAddrs: []netip.Prefix{tunAddr}})
	if out := n.ns.Run(t, "ip", "addr", "show", DefaultTUN); !strings.Contains(out, "inet 10.19.1.254/12") {
		t.Errorf("TUN lacks its address:\n%s", out)
	}

	// The node comes back with another subnet, one service range and an MTU of 1400.
	newSubnet := netip.MustParsePrefix("10.18.0.128/26")
	only := []netip.Prefix{netip.MustParsePrefix("10.30.0.0/16")}
	n.setup(t, Config{Subnet: newSubnet, Subnet6: subnet6, ServiceRanges: only, MTU: 1400})
	out := n.ns.Run(t, "ip", "addr", "show", "semnet0")
	if strings.Contains(out, "10.18.0.65") || !strings.Contains(out, "inet 10.18.0.129/26") || !strings.Contains(out, "mtu 1400") {
		t.Errorf("bridge after a subnet change:\n%s", out)
	}
	if out := n.ns.Run(t, "ip", "-6", "route", "show", "dev", DefaultTUN); strings.Contains(out, "fdff::/16") {
		t.Errorf("stale route fdff::/16 kept:\n%s", out)
	}
	// A route someone else made into the TUN is not Setup's to remove.
	n.ns.Run(t, "ip", "route", "add", "10.99.0.0/16", "dev", DefaultTUN)
	h := n.setup(t, Config{Subnet: newSubnet, Subnet6: subnet6, ServiceRanges: only, TUNAddrs: []netip.Prefix{tunAddr}})
	if out := n.ns.Run(t, "ip", "route", "show", "dev", DefaultTUN); !strings.Contains(out, "10.99.0.0/16") {
		t.Errorf("Setup removed a route it did not make:\n%s", out)
	}
	if err := h.Teardown(); err != nil {
		t.Fatal(err)
	}
	out = n.ns.Run(t, "ip", "addr", "show", DefaultTUN)
	if strings.Contains(out, "10.19.1.254") {
		t.Errorf("Teardown left the TUN's address:\n%s", out)
	}
	if after := hostState(t); after != before {
		t.Errorf("the host namespace changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestSetupErrors(t *testing.T) {
	netnstest.Require(t)
	ns := netnstest.New(t, "node")
	err := ns.Do(func() error {
		_, err := Setup(Config{Subnet: subnet, Subnet6: subnet6})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "TUN device semnet-tun not found") {
		t.Errorf("Setup without a TUN = %v", err)
	}
	err = ns.Do(func() error {
		_, err := Setup(Config{Subnet: subnet})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "IPv6 worker subnet is missing") {
		t.Errorf("Setup without an IPv6 subnet = %v", err)
	}
}

func TestAttachErrors(t *testing.T) {
	netnstest.Require(t)
	n := newNode(t, Config{Subnet: subnet, Subnet6: subnet6})
	inst := netnstest.New(t, "inst")
	ip, ip6 := netip.MustParseAddr("10.18.0.66"), netip.MustParseAddr("fc00::102")
	links := func() string { return n.ns.Run(t, "ip", "-o", "link", "show") }
	before := links()

	for _, c := range []struct {
		name, path string
		ip, ip6    netip.Addr
		want       string
	}{
		{"bridge address", inst.Path, Gateway(subnet), ip6, "network or bridge address"},
		{"broadcast", inst.Path, netip.MustParseAddr("10.18.0.127"), ip6, "broadcast"},
		{"other subnet", inst.Path, ip, netip.MustParseAddr("fc00::202"), "outside worker subnet fc00::100/120"},
		{"no namespace", "/var/run/netns/sn-does-not-exist", ip, ip6, "open network namespace"},
	} {
		if _, err := n.host.Attach(c.path, c.ip, c.ip6, "job/x"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Attach = %v, want an error containing %q", c.name, err, c.want)
		}
	}

	// The instance already has an eth0 (here: one end of a veth pair of its own).
	netnstest.Link(t, inst, "eth0", nil, inst, "other", nil)
	_, err := n.host.Attach(inst.Path, ip, ip6, "job/x")
	if err == nil || !strings.Contains(err.Error(), "already have a link eth0") {
		t.Errorf("Attach over an existing eth0 = %v", err)
	}
	if after := links(); after != before {
		t.Errorf("a failed Attach left links behind:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestVethName(t *testing.T) {
	a, b := VethName("job/1"), VethName("job/2")
	if a == b || a != VethName("job/1") {
		t.Errorf("VethName is not a stable, distinct name: %s %s", a, b)
	}
	if len(a) > 15 || !strings.HasPrefix(a, "sv") {
		t.Errorf("VethName = %q: want sv… within 15 characters", a)
	}
}

func parseIP(p []byte) (src, dst netip.Addr, proto byte) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), p[9]
	case len(p) >= 40 && p[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), p[6]
	}
	return netip.Addr{}, netip.Addr{}, 0
}

// udpPacket builds an IPv4 or IPv6 UDP packet with correct checksums.
func udpPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)

	pseudo := append(src.AsSlice(), dst.AsSlice()...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(len(udp))) // IPv6 form; same sum as IPv4's
	pseudo = append(pseudo, 0, 0, 0, 17)
	sum := checksum(append(pseudo, udp...))
	if sum == 0 {
		sum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], sum)

	if src.Is4() {
		ip := make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 17
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
		copy(ip[12:], src.AsSlice())
		copy(ip[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
		return append(ip, udp...)
	}
	ip := make([]byte, 40)
	ip[0], ip[6], ip[7] = 0x60, 17, 64
	binary.BigEndian.PutUint16(ip[4:], uint16(len(udp)))
	copy(ip[8:], src.AsSlice())
	copy(ip[24:], dst.AsSlice())
	return append(ip, udp...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
