package conntrack_test

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/node/conntrack"
	"github.com/semnet/semnet/node/packet"
)

// Benchmarks of flow lookup alone and of the node's whole per-packet translation
// (decode + lookup + rewrite + checksum; target <= 150 ns, 0 allocations). Run:
//
//	go test -run '^$' -bench . -benchmem ./node/conntrack/

// benchTable holds n UDP flows from distinct ports, plus the worked-example flow.
func benchTable(b *testing.B, n int) (*conntrack.Table, []conntrack.Tuple) {
	tb := newTable(b, conntrack.Config{MaxFlows: n + 16})
	keys := make([]conntrack.Tuple, n)
	now := time.Now()
	for i := range keys {
		keys[i] = conntrack.Tuple{Proto: udp, SrcPort: uint16(i), DstPort: 53,
			Src: netip.AddrFrom4([4]byte{10, 18, byte(i >> 8), byte(i)}), Dst: ip("10.30.0.1")}
		r := conntrack.Tuple{Proto: udp, SrcPort: uint16(i), DstPort: 53,
			Src: netip.AddrFrom4([4]byte{10, 30, 100 + byte(i>>8), byte(i)}), Dst: netip.AddrFrom4([4]byte{10, 18, 30, byte(2 + i%61)})}
		if _, err := tb.Add(keys[i], r, r.Reverse(), now); err != nil {
			b.Fatal(err)
		}
	}
	return tb, keys
}

func BenchmarkOutbound(b *testing.B) {
	tb, keys := benchTable(b, 10000)
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := tb.Outbound(keys[i%len(keys)], now); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

func BenchmarkReply(b *testing.B) {
	tb, keys := benchTable(b, 10000)
	now := time.Now()
	replies := make([]conntrack.Tuple, len(keys))
	for i, k := range keys {
		r, _ := tb.Outbound(k, now)
		replies[i] = r.Reverse()
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := tb.Reply(replies[i%len(replies)], now); !ok {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkOutboundParallel: every goroutine (GOMAXPROCS of them, as TUN queues and
// tunnel readers would be) looks up its own walk through the flows.
func BenchmarkOutboundParallel(b *testing.B) {
	tb, keys := benchTable(b, 10000)
	now := time.Now()
	b.ReportAllocs()
	var start atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(start.Add(7919))
		for pb.Next() {
			if _, ok := tb.Outbound(keys[i%len(keys)], now); !ok {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

// BenchmarkAdd measures new flows on a table that Sweep keeps from filling.
func BenchmarkAdd(b *testing.B) {
	tb := newTable(b, conntrack.Config{MaxFlows: 1 << 20})
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], uint32(i))
		o := conntrack.Tuple{Proto: udp, Src: netip.AddrFrom4(a), SrcPort: 1, Dst: ip("10.30.0.1"), DstPort: 53}
		r := conntrack.Tuple{Proto: udp, Src: netip.AddrFrom4(a), SrcPort: 1, Dst: ip("10.18.30.65"), DstPort: 53}
		if _, err := tb.Add(o, r, r.Reverse(), now); err != nil {
			b.Fatal(err)
		}
		i++
		if i%(1<<19) == 0 {
			b.StopTimer()
			now = now.Add(time.Hour)
			tb.Sweep(now)
			b.StartTimer()
		}
	}
}

// BenchmarkTranslate is the outbound translation of one packet of an established flow:
// decode, look the flow up, rewrite both addresses with incremental checksums. The table
// holds 10,000 other flows. The rewritten packet is fed back in, so a second flow maps it
// back and every iteration really rewrites. The clock is read once per 64 packets, as a
// batch would.
func BenchmarkTranslate(b *testing.B) {
	for _, tc := range []struct {
		name      string
		pkt       []byte
		o, r      conntrack.Tuple
		ipHdrSize int
	}{
		{"tcp4-1400", tcp4Packet(1400), orig, rewritten, 20},
		{"tcp6-1400", tcp6Packet(1400),
			tuple(tcp, "fc00::2", 40000, "fdff:2000::1", 80), tuple(tcp, "fdff::1e:2", 40000, "fc00::1e41", 80), 40},
	} {
		b.Run(tc.name, func(b *testing.B) {
			tb, _ := benchTable(b, 10000)
			now := time.Now()
			mustAdd(b, tb, tc.o, tc.r, now)
			mustAdd(b, tb, tc.r, tc.o, now) // maps the rewritten packet back
			pkt := tc.pkt
			var p packet.Parsed
			b.ReportAllocs()
			b.SetBytes(int64(len(pkt)))
			i := 0
			for b.Loop() {
				if i&63 == 0 {
					now = time.Now()
				}
				i++
				if err := p.Decode(pkt); err != nil {
					b.Fatal(err)
				}
				sp, dp, _ := p.FlowPorts()
				k := conntrack.Tuple{Proto: uint8(p.Proto), Src: p.Src, SrcPort: sp, Dst: p.Dst, DstPort: dp}
				rw, ok := tb.Outbound(k, now)
				if !ok {
					b.Fatalf("no flow for %v", k)
				}
				if err := p.SetAddrs(rw.Src, rw.Dst); err != nil {
					b.Fatal(err)
				}
			}
			if err := packet.VerifyChecksums(pkt); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// tcp4Packet and tcp6Packet build a valid TCP packet of the given total size for the
// benchmark's flows.
func tcp4Packet(size int) []byte {
	b := make([]byte, size)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(size))
	b[8], b[9] = 64, tcp
	copy(b[12:], []byte{10, 18, 0, 2, 10, 30, 0, 1})
	tcpHeader(b[20:], 40000, 80)
	return fixChecksums(b)
}

func tcp6Packet(size int) []byte {
	b := make([]byte, size)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(size-40))
	b[6], b[7] = tcp, 64
	s, d := ip("fc00::2").As16(), ip("fdff:2000::1").As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	tcpHeader(b[40:], 40000, 80)
	return fixChecksums(b)
}

func tcpHeader(b []byte, sport, dport uint16) {
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	b[12], b[13] = 5<<4, 0x10
	for i := 20; i < len(b); i++ {
		b[i] = byte(i)
	}
}

// fixChecksums fills in the checksums of a TCP packet whose checksum fields are zero: it
// sums the packet with its addresses zeroed, then puts the addresses back with SetAddrs
// (which updates the sums) and checks the result with VerifyChecksums.
func fixChecksums(b []byte) []byte {
	var p packet.Parsed
	var src, dst netip.Addr
	if b[0]>>4 == 4 {
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		clear(b[12:20])
		binary.BigEndian.PutUint16(b[10:], ^ones(b[:20], 0))
		binary.BigEndian.PutUint16(b[36:], ^ones(b[20:], uint32(tcp)+uint32(len(b)-20)))
	} else {
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		clear(b[8:40])
		binary.BigEndian.PutUint16(b[56:], ^ones(b[40:], uint32(tcp)+uint32(len(b)-40)))
	}
	if err := p.Decode(b); err != nil {
		panic(err)
	}
	if err := p.SetAddrs(src, dst); err != nil {
		panic(err)
	}
	if err := packet.VerifyChecksums(b); err != nil {
		panic(err)
	}
	return b
}

// ones is the ones'-complement sum of b's 16-bit words plus s.
func ones(b []byte, s uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
