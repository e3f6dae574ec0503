package packet

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// FuzzRewrite feeds arbitrary bytes to Decode and, when it accepts them, rewrites the
// addresses (to arbitrary ones of the packet's family), the ports or echo id, then checks:
//   - nothing panics;
//   - checksums that verified before still verify (VerifyChecksums: the IPv4 header
//     checksum of any packet, the transport checksum of whole TCP/UDP/ICMP packets);
//   - the same holds for the input with its checksums made valid first, so every accepted
//     input exercises the transport checksums, not only the rare one that was valid;
//   - only the bytes of the fields rewritten and of checksums change, and Decode reads the
//     rewritten packet back as Parsed described it.
//
// Run it longer with: go test -run '^$' -fuzz FuzzRewrite -fuzztime 20s ./node/packet/
func FuzzRewrite(f *testing.F) {
	for _, c := range captures {
		b, _ := hex.DecodeString(c.hex)
		f.Add(b, []byte("\x0a\x1e\x00\x02\x0a\x12\x1e\x41fdff::1e:2......"), uint16(50000), uint16(8080))
	}
	f.Fuzz(func(t *testing.T, pkt, addrs []byte, port1, port2 uint16) {
		var p Parsed
		if p.Decode(pkt) != nil {
			return
		}
		var a [32]byte
		copy(a[:], addrs)
		src, dst := netip.AddrFrom4([4]byte(a[0:4])), netip.AddrFrom4([4]byte(a[4:8]))
		if p.Version == 6 {
			src, dst = netip.AddrFrom16([16]byte(a[0:16])), netip.AddrFrom16([16]byte(a[16:32]))
		}
		checkRewrite(t, bytes.Clone(pkt), src, dst, port1, port2)

		// Again with valid checksums.
		b := bytes.Clone(pkt)
		if err := p.Decode(b); err != nil {
			t.Fatalf("Decode of a copy: %v", err)
		}
		if !p.IsFragment() && !p.HasRoutingHeader() {
			fillChecksums(p.Buffer(), p.HeaderLen, p.Proto)
			if p.Proto == UDP && p.Version == 4 && bytes.Equal(p.Transport()[6:8], []byte{0, 0}) {
				t.Fatalf("fillChecksums left a zero UDP checksum")
			}
			if err := VerifyChecksums(b); err != nil {
				t.Fatalf("VerifyChecksums after fillChecksums: %v\n%x", err, b)
			}
			checkRewrite(t, b, src, dst, port1, port2)
		}
	})
}

// checkRewrite rewrites b (which Decode accepts) and checks the properties FuzzRewrite
// lists.
func checkRewrite(t *testing.T, b []byte, src, dst netip.Addr, port1, port2 uint16) {
	t.Helper()
	verified := VerifyChecksums(b) == nil
	orig := bytes.Clone(b)
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	may := make(mayChange, len(b))
	allow := may.allow
	if p.Version == 4 {
		allow(10, 20)
	} else {
		allow(8, 24)
	}
	if err := p.SetSrc(src); err != nil {
		t.Fatalf("SetSrc(%v) on %v: %v", src, &p, err)
	}
	switch err := p.SetDst(dst); {
	case p.HasRoutingHeader():
		if err != ErrRoutingHeader {
			t.Fatalf("SetDst with a routing header: %v", err)
		}
		dst = p.Dst
	case err != nil:
		t.Fatalf("SetDst(%v) on %v: %v", dst, &p, err)
	case p.Version == 6:
		allow(24, 40)
	}
	h := p.HeaderLen
	switch {
	case p.HasPorts():
		if err := p.SetSrcPort(port1); err != nil {
			t.Fatal(err)
		}
		if err := p.SetDstPort(port2); err != nil {
			t.Fatal(err)
		}
		allow(h, h+4)
		if p.Proto == TCP {
			allow(h+16, h+18)
		} else {
			allow(h+6, h+8)
		}
	case p.IsEcho():
		if err := p.SetEchoID(port1); err != nil {
			t.Fatal(err)
		}
		allow(h+2, h+6)
	default:
		if p.SetSrcPort(1) == nil || p.SetEchoID(1) == nil {
			t.Fatalf("port or echo rewrite accepted on %v", &p)
		}
	}
	if p.Proto == ICMPv6 && p.flags&flagTransport != 0 {
		allow(h+2, h+4)
	}
	may.check(t, orig, b, &p)
	if verified {
		if err := VerifyChecksums(b); err != nil {
			t.Fatalf("checksums verified before the rewrite, not after: %v\nbefore %x\nafter  %x", err, orig, b)
		}
	}
	var q Parsed
	if err := q.Decode(b); err != nil {
		t.Fatalf("rewritten packet does not decode: %v", err)
	}
	if q.String() != p.String() || q.Src != src || q.Dst != dst {
		t.Fatalf("decoded again: %v, want %v", &q, &p)
	}
}

