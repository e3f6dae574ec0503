package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside the table, as `nft list table inet semnet` shows them.
const (
	chainPrerouting  = "prerouting"
	chainPostrouting = "postrouting"
	chainForward     = "forward"
	setTCPPorts      = "tcp_ports"
	setUDPPorts      = "udp_ports"
)

// Firewall is the table Open installed. Its methods may be called from any goroutine.
type Firewall struct {
	mu sync.Mutex // serialises batches: the nftables.Conn queues messages until Flush
	// conn is a lasting netlink socket opened in the configured namespace; nil once
	// closed.
	conn     *nftables.Conn
	table    *nftables.Table
	tcpPorts *nftables.Set
	udpPorts *nftables.Set
}

// Open installs the table described by cfg in one atomic batch: the table, its chains,
// the two port sets and the rules. The sets start empty, so nothing is exposed until
// SetPorts. A table of the same name left by an earlier run (a node restart) is replaced
// in the same batch: a failure leaves the old table as it was, and connections already
// translated keep their NAT bindings across the replacement (a separate delete would
// unhook NAT for a moment and reset them, see Close).
func Open(cfg Config) (*Firewall, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// Lasting: the socket is created now, in the namespace of NetNS or of the calling
	// thread, and keeps it; a socket per call would follow whichever thread runs it.
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(cfg.NetNS))
	if err != nil {
		return nil, fmt.Errorf("firewall: open nftables netlink socket: %w", err)
	}
	f := &Firewall{conn: conn, table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}}
	f.tcpPorts = f.portSet(setTCPPorts, 1)
	f.udpPorts = f.portSet(setUDPPorts, 2)
	if err := f.install(cfg); err != nil {
		_ = conn.CloseLasting()
		return nil, err
	}
	return f, nil
}

// portSet describes one set of exposed ports. The ID names the set to rules created in
// the same batch; setting it here keeps nftables.AddSet away from its package-level
// counter, which is not safe for concurrent use.
func (f *Firewall) portSet(name string, id uint32) *nftables.Set {
	return &nftables.Set{Table: f.table, Name: name, ID: id, KeyType: nftables.TypeInetService}
}

func (f *Firewall) install(cfg Config) error {
	c := f.conn
	// Adding first makes the delete succeed whether or not a leftover table exists.
	c.AddTable(f.table)
	c.DelTable(f.table)
	c.AddTable(f.table)

	for _, s := range []*nftables.Set{f.tcpPorts, f.udpPorts} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("firewall: set %s: %w", s.Name, err)
		}
	}

	pre := c.AddChain(&nftables.Chain{
		Name: chainPrerouting, Table: f.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest,
	})
	for _, fam := range []struct {
		public, internal netip.Addr
	}{{cfg.PublicV4, cfg.InternalV4}, {cfg.PublicV6, cfg.InternalV6}} {
		if !fam.public.IsValid() {
			continue
		}
		for _, p := range []struct {
			proto byte
			set   *nftables.Set
		}{{unix.IPPROTO_TCP, f.tcpPorts}, {unix.IPPROTO_UDP, f.udpPorts}} {
			c.AddRule(&nftables.Rule{Table: f.table, Chain: pre, Exprs: dnat(fam.public, fam.internal, p.proto, p.set)})
		}
	}

	post := c.AddChain(&nftables.Chain{
		Name: chainPostrouting, Table: f.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, fam := range []struct{ instances, overlay netip.Prefix }{
		{cfg.InstancesV4, cfg.OverlayV4}, {cfg.InstancesV6, cfg.OverlayV6},
	} {
		if fam.instances.IsValid() {
			c.AddRule(&nftables.Rule{Table: f.table, Chain: post, Exprs: masquerade(fam.instances, fam.overlay)})
		}
	}

	// Mangle priority: the clamp runs before any filter chain of the host's, so a
	// forwarded SYN leaves with the clamped MSS whatever else inspects it.
	fwd := c.AddChain(&nftables.Chain{
		Name: chainForward, Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle,
	})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: fwd, Exprs: clampMSS()})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("firewall: install nftables table inet %s (needs CAP_NET_ADMIN and a kernel with nf_tables NAT): %w", f.table.Name, err)
	}
	return nil
}

// SetPorts replaces the exposed TCP and UDP ports in one atomic batch (flush both sets,
// add the new ports): a packet sees either the old ports or the new ones. A port taken
// away refuses new connections at once while established ones go on (see the package
// doc). Duplicates are ignored; port 0 is an error.
func (f *Firewall) SetPorts(tcp, udp []uint16) error {
	tcp, err := portSet("TCP", tcp)
	if err != nil {
		return err
	}
	udp, err = portSet("UDP", udp)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil {
		return errors.New("firewall: SetPorts after Close")
	}
	for _, s := range []struct {
		set   *nftables.Set
		ports []uint16
	}{{f.tcpPorts, tcp}, {f.udpPorts, udp}} {
		f.conn.FlushSet(s.set)
		if len(s.ports) == 0 {
			continue // the kernel refuses an element list without elements
		}
		elems := make([]nftables.SetElement, len(s.ports))
		for i, p := range s.ports {
			elems[i].Key = binary.BigEndian.AppendUint16(nil, p)
		}
		if err := f.conn.SetAddElements(s.set, elems); err != nil {
			return fmt.Errorf("firewall: ports for set %s: %w", s.set.Name, err)
		}
	}
	if err := f.conn.Flush(); err != nil {
		return fmt.Errorf("firewall: set exposed ports in table inet %s (tcp %v, udp %v): %w", f.table.Name, tcp, udp, err)
	}
	return nil
}

