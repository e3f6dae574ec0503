// Package packet parses and rewrites IPv4 and IPv6 packets in place: the pure core of
// the node's translator (FLOWS.md: src -> Instance IP, dst -> Namespace IP, and back).
//
// One [Parsed] is reused for every packet a goroutine handles: [Parsed.Decode] refills it
// from a buffer and allocates nothing, and the Set* methods rewrite addresses, ports and
// ICMP echo identifiers in that buffer, updating every checksum incrementally (RFC 1624)
// instead of summing the packet again. An ICMP error embeds the packet it is about;
// [Parsed.Embedded] rewrites that packet too, so the sender can match the error to its
// flow. Nothing here does I/O.
//
// Fragments are decoded, not dropped (the reference dropped them): a non-first fragment
// carries no transport header, so it has no ports and its rewrite changes only the IP
// header; see [Parsed.SetAddrs] for why the reassembled datagram is still correct.
package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Proto is an IP protocol number (IPv4 Protocol, IPv6 Next Header).
type Proto uint8

// Protocol numbers the package knows (IANA "Assigned Internet Protocol Numbers").
const (
	HopByHop     Proto = 0  // IPv6 Hop-by-Hop Options extension header
	ICMPv4       Proto = 1  // ICMP for IPv4
	TCP          Proto = 6  // TCP
	UDP          Proto = 17 // UDP
	Routing      Proto = 43 // IPv6 Routing extension header
	Fragment     Proto = 44 // IPv6 Fragment extension header
	ICMPv6       Proto = 58 // ICMP for IPv6
	NoNextHeader Proto = 59 // IPv6: nothing follows
	DstOpts      Proto = 60 // IPv6 Destination Options extension header
)