// FuzzEmbedded feeds arbitrary bytes to Decode and Embedded and, when they accept them,
// rewrites the embedded packet's addresses (to arbitrary ones of its family) and its
// ports, then checks:
//   - nothing panics;
//   - checksums that verified before still verify: the error's own (VerifyChecksums),
//     the embedded IPv4 header's, and when the error carries the whole embedded packet,
//     that packet's transport checksum;
//   - the same holds for the input with all of those made valid first, so every accepted
//     input exercises them, not only the rare one that was valid;
//   - only the bytes of the fields rewritten and of checksums change, and decoding the
//     error again reads the new addresses and ports.
//
// Run it longer with: go test -run '^$' -fuzz FuzzEmbedded -fuzztime 60s ./node/packet/
func FuzzEmbedded(f *testing.F) {
	addrs := []byte("\x0a\x1e\x00\x02\x0a\x12\x00\x42fdff::2......fc00::1:2.......")
	for _, c := range embeddedCases(f) {
		s, d := emSrc4, emDst4
		if c.v6 {
			s, d = emSrc6, emDst6
		}
		f.Add(icmpError(s, c.mk(s, d, 40000, 53), c.typ, c.code, c.info, c.quote), addrs, uint16(40001), uint16(5353))
	}
	f.Fuzz(func(t *testing.T, pkt, addrs []byte, port1, port2 uint16) {
		var p Parsed
		if p.Decode(pkt) != nil {
			return
		}
		e, err := p.Embedded()
		if err != nil {
			return
		}
		var a [32]byte
		copy(a[:], addrs)
		src, dst := netip.AddrFrom4([4]byte(a[0:4])), netip.AddrFrom4([4]byte(a[4:8]))
		if e.Src().Is6() {
			src, dst = netip.AddrFrom16([16]byte(a[0:16])), netip.AddrFrom16([16]byte(a[16:32]))
		}
		checkEmbedded(t, bytes.Clone(pkt), src, dst, port1, port2)

		b := bytes.Clone(pkt)
		fillEmbedded(t, b)
		checkEmbedded(t, b, src, dst, port1, port2)
	})
}

// fillEmbedded makes the checksums of an ICMP error (which Embedded accepts) valid: the
// embedded packet's (its IPv4 header; its transport checksum when the error carries all
// of it), then the error's own, which covers them.
func fillEmbedded(t *testing.T, b []byte) {
	t.Helper()
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	q := p.Buffer()[p.HeaderLen+8:]
	var w Parsed
	if w.Decode(q) == nil && !w.IsFragment() && !w.HasRoutingHeader() {
		fillChecksums(w.Buffer(), w.HeaderLen, w.Proto)
	}
	if p.Version == 4 {
		ihl := int(q[0]&0x0f) * 4 // Embedded checked 20 <= ihl <= len(q)
		q[10], q[11] = 0, 0
		binary.BigEndian.PutUint16(q[10:], refChecksum(q[:ihl]))
	}
	if !p.HasRoutingHeader() {
		fillChecksums(p.Buffer(), p.HeaderLen, p.Proto)
	}
}

