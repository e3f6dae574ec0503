package firewall

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/semnet/semnet/shared/netnstest"
)

// The test's hosts, each a namespace (TESTING.md, Datapath). "Public" addresses come from
// the documentation ranges; the gateway's internal addresses are the address plan's.
//
//	client 198.51.100.2 ─pub─ gw 198.51.100.1 ─int (MTU 1450 at gw)─ server 10.30.255.253
//	                          gw 10.18.0.1/26  ─ins─ inst 10.18.0.2
var (
	clientV4 = netip.MustParsePrefix("198.51.100.2/24")
	publicV4 = netip.MustParsePrefix("198.51.100.1/24")
	clientV6 = netip.MustParsePrefix("2001:db8:1::2/64")
	publicV6 = netip.MustParsePrefix("2001:db8:1::1/64")

	// The link between gw and server stands for the node's TUN: its own addresses are
	// only next hops for the routes to the internal addresses.
	gwLinkV4     = netip.MustParsePrefix("192.0.2.1/24")
	serverLinkV4 = netip.MustParsePrefix("192.0.2.2/24")
	gwLinkV6     = netip.MustParsePrefix("2001:db8:2::1/64")
	serverLinkV6 = netip.MustParsePrefix("2001:db8:2::2/64")
	internalV4   = netip.MustParsePrefix("10.30.255.253/32")
	internalV6   = netip.MustParsePrefix("fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffd/128")

	instancesV4 = netip.MustParsePrefix("10.18.0.0/26")
	instGwV4    = netip.MustParsePrefix("10.18.0.1/26")
	instV4      = netip.MustParsePrefix("10.18.0.2/26")
	instancesV6 = netip.MustParsePrefix("fc00::100/120")
	instGwV6    = netip.MustParsePrefix("fc00::101/120")
	instV6      = netip.MustParsePrefix("fc00::102/120")
)

// tunMTU is the MTU of gw's end of the link to server, the node's TUN MTU. server's end
// keeps 1500, as an instance beyond a wider path would: only the clamp on the client's
// SYN tells server to send segments that fit gw's route.
const tunMTU = 1450

// exposed is the port the tests expose and take away; exposedBulk stays exposed.
const exposed, exposedBulk = 8080, 9000

type topology struct {
	client, gw, server, inst *netnstest.NS
	gwFD                     int // an open fd of gw's namespace, for Config.NetNS
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	netnstest.Require(t)
	tp := &topology{
		client: netnstest.New(t, "client"),
		gw:     netnstest.New(t, "gw"),
		server: netnstest.New(t, "server"),
		inst:   netnstest.New(t, "inst"),
	}
	// No duplicate address detection on the links about to be made: their link-local
	// addresses would stay tentative for a second or two, and IPv6 forwarding through gw
	// stall meanwhile (a SYN retransmitted after 1 s, then 3 s).
	for _, ns := range []*netnstest.NS{tp.client, tp.gw, tp.server, tp.inst} {
		writeSysctls(t, ns, "0", "/proc/sys/net/ipv6/conf/all/accept_dad", "/proc/sys/net/ipv6/conf/default/accept_dad")
	}
	netnstest.Link(t, tp.client, "eth0", []netip.Prefix{clientV4, clientV6}, tp.gw, "pub", []netip.Prefix{publicV4, publicV6})
	netnstest.Link(t, tp.server, "eth0", []netip.Prefix{serverLinkV4, serverLinkV6, internalV4, internalV6}, tp.gw, "int", []netip.Prefix{gwLinkV4, gwLinkV6})
	netnstest.Link(t, tp.inst, "eth0", []netip.Prefix{instV4, instV6}, tp.gw, "ins", []netip.Prefix{instGwV4, instGwV6})

	tp.gw.Run(t, "ip", "link", "set", "int", "mtu", fmt.Sprint(tunMTU))
	tp.gw.Run(t, "ip", "route", "add", internalV4.String(), "via", serverLinkV4.Addr().String())
	tp.gw.Run(t, "ip", "-6", "route", "add", internalV6.String(), "via", serverLinkV6.Addr().String())
	for _, h := range []struct {
		ns     *netnstest.NS
		v4, v6 netip.Prefix
	}{{tp.client, publicV4, publicV6}, {tp.server, gwLinkV4, gwLinkV6}, {tp.inst, instGwV4, instGwV6}} {
		h.ns.Run(t, "ip", "route", "add", "default", "via", h.v4.Addr().String())
		h.ns.Run(t, "ip", "-6", "route", "add", "default", "via", h.v6.Addr().String())
	}
	// The node turns forwarding on (netsetup); this package does not.
	writeSysctls(t, tp.gw, "1", "/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")

	h, err := netns.GetFromPath(tp.gw.Path)
	if err != nil {
		t.Fatalf("open namespace %s: %v", tp.gw.Path, err)
	}
	t.Cleanup(func() { h.Close() })
	tp.gwFD = int(h)
	return tp
}

