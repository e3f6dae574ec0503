package broker

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"golang.org/x/time/rate"
)

const (
	// writeChunk is the largest single socket write: WriteTimeout applies to each, so a
	// client that accepts less than writeChunk bytes in WriteTimeout is too slow.
	writeChunk = 32 << 10
	// closeLinger is how long a closing connection may take to flush what was written
	// before (a refusing CONNACK, a DISCONNECT with its reason).
	closeLinger = 2 * time.Second
	// keepSpare is the largest write buffer kept for reuse; bigger ones (after a burst)
	// go back to the garbage collector.
	keepSpare = 64 << 10
)

// dropReason says why the broker cut a connection; the slow-client ones are metric
// label values.
type dropReason string

const (
	dropWriteBuffer    dropReason = "write_buffer"  // more than MaxPendingBytes waiting for the socket
	dropWriteTimeout   dropReason = "write_timeout" // the socket took no writeChunk in WriteTimeout
	dropInflight       dropReason = "inflight"      // MaxInflight QoS 1/2 messages unacknowledged
	dropQueue          dropReason = "queue"         // mochi's queue of MaxQueuedMessages full
	dropPacketTooLarge dropReason = "packet_too_large"
)

var (
	errSlowClient     = errors.New("broker: client too slow, disconnected")
	errPacketTooLarge = errors.New("broker: packet larger than the maximum packet size")
)

// session is what a client authenticated as. Its id is also the client id.
type session struct {
	id     string
	method string     // methodPassword, methodCertificate or methodAnonymous
	cred   credential // methodPassword: the file entry it matched, to notice revocation
}

// Authentication methods, as logged.
const (
	methodPassword    = "password"
	methodCertificate = "certificate"
	methodAnonymous   = "anonymous"
)

// conn is the net.Conn mochi gets for a client. It exists because of two of mochi's
// pitfalls:
//
//   - mochi writes to a client's socket while holding that client's lock, and takes the
//     same lock to number every QoS 1 message any goroutine publishes to that client. A
//     client that stops reading would, once the kernel's buffers are full, block the
//     write and with it every publisher: the cluster's inline Publish and the goroutines
//     of all nodes publishing to a topic it subscribed. So Write never blocks: it copies
//     into a bounded buffer that a goroutine of the connection's own writes to the socket,
//     and a client whose buffer overflows (MaxPendingBytes) or whose socket accepts no
//     writeChunk within WriteTimeout is disconnected.
//   - mochi drops a connection whose packet exceeds the maximum size without a word. Read
//     follows the packet framing and stops at the header of the first oversized packet,
//     before mochi allocates its body; the client is logged, counted and, with MQTT 5,
//     sent DISCONNECT with reason Packet Too Large.
//
// Closing never blocks either: Close stops reads at once and lets the writer flush for at
// most closeLinger; the TCP socket itself is closed (never tls.Conn.Close, which may wait
// up to 5 s to send its close_notify alert to a peer that does not read).
type conn struct {
	net.Conn          // reads and writes: the *tls.Conn with TLS, else the TCP connection
	raw      net.Conn // the TCP connection
	b        *Broker
	remote   string
	names    []string // verified client certificate's names (CN, DNS SANs); nil without one

	// Read side, used only by mochi's reader goroutine.
	frame   framer
	readErr error

	publishes   *rate.Limiter               // nil: unbounded (Config.PublishRate)
	flooded     atomic.Bool                 // a publish was refused for the rate: logged once
	sess        atomic.Pointer[session]     // set once the client authenticated
	client      atomic.Pointer[mqtt.Client] // set at CONNECT
	v5          atomic.Bool
	established atomic.Bool // counted as connected (see Broker.ended)

	mu      sync.Mutex
	wake    sync.Cond // signalled when pending grows or closing is set
	pending []byte    // accepted by Write, not yet on the socket
	spare   []byte
	closing bool
	linger  time.Time // closing: flushing ends here
	dropped dropReason
	done    chan struct{} // closed once the socket is closed
}

