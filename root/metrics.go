package root

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
)

// metrics are root's domain metrics (HTTP metrics live in shared/httpapi).
type metrics struct {
	allocations *prometheus.CounterVec
	changes     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		allocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semnet_root", Name: "allocations_total", Help: "Addresses (or subnets) allocated, by pool.",
		}, []string{"pool"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semnet_root", Name: "changes_total", Help: "Committed service and instance mutations, by kind and operation.",
		}, []string{"kind", "op"}),
	}
	reg.MustRegister(m.allocations, m.changes)
	return m
}

func (m *metrics) Allocated(pool string)  { m.allocations.WithLabelValues(pool).Inc() }
func (m *metrics) Changed(c store.Change) { m.changes.WithLabelValues(c.Kind, c.Op).Inc() }

// watchPools exports pool fill levels, read at scrape time so they are never stale.
func (m *metrics) watchPools(reg prometheus.Registerer, r *registry.Registry) {
	labels := []string{"pool", "prefix"}
	reg.MustRegister(&poolCollector{r: r,
		size:        prometheus.NewDesc("semnet_root_pool_size", "Allocatable addresses (or subnets) in a pool.", labels, nil),
		used:        prometheus.NewDesc("semnet_root_pool_used", "Addresses (or subnets) in use.", labels, nil),
		quarantined: prometheus.NewDesc("semnet_root_pool_quarantined", "Released addresses waiting out their quarantine.", labels, nil),
	})
}

type poolCollector struct {
	r                       *registry.Registry
	size, used, quarantined *prometheus.Desc
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.size
	ch <- c.used
	ch <- c.quarantined
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, u := range c.r.PoolUsage() {
		p := u.Prefix.String()
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(u.Size), u.Name, p)
		ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(u.Used), u.Name, p)
		ch <- prometheus.MustNewConstMetric(c.quarantined, prometheus.GaugeValue, float64(u.Quarantined), u.Name, p)
	}
}