// String returns the protocol's usual name, or its number.
func (p Proto) String() string {
	switch p {
	case HopByHop:
		return "HopByHop"
	case ICMPv4:
		return "ICMPv4"
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case Routing:
		return "Routing"
	case Fragment:
		return "Fragment"
	case ICMPv6:
		return "ICMPv6"
	case NoNextHeader:
		return "NoNextHeader"
	case DstOpts:
		return "DstOpts"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// Errors returned by Decode and the Set* methods. They are fixed values so that refusing a
// malformed packet costs no allocation (a flood of bad packets must not become garbage);
// compare with errors.Is.
var (
	ErrTruncated        = errors.New("packet: truncated: the buffer is shorter than the headers say")
	ErrVersion          = errors.New("packet: IP version is neither 4 nor 6")
	ErrHeaderLength     = errors.New("packet: IPv4 header length (IHL) is below 20 bytes")
	ErrTotalLength      = errors.New("packet: IPv4 total length is smaller than its header")
	ErrFragmentTooLong  = errors.New("packet: fragment would end past 65535 bytes")
	ErrExtensionHeaders = errors.New("packet: IPv6 extension headers are malformed (more than 8, hop-by-hop not first, or two fragment headers)")
	ErrTCPHeader        = errors.New("packet: TCP header is truncated or its data offset is below 20 bytes")
	ErrUDPHeader        = errors.New("packet: UDP header is truncated or its length field is below 8 or past the packet")
	ErrICMPHeader       = errors.New("packet: ICMP header is shorter than 8 bytes")
	ErrEmbeddedVersion  = errors.New("packet: the packet an ICMP error embeds is not of the error's IP version")

	ErrNotDecoded    = errors.New("packet: no packet decoded (Decode failed or was never called)")
	ErrFamily        = errors.New("packet: address family differs from the packet's IP version")
	ErrNoPorts       = errors.New("packet: packet has no ports to rewrite (not TCP/UDP, or a non-first fragment)")
	ErrNotEcho       = errors.New("packet: packet is not an ICMP echo request or reply")
	ErrRoutingHeader = errors.New("packet: IPv6 routing header with segments left: the transport checksum covers its final destination, not the destination field")
	ErrNotICMPError  = errors.New("packet: packet is not a whole ICMP error message (destination unreachable, packet too big, time exceeded, parameter problem)")
)

// maxExtHeaders bounds the IPv6 extension header walk so a crafted chain cannot make
// Decode loop; real traffic carries at most a few.
const maxExtHeaders = 8

// flag bits of Parsed.flags.
const (
	flagTransport uint8 = 1 << iota // transport header (TCP, UDP, ICMP) decoded
	flagEcho                        // ICMP echo request or reply: EchoID is valid
	flagRouting                     // IPv6 routing header with segments left > 0
	flagICMPError                   // ICMP error message: it embeds the packet it is about
)

// Parsed is a decoded IPv4 or IPv6 packet. The zero value holds no packet. Decode refills
// it; the fields are read-only for callers (change a packet through the Set* methods so the
// buffer, its checksums and these fields stay in step). A Parsed refers to the buffer given
// to Decode; it is not safe for concurrent use: each goroutine keeps its own.
type Parsed struct {
	b []byte // the packet, cut to the length its IP header gives

	// Version is 4 or 6 (0 when nothing is decoded).
	Version uint8
	// Proto is the transport protocol: IPv4 Protocol, or for IPv6 the Next Header after the
	// extension headers (for a non-first IPv6 fragment, the fragment header's Next Header).
	Proto Proto
	// Src and Dst are the IP source and destination addresses.
	Src, Dst netip.Addr
	// Length is the packet length from its IP header; bytes past it in the buffer (link
	// padding) are ignored and left alone.
	Length int
	// HeaderLen is the length of the IP header with IPv4 options or IPv6 extension headers:
	// the offset of the transport header (or of the fragment data).
	HeaderLen int
	// TransportHeaderLen is the length of the TCP (data offset), UDP (8) or ICMP (8)
	// header; 0 when it is not decoded (other protocols, non-first fragments).
	TransportHeaderLen int

	// SrcPort and DstPort are the TCP or UDP ports; 0 unless HasPorts.
	SrcPort, DstPort uint16
	// ICMPType and ICMPCode are set for ICMPv4 in IPv4 and ICMPv6 in IPv6 packets.
	ICMPType, ICMPCode uint8
	// EchoID is the identifier of an ICMP echo request or reply; 0 unless IsEcho.
	EchoID uint16

	// FragOffset is the fragment's offset in bytes; MoreFragments is the MF (IPv4) or
	// M (IPv6) flag; FragID is the identification (16 bits in IPv4, 32 in IPv6).
	FragOffset    uint16
	MoreFragments bool
	FragID        uint32

	flags uint8
}

// Buffer returns the packet: the buffer given to Decode, cut to Length.
func (p *Parsed) Buffer() []byte { return p.b }

// Transport returns the transport header and its payload, or nil when no transport header
// was decoded.
func (p *Parsed) Transport() []byte {
	if p.flags&flagTransport == 0 {
		return nil
	}
	return p.b[p.HeaderLen:]
}

// IsFragment reports whether the packet is a fragment of a larger datagram. An IPv6 atomic
// fragment (fragment header, offset 0, M clear: RFC 6946) is a whole datagram and is not.
func (p *Parsed) IsFragment() bool { return p.MoreFragments || p.FragOffset != 0 }

// IsFirstFragment reports whether the packet is the first fragment of a datagram: it holds
// the transport header (and the transport checksum of the whole datagram).
func (p *Parsed) IsFirstFragment() bool { return p.MoreFragments && p.FragOffset == 0 }

// IsNonFirstFragment reports whether the packet is a later fragment: it has no transport
// header, so its ports are unknown.
func (p *Parsed) IsNonFirstFragment() bool { return p.FragOffset != 0 }

// HasPorts reports whether SrcPort and DstPort are known: a TCP or UDP packet or first
// fragment whose header was decoded.
func (p *Parsed) HasPorts() bool {
	return p.flags&flagTransport != 0 && (p.Proto == TCP || p.Proto == UDP)
}

// IsEcho reports whether the packet is an ICMP echo request or reply (ICMPv4 types 8 and
// 0, ICMPv6 types 128 and 129), so EchoID is valid.
func (p *Parsed) IsEcho() bool { return p.flags&flagEcho != 0 }

// IsICMPError reports whether the packet is an ICMP error message that embeds the packet
// it is about (see [Parsed.Embedded]): ICMPv4 destination unreachable (3, with
// "fragmentation needed"), time exceeded (11) and parameter problem (12); ICMPv6
// destination unreachable (1), packet too big (2), time exceeded (3) and parameter
// problem (4).
func (p *Parsed) IsICMPError() bool { return p.flags&flagICMPError != 0 }

// HasRoutingHeader reports whether an IPv6 routing header with segments left is present;
// such a packet's destination cannot be rewritten (ErrRoutingHeader).
func (p *Parsed) HasRoutingHeader() bool { return p.flags&flagRouting != 0 }

// FlowPorts returns the two port-like numbers that, with the protocol and addresses,
// identify the packet's flow: the TCP or UDP ports, or for ICMP echo the identifier as
// both (a request and its reply carry the same one). ok is false when there are none:
// other protocols, other ICMP messages, non-first fragments.
func (p *Parsed) FlowPorts() (src, dst uint16, ok bool) {
	switch {
	case p.HasPorts():
		return p.SrcPort, p.DstPort, true
	case p.IsEcho():
		return p.EchoID, p.EchoID, true
	}
	return 0, 0, false
}

// String describes the packet for logs and test failures, for example
// "IPv4 TCP 10.18.0.2:43512 > 10.30.0.1:80 len 60 hdr 20+40" or
// "IPv6 UDP fc00::2 > fdff:2000::1 len 76 hdr 48 frag id 0xdeadbeef off 24".
func (p *Parsed) String() string {
	if p.Version == 0 {
		return "no packet"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "IPv%d %v ", p.Version, p.Proto)
	if p.HasPorts() {
		fmt.Fprintf(&sb, "%v > %v", netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	} else {
		fmt.Fprintf(&sb, "%v > %v", p.Src, p.Dst)
	}
	if p.flags&flagTransport != 0 && !p.HasPorts() {
		fmt.Fprintf(&sb, " type %d code %d", p.ICMPType, p.ICMPCode)
		if p.IsEcho() {
			fmt.Fprintf(&sb, " id %#04x", p.EchoID)
		}
	}
	fmt.Fprintf(&sb, " len %d hdr %d", p.Length, p.HeaderLen)
	if p.TransportHeaderLen != 0 {
		fmt.Fprintf(&sb, "+%d", p.TransportHeaderLen)
	}
	if p.IsFragment() {
		fmt.Fprintf(&sb, " frag id %#x off %d", p.FragID, p.FragOffset)
		if p.MoreFragments {
			sb.WriteString(" more")
		}
	}
	if p.HasRoutingHeader() {
		sb.WriteString(" routing")
	}
	return sb.String()
}

// Decode parses b into p, replacing what p held. b is referenced, not copied; the Set*
// methods write into it. Decode never panics and allocates nothing; on error p holds no
// packet and the error says what is malformed.
func (p *Parsed) Decode(b []byte) error {
	*p = Parsed{}
	if len(b) == 0 {
		return ErrTruncated
	}
	var err error
	switch b[0] >> 4 {
	case 4:
		err = p.decode4(b, false)
	case 6:
		err = p.decode6(b, false)
	default:
		return ErrVersion
	}
	if err != nil {
		*p = Parsed{}
	}
	return err
}

// decode4 decodes an IPv4 packet. quoted is set for the packet an ICMP error embeds
// (Parsed.Embedded): its length fields are the original packet's, of which the error
// carries only the start, so the packet is taken to end where b ends and the transport
// header needs only its first 8 bytes (RFC 792).
func (p *Parsed) decode4(b []byte, quoted bool) error {
	if len(b) < 20 {
		return ErrTruncated
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return ErrHeaderLength
	}
	if ihl > len(b) {
		return ErrTruncated
	}
	total := int(binary.BigEndian.Uint16(b[2:4]))
	if quoted {
		total = len(b)
	}
	if total < ihl {
		return ErrTotalLength
	}
	if total > len(b) {
		return ErrTruncated
	}
	b = b[:total]
	ff := binary.BigEndian.Uint16(b[6:8])
	off := (ff & 0x1fff) << 3 // at most 65528: fits
	if int(off)+total-ihl > 0xffff {
		return ErrFragmentTooLong // "ping of death": reassembly would overflow
	}
	p.b = b
	p.Version = 4
	p.Proto = Proto(b[9])
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.Length = total
	p.HeaderLen = ihl
	p.FragOffset = off
	p.MoreFragments = ff&0x2000 != 0
	p.FragID = uint32(binary.BigEndian.Uint16(b[4:6]))
	if off != 0 {
		return nil // fragment data, no transport header
	}
	return p.decodeTransport(b[ihl:], quoted)
}

// decode6 decodes an IPv6 packet; quoted as for decode4.
func (p *Parsed) decode6(b []byte, quoted bool) error {
	if len(b) < 40 {
		return ErrTruncated
	}
	total := 40 + int(binary.BigEndian.Uint16(b[4:6]))
	if quoted {
		total = len(b)
	}
	if total > len(b) {
		return ErrTruncated // also a jumbogram (payload length 0 with a jumbo option): unsupported
	}
	b = b[:total]
	p.b = b
	p.Version = 6
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	p.Length = total

	next, off := Proto(b[6]), 40
	seenFrag := false
walk:
	for n := 0; ; n++ {
		switch next {
		case HopByHop, Routing, DstOpts, Fragment:
		default:
			break walk
		}
		if n == maxExtHeaders {
			return ErrExtensionHeaders
		}
		if next == HopByHop && n != 0 {
			return ErrExtensionHeaders // RFC 8200 4.1: only directly after the IPv6 header
		}
		if next == Fragment {
			if seenFrag {
				return ErrExtensionHeaders
			}
			if total-off < 8 {
				return ErrTruncated
			}
			seenFrag = true
			fo := binary.BigEndian.Uint16(b[off+2 : off+4])
			p.FragOffset = fo &^ 7
			p.MoreFragments = fo&1 != 0
			p.FragID = binary.BigEndian.Uint32(b[off+4 : off+8])
			next = Proto(b[off])
			off += 8
			if int(p.FragOffset)+total-off > 0xffff {
				return ErrFragmentTooLong
			}
			if p.FragOffset != 0 {
				break walk // the rest is fragment data, even if next names a header
			}
			continue
		}
		if total-off < 2 {
			return ErrTruncated
		}
		hl := (int(b[off+1]) + 1) * 8
		if total-off < hl {
			return ErrTruncated
		}
		if next == Routing && b[off+3] != 0 { // hl >= 8, so the segments-left byte is there
			p.flags |= flagRouting
		}
		next = Proto(b[off])
		off += hl
	}
	p.Proto = next
	p.HeaderLen = off
	if p.FragOffset != 0 {
		return nil
	}
	return p.decodeTransport(b[off:], quoted)
}

// decodeTransport decodes the TCP, UDP or ICMP header at the start of tr (the IP payload
// of an unfragmented packet or a first fragment, which must hold the whole header: a first
// fragment that splits it is refused, as RFC 1858 advises). A quoted packet (decode4)
// needs only the 8 bytes an ICMP error is sure to carry; its TransportHeaderLen is 8.
func (p *Parsed) decodeTransport(tr []byte, quoted bool) error {
	switch {
	case p.Proto == TCP:
		if len(tr) < 8 || !quoted && len(tr) < 20 {
			return ErrTCPHeader
		}
		doff := 8
		if !quoted {
			doff = int(tr[12]>>4) * 4
			if doff < 20 || doff > len(tr) {
				return ErrTCPHeader
			}
		}
		p.TransportHeaderLen = doff
		p.SrcPort = binary.BigEndian.Uint16(tr[0:2])
		p.DstPort = binary.BigEndian.Uint16(tr[2:4])
	case p.Proto == UDP:
		if len(tr) < 8 {
			return ErrUDPHeader
		}
		ulen := int(binary.BigEndian.Uint16(tr[4:6]))
		// A first fragment's UDP length covers the whole datagram, so only a whole
		// packet can be held to its payload; so does a quoted one's.
		if !quoted && (ulen < 8 || (!p.MoreFragments && ulen > len(tr))) {
			return ErrUDPHeader
		}
		p.TransportHeaderLen = 8
		p.SrcPort = binary.BigEndian.Uint16(tr[0:2])
		p.DstPort = binary.BigEndian.Uint16(tr[2:4])
	case p.Proto == ICMPv4 && p.Version == 4, p.Proto == ICMPv6 && p.Version == 6:
		if len(tr) < 8 {
			return ErrICMPHeader
		}
		p.TransportHeaderLen = 8
		p.ICMPType, p.ICMPCode = tr[0], tr[1]
		if isEcho(p.Version, p.ICMPType) {
			p.flags |= flagEcho
			p.EchoID = binary.BigEndian.Uint16(tr[4:6])
		} else if isICMPError(p.Version, p.ICMPType) {
			p.flags |= flagICMPError
		}
	default:
		return nil // another protocol: its header is not ours to read
	}
	p.flags |= flagTransport
	return nil
}

func isEcho(version, typ uint8) bool {
	if version == 4 {
		return typ == 8 || typ == 0 // echo request, echo reply
	}
	return typ == 128 || typ == 129
}
