package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// captures are packets as they appear on the wire, written out by hand (a Python script
// with its own checksum code produced the checksums): the anchor that the builder in
// builder_test.go and checksum.go agree with the rest of the world.
var captures = []struct {
	name string
	hex  string
	want string // Parsed.String()
}{
	{"tcp4_syn", // Linux SYN with MSS, SACK-permitted, timestamps, window scale
		"4500003c1c46400040060a440a1200020a1e0001a9f800505b3c1d2e00000000a002faf033e80000" +
			"020405b40402080a0001e2400000000001030307",
		"IPv4 TCP 10.18.0.2:43512 > 10.30.0.1:80 len 60 hdr 20+40"},
	{"udp4_dns", // DNS query for example.com A
		"45000039beef00004011a78a0a1200020a1e0009cf0900350025a0ef" +
			"abcd01000001000000000000076578616d706c6503636f6d0000010001",
		"IPv4 UDP 10.18.0.2:53001 > 10.30.0.9:53 len 57 hdr 20+8"},
	{"udp4_nocsum", // UDP over IPv4 without checksum (0), VXLAN-style
		"4500002c00070000401166520a1200030a12004212b512b50018000068656c6c6f2c2076786c616e2d697368",
		"IPv4 UDP 10.18.0.3:4789 > 10.18.0.66:4789 len 44 hdr 20+8"},
	{"icmp4_echo", // ping
		"4500003c4a3b40004001dc530a1200020a1e00010800f8dd0d1f0001" +
			"101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f",
		"IPv4 ICMPv4 10.18.0.2 > 10.30.0.1 type 8 code 0 id 0x0d1f len 60 hdr 20+8"},
	{"udp4_opts", // IPv4 header with a Router Alert option (IHL 6)
		"460000231c4600004011b54d0a1200020a1e00019404000003e807d0000bfc7c6f7074",
		"IPv4 UDP 10.18.0.2:1000 > 10.30.0.1:2000 len 35 hdr 24+8"},
	{"udp4_frag1", // first fragment: UDP header, MF
		"4500002c333320004011135c0a1200020a1e00011b581b5900303719000102030405060708090a0b0c0d0e0f",
		"IPv4 UDP 10.18.0.2:7000 > 10.30.0.1:7001 len 44 hdr 20+8 frag id 0x3333 off 0 more"},
	{"udp4_frag2", // last fragment at offset 24: no UDP header
		"4500002c33330003401133590a1200020a1e0001101112131415161718191a1b1c1d1e1f2021222324252627",
		"IPv4 UDP 10.18.0.2 > 10.30.0.1 len 44 hdr 20 frag id 0x3333 off 24"},
	{"tcp6_syn",
		"6001234500280640fc000000000000000000000000000002fdff2000000000000000000000000001" +
			"c73801bb0102030400000000a002fd20c7ba00000204058c0402080a000b9c440000000001030307",
		"IPv6 TCP [fc00::2]:51000 > [fdff:2000::1]:443 len 80 hdr 40+40"},
	{"udp6",
		"6001234500171140fc000000000000000000000000010002fdff2000000000000000000000000007" +
			"14e9270f0017fbfe73656d6e657420736179732068690a",
		"IPv6 UDP [fc00::1:2]:5353 > [fdff:2000::7]:9999 len 63 hdr 40+8"},
	{"icmp6_echo",
		"6001234500103a40fc000000000000000000000000000002fdff2000000000000000000000000001" +
			"8000d3a1007700036162636465666768",
		"IPv6 ICMPv6 fc00::2 > fdff:2000::1 type 128 code 0 id 0x0077 len 56 hdr 40+8"},
	{"tcp6_ext", // hop-by-hop (router alert) then destination options then TCP with data
		"6001234500360040fc00000000000000000000000000000afdff200000000000000000000000000b" +
			"3c00050200000100" + "0600010400000000" +
			"9c401f9000000064000000c8501801f4f8140000474554202f20485454502f312e300d0a0d0a",
		"IPv6 TCP [fc00::a]:40000 > [fdff:2000::b]:8080 len 94 hdr 56+20"},
	{"tcp6_frag1", // first fragment: fragment header, TCP header
		"6001234500282c40fc000000000000000000000000000002fdff2000000000000000000000000001" +
			"06000001deadbeef" + "9c410050000000010000000250180064a33f00006465666768696a6b6c6d6e6f",
		"IPv6 TCP [fc00::2]:40001 > [fdff:2000::1]:80 len 80 hdr 48+20 frag id 0xdeadbeef off 0 more"},
	{"tcp6_frag2", // last fragment at offset 32
		"6001234500242c40fc000000000000000000000000000002fdff2000000000000000000000000001" +
			"06000020deadbeef" + "707172737475767778797a7b7c7d7e7f808182838485868788898a8b",
		"IPv6 TCP fc00::2 > fdff:2000::1 len 76 hdr 48 frag id 0xdeadbeef off 32"},
}