// writeSysctls writes value to each of paths, which /proc resolves in the namespace of
// the writing thread.
func writeSysctls(t *testing.T, ns *netnstest.NS, value string, paths ...string) {
	t.Helper()
	if err := ns.Do(func() error {
		for _, p := range paths {
			if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("sysctl in %s: %v", ns, err)
	}
}

// config is the gateway's full configuration in gw.
func (tp *topology) config() Config {
	return Config{
		PublicV4: publicV4.Addr(), InternalV4: internalV4.Addr(),
		PublicV6: publicV6.Addr(), InternalV6: internalV6.Addr(),
		InstancesV4: instancesV4, InstancesV6: instancesV6,
		NetNS: tp.gwFD,
	}
}

func (tp *topology) open(t *testing.T, cfg Config) *Firewall {
	t.Helper()
	if cfg.NetNS <= 0 {
		t.Fatal("test bug: a Config without NetNS would change the test process's own namespace")
	}
	f, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// tables lists the inet tables in gw, read with a socket of their own.
func (tp *topology) tables(t *testing.T) []string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(tp.gwFD))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables in %s: %v", tp.gw, err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

// tcpEcho serves line echoes on addr in ns; each line is answered with the peer's
// address, a space, and the line, so the client learns what the server saw.
func tcpEcho(t *testing.T, ns *netnstest.NS, addr netip.AddrPort) {
	t.Helper()
	l, err := ns.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// udpEcho is tcpEcho for datagrams.
func udpEcho(t *testing.T, ns *netnstest.NS, addr netip.AddrPort) {
	t.Helper()
	pc, err := ns.ListenPacket("udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s", from, buf[:n]), from)
		}
	}()
}

// dial connects from client to the gateway's public address and port.
func dial(t *testing.T, client *netnstest.NS, network string, to netip.AddrPort) (net.Conn, error) {
	t.Helper()
	c, err := client.Dial(network, to.String())
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c, nil
}

// exchange sends msg on c and returns the address the server saw for the client.
// A connected socket accepts only what comes from the address it dialled, so an answer
// at all proves the reply left the gateway from the public address.
func exchange(c net.Conn, msg string) (netip.Addr, error) {
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		return netip.Addr{}, err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return netip.Addr{}, err
	}
	seen, rest, ok := strings.Cut(string(buf[:n]), " ")
	if !ok || rest != msg+"\n" {
		return netip.Addr{}, fmt.Errorf("echo %q, want %q after the peer's address", buf[:n], msg)
	}
	ap, err := netip.ParseAddrPort(seen)
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr().Unmap(), nil
}

// exchangeFrom is exchange that also checks the server saw want.
func exchangeFrom(t *testing.T, c net.Conn, msg string, want netip.Addr) {
	t.Helper()
	seen, err := exchange(c, msg)
	if err != nil {
		t.Fatalf("%s %s -> %s: %v", c.LocalAddr().Network(), c.LocalAddr(), c.RemoteAddr(), err)
	}
	if seen != want {
		t.Errorf("%s %s -> %s: the server saw the client as %s, want %s", c.LocalAddr().Network(), c.LocalAddr(), c.RemoteAddr(), seen, want)
	}
}

