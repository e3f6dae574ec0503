package packet

import (
	"net/netip"
	"testing"
)

// Benchmarks of the per-packet work of the translator: decode, rewrite both addresses,
// update the checksums incrementally. Target (PERFORMANCE.md): lookup + rewrite +
// checksum <= 150 ns per packet, 0 allocations; node/conntrack's BenchmarkTranslate adds
// the lookup. Run:
//
//	go test -run '^$' -bench . -benchmem ./node/packet/

func benchPackets() map[string][]byte {
	return map[string][]byte{
		"tcp4-1400": ip4("10.18.0.2", "10.30.0.1", TCP, tcpSeg(40000, 80, payloadOf(1400-20-20))),
		"tcp6-1400": ip6("fc00::2", "fdff:2000::1", TCP, tcpSeg(40000, 80, payloadOf(1400-40-20))),
		"udp6-1400": ip6("fc00::2", "fdff:2000::1", UDP, udpDgram(40000, 80, payloadOf(1400-40-8))),
	}
}

func BenchmarkDecode(b *testing.B) {
	for name, pkt := range benchPackets() {
		b.Run(name, func(b *testing.B) {
			var p Parsed
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			for b.Loop() {
				if err := p.Decode(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDecodeRewrite alternates between two address pairs so every iteration really
// changes the packet, as the node's outbound rewrite does.
func BenchmarkDecodeRewrite(b *testing.B) {
	for name, pkt := range benchPackets() {
		b.Run(name, func(b *testing.B) {
			var p Parsed
			if err := p.Decode(pkt); err != nil {
				b.Fatal(err)
			}
			src, dst := newAddrs(p.Version)
			addrs := [2][2]netip.Addr{{src, dst}, {p.Src, p.Dst}}
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			i := 0
			for b.Loop() {
				if err := p.Decode(pkt); err != nil {
					b.Fatal(err)
				}
				a := &addrs[i&1]
				if err := p.SetAddrs(a[0], a[1]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			if err := VerifyChecksums(pkt); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkSetPorts is the gateway's NAPT step on an already decoded packet.
func BenchmarkSetPorts(b *testing.B) {
	pkt := benchPackets()["tcp4-1400"]
	var p Parsed
	if err := p.Decode(pkt); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := uint16(0)
	for b.Loop() {
		p.SetSrcPort(i)
		p.SetDstPort(i + 1)
		i++
	}
}
