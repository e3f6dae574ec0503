package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/netnstest"
)

// The gateway suite adds a public network to the datapath platform: node 1 (Munich) is a
// gateway with a leg on it, and two outside clients sit there. The public addresses are
// documentation ranges, only inside the test's namespaces.
var (
	gwPublic  = netip.MustParseAddr("198.51.100.1")
	gwPublic6 = netip.MustParseAddr("2001:db8::1")
	outside   = []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("198.51.100.8")}
	outside6  = []netip.Addr{netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("2001:db8::8")}
)

type gwPlatform struct {
	*dpPlatform
	clients []*netnstest.NS
}

// startGatewayPlatform starts the platform spec describes (three nodes of one cluster
// when spec is zero), node 1 being the gateway.
func startGatewayPlatform(t testing.TB, bin string, spec platformSpec) *gwPlatform {
	t.Helper()
	netnstest.Require(t)
	pub := netnstest.NewUnderlay(t)
	p := &gwPlatform{}
	if spec.nodes == 0 {
		spec.nodes = 3
	}
	spec.setup = func(i int, ns *netnstest.NS) []string {
		if i != 0 {
			return nil
		}
		pub.Attach(t, ns, "pub0", netip.PrefixFrom(gwPublic, 24), netip.PrefixFrom(gwPublic6, 64))
		return []string{"--gateway", "--public-ip", gwPublic.String(), "--public-ip", gwPublic6.String()}
	}
	p.dpPlatform = startPlatform(t, bin, spec)
	for i := range outside {
		c := netnstest.New(t, fmt.Sprintf("out%d", i+1))
		pub.Attach(t, c, "eth0", netip.PrefixFrom(outside[i], 24), netip.PrefixFrom(outside6[i], 64))
		p.clients = append(p.clients, c)
	}
	return p
}

// expose creates an exposure and fails the test on error.
func (p *gwPlatform) expose(t testing.TB, svc api.Service, req api.ExposureRequest) api.Exposure {
	t.Helper()
	e, err := p.rc.CreateExposure(t.Context(), svc.JobName, req)
	if err != nil {
		t.Fatalf("expose %s %s/%d: %v", svc.JobName, req.Protocol, req.PublicPort, err)
	}
	return e
}

// dialFrom opens a TCP connection from ns with a fixed local address and port.
func dialFrom(ns *netnstest.NS, local, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Timeout: 10 * time.Second, FallbackDelay: -1}
		var err error
		c, err = d.Dial("tcp", to.String())
		return err
	})
	return c, err
}

// keepAlive is one HTTP/1.1 connection a test sends several requests on.
type keepAlive struct {
	c net.Conn
	r *bufio.Reader
}