func TestDecodeCaptures(t *testing.T) {
	for _, tc := range captures {
		t.Run(tc.name, func(t *testing.T) {
			b := unhex(t, tc.hex)
			var p Parsed
			if err := p.Decode(b); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if got := p.String(); got != tc.want {
				t.Errorf("Decode:\n got %s\nwant %s", got, tc.want)
			}
			if err := VerifyChecksums(b); err != nil {
				t.Errorf("VerifyChecksums: %v", err)
			}
		})
	}
}

func TestDecodeFields(t *testing.T) {
	var p Parsed
	b := append(unhex(t, captures[0].hex), 0, 0, 0, 0) // tcp4_syn and link padding, which is ignored
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	if p.Version != 4 || p.Proto != TCP || p.Length != 60 || len(p.Buffer()) != 60 ||
		len(p.Transport()) != 40 || p.FragID != 0x1c46 || p.IsFragment() || !p.HasPorts() {
		t.Errorf("tcp4_syn: %+v", p)
	}
	if s, d, ok := p.FlowPorts(); !ok || s != 43512 || d != 80 {
		t.Errorf("FlowPorts = %d, %d, %v", s, d, ok)
	}
	if err := p.Decode(unhex(t, "4500003c4a3b40004001dc530a1200020a1e00010800f8dd0d1f0001"+
		"101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f")); err != nil {
		t.Fatal(err)
	}
	if s, d, ok := p.FlowPorts(); !ok || s != 0x0d1f || d != 0x0d1f || p.HasPorts() {
		t.Errorf("echo FlowPorts = %d, %d, %v", s, d, ok)
	}
	// A non-first fragment has neither ports nor a transport slice.
	if err := p.Decode(unhex(t, captures[6].hex)); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := p.FlowPorts(); ok || p.Transport() != nil || !p.IsNonFirstFragment() || p.IsFirstFragment() {
		t.Errorf("udp4_frag2: %v", &p)
	}
	// A failed Decode leaves no packet behind.
	if err := p.Decode([]byte{0x45}); err == nil || p.Version != 0 || p.String() != "no packet" {
		t.Errorf("after failed Decode: %v, %v", err, &p)
	}
}

