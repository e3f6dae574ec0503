package packet

import (
	"encoding/binary"
	"net/netip"
)

// SetSrc rewrites the source address in place; see SetAddrs.
func (p *Parsed) SetSrc(src netip.Addr) error { return p.setAddrs(src, netip.Addr{}, true, false) }

// SetDst rewrites the destination address in place; see SetAddrs.
func (p *Parsed) SetDst(dst netip.Addr) error { return p.setAddrs(netip.Addr{}, dst, false, true) }

// SetAddrs rewrites the source and destination addresses in place, with one incremental
// update of each checksum that covers them: the IPv4 header checksum, and through the
// pseudo-header the TCP, UDP (unless 0: "no checksum" stays 0) or ICMPv6 checksum.
// ICMPv4 has no pseudo-header, so its checksum does not change. Other protocols get only
// the IP header change; one whose checksum covers a pseudo-header this package does not
// know (DCCP, UDP-Lite) is left with a stale checksum.
//
// Fragments: the transport checksum of a fragmented datagram sits in the first fragment
// and covers the whole datagram plus the pseudo-header. The first fragment's checksum is
// updated here for the address change exactly as if it were whole; a non-first fragment
// has no transport header and only its IP header changes. Since every fragment of a
// datagram gets the same rewrite, the reassembled datagram carries the new addresses and a
// checksum that is right for them. (Rewriting fragments of one datagram differently, or
// only some of them, breaks it: the translator must key fragments to the first one's flow.)
//
// The addresses must be of the packet's family (ErrFamily), a zone is dropped. The
// destination of an IPv6 packet with a routing header that has segments left is refused
// (ErrRoutingHeader): its transport checksum covers the final destination in that header.
// On error nothing is changed.
func (p *Parsed) SetAddrs(src, dst netip.Addr) error { return p.setAddrs(src, dst, true, true) }

func (p *Parsed) setAddrs(src, dst netip.Addr, doSrc, doDst bool) error {
	var d uint32
	b := p.b
	switch p.Version {
	case 4:
		if (doSrc && !src.Is4()) || (doDst && !dst.Is4()) {
			return ErrFamily
		}
		if doSrc {
			d += swap4(b[12:16], src.As4())
			p.Src = src
		}
		if doDst {
			d += swap4(b[16:20], dst.As4())
			p.Dst = dst
		}
		update(b[10:12], d)
	case 6:
		if (doSrc && !src.Is6()) || (doDst && !dst.Is6()) {
			return ErrFamily
		}
		if doDst && p.flags&flagRouting != 0 {
			return ErrRoutingHeader
		}
		if doSrc {
			src = src.WithZone("")
			d += swap16(b[8:24], src)
			p.Src = src
		}
		if doDst {
			dst = dst.WithZone("")
			d += swap16(b[24:40], dst)
			p.Dst = dst
		}
	default:
		return ErrNotDecoded
	}
	if p.flags&flagTransport == 0 {
		return nil
	}
	tr := b[p.HeaderLen:]
	switch p.Proto {
	case TCP:
		if len(tr) >= 18 { // a quoted segment (Embedded) may stop before its checksum
			update(tr[16:18], d)
		}
	case UDP:
		updateUDP(tr[6:8], d)
	case ICMPv6:
		update(tr[2:4], d)
	}
	return nil
}

// SetSrcPort rewrites the TCP or UDP source port in place and updates the transport
// checksum incrementally (a UDP checksum of 0 stays 0). It works on a whole packet or a
// first fragment (ErrNoPorts otherwise): the gateway's NAPT uses it.
func (p *Parsed) SetSrcPort(port uint16) error {
	if err := p.setPort(0, port); err != nil {
		return err
	}
	p.SrcPort = port
	return nil
}

// SetDstPort rewrites the TCP or UDP destination port in place; see SetSrcPort.
func (p *Parsed) SetDstPort(port uint16) error {
	if err := p.setPort(2, port); err != nil {
		return err
	}
	p.DstPort = port
	return nil
}

func (p *Parsed) setPort(at int, port uint16) error {
	if !p.HasPorts() {
		return ErrNoPorts
	}
	tr := p.b[p.HeaderLen:]
	d := deltaWord(binary.BigEndian.Uint16(tr[at:]), port)
	binary.BigEndian.PutUint16(tr[at:], port)
	if p.Proto == TCP {
		if len(tr) >= 18 { // as in setAddrs
			update(tr[16:18], d)
		}
	} else {
		updateUDP(tr[6:8], d)
	}
	return nil
}

// SetEchoID rewrites the identifier of an ICMPv4 or ICMPv6 echo request or reply in place
// and updates the ICMP checksum incrementally (ErrNotEcho for any other packet).
func (p *Parsed) SetEchoID(id uint16) error {
	if !p.IsEcho() {
		return ErrNotEcho
	}
	tr := p.b[p.HeaderLen:]
	d := deltaWord(binary.BigEndian.Uint16(tr[4:6]), id)
	binary.BigEndian.PutUint16(tr[4:6], id)
	update(tr[2:4], d)
	p.EchoID = id
	return nil
}
