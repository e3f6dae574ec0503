package datapath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/semnet/semnet/node/packet"
)

const (
	// offset is the headroom in front of every packet buffer: the TUN device writes its
	// virtio-net header there (wireguard-go needs at least 10 bytes), so packets move
	// between the TUN and the tunnel without a copy.
	offset = 16
	// maxPacket is the largest datagram read from the tunnel or TUN (the TUN hands out
	// segments of at most its MTU; a peer may send up to the IP maximum).
	maxPacket = 65535
	// Packets held while the cluster resolves their destination (per destination, and
	// in all): enough for a few connection attempts; more are dropped as Unresolved.
	maxPendingPerDst = 64
	maxPending       = 4096
	sweepEvery       = 5 * time.Second
	// Queries about tunnel sources are asked for by whoever can send UDP to the tunnel
	// port, so they are bounded: one per source per requeryAfter, and sourceQueries a
	// second in all (a node that starts receiving from a few hundred new jobs at once
	// loses some first packets, which their senders retransmit).
	requeryAfter  = 2 * time.Second
	sourceQueries = 50
)

// Config configures a Datapath.
type Config struct {
	// TUN carries the Service and Instance ranges; Run closes it when it returns.
	TUN tun.Device
	// Bind is the tunnel socket pair (conn.NewStdNetBind()); Run opens it on Port and
	// closes it when it returns.
	Bind conn.Bind
	Port uint16
	// Engine translates.
	Engine *Engine
	// Resolve is called (on the datapath's goroutine: it must not block) once for an
	// address that packets wait for: an outbound packet's destination, or a tunnelled
	// packet's source; the node queries the cluster, applies the answer and calls
	// Datapath.Resolved.
	Resolve func(addr netip.Addr)
	Logger  *slog.Logger
}

// Datapath runs the node's packet loops.
type Datapath struct {
	cfg     Config
	log     *slog.Logger
	stats   Stats
	pending pending
}

// New returns a Datapath; Run starts it.
func New(cfg Config) *Datapath {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Datapath{cfg: cfg, log: cfg.Logger, pending: pending{m: map[netip.Addr][]held{}, queried: map[netip.Addr]time.Time{}}}
}

// Stats are the datapath's counters since start.
type Stats struct {
	// Out: packets read from the TUN (local senders); TunnelTx: sent into the tunnel;
	// TunnelRx: received from it; Delivered: written to the TUN towards local instances.
	OutPackets, OutBytes           atomic.Uint64
	TunnelTxPackets, TunnelTxBytes atomic.Uint64
	TunnelRxPackets, TunnelRxBytes atomic.Uint64
	DeliveredPackets               atomic.Uint64
	// Hits: outbound packets resolved from the node's table or flows; Misses: packets
	// that had to wait for the cluster.
	Hits, Misses atomic.Uint64
	SendErrors   atomic.Uint64
	Drops        [reasonCount]atomic.Uint64
}

// Stats returns the live counters.
func (d *Datapath) Stats() *Stats { return &d.stats }

// batchCounts accumulates a batch's counts in plain fields; flush adds them to the
// shared atomics once per batch instead of once per packet.
type batchCounts struct {
	out, outBytes, tx, txBytes, rx, rxBytes, delivered, hits, misses, sendErrs uint64
	drops                                                                      [reasonCount]uint64
}

func (c *batchCounts) flush(s *Stats) {
	add := func(a *atomic.Uint64, v *uint64) {
		if *v != 0 {
			a.Add(*v)
			*v = 0
		}
	}
	add(&s.OutPackets, &c.out)
	add(&s.OutBytes, &c.outBytes)
	add(&s.TunnelTxPackets, &c.tx)
	add(&s.TunnelTxBytes, &c.txBytes)
	add(&s.TunnelRxPackets, &c.rx)
	add(&s.TunnelRxBytes, &c.rxBytes)
	add(&s.DeliveredPackets, &c.delivered)
	add(&s.Hits, &c.hits)
	add(&s.Misses, &c.misses)
	add(&s.SendErrors, &c.sendErrs)
	for i := range c.drops {
		add(&s.Drops[i], &c.drops[i])
	}
}

// Run opens the tunnel socket and moves packets until ctx ends or a device fails; it
// closes the TUN and the tunnel socket before returning.
func (d *Datapath) Run(ctx context.Context) error {
	fns, port, err := d.cfg.Bind.Open(d.cfg.Port)
	if err != nil {
		return fmt.Errorf("datapath: open tunnel socket on UDP port %d: %w", d.cfg.Port, err)
	}
	d.log.Info("datapath running", "tunnel_port", port, "batch", d.cfg.TUN.BatchSize())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(fns)+2)
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Go(func() { errs <- d.receive(fn) })
	}
	wg.Go(func() { errs <- d.readTUN() })
	wg.Go(func() {
		t := time.NewTicker(sweepEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				d.cfg.Engine.Sweep(now)
				d.pending.sweep(now)
			}
		}
	})
	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
	}
	cancel()
	d.cfg.Bind.Close()
	d.cfg.TUN.Close()
	wg.Wait()
	if first != nil && !closed(first) {
		return first
	}
	return nil
}