func (k *keepAlive) get(path string) (string, error) {
	k.c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: gateway\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(k.r, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestGateway(t *testing.T) {
	if testing.Short() {
		t.Skip("gateway suite: -short")
	}
	p := startGatewayPlatform(t, semnetBinary(t), platformSpec{})
	web, servers := p.deploy(t, "web", 1, 2) // web0 in Berlin (node 2), web1 in Paris (node 3)
	serve(t, servers[0], "web0")
	serve(t, servers[1], "web1")
	p.expose(t, web, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: 8080, ServicePort: 80})
	p.expose(t, web, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: 8081, ServicePort: 80, Policy: api.PolicyClosest})
	p.expose(t, web, api.ExposureRequest{Protocol: api.ProtocolUDP, PublicPort: 7007, ServicePort: 7})
	c1, c2 := p.clients[0], p.clients[1]
	rr, rr6 := netip.AddrPortFrom(gwPublic, 8080), netip.AddrPortFrom(gwPublic6, 8080)

	t.Run("RoundRobinTCP", func(t *testing.T) {
		for _, to := range []netip.AddrPort{rr, rr6} {
			eventuallyAt(t, c1, to, anyAnswer)
			seen := spread(t, c1, to)
			if seen["web0"] == 0 || seen["web1"] == 0 || seen["web0"]+seen["web1"] != 20 {
				t.Errorf("gateway %s spread %v, want both instances", to, seen)
			}
		}
	})
	t.Run("Closest", func(t *testing.T) {
		// Closest to the gateway in Munich: Berlin's web0.
		to := netip.AddrPortFrom(gwPublic, 8081)
		eventuallyAt(t, c1, to, anyAnswer)
		for range 5 {
			if got, err := getAt(t.Context(), c1, to, "/"); err != nil || got != "web0" {
				t.Errorf("GET via the gateway's Closest exposure = %q, %v; want web0", got, err)
			}
		}
	})
	t.Run("UDP", func(t *testing.T) {
		// Connected: only datagrams from the public address are accepted.
		to := netip.AddrPortFrom(gwPublic, 7007)
		if got := udpEcho(t, c1, to); !strings.HasSuffix(got, ":ping") {
			t.Errorf("UDP echo via the gateway %s: %q", to, got)
		}
	})
	t.Run("SameClientPort", func(t *testing.T) {
		// Two clients, one source port, at once: the reference keyed its forward table by
		// that port and mixed them up.
		eventuallyAt(t, c1, rr, anyAnswer)
		var conns []*keepAlive
		for i, c := range p.clients {
			conn, err := dialFrom(c, netip.AddrPortFrom(outside[i], 40000), rr)
			if err != nil {
				t.Fatalf("client %d: %v", i+1, err)
			}
			defer conn.Close()
			conns = append(conns, &keepAlive{c: conn, r: bufio.NewReader(conn)})
		}
		for round := range 3 {
			for i, k := range conns {
				got, err := k.get("/")
				if err != nil || (got != "web0" && got != "web1") {
					t.Errorf("client %d, request %d on one connection: %q, %v", i+1, round, got, err)
				}
			}
		}
	})
	t.Run("Concurrent", func(t *testing.T) {
		const n = 1000
		eventuallyAt(t, c1, rr, anyAnswer)
		var wg sync.WaitGroup
		errs := make(chan error, n)
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				c := p.clients[i%len(p.clients)]
				got, err := getAt(t.Context(), c, rr, "/")
				if err == nil && got != "web0" && got != "web1" {
					err = fmt.Errorf("answer %q", got)
				}
				if err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if failed++; failed <= 5 {
				t.Error(err)
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d concurrent connections through the gateway failed", failed, n)
			// Where packets went missing: the TUN's and links' drop counters, and the
			// node's own drop reasons.
			t.Logf("gateway node links:\n%s", p.nodes[0].ns.Run(t, "ip", "-s", "link"))
			t.Logf("gateway node metrics:\n%s", nodeMetrics(t, p.nodes[0], "semnet_node_drops_total", "semnet_node_gateway_flows"))
		}
		t.Logf("%d concurrent short connections through the gateway in %v", n, time.Since(start).Round(time.Millisecond))
	})
	t.Run("Masquerade", func(t *testing.T) {
		// An instance on the gateway node reaches an outside server: it is seen with the
		// node's own address there.
		_, insts := p.deploy(t, "client", 0)
		ln, err := c2.Listen("tcp", netip.AddrPortFrom(outside[1], 9000).String())
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, r.RemoteAddr) })}
		go srv.Serve(ln)
		defer srv.Close()
		got, err := getAt(t.Context(), insts[0], netip.AddrPortFrom(outside[1], 9000), "/")
		if err != nil {
			t.Fatalf("instance to outside: %v", err)
		}
		if from, err := netip.ParseAddrPort(got); err != nil || from.Addr() != gwPublic {
			t.Errorf("the outside server saw the instance as %q, want %s (masqueraded)", got, gwPublic)
		}
	})
	t.Run("RemoveExposure", func(t *testing.T) {
		eventuallyAt(t, c1, rr, anyAnswer)
		conn, err := c1.Dial("tcp", rr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		k := &keepAlive{c: conn, r: bufio.NewReader(conn)}
		if _, err := k.get("/"); err != nil {
			t.Fatalf("before removal: %v", err)
		}
		if err := p.rc.DeleteExposure(t.Context(), web.JobName, "tcp-8080"); err != nil {
			t.Fatal(err)
		}
		// New connections are refused once the gateway has the change...
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err := c1.Dial("tcp", rr.String())
			if err == nil {
				c.Close()
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("a new connection after the exposure was removed: %v, want connection refused", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		// ...while the established one goes on.
		for range 3 {
			if got, err := k.get("/"); err != nil || (got != "web0" && got != "web1") {
				t.Errorf("established connection after removal: %q, %v", got, err)
			}
		}
	})
	t.Run("Metrics", func(t *testing.T) {
		positiveMetrics(t, p.nodes[0], "semnet_node_gateway_flows ", "semnet_node_gateway_exposures ")
		// The gateway's flows carry its own Instance IP through the tunnel: the services'
		// nodes take them (and the gateway their replies) as genuine.
		for i, n := range p.nodes {
			if got := spoofedDrops(t, n); got != 0 {
				t.Errorf("node %d dropped %d packets as spoofed", i+1, got)
			}
		}
	})
}
