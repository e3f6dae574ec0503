package root

import (
	"context"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/event"

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

// storeCommands times the commands root's MongoDB client sends, by command and
// collection: on a loaded database this tells which reads and writes take its time
// (FerretDB, for one, decodes every document of a collection for most filters).
type storeCommands struct {
	seconds  *prometheus.HistogramVec
	failures *prometheus.CounterVec
	inFlight sync.Map // request ID → collection, from a command's start to its end
}

func newStoreCommands(reg prometheus.Registerer) *storeCommands {
	labels := []string{"command", "collection"}
	s := &storeCommands{
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "semnet_root", Name: "store_command_seconds",
			Help:    "Duration of the MongoDB commands root sends, by command and collection, failures included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, labels),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semnet_root", Name: "store_command_failures_total",
			Help: "MongoDB commands root sent that failed, by command and collection.",
		}, labels),
	}
	reg.MustRegister(s.seconds, s.failures)
	return s
}

func (s *storeCommands) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			s.inFlight.Store(e.RequestID, commandCollection(e.CommandName, e.Command))
		},
		Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
			s.done(e.CommandFinishedEvent, false)
		},
		Failed: func(_ context.Context, e *event.CommandFailedEvent) {
			s.done(e.CommandFinishedEvent, true)
		},
	}
}

func (s *storeCommands) done(e event.CommandFinishedEvent, failed bool) {
	coll, _ := s.inFlight.LoadAndDelete(e.RequestID)
	name, _ := coll.(string)
	s.seconds.WithLabelValues(e.CommandName, name).Observe(e.Duration.Seconds())
	if failed {
		s.failures.WithLabelValues(e.CommandName, name).Inc()
	}
}

// commandCollection is the collection a command names: the value of its first element
// for most commands, the "collection" field for getMore; "" for those without one (ping).
func commandCollection(name string, cmd bson.Raw) string {
	field := name
	if name == "getMore" {
		field = "collection"
	}
	coll, _ := cmd.Lookup(field).StringValueOK()
	return coll
}
