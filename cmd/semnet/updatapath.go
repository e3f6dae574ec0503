package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/node/demo"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/nsthread"
)

// labNodes are up --datapath's real worker nodes: where they say they are, and their
// addresses on the link between them (only inside their namespaces).
var labNodes = []struct {
	place string
	lat   float64
	lon   float64
	addr  netip.Addr
}{
	{"Munich", 48.14, 11.58, netip.MustParseAddr("10.99.0.11")},
	{"Berlin", 52.52, 13.40, netip.MustParseAddr("10.99.0.12")},
}

// labBroker is where each lab node finds the cluster's broker: a proxy on its own
// namespace's loopback, so nothing is configured in the machine's namespace.
const labBroker = "127.0.0.1:10003"

// datapathLab is up's two real worker nodes. Each `semnet node` runs in an unnamed
// network namespace of its own, the two joined by a veth pair; the namespaces go when
// their processes and up's handles do: no names to clean up. up stops the nodes on
// exit; the demo instances end with up even if it dies (see node/demo).
type datapathLab struct {
	nodes []*labNode
	demos []*demo.Instance
	svc   api.Service
	bin   string
	log   *slog.Logger
}

type labNode struct {
	id     string
	ns     netns.NsHandle
	proxy  net.Listener
	cmd    *exec.Cmd
	done   chan struct{}
	socket string
}

// startDatapath starts the lab's nodes with the semnet binary bin on the cluster whose
// broker listens at broker, and, with demo, an instance of the demo service on each.
func startDatapath(ctx context.Context, rc *client.Client, clusterID, broker, bin, dir string, withDemo bool, log *slog.Logger) (lab *datapathLab, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("--datapath needs root: it creates network namespaces and, inside them, TUN devices, bridges and nftables rules")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("directory for the nodes' sockets: %w", err)
	}
	lab = &datapathLab{bin: bin, log: log}
	defer func() {
		if err != nil {
			lab.Close()
			lab = nil
		}
	}()
	for i := range labNodes {
		n := &labNode{id: fmt.Sprintf("dp-%d", i+1), socket: filepath.Join(dir, fmt.Sprintf("dp-%d.sock", i+1)), done: make(chan struct{})}
		if n.ns, err = nsthread.New(); err != nil {
			return lab, err
		}
		lab.nodes = append(lab.nodes, n)
		if err := nsthread.Do(n.ns, func() error {
			var err error
			n.proxy, err = net.Listen("tcp", labBroker)
			return err
		}); err != nil {
			return lab, fmt.Errorf("broker proxy in %s's namespace: %w", n.id, err)
		}
		go proxy(n.proxy, broker)
	}
	if err := linkPair(lab.nodes[0].ns, lab.nodes[1].ns); err != nil {
		return lab, err
	}
	for i, n := range lab.nodes {
		spec := labNodes[i]
		n.cmd = exec.Command(bin, "node", "--id", n.id, "--cluster-mqtt", labBroker, "--host-ip", spec.addr.String(),
			"--socket", n.socket, "--lat", fmt.Sprint(spec.lat), "--lon", fmt.Sprint(spec.lon), "--log-level", "warn")
		n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
		// A process group of its own: Ctrl-C reaches up alone, which detaches the demo
		// instances before it stops the nodes.
		n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		// The child is forked from a thread inside the namespace, so it starts there.
		if err := nsthread.Do(n.ns, n.cmd.Start); err != nil {
			close(n.done)
			return lab, fmt.Errorf("start node %s: %w", n.id, err)
		}
		go func() { _ = n.cmd.Wait(); close(n.done) }()
	}
	for _, n := range lab.nodes {
		if err := n.waitReady(ctx); err != nil {
			return lab, err
		}
	}
	if !withDemo {
		return lab, nil
	}
	if lab.svc, err = ensureService(ctx, rc, demoService); err != nil {
		return lab, err
	}
	for num, n := range lab.nodes {
		if err := ensureInstance(ctx, rc, lab.svc.JobName, num, clusterID); err != nil {
			return lab, err
		}
		in, err := demo.Start(ctx, demo.Config{NodeSocket: n.socket, Service: lab.svc.JobName, Number: num,
			Command: []string{bin, "demo", "serve-instance"}, Logger: log})
		if err != nil {
			return lab, err
		}
		lab.demos = append(lab.demos, in)
	}
	return lab, nil
}

