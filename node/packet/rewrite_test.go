package packet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"
)

// newAddrs returns the rewrite targets for a packet of the given version: the node's
// outbound rewrite (Instance IP -> chosen Namespace IP) from ADDRESSING.md's example.
func newAddrs(version uint8) (src, dst netip.Addr) {
	if version == 4 {
		return mustAddr("10.30.0.2"), mustAddr("10.18.30.65")
	}
	return mustAddr("fdff:0:0:0:0:0:1e:2"), mustAddr("fc00::1e41")
}

// refRewrite rewrites the addresses of a whole packet by copying them and computing every
// checksum again from scratch: what SetAddrs must produce, byte for byte.
func refRewrite(t *testing.T, b []byte, src, dst netip.Addr) []byte {
	t.Helper()
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	out := bytes.Clone(p.Buffer())
	if p.Version == 4 {
		s, d := src.As4(), dst.As4()
		copy(out[12:], s[:])
		copy(out[16:], d[:])
	} else {
		s, d := src.As16(), dst.As16()
		copy(out[8:], s[:])
		copy(out[24:], d[:])
	}
	proto := p.Proto
	if proto == UDP && out[p.HeaderLen+6] == 0 && out[p.HeaderLen+7] == 0 {
		proto = 255 // no UDP checksum: leave it 0
	}
	fillChecksums(out, p.HeaderLen, proto)
	return out
}

func TestSetAddrsCaptures(t *testing.T) {
	for _, tc := range captures {
		t.Run(tc.name, func(t *testing.T) {
			b := unhex(t, tc.hex)
			var p Parsed
			if err := p.Decode(b); err != nil {
				t.Fatal(err)
			}
			src, dst := newAddrs(p.Version)
			var want []byte
			if !p.IsFragment() {
				want = refRewrite(t, b, src, dst)
			}
			icmp4Sum := binary.BigEndian.Uint16(b[p.HeaderLen+2:])
			if err := p.SetAddrs(src, dst); err != nil {
				t.Fatal(err)
			}
			if p.Src != src || p.Dst != dst {
				t.Errorf("fields: %v", &p)
			}
			if err := VerifyChecksums(b); err != nil {
				t.Errorf("after SetAddrs: %v", err)
			}
			if want != nil && !bytes.Equal(b, want) {
				t.Errorf("SetAddrs: %s", diff(b, want))
			}
			if p.Proto == ICMPv4 && binary.BigEndian.Uint16(b[p.HeaderLen+2:]) != icmp4Sum {
				t.Errorf("ICMPv4 checksum changed; it has no pseudo-header")
			}
			var q Parsed
			if err := q.Decode(b); err != nil || q.String() != p.String() {
				t.Errorf("decoded again: %v %v, want %v", &q, err, &p)
			}
		})
	}
}

// built returns whole packets of every supported kind, made with the given addresses and
// ports, including odd lengths and a 1400-byte one.
func built(src, dst netip.Addr, sport, dport, id uint16) map[string][]byte {
	s, d := src.String(), dst.String()
	m := map[string][]byte{}
	for _, n := range []int{0, 1, 17, 1400 - 40 - 20} {
		if src.Is4() {
			m[fmt.Sprintf("tcp4/%d", n)] = ip4(s, d, TCP, tcpSeg(sport, dport, payloadOf(n)))
			m[fmt.Sprintf("udp4/%d", n)] = ip4(s, d, UDP, udpDgram(sport, dport, payloadOf(n)))
			m[fmt.Sprintf("icmp4/%d", n)] = ip4(s, d, ICMPv4, icmpEcho(8, id, 7, payloadOf(n)))
		} else {
			m[fmt.Sprintf("tcp6/%d", n)] = ip6(s, d, TCP, tcpSeg(sport, dport, payloadOf(n)))
			m[fmt.Sprintf("udp6/%d", n)] = ip6(s, d, UDP, udpDgram(sport, dport, payloadOf(n)))
			m[fmt.Sprintf("icmp6/%d", n)] = ip6(s, d, ICMPv6, icmpEcho(129, id, 7, payloadOf(n)))
		}
	}
	return m
}

