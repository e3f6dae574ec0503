package integration

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// linkProxy stands for the network link between the clusters and root in tests that
// cannot use namespaces: clusters dial it, it relays each connection to one of root's
// replicas (round robin, skipping one that refuses), and Cut makes it behave like a link
// that went down: nothing passes either way and new connections get no answer, until
// Restore delivers what was held, as TCP retransmission would after a short outage.
type linkProxy struct {
	ln        net.Listener
	upstreams []string
	next      atomic.Uint32

	mu       sync.Mutex
	restored chan struct{} // closed while the link is up; a fresh one while cut
	conns    map[net.Conn]struct{}
}

func startLinkProxy(t *testing.T, upstreams ...string) *linkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &linkProxy{ln: ln, upstreams: upstreams, restored: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	close(p.restored)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the address the clusters use for root.
func (p *linkProxy) Addr() string { return p.ln.Addr().String() }

// Cut takes the link down.
func (p *linkProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.restored:
		p.restored = make(chan struct{})
	default: // already cut
	}
}

// Restore brings the link back up.
func (p *linkProxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.restored:
	default:
		close(p.restored)
	}
}

// up returns a channel closed while (or once) the link is up.
func (p *linkProxy) up() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restored
}

func (p *linkProxy) close() {
	p.ln.Close()
	p.Restore()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.conns = nil // no more connections
}

func (p *linkProxy) track(c net.Conn, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !add {
		delete(p.conns, c)
		return true
	}
	if p.conns == nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *linkProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.relay(c)
	}
}

func (p *linkProxy) relay(c net.Conn) {
	if !p.track(c, true) {
		c.Close()
		return
	}
	defer p.track(c, false)
	defer c.Close()
	<-p.up() // a connection attempt across a cut link waits for it
	var u net.Conn
	for range p.upstreams {
		addr := p.upstreams[int(p.next.Add(1))%len(p.upstreams)]
		var err error
		if u, err = net.Dial("tcp", addr); err == nil {
			break
		}
	}
	if u == nil {
		return // every replica refused: the client sees its connection closed
	}
	p.track(u, true)
	defer p.track(u, false)
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { p.pipe(u, c); done <- struct{}{} }()
	go func() { p.pipe(c, u); done <- struct{}{} }()
	<-done // one side ended: end both
}

// pipe copies src to dst, holding each chunk while the link is cut.
func (p *linkProxy) pipe(dst io.WriteCloser, src io.Reader) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			<-p.up()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