// connect dials from client to `to` over network, checks one exchange as exchangeFrom
// does, and returns the connection, closed when the test ends.
func connect(t *testing.T, client *netnstest.NS, network string, to netip.AddrPort, msg string, want netip.Addr) net.Conn {
	t.Helper()
	c, err := dial(t, client, network, to)
	if err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
	t.Cleanup(func() { c.Close() })
	exchangeFrom(t, c, msg, want)
	return c
}

// expectRefused checks that a new flow from client to `to` reaches gw's own stack, which
// has no socket there: TCP gets a reset, UDP a port unreachable, both ECONNREFUSED on a
// connected socket.
func expectRefused(t *testing.T, client *netnstest.NS, network string, to netip.AddrPort, when string) {
	t.Helper()
	c, err := dial(t, client, network, to)
	if err == nil {
		defer c.Close()
		_, err = exchange(c, "refused?")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("%s: new %s flow to %s: %v, want connection refused", when, network, to, err)
	}
}

func families() []struct {
	name             string
	public, internal netip.Addr
	client           netip.Addr
} {
	return []struct {
		name             string
		public, internal netip.Addr
		client           netip.Addr
	}{
		{"IPv4", publicV4.Addr(), internalV4.Addr(), clientV4.Addr()},
		{"IPv6", publicV6.Addr(), internalV6.Addr(), clientV6.Addr()},
	}
}

func TestGatewayDNAT(t *testing.T) {
	tp := newTopology(t)
	f := tp.open(t, tp.config())
	if err := f.SetPorts([]uint16{exposed, exposedBulk}, []uint16{exposed}); err != nil {
		t.Fatal(err)
	}
	for _, fam := range families() {
		tcpEcho(t, tp.server, netip.AddrPortFrom(fam.internal, exposed))
		udpEcho(t, tp.server, netip.AddrPortFrom(fam.internal, exposed))
	}

	for _, fam := range families() {
		public := netip.AddrPortFrom(fam.public, exposed)
		t.Run(fam.name, func(t *testing.T) {
			// Opened while 8080 is exposed; must survive its removal below.
			var established []net.Conn
			for _, network := range []string{"tcp", "udp"} {
				established = append(established, connect(t, tp.client, network, public, "hello", fam.client))
			}

			t.Run("MSS clamp", func(t *testing.T) { testMSSClamp(t, tp, fam.public, fam.internal) })

			if err := f.SetPorts([]uint16{exposedBulk}, nil); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := f.SetPorts([]uint16{exposed, exposedBulk}, []uint16{exposed}); err != nil {
					t.Error(err)
				}
			})

			for _, network := range []string{"tcp", "udp"} {
				expectRefused(t, tp.client, network, public, "after the port was removed")
			}

			for _, c := range established {
				exchangeFrom(t, c, "still there", fam.client)
			}
		})
	}
}

// testMSSClamp downloads through the gateway on the second exposed TCP port and checks
// the MSS server uses toward the client: without the clamp it is sized from server's
// 1500-byte link (1448 with timestamps, seen when the rule is left out), with it from gw's
// route MTU. The download proves the rewritten SYN still makes a working connection.
func testMSSClamp(t *testing.T, tp *topology, public, internal netip.Addr) {
	const size = 256 << 10
	maxMSS := tunMTU - 40 // IPv4 + TCP headers
	if internal.Is6() {
		maxMSS = tunMTU - 60
	}
	l, err := tp.server.Listen("tcp", netip.AddrPortFrom(internal, exposedBulk).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	mss := make(chan int, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			mss <- -1
			return
		}
		defer c.Close()
		got := -1
		if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if v, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG); err == nil {
					got = v
				}
			})
		}
		mss <- got
		_, _ = c.Write(make([]byte, size))
	}()

	c, err := dial(t, tp.client, "tcp", netip.AddrPortFrom(public, exposedBulk))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if n != size {
		t.Errorf("downloaded %d of %d bytes through a %d-byte link: %v", n, size, tunMTU, err)
	}
	if got := <-mss; got <= 0 || got > maxMSS {
		t.Errorf("server's MSS toward the client = %d, want at most %d (gw's route MTU %d)", got, maxMSS, tunMTU)
	}
}

