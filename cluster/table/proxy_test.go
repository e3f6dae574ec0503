package table_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// partitionProxy forwards TCP connections from a loopback port to a target, and cuts
// them as a network partition does: Silence leaves every connection open and lets
// nothing through either way from then on, for good, with no reset or close to tell
// either end (a lost answer, not a failed one). Heal lets the connections accepted
// afterwards through; those accepted while silent stay silent too, like the ones the
// partition caught.
type partitionProxy struct {
	ln      net.Listener
	target  string
	wg      sync.WaitGroup
	dropped chan struct{} // signalled whenever bytes were dropped

	mu     sync.Mutex
	silent bool
	closed bool
	links  []*link
}

// link is one proxied connection: client accepted, server dialled (nil when the client
// came while silent: a partition lets no connection through).
type link struct {
	client, server net.Conn
	muted          atomic.Bool
}

func (l *link) close() {
	l.client.Close()
	if l.server != nil {
		l.server.Close()
	}
}

// startProxy listens on a loopback port and forwards to target. Close it before the
// target, so the target's shutdown does not wait for silenced connections.
func startProxy(t *testing.T, target string) *partitionProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partitionProxy{ln: ln, target: target, dropped: make(chan struct{}, 1)}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the address clients dial instead of the target.
func (p *partitionProxy) Addr() string { return p.ln.Addr().String() }

// Silence cuts every connection the proxy has, and those it accepts until Heal.
func (p *partitionProxy) Silence() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent = true
	for _, l := range p.links {
		l.muted.Store(true)
	}
}

// Heal lets new connections through again; the silenced ones stay silent.
func (p *partitionProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.silent = false
}

// Close stops listening, closes every connection and waits for its goroutines to end.
func (p *partitionProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for _, l := range p.links {
		l.close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *partitionProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		l := &link{client: c}
		p.mu.Lock()
		silent := p.silent
		p.mu.Unlock()
		if silent {
			l.muted.Store(true)
		} else if l.server, err = net.Dial("tcp", p.target); err != nil {
			c.Close() // the target is gone: refuse, as it would
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			l.close()
			return
		}
		p.links = append(p.links, l)
		p.wg.Add(1)
		go p.pipe(l, l.client, l.server)
		if l.server != nil {
			p.wg.Add(1)
			go p.pipe(l, l.server, l.client)
		}
		p.mu.Unlock()
	}
}

// pipe copies from one end of a link to the other (to is nil for a link muted from the
// start) until from ends; it drops what it reads once the link is muted.
func (p *partitionProxy) pipe(l *link, from, to net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			if l.muted.Load() {
				select {
				case p.dropped <- struct{}{}:
				default:
				}
			} else if _, werr := to.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			// One end closed or failed: pass that on, as TCP would, unless the link is
			// cut; then the other end hears nothing until Close.
			if !l.muted.Load() {
				l.close()
			}
			return
		}
	}
}
