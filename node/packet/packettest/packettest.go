// Package packettest builds valid IPv4 and IPv6 packets for tests of the packet
// rewriter and of the code around it (the datapath). Its checksum is written
// independently of node/packet's, byte pair by byte pair as RFC 1071 states it, so tests
// do not check the package against itself.
package packettest

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// IP protocol numbers the builders know.
const (
	ICMPv4   uint8 = 1
	TCP      uint8 = 6
	UDP      uint8 = 17
	Fragment uint8 = 44 // IPv6 fragment extension header
	ICMPv6   uint8 = 58
)

// Checksum is the Internet checksum of the concatenation of chunks.
func Checksum(chunks ...[]byte) uint16 {
	var all []byte
	for _, c := range chunks {
		all = append(all, c...)
	}
	if len(all)%2 == 1 {
		all = append(all, 0)
	}
	var s uint32
	for i := 0; i < len(all); i += 2 {
		s += uint32(all[i])<<8 | uint32(all[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// TCPSegment is a TCP segment with a 20-byte header (ACK|PSH) and zero checksum.
func TCPSegment(sport, dport uint16, data []byte) []byte {
	b := make([]byte, 20, 20+len(data))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint32(b[4:], 0x01020304)
	binary.BigEndian.PutUint32(b[8:], 0x0a0b0c0d)
	b[12] = 5 << 4
	b[13] = 0x18
	binary.BigEndian.PutUint16(b[14:], 65000)
	return append(b, data...)
}

// UDPDatagram is a UDP datagram with zero checksum.
func UDPDatagram(sport, dport uint16, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(data)))
	return append(b, data...)
}

// ICMPEcho is an ICMP(v4 or v6) echo message of the given type with zero checksum.
func ICMPEcho(typ uint8, id, seq uint16, data []byte) []byte {
	b := make([]byte, 8, 8+len(data))
	b[0] = typ
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	return append(b, data...)
}

// ICMPError is an ICMP(v4 or v6) error message of the given type and code with zero
// checksum: info is its second word (the next-hop MTU of "fragmentation needed", the MTU
// of "packet too big", the pointer of "parameter problem", else 0), quoted the start of
// the packet it is about, as a kernel quotes it (usually cut short).
func ICMPError(typ, code uint8, info uint32, quoted []byte) []byte {
	b := make([]byte, 8, 8+len(quoted))
	b[0], b[1] = typ, code
	binary.BigEndian.PutUint32(b[4:], info)
	return append(b, quoted...)
}

// IP4 wraps payload in an IPv4 header (ID 0x1234, DF, TTL 64) and fills in every checksum.
func IP4(src, dst string, proto uint8, payload []byte) []byte {
	b := make([]byte, 20, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(payload)))
	binary.BigEndian.PutUint16(b[4:], 0x1234)
	b[6] = 0x40
	b[8] = 64
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	b = append(b, payload...)
	FillChecksums(b, 20, proto)
	return b
}

// IP6 wraps a transport segment of protocol next in an IPv6 header and fills in its
// checksum.
func IP6(src, dst string, next uint8, payload []byte) []byte {
	return IP6Ext(src, dst, next, nil, next, payload)
}

// IP6Ext is IP6 with extension headers ext (the first named by next, the transport by
// proto) in front of the transport segment.
func IP6Ext(src, dst string, next uint8, ext []byte, proto uint8, seg []byte) []byte {
	b := make([]byte, 40, 40+len(ext)+len(seg))
	binary.BigEndian.PutUint32(b[0:], 6<<28|0x54321)
	binary.BigEndian.PutUint16(b[4:], uint16(len(ext)+len(seg)))
	b[6] = next
	b[7] = 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	b = append(b, ext...)
	b = append(b, seg...)
	FillChecksums(b, 40+len(ext), proto)
	return b
}

// FillChecksums computes the IPv4 header checksum and the transport checksum of a whole
// packet whose transport header starts at off, with Checksum.
func FillChecksums(b []byte, off int, proto uint8) {
	v4 := b[0]>>4 == 4
	if v4 {
		b[10], b[11] = 0, 0
		binary.BigEndian.PutUint16(b[10:], Checksum(b[:off]))
	}
	seg := b[off:]
	if proto == UDP && len(seg) >= 8 {
		// The UDP checksum covers the datagram's own length, which may be less than the
		// IP payload (trailing bytes).
		if n := int(binary.BigEndian.Uint16(seg[4:])); n >= 8 && n <= len(seg) {
			seg = seg[:n]
		}
	}
	var pseudo []byte
	if v4 {
		pseudo = append(pseudo, b[12:20]...)
		pseudo = append(pseudo, 0, proto, byte(len(seg)>>8), byte(len(seg)))
	} else {
		pseudo = append(pseudo, b[8:40]...)
		pseudo = append(pseudo, byte(len(seg)>>24), byte(len(seg)>>16), byte(len(seg)>>8), byte(len(seg)), 0, 0, 0, proto)
	}
	switch {
	case len(seg) < 8 || proto == TCP && len(seg) < 20:
		// Too short to hold the checksum: a malformed packet for a test.
	case proto == TCP:
		seg[16], seg[17] = 0, 0
		binary.BigEndian.PutUint16(seg[16:], Checksum(pseudo, seg))
	case proto == UDP:
		seg[6], seg[7] = 0, 0
		c := Checksum(pseudo, seg)
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(seg[6:], c)
	case proto == ICMPv4 && v4:
		seg[2], seg[3] = 0, 0
		binary.BigEndian.PutUint16(seg[2:], Checksum(seg))
	case proto == ICMPv6 && !v4:
		seg[2], seg[3] = 0, 0
		binary.BigEndian.PutUint16(seg[2:], Checksum(pseudo, seg))
	}
}

// Fragment4 splits a whole IPv4 packet (20-byte header) into fragments carrying size
// payload bytes each (size a multiple of 8), as a router would.
func Fragment4(t testing.TB, pkt []byte, size int) [][]byte {
	t.Helper()
	if size%8 != 0 || pkt[0] != 0x45 {
		t.Fatalf("Fragment4: size %d or header %#x unsupported", size, pkt[0])
	}
	payload := pkt[20:]
	var frags [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		f := append(append([]byte(nil), pkt[:20]...), payload[off:end]...)
		binary.BigEndian.PutUint16(f[2:], uint16(len(f)))
		ff := uint16(off / 8)
		if end < len(payload) {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(f[6:], ff)
		f[10], f[11] = 0, 0
		binary.BigEndian.PutUint16(f[10:], Checksum(f[:20]))
		frags = append(frags, f)
	}
	return frags
}

// Reassemble4 joins IPv4 fragments (in order) back into one packet.
func Reassemble4(frags [][]byte) []byte {
	pkt := append([]byte(nil), frags[0][:20]...)
	for _, f := range frags {
		pkt = append(pkt, f[20:]...)
	}
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	binary.BigEndian.PutUint16(pkt[6:], 0x4000) // DF, as ip4 builds it
	pkt[10], pkt[11] = 0, 0
	binary.BigEndian.PutUint16(pkt[10:], Checksum(pkt[:20]))
	return pkt
}

// Fragment6 splits a whole IPv6 packet without extension headers into fragments carrying
// size payload bytes each (size a multiple of 8), inserting a fragment header.
func Fragment6(t testing.TB, pkt []byte, size int, id uint32) [][]byte {
	t.Helper()
	if size%8 != 0 || pkt[6] != TCP && pkt[6] != UDP && pkt[6] != ICMPv6 {
		t.Fatalf("Fragment6: size %d or next header %d unsupported", size, pkt[6])
	}
	payload := pkt[40:]
	var frags [][]byte
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		f := append([]byte(nil), pkt[:40]...)
		f[6] = Fragment
		fh := make([]byte, 8)
		fh[0] = pkt[6]
		fo := uint16(off)
		if end < len(payload) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		f = append(append(f, fh...), payload[off:end]...)
		binary.BigEndian.PutUint16(f[4:], uint16(len(f)-40))
		frags = append(frags, f)
	}
	return frags
}

// Reassemble6 joins IPv6 fragments made by Fragment6 back into one packet.
func Reassemble6(frags [][]byte) []byte {
	pkt := append([]byte(nil), frags[0][:40]...)
	pkt[6] = frags[0][40]
	for _, f := range frags {
		pkt = append(pkt, f[48:]...)
	}
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(pkt)-40))
	return pkt
}

// Payload returns n bytes of a repeating pattern.
func Payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}
