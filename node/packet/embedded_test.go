package packet

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/semnet/semnet/node/packet/packettest"
)

// embeddedCase is an ICMP error about a packet a sender sent: mk builds that packet for
// given addresses and ports (an ICMP echo takes sport as its identifier), quote is how
// much of it the error carries (0: all of it).
type embeddedCase struct {
	name      string
	v6        bool
	typ, code uint8
	info      uint32
	mk        func(src, dst string, sport, dport uint16) []byte
	quote     int
	flow      string // what FlowPorts finds: "ports" (SetPorts applies), "echo" or ""
}

// Addresses of the rewrite under test: the embedded packet goes from 10.18.0.2:40000 >
// 10.30.0.10:53 to 10.30.0.2:40001 > 10.18.0.66:5353 (and the same in IPv6), as the
// node's translator turns a sender's packet into what went on the wire.
const (
	emSrc4, emDst4, emSrc4b, emDst4b = "10.18.0.2", "10.30.0.10", "10.30.0.2", "10.18.0.66"
	emSrc6, emDst6, emSrc6b, emDst6b = "fc00::2", "fdff:2000::10", "fdff::2", "fc00::1:2"
)

func embeddedCases(t testing.TB) []embeddedCase {
	big := payloadOf(1400)
	udp4 := func(s, d string, sp, dp uint16) []byte { return ip4(s, d, UDP, udpDgram(sp, dp, big[:100])) }
	tcp4 := func(s, d string, sp, dp uint16) []byte { return ip4(s, d, TCP, tcpSeg(sp, dp, big[:1360])) }
	udp6 := func(s, d string, sp, dp uint16) []byte { return ip6(s, d, UDP, udpDgram(sp, dp, big[:1000])) }
	tcp6 := func(s, d string, sp, dp uint16) []byte { return ip6(s, d, TCP, tcpSeg(sp, dp, big[:1340])) }
	// Hop-by-hop (PadN) then destination options (PadN) before UDP.
	ext := []byte{60, 0, 1, 4, 0, 0, 0, 0, byte(UDP), 0, 1, 4, 0, 0, 0, 0}
	return []embeddedCase{
		{name: "udp4 port unreachable, 8 bytes", typ: 3, code: 3, mk: udp4, quote: 28, flow: "ports"},
		{name: "udp4 port unreachable, whole", typ: 3, code: 3, mk: udp4, flow: "ports"},
		{name: "tcp4 fragmentation needed, whole header", typ: 3, code: 4, info: 1450, mk: tcp4, quote: 48, flow: "ports"},
		{name: "tcp4 parameter problem, whole", typ: 12, info: 9 << 24, flow: "ports",
			mk: func(s, d string, sp, dp uint16) []byte { return ip4(s, d, TCP, tcpSeg(sp, dp, big[:21])) }},
		{name: "tcp4 time exceeded, 8 bytes: no TCP checksum", typ: 11, mk: tcp4, quote: 28, flow: "ports"},
		{name: "tcp4 odd quote cut before the checksum", typ: 12, info: 8 << 24, mk: tcp4, quote: 35, flow: "ports"},
		{name: "icmp4 echo host unreachable", typ: 3, code: 1, quote: 28, flow: "echo",
			mk: func(s, d string, id, _ uint16) []byte { return ip4(s, d, ICMPv4, icmpEcho(8, id, 1, big[:56])) }},
		{name: "udp4 non-first fragment", typ: 11, code: 1,
			mk: func(s, d string, sp, dp uint16) []byte {
				return fragment4(t, ip4(s, d, UDP, udpDgram(sp, dp, big[:1300])), 800)[1]
			}},
		{name: "udp6 packet too big, whole", v6: true, typ: 2, info: 1280, mk: udp6, flow: "ports"},
		{name: "tcp6 port unreachable, 8 bytes", v6: true, typ: 1, code: 4, mk: tcp6, quote: 48, flow: "ports"},
		{name: "tcp6 first fragment too big", v6: true, typ: 2, info: 1280, flow: "ports",
			mk: func(s, d string, sp, dp uint16) []byte {
				return fragment6(t, tcp6(s, d, sp, dp), 1200, 7)[0]
			}},
		{name: "icmp6 echo time exceeded", v6: true, typ: 3, quote: 48, flow: "echo",
			mk: func(s, d string, id, _ uint16) []byte { return ip6(s, d, ICMPv6, icmpEcho(128, id, 1, big[:56])) }},
		{name: "udp6 extension headers parameter problem", v6: true, typ: 4, info: 6, flow: "ports",
			mk: func(s, d string, sp, dp uint16) []byte {
				return ip6Ext(s, d, HopByHop, ext, UDP, udpDgram(sp, dp, big[:33]))
			}},
	}
}