func TestDecodeIPv6AtomicFragment(t *testing.T) {
	// RFC 6946: fragment header with offset 0 and M clear is a whole datagram.
	seg := tcpSeg(1000, 80, []byte("x"))
	b := ip6Ext("fc00::1", "fdff:2000::1", Fragment, []byte{byte(TCP), 0, 0, 0, 0, 0, 0, 9}, TCP, seg)
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	if p.IsFragment() || !p.HasPorts() || p.FragID != 9 || p.HeaderLen != 48 {
		t.Errorf("atomic fragment: %v", &p)
	}
	if err := VerifyChecksums(b); err != nil {
		t.Error(err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	v4 := unhex(t, captures[0].hex) // tcp4_syn, 60 bytes
	v6 := unhex(t, captures[7].hex) // tcp6_syn, 80 bytes
	mod := func(b []byte, f func(b []byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	ext6 := func(next Proto, ext []byte, proto Proto, seg []byte) []byte {
		return ip6Ext("fc00::1", "fdff:2000::1", next, ext, proto, seg)
	}
	tcp := tcpSeg(1, 2, nil)
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"version 5", []byte{0x50, 0, 0, 0}, ErrVersion},
		{"version 0", make([]byte, 40), ErrVersion},
		{"v4 short", v4[:19], ErrTruncated},
		{"v4 IHL 4", mod(v4, func(b []byte) { b[0] = 0x44 }), ErrHeaderLength},
		{"v4 IHL past buffer", mod(v4[:20], func(b []byte) { b[0] = 0x46; b[3] = 20 }), ErrTruncated},
		{"v4 total length < IHL", mod(v4, func(b []byte) { b[2], b[3] = 0, 19 }), ErrTotalLength},
		{"v4 total length past buffer", v4[:59], ErrTruncated},
		{"v4 ping of death", mod(v4, func(b []byte) { b[6], b[7] = 0x1f, 0xff }), ErrFragmentTooLong},
		{"v4 TCP header short", ip4("10.0.0.1", "10.0.0.2", TCP, make([]byte, 19)), ErrTCPHeader},
		{"v4 TCP data offset 4", mod(v4, func(b []byte) { b[32] = 0x40 }), ErrTCPHeader},
		{"v4 TCP data offset past packet", mod(v4, func(b []byte) { b[32] = 0xb0 }), ErrTCPHeader},
		{"v4 TCP first fragment cuts header", mod(v4[:30], func(b []byte) { b[3] = 30; b[6] = 0x20 }), ErrTCPHeader},
		{"v4 UDP header short", ip4("10.0.0.1", "10.0.0.2", UDP, make([]byte, 7)), ErrUDPHeader},
		{"v4 UDP length 7", mod(ip4("10.0.0.1", "10.0.0.2", UDP, udpDgram(1, 2, nil)), func(b []byte) { b[25] = 7 }), ErrUDPHeader},
		{"v4 UDP length past packet", mod(ip4("10.0.0.1", "10.0.0.2", UDP, udpDgram(1, 2, nil)), func(b []byte) { b[25] = 9 }), ErrUDPHeader},
		{"v4 ICMP short", ip4("10.0.0.1", "10.0.0.2", ICMPv4, make([]byte, 7)), ErrICMPHeader},
		{"v6 short", v6[:39], ErrTruncated},
		{"v6 payload length past buffer", v6[:79], ErrTruncated},
		{"v6 TCP header short", ip6("fc00::1", "fc00::2", TCP, make([]byte, 19)), ErrTCPHeader},
		{"v6 ICMPv6 short", ip6("fc00::1", "fc00::2", ICMPv6, make([]byte, 4)), ErrICMPHeader},
		{"v6 ext header truncated", ext6(DstOpts, []byte{byte(TCP)}, TCP, nil), ErrTruncated},
		{"v6 ext header length past packet", ext6(DstOpts, []byte{byte(TCP), 1, 0, 0, 0, 0, 0, 0}, TCP, nil), ErrTruncated},
		{"v6 fragment header truncated", ext6(Fragment, []byte{byte(TCP), 0, 0, 0}, TCP, nil), ErrTruncated},
		{"v6 two fragment headers", ext6(Fragment, []byte{byte(Fragment), 0, 0, 1, 0, 0, 0, 1, byte(TCP), 0, 0, 1, 0, 0, 0, 1}, TCP, tcp), ErrExtensionHeaders},
		{"v6 hop-by-hop not first", ext6(DstOpts, []byte{byte(HopByHop), 0, 1, 4, 0, 0, 0, 0, byte(TCP), 0, 1, 4, 0, 0, 0, 0}, TCP, tcp), ErrExtensionHeaders},
		{"v6 nine extension headers", ext6(DstOpts, bytes.Repeat([]byte{byte(DstOpts), 0, 1, 4, 0, 0, 0, 0}, 9), DstOpts, nil), ErrExtensionHeaders},
		{"v6 fragment past 65535", ext6(Fragment, []byte{byte(UDP), 0, 0xff, 0xf8, 0, 0, 0, 1}, UDP, make([]byte, 16)), ErrFragmentTooLong},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p Parsed
			if err := p.Decode(tc.b); !errors.Is(err, tc.want) {
				t.Errorf("Decode(%x) = %v, want %v", tc.b, err, tc.want)
			}
			if err := VerifyChecksums(tc.b); !errors.Is(err, tc.want) {
				t.Errorf("VerifyChecksums = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDecodeEightExtensionHeaders(t *testing.T) {
	// The bound is inclusive: eight headers are walked.
	ext := bytes.Repeat([]byte{byte(DstOpts), 0, 1, 4, 0, 0, 0, 0}, 8)
	ext[len(ext)-8] = byte(UDP)
	b := ip6Ext("fc00::1", "fdff:2000::1", DstOpts, ext, UDP, udpDgram(9, 10, []byte("hi")))
	var p Parsed
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	if p.HeaderLen != 40+64 || p.SrcPort != 9 {
		t.Errorf("got %v", &p)
	}
}

func TestVerifyChecksumsCatchesCorruption(t *testing.T) {
	for _, tc := range captures {
		t.Run(tc.name, func(t *testing.T) {
			b := unhex(t, tc.hex)
			var p Parsed
			if err := p.Decode(b); err != nil {
				t.Fatal(err)
			}
			// Flip a bit in the last byte: covered by the transport checksum of a whole
			// packet, by nothing in a fragment or in an unchecksummed UDP datagram.
			b[len(b)-1] ^= 0x10
			covered := !p.IsFragment() && !(p.Proto == UDP && tc.name == "udp4_nocsum")
			if err := VerifyChecksums(b); (err != nil) != covered {
				t.Errorf("payload bit flip: VerifyChecksums = %v, want error %v", err, covered)
			}
			b[len(b)-1] ^= 0x10
			if p.Version == 4 {
				b[8]-- // TTL
				if err := VerifyChecksums(b); err == nil {
					t.Errorf("TTL change not caught")
				}
			}
		})
	}
	b := ip6("fc00::1", "fc00::2", UDP, udpDgram(1, 2, nil))
	b[46], b[47] = 0, 0
	if err := VerifyChecksums(b); err == nil {
		t.Errorf("zero UDP checksum over IPv6 accepted")
	}
}

func TestProtoString(t *testing.T) {
	if TCP.String() != "TCP" || Proto(132).String() != "proto-132" || ICMPv6.String() != "ICMPv6" {
		t.Errorf("got %v %v %v", TCP, Proto(132), ICMPv6)
	}
}

func TestDecodeAllocs(t *testing.T) {
	var bufs [][]byte
	for _, tc := range captures {
		bufs = append(bufs, unhex(t, tc.hex))
	}
	bufs = append(bufs, []byte{0x45, 0}, make([]byte, 50)) // errors too
	var p Parsed
	got := testing.AllocsPerRun(1000, func() {
		for _, b := range bufs {
			p.Decode(b)
		}
	})
	if got != 0 {
		t.Errorf("Decode: %v allocs per run, want 0", got)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
