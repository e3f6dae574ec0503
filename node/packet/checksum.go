package packet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
)

// The Internet checksum (RFC 1071) is the ones'-complement of the ones'-complement sum
// of 16-bit words. A rewrite changes a few words, so instead of summing the packet again
// the checksum is updated from the old and new values of those words (RFC 1624, eqn. 3):
//
//	HC' = ~(~HC + ~m + m')
//
// where HC is the checksum field, m an old 16-bit word and m' its new value. The terms
// ~m + m' of all the words changed add up first, then apply once to each checksum they
// touch: an address change lands in the IPv4 header checksum and, through the
// pseudo-header, in the TCP, UDP or ICMPv6 checksum.

// swap4 writes the IPv4 address a over field (4 bytes) and returns the RFC 1624 terms
// of the change, ~m + m' summed over its words and folded to 16 bits. The words are
// summed as one 32-bit (swap16: 64-bit) number with end-around carry, which gives the same
// ones'-complement sum as word by word (2^16 = 1 modulo 2^16-1) in fewer steps.
func swap4(field []byte, a [4]byte) uint32 {
	o, n := binary.BigEndian.Uint32(field), binary.BigEndian.Uint32(a[:])
	binary.BigEndian.PutUint32(field, n)
	return fold32(uint64(^o) + uint64(n))
}

// swap16 is swap4 for an IPv6 address, which must be unzoned. It has AppendBinary write
// the address straight into the packet (capacity 16: in place, no allocation) rather than
// copy As16's array: that copy reads two 8-byte stores with one 16-byte load, which the
// CPU cannot forward, and cost as much as the rest of the rewrite.
func swap16(field []byte, a netip.Addr) uint32 {
	field = field[:16]
	oh, ol := binary.BigEndian.Uint64(field), binary.BigEndian.Uint64(field[8:])
	a.AppendBinary(field[:0:16]) // its error is always nil
	nh, nl := binary.BigEndian.Uint64(field), binary.BigEndian.Uint64(field[8:])
	s, c := bits.Add64(^oh, ^ol, 0)
	s, c = bits.Add64(s, nh, c)
	s, c = bits.Add64(s, nl, c)
	s, c = bits.Add64(s, 0, c) // end-around carry; cannot carry again
	return fold32(s + c)
}

// fold32 folds a ones'-complement sum held in 64 bits to 16 bits.
func fold32(s uint64) uint32 {
	s = s&0xffffffff + s>>32
	s = s&0xffffffff + s>>32
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return uint32(s)
}

// deltaWord is the RFC 1624 term for one 16-bit word changing from old to new.
func deltaWord(old, new uint16) uint32 { return uint32(^old) + uint32(new) }

// update applies d (terms from swap4, swap16 or deltaWord, added up) to the checksum
// field (2 bytes).
func update(field []byte, d uint32) {
	c := uint32(^binary.BigEndian.Uint16(field)) + d
	// d is a sum of a few 17-bit terms, so two folds bring c to 16 bits.
	c = c&0xffff + c>>16
	c = c&0xffff + c>>16
	binary.BigEndian.PutUint16(field, ^uint16(c))
}

// updateUDP is update for a UDP checksum field: 0 means "no checksum" (allowed over IPv4;
// over IPv6 only for tunnels, RFC 6935) and stays 0, and a computed 0 is sent as 0xffff
// (RFC 768) so it does not read as "no checksum".
func updateUDP(field []byte, d uint32) {
	if field[0] == 0 && field[1] == 0 {
		return
	}
	update(field, d)
	if field[0] == 0 && field[1] == 0 {
		field[0], field[1] = 0xff, 0xff
	}
}

// sum adds b to s as big-endian 16-bit words (an odd last byte is padded with zero),
// leaving carries in the high bits for fold.
func sum(b []byte, s uint64) uint64 {
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold reduces s to 16 bits with end-around carry.
func fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// pseudoSum is the sum of the transport pseudo-header (RFC 793 / RFC 768 for IPv4,
// RFC 8200 8.1 for IPv6) over the packet's own addresses.
func (p *Parsed) pseudoSum(proto Proto, length int) uint64 {
	var s uint64
	if p.Version == 4 {
		s = sum(p.b[12:20], 0)
	} else {
		s = sum(p.b[8:40], 0)
	}
	return s + uint64(proto) + uint64(length)
}

// VerifyChecksums computes every checksum of the packet in b from scratch and reports the
// first that is wrong: the IPv4 header checksum, and for a whole (unfragmented) TCP, UDP,
// ICMPv4 or ICMPv6 packet the transport checksum. Fragments get only the IPv4 header check
// (their transport checksum covers the reassembled datagram). A UDP checksum of 0 is
// accepted over IPv4 ("none") and refused over IPv6. It is a helper for tests and
// diagnostics: it sums the whole packet, which the datapath never needs to.
func VerifyChecksums(b []byte) error {
	var p Parsed
	if err := p.Decode(b); err != nil {
		return err
	}
	b = p.b
	if p.Version == 4 {
		if got := binary.BigEndian.Uint16(b[10:12]); fold(sum(b[:p.HeaderLen], 0)) != 0xffff {
			want := ^fold(sum(b[:10], sum(b[12:p.HeaderLen], 0)))
			return fmt.Errorf("packet: IPv4 header checksum is %#04x, want %#04x", got, want)
		}
	}
	if p.IsFragment() || p.flags&flagTransport == 0 {
		return nil
	}
	tr := p.b[p.HeaderLen:]
	var at int      // offset of the checksum field in tr
	var pseudo bool // whether the pseudo-header is covered
	switch p.Proto {
	case TCP:
		at, pseudo = 16, true
	case UDP:
		tr = tr[:binary.BigEndian.Uint16(tr[4:6])] // Decode checked 8 <= length <= len(tr)
		at, pseudo = 6, true
		if tr[6] == 0 && tr[7] == 0 {
			if p.Version == 4 {
				return nil
			}
			return errors.New("packet: UDP checksum over IPv6 is 0 (none), which RFC 8200 forbids")
		}
	case ICMPv4:
		at = 2
	case ICMPv6:
		at, pseudo = 2, true
	}
	if pseudo && p.HasRoutingHeader() {
		return ErrRoutingHeader
	}
	var s uint64
	if pseudo {
		s = p.pseudoSum(p.Proto, len(tr))
	}
	got := binary.BigEndian.Uint16(tr[at:])
	if fold(sum(tr, s)) != 0xffff {
		want := ^fold(sum(tr[:at], sum(tr[at+2:], s)))
		return fmt.Errorf("packet: %v checksum is %#04x, want %#04x", p.Proto, got, want)
	}
	return nil
}
