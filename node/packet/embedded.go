package packet

import "net/netip"

// An ICMP error carries the start of the packet it is about: the IP header and at least
// 8 bytes of its payload (RFC 792), or as much as fits in 1280 bytes (RFC 4443). The
// receiving kernel matches the error to a socket by that embedded packet's addresses,
// protocol and ports, so a translator that rewrites a flow's packets must rewrite the
// embedded packet of an error about one of them too, or connected UDP sockets never see
// ECONNREFUSED and path MTU discovery ignores "packet too big". Linux NAT does the same
// for conntrack's "related" ICMP errors (nf_nat_icmp_reply_translation).

// isICMPError reports whether an ICMP type (of ICMPv4 in IPv4, ICMPv6 in IPv6) is an
// error that embeds the packet it is about and that a translator must follow. Source
// quench and redirect are left out: the first is deprecated (RFC 6633), the second
// comes from a router of the sender's own link, never through the overlay.
func isICMPError(version, typ uint8) bool {
	if version == 4 {
		return typ == 3 || typ == 11 || typ == 12 // unreachable, time exceeded, parameter problem
	}
	return typ >= 1 && typ <= 4 // unreachable, packet too big, time exceeded, parameter problem
}

// Embedded is the packet embedded in an ICMP error message, as far as the error carries
// it: a view into the error's buffer, which its Set* methods rewrite, keeping the error's
// ICMP checksum valid. It is a value that allocates nothing; it is valid while the error's
// buffer is (until the Parsed it came from decodes another packet into that buffer).
type Embedded struct {
	msg []byte // the ICMP error message, whose checksum covers the embedded packet
	in  Parsed // the embedded packet: in.b runs from its IP header to the end of msg
}

// Embedded decodes the packet embedded in an ICMP error (IsICMPError). The embedded
// packet's length fields are those of the original packet, of which the error may carry
// only the start: it is taken to end with the error, and its transport header needs only
// the 8 bytes every error carries (a TCP header may be cut before its checksum). Errors
// are ErrNotICMPError (not an ICMP error, or a fragment of one: errors are cut to fit the
// minimum MTU, so a fragmented one is not worth reassembling), ErrEmbeddedVersion, or
// those of Decode about the embedded packet. It allocates nothing.
func (p *Parsed) Embedded() (Embedded, error) {
	if p.flags&flagICMPError == 0 || p.IsFragment() {
		return Embedded{}, ErrNotICMPError
	}
	msg := p.b[p.HeaderLen:] // Decode checked it holds the 8-byte ICMP header
	b := msg[8:]
	if len(b) == 0 {
		return Embedded{}, ErrTruncated
	}
	if b[0]>>4 != p.Version {
		return Embedded{}, ErrEmbeddedVersion // RFC 792 and 4443: the error's own version
	}
	e := Embedded{msg: msg}
	var err error
	if p.Version == 4 {
		err = e.in.decode4(b, true)
	} else {
		err = e.in.decode6(b, true)
	}
	if err != nil {
		return Embedded{}, err
	}
	return e, nil
}

// Src returns the embedded packet's source address.
func (e *Embedded) Src() netip.Addr { return e.in.Src }

// Dst returns the embedded packet's destination address.
func (e *Embedded) Dst() netip.Addr { return e.in.Dst }

// Proto returns the embedded packet's transport protocol.
func (e *Embedded) Proto() Proto { return e.in.Proto }

// FlowPorts returns the embedded packet's TCP or UDP ports, or for an ICMP echo its
// identifier as both, as Parsed.FlowPorts does; ok is false when it has none.
func (e *Embedded) FlowPorts() (src, dst uint16, ok bool) { return e.in.FlowPorts() }

// String describes the embedded packet as Parsed.String does; its length is what the
// error carries.
func (e *Embedded) String() string { return e.in.String() }

// SetAddrs rewrites the embedded packet's source and destination addresses in place and
// updates, incrementally, its IPv4 header checksum, its transport checksum where the
// error carries it (UDP and ICMPv6 always; TCP when 18 bytes of its header are there;
// a checksum of a datagram cut short is updated all the same, as Linux NAT does: it
// covers the whole original datagram, and the update is right for that), and the ICMP
// checksum of the error around it. Errors and conditions are those of Parsed.SetAddrs;
// on error nothing is changed.
func (e *Embedded) SetAddrs(src, dst netip.Addr) error {
	before := e.sum()
	if err := e.in.SetAddrs(src, dst); err != nil {
		return err
	}
	update(e.msg[2:4], deltaWord(fold(before), fold(e.sum())))
	return nil
}

// SetPorts rewrites the embedded packet's TCP or UDP source and destination ports in
// place (ErrNoPorts when it has none), with the checksums as SetAddrs.
func (e *Embedded) SetPorts(src, dst uint16) error {
	if !e.in.HasPorts() {
		return ErrNoPorts
	}
	before := e.sum()
	// Neither can fail now: the ports are there.
	_ = e.in.SetSrcPort(src)
	_ = e.in.SetDstPort(dst)
	update(e.msg[2:4], deltaWord(fold(before), fold(e.sum())))
	return nil
}

// sum is the ones'-complement sum of the embedded bytes a rewrite may change: the
// addresses (and the IPv4 header checksum) and the first 20 bytes after the IP header
// (ports and transport checksums). The difference of the sums before and after a
// rewrite is what the ICMP checksum must take in: summing these few bytes twice is
// simpler to get right than following every word each Set* changes, and errors are
// rare. Each range starts at an even offset of the ICMP message (the embedded packet at
// 8, its transport header at a multiple of 4), so its words are the checksum's; one that
// ends on an odd byte ends the message too, where the checksum pads it the same way.
func (e *Embedded) sum() uint64 {
	b := e.in.b
	var s uint64
	if e.in.Version == 4 {
		s = sum(b[10:20], 0)
	} else {
		s = sum(b[8:40], 0)
	}
	tr := b[e.in.HeaderLen:]
	return sum(tr[:min(len(tr), 20)], s)
}