// Close deletes the table, and with it every rule and set of this package, then closes
// the netlink socket. It ends the connections the table translated too, unless another
// table of the same family has NAT chains: the kernel applies a connection's NAT binding
// only while some NAT chain is hooked, so their next packets reach this host's own stack
// untranslated (TCP gets a reset). Replacing the table with Open instead keeps them.
// Calling Close again does nothing.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == nil {
		return nil
	}
	conn := f.conn
	f.conn = nil
	conn.DelTable(f.table)
	err := conn.Flush()
	if err != nil {
		err = fmt.Errorf("firewall: delete nftables table inet %s: %w", f.table.Name, err)
	}
	if cerr := conn.CloseLasting(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("firewall: close nftables netlink socket: %w", cerr))
	}
	return err
}

// Registers: nftables has 16-byte registers 1 to 4 (NFT_REG_1...); every rule here needs
// only one at a time.
const reg1 = 1

// Offsets in the IPv4 and IPv6 headers and in the TCP/UDP header.
const (
	ipv4Src, ipv4Dst = 12, 16
	ipv6Src, ipv6Dst = 8, 24
	l4DstPort        = 2
	tcpFlagsOffset   = 13
	tcpFlagSYN       = 0x02
	// tcpOptMaxSeg is TCP option kind 2, whose 2-byte value starts 2 bytes in.
	tcpOptMaxSeg       = 2
	tcpOptMaxSegOffset = 2
	tcpOptMaxSegLen    = 2
)

// matchFamily matches packets of a's family in the inet table; every address match needs
// it first, or the header offsets below would read the other family's header.
func matchFamily(a netip.Addr) []expr.Any {
	proto := byte(unix.NFPROTO_IPV6)
	if a.Is4() {
		proto = unix.NFPROTO_IPV4
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// matchPrefix compares the address at header offset src or dst (by a's family) with p,
// as `ip daddr 10.0.0.0/8` (op Eq) or `ip daddr != 10.0.0.0/8` (op Neq) does.
func matchPrefix(p netip.Prefix, source bool, op expr.CmpOp) []expr.Any {
	off := uint32(ipv6Dst)
	switch {
	case p.Addr().Is4() && source:
		off = ipv4Src
	case p.Addr().Is4():
		off = ipv4Dst
	case source:
		off = ipv6Src
	}
	n := uint32(p.Addr().BitLen() / 8)
	exprs := []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if p.Bits() < p.Addr().BitLen() {
		mask := netip.PrefixFrom(p.Addr(), p.Bits())
		exprs = append(exprs, &expr.Bitwise{
			SourceRegister: reg1, DestRegister: reg1, Len: n,
			Mask: prefixMask(mask), Xor: make([]byte, n),
		})
	}
	return append(exprs, &expr.Cmp{Op: op, Register: reg1, Data: p.Addr().AsSlice()})
}

// prefixMask returns p's netmask as bytes, 255.0.0.0 for a /8.
func prefixMask(p netip.Prefix) []byte {
	mask := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return mask
}

// matchL4 matches the transport protocol (`meta l4proto`, which skips IPv6 extension
// headers).
func matchL4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// dnat is `ip daddr public <proto> dport @set dnat ip to internal` (ip6 for IPv6).
func dnat(public, internal netip.Addr, proto byte, set *nftables.Set) []expr.Any {
	natFamily := uint32(unix.NFPROTO_IPV6)
	if public.Is4() {
		natFamily = unix.NFPROTO_IPV4
	}
	exprs := matchFamily(public)
	exprs = append(exprs, matchPrefix(netip.PrefixFrom(public, public.BitLen()), false, expr.CmpOpEq)...)
	exprs = append(exprs, matchL4(proto)...)
	return append(exprs,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: l4DstPort, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: set.Name, SetID: set.ID},
		&expr.Immediate{Register: reg1, Data: internal.AsSlice()},
		// No port registers: the destination port stays what the client sent.
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: natFamily, RegAddrMin: reg1},
	)
}

// masquerade is `ip saddr instances ip daddr != overlay masquerade` (ip6 for IPv6).
func masquerade(instances, overlay netip.Prefix) []expr.Any {
	exprs := matchFamily(instances.Addr())
	exprs = append(exprs, matchPrefix(instances, true, expr.CmpOpEq)...)
	exprs = append(exprs, matchPrefix(overlay, false, expr.CmpOpNeq)...)
	return append(exprs, &expr.Masq{})
}

// clampMSS is `tcp flags syn tcp option maxseg size set rt mtu`, for both families.
//
// Why: the node's TUN and instance links have MTU 1450 while a client's public link
// usually has 1500, so a client's SYN offers MSS 1460 and the far end would send segments
// that do not fit the path back; path MTU discovery rescues that only when ICMP gets
// through. The `rt mtu` value (NFT_RT_TCPMSS) is the MSS of the route the packet takes
// out, and the kernel's TCP-option write only ever lowers the MSS, never raises it.
// google/nftables has no helper for this, so the rule is spelled as the expressions nft
// itself compiles it to (`nft --debug=netlink`); `tcp flags syn` matches SYN and SYN-ACK
// alike.
func clampMSS() []expr.Any {
	exprs := matchL4(unix.IPPROTO_TCP)
	return append(exprs,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsOffset, Len: 1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 1, Mask: []byte{tcpFlagSYN}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0}},
		&expr.Rt{Register: reg1, Key: expr.RtTCPMSS},
		// rt stores the MSS in host byte order; the option is written as it stands.
		&expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{
			SourceRegister: reg1, Op: expr.ExthdrOpTcpopt,
			Type: tcpOptMaxSeg, Offset: tcpOptMaxSegOffset, Len: tcpOptMaxSegLen,
		},
	)
}