// checkEmbedded rewrites the embedded packet of the ICMP error in b (which Embedded
// accepts) and checks the properties FuzzEmbedded lists.
func checkEmbedded(t *testing.T, b []byte, src, dst netip.Addr, sport, dport uint16) {
	t.Helper()
	orig := bytes.Clone(b)
	p, e := decodeEmbedded(t, b)
	qoff := p.HeaderLen + 8
	q := p.Buffer()[qoff:]
	in := &e.in
	outerOK := VerifyChecksums(b) == nil
	hdrOK := in.Version == 4 && refChecksum(q[:in.HeaderLen]) == 0
	wholeOK := VerifyChecksums(q) == nil

	may := make(mayChange, len(b))
	allow := may.allow
	allow(p.HeaderLen+2, p.HeaderLen+4) // the ICMP checksum
	if in.Version == 4 {
		allow(qoff+10, qoff+20)
	} else {
		allow(qoff+8, qoff+40)
	}
	if th := qoff + in.HeaderLen; in.flags&flagTransport != 0 {
		switch in.Proto {
		case TCP:
			allow(th, th+4)
			allow(th+16, th+18)
		case UDP:
			allow(th, th+4)
			allow(th+6, th+8)
		case ICMPv6:
			allow(th+2, th+4)
		}
	}

	if in.HasRoutingHeader() {
		if err := e.SetAddrs(src, dst); !errors.Is(err, ErrRoutingHeader) {
			t.Fatalf("SetAddrs with an embedded routing header: %v", err)
		}
		src, dst = e.Src(), e.Dst()
	} else if err := e.SetAddrs(src, dst); err != nil {
		t.Fatalf("SetAddrs(%v, %v) on %v: %v", src, dst, &e, err)
	}
	hasPorts := in.HasPorts()
	if err := e.SetPorts(sport, dport); hasPorts && err != nil || !hasPorts && !errors.Is(err, ErrNoPorts) {
		t.Fatalf("SetPorts on %v: %v", &e, err)
	}

	may.check(t, orig, b, &e)
	if outerOK {
		if err := VerifyChecksums(b); err != nil {
			t.Fatalf("the error's checksums verified before the rewrite, not after: %v\nbefore %x\nafter  %x", err, orig, b)
		}
	}
	if hdrOK && refChecksum(q[:in.HeaderLen]) != 0 {
		t.Fatalf("embedded IPv4 header checksum verified before the rewrite, not after\nbefore %x\nafter  %x", orig, b)
	}
	if wholeOK {
		if err := VerifyChecksums(q); err != nil {
			t.Fatalf("embedded packet's checksums verified before the rewrite, not after: %v\nbefore %x\nafter  %x", err, orig, b)
		}
	}
	_, e2 := decodeEmbedded(t, b)
	sp, dp, _ := e2.FlowPorts()
	if e2.Src() != src || e2.Dst() != dst || hasPorts && (sp != sport || dp != dport) || e2.String() != e.String() {
		t.Fatalf("decoded again: %v, want %v", &e2, &e)
	}
}

// mayChange says which bytes of a packet a rewrite may change.
type mayChange []bool

func (m mayChange) allow(from, to int) {
	for i := from; i < min(to, len(m)); i++ {
		m[i] = true
	}
}

// check fails the test if b differs from orig in a byte not allowed to change; what
// names the packet.
func (m mayChange) check(t *testing.T, orig, b []byte, what fmt.Stringer) {
	t.Helper()
	if len(b) != len(orig) {
		t.Fatalf("length changed")
	}
	for i := range b {
		if b[i] != orig[i] && !m[i] {
			t.Fatalf("byte %d changed (%#02x -> %#02x) in %v", i, orig[i], b[i], what)
		}
	}
}
