package integration

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/netnstest"
)

// BenchmarkGateway measures, in one run, what the gateway adds (PERFORMANCE.md style: a
// ratio taken side by side): short HTTP connections per second and iperf3 TCP
// throughput from an outside client through the gateway's public address, against the
// same from an instance on the gateway node straight to the service's RR IP. The service
// runs on node 2. The binary is built without the race detector. Run (root):
//
//	go test -run '^$' -bench Gateway -benchtime 1x ./integration/
func BenchmarkGateway(b *testing.B) {
	netnstest.RequireTool(b, "iperf3", "iperf3")
	p := startGatewayPlatform(b, benchBinary(b), platformSpec{})
	web, servers := p.deploy(b, "web", 1)
	serve(b, servers[0], "web0")
	_, insts := p.deploy(b, "client", 0)
	for _, port := range []int{8080, 5201} {
		service := port
		if port == 8080 {
			service = 80
		}
		p.expose(b, web, api.ExposureRequest{Protocol: api.ProtocolTCP, PublicPort: port, ServicePort: service})
	}
	outsideClient, direct := p.clients[0], insts[0]
	viaGateway, viaService := netip.AddrPortFrom(gwPublic, 8080), netip.AddrPortFrom(web.RRIP, 80)
	for _, w := range []struct {
		ns *netnstest.NS
		to netip.AddrPort
	}{{outsideClient, viaGateway}, {direct, viaService}} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := getAt(b.Context(), w.ns, w.to, "/"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s does not answer from %s", w.to, w.ns)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	for b.Loop() {
		const seconds = 5
		gwRate, gwFailed := connRate(b, outsideClient, viaGateway, 3*time.Second)
		svcRate, svcFailed := connRate(b, direct, viaService, 3*time.Second)
		gw := iperf(b, servers[0], outsideClient, gwPublic, seconds)
		svc := iperf(b, servers[0], direct, web.RRIP, seconds)
		b.ReportMetric(gwRate, "gw-conn/s")
		b.ReportMetric(svcRate, "svc-conn/s")
		b.ReportMetric(gwRate/svcRate, "gw/svc-conn")
		b.ReportMetric(gw.gbps, "gw-Gbit/s")
		b.ReportMetric(svc.gbps, "svc-Gbit/s")
		b.ReportMetric(gw.gbps/svc.gbps, "gw/svc-Gbit")
		b.Logf("short HTTP connections: via the gateway %.0f/s (%d failed), direct to the RR IP from the gateway node %.0f/s (%d failed), ratio %.2f",
			gwRate, gwFailed, svcRate, svcFailed, gwRate/svcRate)
		b.Logf("TCP %d s: via the gateway %.2f Gbit/s (%d retransmits), direct %.2f Gbit/s (%d retransmits), ratio %.2f",
			seconds, gw.gbps, gw.retransmits, svc.gbps, svc.retransmits, gw.gbps/svc.gbps)
	}
}

// connRate opens short HTTP connections (one GET each) from ns to `to` with 16 workers
// for d and returns the successful ones per second and the failures.
func connRate(b *testing.B, ns *netnstest.NS, to netip.AddrPort, d time.Duration) (float64, int64) {
	b.Helper()
	var ok, failed atomic.Int64
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if _, err := getAt(b.Context(), ns, to, "/"); err != nil {
					failed.Add(1)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(ok.Load()) / d.Seconds(), failed.Load()
}