func TestMasquerade(t *testing.T) {
	tp := newTopology(t)
	tp.open(t, tp.config())
	const port = 7000
	for _, tc := range []struct {
		name     string
		listener *netnstest.NS
		to, want netip.Addr
	}{
		{"outside IPv4 is masqueraded", tp.client, clientV4.Addr(), publicV4.Addr()},
		{"outside IPv6 is masqueraded", tp.client, clientV6.Addr(), publicV6.Addr()},
		{"overlay IPv4 keeps the instance's address", tp.server, internalV4.Addr(), instV4.Addr()},
		{"overlay IPv6 keeps the instance's address", tp.server, internalV6.Addr(), instV6.Addr()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			to := netip.AddrPortFrom(tc.to, port)
			tcpEcho(t, tc.listener, to)
			udpEcho(t, tc.listener, to)
			for _, network := range []string{"tcp", "udp"} {
				connect(t, tp.inst, network, to, "from an instance", tc.want)
			}
		})
	}
}

func TestReopenAndClose(t *testing.T) {
	tp := newTopology(t)
	tcpEcho(t, tp.server, netip.AddrPortFrom(internalV4.Addr(), exposed))
	public := netip.AddrPortFrom(publicV4.Addr(), exposed)
	// NetNS 0: the namespace of the thread calling Open. SetPorts then runs on other
	// threads, in the test process's own namespace, and must still act on gw's table.
	cfg := tp.config()
	cfg.NetNS = 0
	var first *Firewall
	if err := tp.gw.Do(func() error {
		var err error
		first, err = Open(cfg)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := first.SetPorts([]uint16{exposed}, nil); err != nil {
		t.Fatal(err)
	}
	c := connect(t, tp.client, "tcp", public, "through the table Open made on gw's thread", clientV4.Addr())

	// A crashed node leaves its table behind; the next Open replaces it.
	if err := first.conn.CloseLasting(); err != nil {
		t.Fatal(err)
	}
	second := tp.open(t, tp.config())
	if got := tp.tables(t); !slices.Equal(got, []string{DefaultTable}) {
		t.Errorf("inet tables in %s after the second Open: %v, want just %s", tp.gw, got, DefaultTable)
	}
	expectRefused(t, tp.client, "tcp", public, "after the second Open, before SetPorts")
	exchangeFrom(t, c, "across the restart", clientV4.Addr())

	if err := second.SetPorts([]uint16{exposed}, nil); err != nil {
		t.Fatal(err)
	}
	connect(t, tp.client, "tcp", public, "after SetPorts on the second table", clientV4.Addr())

	if err := second.Close(); err != nil {
		t.Fatal(err)
	}
	if got := tp.tables(t); len(got) != 0 {
		t.Errorf("inet tables in %s after Close: %v, want none", tp.gw, got)
	}
	expectRefused(t, tp.client, "tcp", public, "after Close")
	if err := second.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
	if err := second.SetPorts([]uint16{exposed}, nil); err == nil {
		t.Error("SetPorts after Close succeeded, want an error")
	}
}

func TestSetPortsRefusesPortZero(t *testing.T) {
	tp := newTopology(t)
	f := tp.open(t, tp.config())
	if err := f.SetPorts([]uint16{80, 0}, nil); err == nil || !strings.Contains(err.Error(), "TCP port 0") {
		t.Errorf("SetPorts with port 0 = %v, want an error naming it", err)
	}
	// Duplicates are one port, not an error from the kernel.
	if err := f.SetPorts([]uint16{80, 80, 443}, []uint16{53, 53}); err != nil {
		t.Errorf("SetPorts with duplicates: %v", err)
	}
}