// icmpError wraps the first n bytes of pkt (all for 0) in an ICMP error from 10.99.0.1
// (fdff::99) to the address to, with every checksum computed from scratch.
func icmpError(to string, pkt []byte, typ, code uint8, info uint32, n int) []byte {
	if n == 0 {
		n = len(pkt)
	}
	msg := packettest.ICMPError(typ, code, info, pkt[:n])
	if pkt[0]>>4 == 4 {
		return ip4("10.99.0.1", to, ICMPv4, msg)
	}
	return ip6("fdff::99", to, ICMPv6, msg)
}

// decodeEmbedded decodes the ICMP error in b and the packet it embeds, which must both
// decode.
func decodeEmbedded(t testing.TB, b []byte) (*Parsed, Embedded) {
	t.Helper()
	p := new(Parsed)
	if err := p.Decode(b); err != nil {
		t.Fatal(err)
	}
	e, err := p.Embedded()
	if err != nil {
		t.Fatalf("Embedded: %v", err)
	}
	return p, e
}

// TestEmbeddedRewrite rewrites the embedded packet of each case and compares the error
// byte for byte with the error a kernel would send about the packet built with the new
// addresses and ports: every checksum (ICMP, embedded IPv4 header, embedded transport
// where it is carried) must come out as computed from scratch.
func TestEmbeddedRewrite(t *testing.T) {
	for _, c := range embeddedCases(t) {
		t.Run(c.name, func(t *testing.T) {
			s, d, s2, d2 := emSrc4, emDst4, emSrc4b, emDst4b
			if c.v6 {
				s, d, s2, d2 = emSrc6, emDst6, emSrc6b, emDst6b
			}
			b := icmpError(s, c.mk(s, d, 40000, 53), c.typ, c.code, c.info, c.quote)
			sp2, dp2 := uint16(40000), uint16(53)
			if c.flow == "ports" {
				sp2, dp2 = 40001, 5353
			}
			// The error's own addresses stay: only the embedded packet changes.
			want := icmpError(s, c.mk(s2, d2, sp2, dp2), c.typ, c.code, c.info, c.quote)

			p, e := decodeEmbedded(t, b)
			if !p.IsICMPError() || p.IsEcho() {
				t.Fatalf("not an ICMP error: %v", p)
			}
			if e.Src() != mustAddr(s) || e.Dst() != mustAddr(d) {
				t.Errorf("embedded %v, want %s > %s", &e, s, d)
			}
			sp, dp, ok := e.FlowPorts()
			if want := map[string][3]any{"ports": {uint16(40000), uint16(53), true},
				"echo": {uint16(40000), uint16(40000), true}, "": {uint16(0), uint16(0), false}}[c.flow]; [3]any{sp, dp, ok} != want {
				t.Errorf("FlowPorts = %d, %d, %v; want %v", sp, dp, ok, want)
			}
			if err := e.SetAddrs(mustAddr(s2), mustAddr(d2)); err != nil {
				t.Fatal(err)
			}
			if err := e.SetPorts(sp2, dp2); c.flow == "ports" && err != nil || c.flow != "ports" && !errors.Is(err, ErrNoPorts) {
				t.Errorf("SetPorts: %v", err)
			}
			if !bytes.Equal(b, want) {
				t.Errorf("rewritten error: %s", diff(b, want))
			}
			if e.Src() != mustAddr(s2) || e.Dst() != mustAddr(d2) {
				t.Errorf("fields after rewrite: %v", &e)
			}
			if err := VerifyChecksums(b); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestEmbeddedErrors(t *testing.T) {
	udp := ip4(emSrc4, emDst4, UDP, udpDgram(1, 2, payloadOf(20)))
	udp6 := ip6(emSrc6, emDst6, UDP, udpDgram(1, 2, payloadOf(20)))
	msg := func(quoted []byte) []byte { return packettest.ICMPError(3, 3, 0, quoted) }
	badIHL := bytes.Clone(udp)
	badIHL[0] = 0x44
	fragmented := icmpError(emSrc4, udp, 3, 3, 0, 0)
	fragmented[6] |= 0x20 // MF
	fillChecksums(fragmented, 20, ICMPv4)
	for _, c := range []struct {
		name string
		pkt  []byte
		want error
	}{
		{"UDP", udp, ErrNotICMPError},
		{"echo request", ip4(emSrc4, emDst4, ICMPv4, icmpEcho(8, 1, 1, nil)), ErrNotICMPError},
		{"ICMPv6 type in IPv4", ip4(emSrc4, emDst4, ICMPv6, msg(udp6)), ErrNotICMPError},
		{"first fragment of an error", fragmented, ErrNotICMPError},
		{"nothing quoted", ip4(emDst4, emSrc4, ICMPv4, msg(nil)), ErrTruncated},
		{"IPv6 quoted in ICMPv4", ip4(emDst4, emSrc4, ICMPv4, msg(udp6[:48])), ErrEmbeddedVersion},
		{"IPv4 quoted in ICMPv6", ip6(emDst6, emSrc6, ICMPv6, packettest.ICMPError(1, 4, 0, udp[:28])), ErrEmbeddedVersion},
		{"garbage quoted", ip4(emDst4, emSrc4, ICMPv4, msg([]byte{0xff, 1, 2})), ErrEmbeddedVersion},
		{"IPv4 header cut", ip4(emDst4, emSrc4, ICMPv4, msg(udp[:19])), ErrTruncated},
		{"IPv4 IHL below 5", ip4(emDst4, emSrc4, ICMPv4, msg(badIHL[:28])), ErrHeaderLength},
		{"UDP header cut", ip4(emDst4, emSrc4, ICMPv4, msg(udp[:27])), ErrUDPHeader},
		{"IPv6 header cut", ip6(emDst6, emSrc6, ICMPv6, packettest.ICMPError(1, 4, 0, udp6[:39])), ErrTruncated},
	} {
		var p Parsed
		if err := p.Decode(c.pkt); err != nil {
			t.Fatalf("%s: Decode: %v", c.name, err)
		}
		if _, err := p.Embedded(); !errors.Is(err, c.want) {
			t.Errorf("%s: Embedded() = %v, want %v", c.name, err, c.want)
		}
	}

	// An embedded routing header with segments left: its transport checksum covers the
	// final destination, so the destination is not rewritten, and nothing changes.
	rh := append([]byte{byte(UDP), 2, 2, 1, 0, 0, 0, 0}, mustAddr("fdff:2000::99").AsSlice()...)
	b := icmpError(emSrc6, ip6Ext(emSrc6, emDst6, Routing, rh, UDP, udpDgram(1, 2, nil)), 1, 4, 0, 0)
	orig := bytes.Clone(b)
	_, e := decodeEmbedded(t, b)
	if err := e.SetAddrs(mustAddr(emSrc6b), mustAddr(emDst6b)); !errors.Is(err, ErrRoutingHeader) {
		t.Errorf("SetAddrs with a routing header: %v", err)
	}
	if err := e.SetAddrs(mustAddr(emSrc4b), mustAddr(emDst4b)); !errors.Is(err, ErrFamily) {
		t.Errorf("SetAddrs with IPv4 addresses: %v", err)
	}
	if !bytes.Equal(b, orig) {
		t.Errorf("a refused rewrite changed the error")
	}
}

func TestEmbeddedAllocs(t *testing.T) {
	b4 := icmpError(emSrc4, ip4(emSrc4, emDst4, UDP, udpDgram(1, 2, payloadOf(50))), 3, 3, 0, 28)
	b6 := icmpError(emSrc6, ip6(emSrc6, emDst6, TCP, tcpSeg(1, 2, payloadOf(50))), 2, 0, 1280, 0)
	s4, d4, s6, d6 := mustAddr(emSrc4b), mustAddr(emDst4b), mustAddr(emSrc6b), mustAddr(emDst6b)
	var p Parsed
	got := testing.AllocsPerRun(1000, func() {
		for _, c := range []struct {
			b    []byte
			s, d netip.Addr
		}{{b4, s4, d4}, {b6, s6, d6}} {
			p.Decode(c.b)
			e, _ := p.Embedded()
			e.SetAddrs(c.s, c.d)
			e.SetPorts(3, 4)
			e.SetAddrs(c.d, c.s)
		}
	})
	if got != 0 {
		t.Errorf("%v allocs per run, want 0", got)
	}
}