func newConn(b *Broker, raw net.Conn) *conn {
	c := &conn{Conn: raw, raw: raw, b: b, remote: raw.RemoteAddr().String(), done: make(chan struct{})}
	if b.tls != nil {
		c.Conn = tls.Server(raw, b.tls)
	}
	c.wake.L = &c.mu
	if b.cfg.PublishRate > 0 {
		c.publishes = rate.NewLimiter(rate.Limit(b.cfg.PublishRate), b.cfg.PublishBurst)
	}
	return c
}

// connOf returns the conn of a network client; nil for mochi's inline client.
func connOf(cl *mqtt.Client) *conn {
	c, _ := cl.Net.Conn.(*conn)
	return c
}

// clientID names the connection in logs: its identity, else its client id, else "".
func (c *conn) clientID() string {
	if s := c.sess.Load(); s != nil {
		return s.id
	}
	if cl := c.client.Load(); cl != nil {
		return cl.ID
	}
	return ""
}

// Read reads from the socket, stopping at an oversized packet.
func (c *conn) Read(p []byte) (int, error) {
	if c.readErr != nil {
		return 0, c.readErr
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if at, size, over := c.frame.scan(p[:n], c.b.cfg.MaxPacketSize); over {
			c.tooLarge(size)
			c.readErr = errPacketTooLarge
			if at > 0 { // hand over the complete packets before it first
				return at, nil
			}
			return 0, c.readErr
		}
	}
	return n, err
}

// Write queues p for the writer goroutine; it never waits for the socket.
func (c *conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if len(c.pending)+len(p) > c.b.cfg.MaxPendingBytes {
		waiting := len(c.pending)
		first := c.dropLocked(dropWriteBuffer)
		c.mu.Unlock()
		if first {
			c.b.slowClient(c, dropWriteBuffer, "pending_bytes", waiting)
		}
		return 0, errSlowClient
	}
	c.pending = append(c.pending, p...)
	c.wake.Signal()
	c.mu.Unlock()
	return len(p), nil
}

// SetDeadline is how mochi enforces the keepalive; it applies to reads only, since
// writes have their own timeout.
func (c *conn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline sets the read deadline unless the connection is closing (Close has set
// it to the past, to stop the reader).
func (c *conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return nil
	}
	return c.raw.SetReadDeadline(t)
}

// SetWriteDeadline does nothing: the writer goroutine owns the write deadline.
func (c *conn) SetWriteDeadline(time.Time) error { return nil }

// Close ends the connection without waiting: reads fail at once, what was written is
// flushed for at most closeLinger, then the socket closes (done is closed).
func (c *conn) Close() error {
	c.mu.Lock()
	c.closeLocked()
	c.mu.Unlock()
	return nil
}

func (c *conn) closeLocked() {
	if c.closing {
		return
	}
	c.closing = true
	c.linger = time.Now().Add(closeLinger)
	_ = c.raw.SetWriteDeadline(c.linger)
	_ = c.raw.SetReadDeadline(time.Now())
	c.wake.Broadcast()
}

// drop cuts a slow connection at once, discarding what it has not read; it reports
// whether this call did it (false if the connection was closing already).
func (c *conn) drop(r dropReason) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropLocked(r)
}

func (c *conn) dropLocked(r dropReason) bool {
	if c.closing {
		return false
	}
	c.closing, c.dropped, c.pending = true, r, nil
	_ = c.raw.Close() // wakes the writer and the reader at once
	c.wake.Broadcast()
	return true
}

// gone reports whether the connection is closing.
func (c *conn) gone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// dropReason returns why the broker cut the connection, "" if it did not.
func (c *conn) dropReason() dropReason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped
}

// tooLarge handles an oversized packet from the client: an MQTT 5 client is told why
// (DISCONNECT, reason Packet Too Large, [MQTT-3.1.2-24]); then the connection closes.
func (c *conn) tooLarge(size int) {
	c.mu.Lock()
	first := !c.closing
	if first {
		if c.v5.Load() {
			c.pending = append(c.pending, disconnectPacket(packets.ErrPacketTooLarge)...)
		}
		c.dropped = dropPacketTooLarge
		c.closeLocked()
	}
	c.mu.Unlock()
	if first {
		c.b.m.oversized.Inc()
		c.b.log.Warn("packet too large; disconnecting client", "client", c.clientID(), "remote", c.remote,
			"size", size, "max_packet_size", c.b.cfg.MaxPacketSize)
	}
}