// linkPair joins two namespaces by a veth pair, eth0 in each, with the lab's addresses.
func linkPair(a, b netns.NsHandle) error {
	ha, err := netlink.NewHandleAt(a)
	if err != nil {
		return fmt.Errorf("netlink in the first node's namespace: %w", err)
	}
	defer ha.Close()
	hb, err := netlink.NewHandleAt(b)
	if err != nil {
		return fmt.Errorf("netlink in the second node's namespace: %w", err)
	}
	defer hb.Close()
	// The peer is created in b, where its name does not clash with a's eth0.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(b)}
	if err := ha.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth pair between the lab nodes: %w", err)
	}
	for i, h := range []*netlink.Handle{ha, hb} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("eth0 of node %d: %w", i+1, err)
		}
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: labNodes[i].addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("address of node %d: %w", i+1, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("eth0 of node %d up: %w", i+1, err)
		}
	}
	return nil
}

// proxy forwards every connection accepted on ln to the address to, until ln closes.
func proxy(ln net.Listener, to string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			u, err := net.DialTimeout("tcp", to, 5*time.Second)
			if err != nil {
				return
			}
			defer u.Close()
			var wg sync.WaitGroup
			wg.Go(func() { _, _ = io.Copy(u, c); closeWrite(u) })
			_, _ = io.Copy(c, u)
			closeWrite(c)
			wg.Wait()
		}()
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// waitReady polls the node's /readyz until it answers 200, the node exits, or a minute
// passes.
func (n *labNode) waitReady(ctx context.Context) error {
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", n.socket)
	}}}
	deadline := time.Now().Add(time.Minute)
	for {
		if resp, err := hc.Get("http://node/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-n.done:
			return fmt.Errorf("node %s exited before it was ready (see its log above)", n.id)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not ready after a minute", n.id)
		}
	}
}

// describe prints the lab.
func (lab *datapathLab) describe(w io.Writer) {
	fmt.Fprintf(w, "  datapath:     %d real worker nodes in network namespaces of their own:", len(lab.nodes))
	for i, n := range lab.nodes {
		fmt.Fprintf(w, " %s (%s, %s, pid %d)", n.id, labNodes[i].place, labNodes[i].addr, n.cmd.Process.Pid)
	}
	fmt.Fprintln(w)
	if s := lab.svc; len(lab.demos) > 0 {
		fmt.Fprintf(w, "  demo service: %s  RR %s %s  Closest %s %s  (on the real nodes)\n", s.JobName, s.RRIP, s.RRIPv6, s.ClosestIP, s.ClosestIPv6)
	}
}

// try prints how to reach the demo through the datapath.
func (lab *datapathLab) try(w io.Writer) {
	if len(lab.demos) == 0 {
		return
	}
	s, in := lab.svc, lab.demos[0]
	fmt.Fprintf(w, "  # from inside demo instance %d (the overlay carries its instances' packets), a few times:\n", in.Number())
	fmt.Fprintf(w, "  sudo %s probe --print --netns %s http://%s/\n", lab.bin, in.NetNS(), s.RRIP)
	fmt.Fprintf(w, "  sudo %s probe --print --netns %s http://[%s]/\n", lab.bin, in.NetNS(), s.ClosestIPv6)
}

// Close detaches the demo instances, stops the nodes and lets their namespaces go.
func (lab *datapathLab) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, in := range lab.demos {
		if err := in.Close(ctx); err != nil {
			lab.log.Warn("detach demo instance", "instance", in.Number(), "err", err)
		}
	}
	for _, n := range lab.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			_ = n.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, n := range lab.nodes {
		if n.cmd != nil && n.cmd.Process != nil {
			select {
			case <-n.done:
			case <-time.After(10 * time.Second):
				_ = n.cmd.Process.Kill()
				<-n.done
			}
		}
		if n.proxy != nil {
			n.proxy.Close()
		}
		n.ns.Close()
	}
}
