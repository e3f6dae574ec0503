package node

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/node/datapath"
)

// newChangeDelay is the histogram of how long root's changes take to reach the table:
// the PERFORMANCE.md propagation target, as one node sees it.
func newChangeDelay() prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "semnet", Subsystem: "node", Name: "change_delay_seconds",
		Help:    "From root logging a change (root's clock) to its push applied in this node's table.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}})
}

// collector exposes the datapath's counters, read when /metrics is scraped: the packet
// loops count in plain fields per batch and never touch Prometheus.
type collector struct {
	n                                                   *Node
	packets, bytes, drops, lookups, flows, flowsRefused *prometheus.Desc
	sendErrors, tableEntries, pushes, tableUpdates      *prometheus.Desc
	gwFlows, gwRefused, gwExposures                     *prometheus.Desc
}

func newCollector(n *Node) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("semnet_node_"+name, help, labels, nil)
	}
	return &collector{
		n:            n,
		packets:      d("packets_total", "Packets by direction: out (read from local senders), tunnel_tx, tunnel_rx, delivered (to local instances).", "direction"),
		bytes:        d("bytes_total", "Bytes by direction (as packets_total).", "direction"),
		drops:        d("drops_total", "Packets dropped, by reason.", "reason"),
		lookups:      d("lookups_total", "Outbound packets by table result: hit (table or flow), miss (waited for the cluster).", "result"),
		flows:        d("flows", "Connection tracking entries held (live and expired not yet reclaimed)."),
		flowsRefused: d("flows_refused_total", "New flows refused, by cause: full (table at its bound), conflict (reply tuple taken).", "cause"),
		sendErrors:   d("send_errors_total", "Packets the tunnel socket or the TUN failed to send."),
		tableEntries: d("table_entries", "Jobs held in the node's table."),
		pushes:       d("pushes_total", "Pushes (updates_available) received from the cluster."),
		tableUpdates: d("table_updates_total", "Entries from the cluster (answers and pushes) by what the table did: applied, outdated (older than the installed entry), refused (invalid).", "result"),
		gwFlows:      d("gateway_flows", "A gateway's client flows held (live and expired not yet reclaimed)."),
		gwRefused:    d("gateway_flows_refused_total", "A gateway's new client flows refused, by cause: full (table at its bound), ports (no free gateway port).", "cause"),
		gwExposures:  d("gateway_exposures", "Exposures a gateway serves."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.packets, c.bytes, c.drops, c.lookups, c.flows, c.flowsRefused, c.sendErrors, c.tableEntries, c.pushes, c.tableUpdates,
		c.gwFlows, c.gwRefused, c.gwExposures} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.n.dp.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.packets, s.OutPackets.Load(), "out")
	counter(c.bytes, s.OutBytes.Load(), "out")
	counter(c.packets, s.TunnelTxPackets.Load(), "tunnel_tx")
	counter(c.bytes, s.TunnelTxBytes.Load(), "tunnel_tx")
	counter(c.packets, s.TunnelRxPackets.Load(), "tunnel_rx")
	counter(c.bytes, s.TunnelRxBytes.Load(), "tunnel_rx")
	counter(c.packets, s.DeliveredPackets.Load(), "delivered")
	for r := datapath.Reason(1); int(r) < len(s.Drops); r++ {
		counter(c.drops, s.Drops[r].Load(), r.String())
	}
	counter(c.lookups, s.Hits.Load(), "hit")
	counter(c.lookups, s.Misses.Load(), "miss")
	counter(c.sendErrors, s.SendErrors.Load())
	u := &c.n.updates
	counter(c.pushes, u.pushes.Load())
	counter(c.tableUpdates, u.applied.Load(), "applied")
	counter(c.tableUpdates, u.outdated.Load(), "outdated")
	counter(c.tableUpdates, u.refused.Load(), "refused")
	counter(c.flowsRefused, c.n.flows.Refused(), "full")
	counter(c.flowsRefused, c.n.flows.Conflicts(), "conflict")
	ch <- prometheus.MustNewConstMetric(c.flows, prometheus.GaugeValue, float64(c.n.flows.Len()))
	ch <- prometheus.MustNewConstMetric(c.tableEntries, prometheus.GaugeValue, float64(c.n.table.Len()))
	if gw := c.n.gw; gw != nil && gw.ready.Load() {
		ft := gw.nat.Flows()
		ch <- prometheus.MustNewConstMetric(c.gwFlows, prometheus.GaugeValue, float64(ft.Len()))
		counter(c.gwRefused, ft.Refused(), "full")
		counter(c.gwRefused, gw.nat.PortsExhausted(), "ports")
		c.n.mu.Lock()
		exposures := gw.exposures
		c.n.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(c.gwExposures, prometheus.GaugeValue, float64(exposures))
	}
}