func closed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed)
}

func newBufs(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, offset+maxPacket)
	}
	return bufs
}

// readTUN is the outbound loop: local senders -> translation -> tunnel or local bridge.
func (d *Datapath) readTUN() error {
	n := d.cfg.TUN.BatchSize()
	bufs, sizes := newBufs(n), make([]int, n)
	o := d.newOutput()
	var p packet.Parsed
	for {
		got, err := d.cfg.TUN.Read(bufs, sizes, offset)
		if err != nil && !errors.Is(err, tun.ErrTooManySegments) {
			return fmt.Errorf("datapath: read TUN: %w", err)
		}
		now := time.Now()
		for i := range got {
			o.c.out++
			o.c.outBytes += uint64(sizes[i])
			d.outbound(&p, bufs[i][:offset+sizes[i]], now, o, false)
		}
		o.flush()
	}
}

// outbound handles one packet from a local sender; buf holds it after offset bytes of
// headroom. retry is set for packets that already waited for the cluster once.
func (d *Datapath) outbound(p *packet.Parsed, buf []byte, now time.Time, o *output, retry bool) {
	if err := p.Decode(buf[offset:]); err != nil {
		o.c.drops[ReasonMalformed]++
		return
	}
	r := d.cfg.Engine.Outbound(p, now)
	switch r.Verdict {
	case Tunnel:
		o.c.hits++
		o.tunnel(r.Endpoint, p.Buffer())
	case Deliver:
		o.c.hits++
		if r := d.cfg.Engine.Inbound(p, now); r.Verdict != Deliver {
			o.c.drops[r.Reason]++
			return
		}
		o.deliver(buf[:offset+len(p.Buffer())])
	case Resolve:
		o.c.misses++
		if retry {
			o.c.drops[ReasonUnresolved]++
			return
		}
		if !d.hold(p.Dst, netip.Addr{}, p.Buffer(), now) {
			o.c.drops[ReasonUnresolved]++
		}
	default:
		o.c.drops[r.Reason]++
	}
}

// receive is the inbound loop of one tunnel socket: tunnel -> local instances.
func (d *Datapath) receive(fn conn.ReceiveFunc) error {
	n := d.cfg.Bind.BatchSize()
	bufs, sizes, eps := newBufs(n), make([]int, n), make([]conn.Endpoint, n)
	views := make([][]byte, n)
	for i := range bufs {
		views[i] = bufs[i][offset:]
	}
	o := d.newOutput()
	var p packet.Parsed
	for {
		got, err := fn(views, sizes, eps)
		if err != nil {
			return fmt.Errorf("datapath: receive from tunnel: %w", err)
		}
		now := time.Now()
		for i := range got {
			if sizes[i] == 0 {
				continue
			}
			o.c.rx++
			o.c.rxBytes += uint64(sizes[i])
			d.inbound(&p, bufs[i][:offset+sizes[i]], eps[i].DstIP().Unmap(), now, o, false)
		}
		o.flush()
	}
}

// inbound handles one packet from the tunnel, sent from host from; buf holds it after
// offset bytes of headroom. retry is set for packets that already waited for the
// cluster once.
func (d *Datapath) inbound(p *packet.Parsed, buf []byte, from netip.Addr, now time.Time, o *output, retry bool) {
	if err := p.Decode(buf[offset:]); err != nil {
		o.c.drops[ReasonMalformed]++
		return
	}
	r := d.cfg.Engine.FromTunnel(p, from, now)
	switch r.Verdict {
	case Deliver:
		o.deliver(buf[:offset+len(p.Buffer())])
	case Resolve:
		if retry || !d.hold(p.Src, from, p.Buffer(), now) {
			o.c.drops[ReasonUnresolved]++
		}
	case Refresh:
		if retry || !d.hold(p.Src, from, p.Buffer(), now) {
			o.c.drops[r.Reason]++
		}
	default:
		o.c.drops[r.Reason]++
	}
}

// output collects one batch's packets by destination and sends them together: one
// sendmmsg (or one GSO send) per tunnel peer, one TUN write for local deliveries.
type output struct {
	d      *Datapath
	c      batchCounts
	eps    map[netip.AddrPort]conn.Endpoint // this loop's endpoints: no lock per packet
	peers  []peerBatch
	local  [][]byte
	maxOut int
}

type peerBatch struct {
	addr netip.AddrPort
	ep   conn.Endpoint
	bufs [][]byte
}

func (d *Datapath) newOutput() *output {
	return &output{d: d, eps: map[netip.AddrPort]conn.Endpoint{}, maxOut: d.cfg.Bind.BatchSize()}
}

