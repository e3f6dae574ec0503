package packet

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"

	"github.com/semnet/semnet/node/packet/packettest"
)

// The tests build packets with packettest, whose checksum is written independently of
// checksum.go; the hand-made captures in packet_test.go (checksums computed by a separate
// Python script) anchor both. These wrappers take the package's own Proto type.

var (
	refChecksum = packettest.Checksum
	tcpSeg      = packettest.TCPSegment
	udpDgram    = packettest.UDPDatagram
	icmpEcho    = packettest.ICMPEcho
	fragment4   = packettest.Fragment4
	fragment6   = packettest.Fragment6
	reassemble4 = packettest.Reassemble4
	reassemble6 = packettest.Reassemble6
	payloadOf   = packettest.Payload
)

func ip4(src, dst string, proto Proto, payload []byte) []byte {
	return packettest.IP4(src, dst, uint8(proto), payload)
}

func ip6(src, dst string, next Proto, payload []byte) []byte {
	return packettest.IP6(src, dst, uint8(next), payload)
}

func ip6Ext(src, dst string, next Proto, ext []byte, proto Proto, seg []byte) []byte {
	return packettest.IP6Ext(src, dst, uint8(next), ext, uint8(proto), seg)
}

func fillChecksums(b []byte, off int, proto Proto) { packettest.FillChecksums(b, off, uint8(proto)) }

// unhex decodes a hex string, ignoring spaces and newlines.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.Join(strings.Fields(s), "")
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// diff describes where got and want differ, briefly: packets are long.
func diff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("length %d, want %d", len(got), len(want))
	}
	var at []string
	for i := range got {
		if got[i] != want[i] {
			at = append(at, fmt.Sprintf("[%d] %#02x want %#02x", i, got[i], want[i]))
		}
	}
	if len(at) > 8 {
		at = append(at[:8], "...")
	}
	return strings.Join(at, ", ")
}