func TestRewriteBuilt(t *testing.T) {
	for _, tc := range []struct{ src, dst, src2, dst2 string }{
		{"10.18.0.2", "10.30.0.1", "10.30.0.2", "10.18.30.65"},
		{"0.0.0.0", "255.255.255.255", "255.255.255.255", "0.0.0.0"},
		{"fc00::2", "fdff:2000::1", "fdff::1e:2", "fc00::1e41"},
		{"::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::"},
	} {
		src, dst, src2, dst2 := mustAddr(tc.src), mustAddr(tc.dst), mustAddr(tc.src2), mustAddr(tc.dst2)
		before := built(src, dst, 40000, 80, 0x1111)
		afterAddrs := built(src2, dst2, 40000, 80, 0x1111)
		afterAll := built(src2, dst2, 55555, 8080, 0x2222)
		for name, b := range before {
			t.Run(tc.src+"/"+name, func(t *testing.T) {
				var p Parsed
				if err := p.Decode(b); err != nil {
					t.Fatal(err)
				}
				if err := p.SetSrc(src2); err != nil {
					t.Fatal(err)
				}
				if err := p.SetDst(dst2); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(b, afterAddrs[name]) {
					t.Fatalf("SetSrc+SetDst: %s", diff(b, afterAddrs[name]))
				}
				if p.HasPorts() {
					if err := p.SetSrcPort(55555); err != nil {
						t.Fatal(err)
					}
					if err := p.SetDstPort(8080); err != nil {
						t.Fatal(err)
					}
					if p.SrcPort != 55555 || p.DstPort != 8080 {
						t.Errorf("port fields: %v", &p)
					}
				} else {
					if err := p.SetEchoID(0x2222); err != nil {
						t.Fatal(err)
					}
					if p.EchoID != 0x2222 {
						t.Errorf("echo field: %v", &p)
					}
				}
				if !bytes.Equal(b, afterAll[name]) {
					t.Fatalf("ports/echo id: %s", diff(b, afterAll[name]))
				}
				if err := VerifyChecksums(b); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func TestUDPZeroChecksumStaysZero(t *testing.T) {
	for _, b := range [][]byte{
		unhex(t, captures[2].hex), // udp4_nocsum
		ip6("fc00::1", "fc00::2", UDP, udpDgram(4789, 4789, []byte("tunnel"))),
	} {
		var p Parsed
		if err := p.Decode(b); err != nil {
			t.Fatal(err)
		}
		tr := p.Transport()
		tr[6], tr[7] = 0, 0 // over IPv6: zero-checksum tunnel (RFC 6935)
		src, dst := newAddrs(p.Version)
		if err := p.SetAddrs(src, dst); err != nil {
			t.Fatal(err)
		}
		if err := p.SetSrcPort(1); err != nil {
			t.Fatal(err)
		}
		if tr[6] != 0 || tr[7] != 0 {
			t.Errorf("IPv%d: UDP checksum became %x, want 0 (none)", p.Version, tr[6:8])
		}
	}
}

func TestUDPChecksumNeverBecomesZero(t *testing.T) {
	// Find a new source address for which the computed UDP checksum is 0: it must be sent
	// as 0xffff, or the receiver reads "no checksum".
	orig := ip4("10.18.0.2", "10.30.0.1", UDP, udpDgram(1000, 53, []byte("q")))
	for i := range 1 << 16 {
		src := netip.AddrFrom4([4]byte{10, 30, byte(i >> 8), byte(i)})
		want := ip4(src.String(), "10.30.0.1", UDP, udpDgram(1000, 53, []byte("q")))
		if want[26] != 0xff || want[27] != 0xff {
			continue
		}
		b := bytes.Clone(orig)
		var p Parsed
		if err := p.Decode(b); err != nil {
			t.Fatal(err)
		}
		if err := p.SetSrc(src); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("src %v: %s", src, diff(b, want))
		}
		if err := VerifyChecksums(b); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("no address gives a zero UDP checksum; the test needs another packet")
}

// TestFragmentsRewrite rewrites every fragment of a datagram on its own, as the node does,
// and checks that the reassembled datagram equals the datagram rewritten whole.
func TestFragmentsRewrite(t *testing.T) {
	data := payloadOf(3001)
	for _, tc := range []struct {
		name string
		orig func(src, dst string, sport, dport uint16) []byte
		v    uint8
	}{
		{"udp4", func(s, d string, sp, dp uint16) []byte { return ip4(s, d, UDP, udpDgram(sp, dp, data)) }, 4},
		{"tcp4", func(s, d string, sp, dp uint16) []byte { return ip4(s, d, TCP, tcpSeg(sp, dp, data)) }, 4},
		{"icmp4", func(s, d string, sp, dp uint16) []byte { return ip4(s, d, ICMPv4, icmpEcho(8, sp, 1, data)) }, 4},
		{"udp6", func(s, d string, sp, dp uint16) []byte { return ip6(s, d, UDP, udpDgram(sp, dp, data)) }, 6},
		{"tcp6", func(s, d string, sp, dp uint16) []byte { return ip6(s, d, TCP, tcpSeg(sp, dp, data)) }, 6},
		{"icmp6", func(s, d string, sp, dp uint16) []byte { return ip6(s, d, ICMPv6, icmpEcho(128, sp, 1, data)) }, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := "10.18.0.2", "10.30.0.1"
			if tc.v == 6 {
				src, dst = "fc00::2", "fdff:2000::1"
			}
			nsrc, ndst := newAddrs(tc.v)
			whole := tc.orig(src, dst, 40000, 80)
			want := tc.orig(nsrc.String(), ndst.String(), 50000, 8080)
			var frags [][]byte
			if tc.v == 4 {
				frags = fragment4(t, whole, 1480)
			} else {
				frags = fragment6(t, whole, 1232, 0xfeedface)
			}
			if len(frags) != 3 {
				t.Fatalf("%d fragments", len(frags))
			}
			var p Parsed
			for i, f := range frags {
				if err := p.Decode(f); err != nil {
					t.Fatalf("fragment %d: %v", i, err)
				}
				if p.IsFirstFragment() != (i == 0) || p.IsNonFirstFragment() != (i != 0) || !p.IsFragment() {
					t.Fatalf("fragment %d: %v", i, &p)
				}
				if err := p.SetAddrs(nsrc, ndst); err != nil {
					t.Fatal(err)
				}
				switch {
				case i == 0 && p.HasPorts():
					if p.SrcPort != 40000 || p.DstPort != 80 {
						t.Fatalf("first fragment ports: %v", &p)
					}
					p.SetSrcPort(50000)
					p.SetDstPort(8080)
				case i == 0:
					if err := p.SetEchoID(50000); err != nil {
						t.Fatal(err)
					}
				default:
					if err := p.SetSrcPort(1); !errors.Is(err, ErrNoPorts) {
						t.Errorf("SetSrcPort on a later fragment: %v, want ErrNoPorts", err)
					}
				}
				if err := VerifyChecksums(f); err != nil { // IPv4 header checksum
					t.Errorf("fragment %d: %v", i, err)
				}
			}
			var got []byte
			if tc.v == 4 {
				got = reassemble4(frags)
			} else {
				got = reassemble6(frags)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("reassembled: %s", diff(got, want))
			}
			if err := VerifyChecksums(got); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestRewriteErrors(t *testing.T) {
	var p Parsed
	if err := p.SetAddrs(newAddrs(4)); !errors.Is(err, ErrNotDecoded) {
		t.Errorf("zero Parsed: %v", err)
	}
	if err := p.SetSrcPort(1); !errors.Is(err, ErrNoPorts) {
		t.Errorf("zero Parsed ports: %v", err)
	}

	v4 := unhex(t, captures[0].hex)
	orig := bytes.Clone(v4)
	if err := p.Decode(v4); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{{}, mustAddr("fc00::1"), mustAddr("::ffff:10.0.0.1")} {
		if err := p.SetSrc(a); !errors.Is(err, ErrFamily) {
			t.Errorf("SetSrc(%v) on IPv4: %v", a, err)
		}
		if err := p.SetAddrs(mustAddr("10.0.0.1"), a); !errors.Is(err, ErrFamily) {
			t.Errorf("SetAddrs(10.0.0.1, %v) on IPv4: %v", a, err)
		}
	}
	if err := p.SetEchoID(1); !errors.Is(err, ErrNotEcho) {
		t.Errorf("SetEchoID on TCP: %v", err)
	}
	if !bytes.Equal(v4, orig) {
		t.Errorf("a refused rewrite changed the packet")
	}

	v6 := unhex(t, captures[7].hex)
	if err := p.Decode(v6); err != nil {
		t.Fatal(err)
	}
	if err := p.SetDst(mustAddr("10.0.0.1")); !errors.Is(err, ErrFamily) {
		t.Errorf("SetDst(IPv4) on IPv6: %v", err)
	}
	// An IPv6 zone is not on the wire: it is dropped.
	if err := p.SetDst(mustAddr("fe80::1%eth0")); err != nil || p.Dst != mustAddr("fe80::1") {
		t.Errorf("SetDst(zoned): %v, %v", err, p.Dst)
	}

	icmp := unhex(t, captures[3].hex)
	if err := p.Decode(icmp); err != nil {
		t.Fatal(err)
	}
	if err := p.SetDstPort(1); !errors.Is(err, ErrNoPorts) {
		t.Errorf("SetDstPort on ICMP: %v", err)
	}
}

func TestRoutingHeader(t *testing.T) {
	// Type 2 routing header (Mobile IPv6), one segment left, final destination inside.
	rh := []byte{byte(UDP), 2, 2, 1, 0, 0, 0, 0}
	rh = append(rh, mustAddr("fdff:2000::99").AsSlice()...)
	b := ip6Ext("fc00::1", "fdff:2000::1", Routing, rh, UDP, udpDgram(1, 2, nil))
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	if !p.HasRoutingHeader() || p.HeaderLen != 64 {
		t.Fatalf("got %v", &p)
	}
	if err := p.SetDst(mustAddr("fc00::5")); !errors.Is(err, ErrRoutingHeader) {
		t.Errorf("SetDst: %v, want ErrRoutingHeader", err)
	}
	if err := p.SetAddrs(mustAddr("fc00::5"), mustAddr("fc00::6")); !errors.Is(err, ErrRoutingHeader) || p.Src != mustAddr("fc00::1") {
		t.Errorf("SetAddrs: %v, src %v: want ErrRoutingHeader and nothing changed", err, p.Src)
	}
	if err := p.SetSrc(mustAddr("fc00::5")); err != nil {
		t.Errorf("SetSrc: %v", err)
	}
	if err := VerifyChecksums(b); !errors.Is(err, ErrRoutingHeader) {
		t.Errorf("VerifyChecksums: %v, want ErrRoutingHeader", err)
	}
	// With no segments left the header is spent: the destination is final.
	rh[3] = 0
	b = ip6Ext("fc00::1", "fdff:2000::1", Routing, rh, UDP, udpDgram(1, 2, nil))
	if err := p.Decode(b); err != nil || p.HasRoutingHeader() {
		t.Fatalf("spent routing header: %v %v", err, &p)
	}
	if err := p.SetAddrs(newAddrs(6)); err != nil {
		t.Fatal(err)
	}
	if err := VerifyChecksums(b); err != nil {
		t.Error(err)
	}
}

func TestRewriteAllocs(t *testing.T) {
	b4 := ip4("10.18.0.2", "10.30.0.1", TCP, tcpSeg(1, 2, payloadOf(1360)))
	b6 := ip6("fc00::2", "fdff:2000::1", UDP, udpDgram(1, 2, payloadOf(1352)))
	e6 := ip6("fc00::2", "fdff:2000::1", ICMPv6, icmpEcho(128, 1, 2, nil))
	s4, d4 := newAddrs(4)
	s6, d6 := newAddrs(6)
	var p Parsed
	got := testing.AllocsPerRun(1000, func() {
		p.Decode(b4)
		p.SetAddrs(s4, d4)
		p.SetSrc(d4)
		p.SetDst(s4)
		p.SetSrcPort(3)
		p.SetDstPort(4)
		p.Decode(b6)
		p.SetAddrs(s6, d6)
		p.SetSrcPort(5)
		p.Decode(e6)
		p.SetAddrs(d6, s6)
		p.SetEchoID(9)
	})
	if got != 0 {
		t.Errorf("Decode and rewrite: %v allocs per run, want 0", got)
	}
}