// disconnectPacket encodes an MQTT 5 DISCONNECT with a reason code.
func disconnectPacket(code packets.Code) []byte {
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Disconnect}, ProtocolVersion: 5, ReasonCode: code.Code}
	var buf bytes.Buffer
	_ = pk.DisconnectEncode(&buf) // cannot fail for a DISCONNECT
	return buf.Bytes()
}

// writeLoop writes what Write queued to the socket, chunk by chunk, each within
// WriteTimeout (within the linger once closing). It closes the socket when it ends.
func (c *conn) writeLoop() {
	defer close(c.done)
	defer c.raw.Close()
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && !c.closing {
			c.wake.Wait()
		}
		if len(c.pending) == 0 { // closing, and all flushed
			c.mu.Unlock()
			return
		}
		buf := c.pending
		c.pending, c.spare = c.spare[:0], nil
		c.mu.Unlock()

		for off := 0; off < len(buf); off += writeChunk {
			closing := c.setWriteDeadline()
			if _, err := c.Conn.Write(buf[off:min(off+writeChunk, len(buf))]); err != nil {
				if !closing && errors.Is(err, os.ErrDeadlineExceeded) && c.drop(dropWriteTimeout) {
					c.b.slowClient(c, dropWriteTimeout, "write_timeout", c.b.cfg.WriteTimeout)
				}
				c.drop("") // the socket is broken: make sure the reader learns it
				return
			}
		}
		if cap(buf) <= keepSpare {
			c.mu.Lock()
			c.spare = buf[:0]
			c.mu.Unlock()
		}
	}
}

// setWriteDeadline sets the deadline for the next chunk and reports whether the
// connection is closing. It holds mu so that it cannot undo Close's shorter deadline.
func (c *conn) setWriteDeadline() (closing bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	dl := time.Now().Add(c.b.cfg.WriteTimeout)
	if c.closing && c.linger.Before(dl) {
		dl = c.linger
	}
	_ = c.raw.SetWriteDeadline(dl)
	return c.closing
}

// framer follows MQTT's framing over the bytes read from a connection: a header byte,
// the remaining length (a variable byte integer of 1 to 4 bytes), then that many bytes.
// So a packet's size is known from its first bytes, before its body arrives.
type framer struct {
	state  uint8
	nlen   int // remaining length bytes seen
	length int // remaining length so far
	skip   int // body bytes still to come
}

const (
	frameHeader uint8 = iota
	frameLength
	frameBody
	frameLost // malformed length: mochi refuses it, nothing left to follow
)

// scan advances over b, the next bytes read. When a packet larger than max starts (in b
// or in an earlier read), it returns the offset of its header in b (0 if the header came
// earlier), the packet's size and true. Size counts the whole packet, fixed header
// included, as the spec's Maximum Packet Size does.
func (f *framer) scan(b []byte, max int) (at, size int, over bool) {
	start := 0
	for i := 0; i < len(b); {
		switch f.state {
		case frameHeader:
			start = i
			f.state, f.nlen, f.length = frameLength, 0, 0
			i++
		case frameLength:
			x := b[i]
			i++
			f.length |= int(x&0x7f) << (7 * f.nlen)
			f.nlen++
			if x&0x80 != 0 {
				if f.nlen == 4 {
					f.state = frameLost
				}
				continue
			}
			if size := 1 + f.nlen + f.length; size > max {
				return start, size, true
			}
			f.skip, f.state = f.length, frameBody
			if f.skip == 0 {
				f.state = frameHeader
			}
		case frameBody:
			n := min(f.skip, len(b)-i)
			i += n
			f.skip -= n
			if f.skip == 0 {
				f.state = frameHeader
			}
		default:
			return 0, 0, false
		}
	}
	return 0, 0, false
}
