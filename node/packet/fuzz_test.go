package packet

import (
	"bytes"
	"encoding/hex"
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
	// may[i] says byte i of the packet may change.
	may := make([]bool, len(b))
	allow := func(from, to int) {
		for i := from; i < to; i++ {
			may[i] = true
		}
	}
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
	if len(b) != len(orig) {
		t.Fatalf("length changed")
	}
	for i := range b {
		if b[i] != orig[i] && !may[i] {
			t.Fatalf("byte %d changed (%#02x -> %#02x) in %v", i, orig[i], b[i], &p)
		}
	}
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