func (o *output) tunnel(to netip.AddrPort, pkt []byte) {
	for i := range o.peers {
		if o.peers[i].addr == to {
			o.peers[i].bufs = append(o.peers[i].bufs, pkt)
			return
		}
	}
	ep, ok := o.eps[to]
	if !ok {
		var err error
		if ep, err = o.d.cfg.Bind.ParseEndpoint(to.String()); err != nil {
			o.c.sendErrs++
			return
		}
		o.eps[to] = ep
	}
	// Reuse the slot's slice from earlier batches: no allocation once warmed up.
	if len(o.peers) < cap(o.peers) {
		o.peers = o.peers[:len(o.peers)+1]
		pb := &o.peers[len(o.peers)-1]
		pb.addr, pb.ep, pb.bufs = to, ep, append(pb.bufs[:0], pkt)
		return
	}
	o.peers = append(o.peers, peerBatch{addr: to, ep: ep, bufs: [][]byte{pkt}})
}

func (o *output) deliver(buf []byte) { o.local = append(o.local, buf) }

func (o *output) flush() {
	for i := range o.peers {
		pb := &o.peers[i]
		for len(pb.bufs) > 0 {
			chunk := pb.bufs[:min(len(pb.bufs), o.maxOut)]
			pb.bufs = pb.bufs[len(chunk):]
			var bytes uint64
			for _, b := range chunk {
				bytes += uint64(len(b))
			}
			if err := o.d.cfg.Bind.Send(chunk, pb.ep); err != nil {
				o.c.sendErrs += uint64(len(chunk))
				continue
			}
			o.c.tx += uint64(len(chunk))
			o.c.txBytes += bytes
		}
		pb.bufs = pb.bufs[:0]
	}
	o.peers = o.peers[:0]
	if len(o.local) > 0 {
		if _, err := o.d.cfg.TUN.Write(o.local, offset); err != nil {
			o.c.sendErrs += uint64(len(o.local))
		} else {
			o.c.delivered += uint64(len(o.local))
		}
		clear(o.local)
		o.local = o.local[:0]
	}
	o.c.flush(&o.d.stats)
}

// pending holds packets waiting for the cluster to resolve an address: outbound
// packets their destination, packets from the tunnel their source.
type pending struct {
	mu    sync.Mutex
	m     map[netip.Addr][]held
	total int
	// Queries asked for by tunnelled packets: when each source was last queried, and
	// how many were asked in the second that started at window.
	queried map[netip.Addr]time.Time
	window  time.Time
	spent   int
}

// held is one waiting packet (after offset bytes of headroom); from is the host a
// tunnelled packet came from, zero for an outbound packet.
type held struct {
	buf  []byte
	from netip.Addr
}

// hold copies pkt to wait for addr; the first packet for addr asks the node to resolve
// it. A packet from the tunnel (from valid) may ask only within the bounds on source
// queries. It reports false when a limit is reached.
func (d *Datapath) hold(addr, from netip.Addr, pkt []byte, now time.Time) bool {
	q := &d.pending
	q.mu.Lock()
	waiting, known := q.m[addr]
	if len(waiting) >= maxPendingPerDst || q.total >= maxPending || !known && from.IsValid() && !q.mayQuery(addr, now) {
		q.mu.Unlock()
		return false
	}
	buf := make([]byte, offset+len(pkt))
	copy(buf[offset:], pkt)
	q.m[addr] = append(waiting, held{buf: buf, from: from})
	q.total++
	q.mu.Unlock()
	if !known && d.cfg.Resolve != nil {
		d.cfg.Resolve(addr)
	}
	return true
}

// mayQuery reports whether a tunnelled packet may have src queried now, and if so
// counts the query. The caller holds q.mu.
func (q *pending) mayQuery(src netip.Addr, now time.Time) bool {
	if last, ok := q.queried[src]; ok && now.Sub(last) < requeryAfter {
		return false
	}
	if now.Sub(q.window) >= time.Second {
		q.window, q.spent = now, 0
	}
	if q.spent >= sourceQueries {
		return false
	}
	q.spent++
	q.queried[src] = now
	return true
}

// sweep forgets the source queries old enough not to hold back another.
func (q *pending) sweep(now time.Time) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for a, last := range q.queried {
		if now.Sub(last) >= requeryAfter {
			delete(q.queried, a)
		}
	}
}

// Resolved hands the packets waiting for addr to the engine again, after the node
// applied the cluster's answer (or gave up on it: they are then dropped as Unresolved,
// or, when the answer placed a tunnelled packet's source elsewhere, as Spoofed or
// NoInstance).
func (d *Datapath) Resolved(addr netip.Addr) {
	q := &d.pending
	q.mu.Lock()
	waiting := q.m[addr]
	delete(q.m, addr)
	q.total -= len(waiting)
	q.mu.Unlock()
	if len(waiting) == 0 {
		return
	}
	o := d.newOutput()
	var p packet.Parsed
	now := time.Now()
	for _, h := range waiting {
		if h.from.IsValid() {
			d.inbound(&p, h.buf, h.from, now, o, true)
		} else {
			d.outbound(&p, h.buf, now, o, true)
		}
	}
	o.flush()
}
