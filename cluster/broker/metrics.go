package broker

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the broker's Prometheus metrics (semnet_cluster_mqtt_*).
type metrics struct {
	refused         *prometheus.CounterVec // reason
	aclDenied       *prometheus.CounterVec // action: publish, subscribe
	oversized       prometheus.Counter
	rateLimited     prometheus.Counter
	slowDisconnects *prometheus.CounterVec // reason: a slow dropReason
	dropped         prometheus.Counter
	received        prometheus.Counter
	sent            prometheus.Counter
	idCollisions    *prometheus.CounterVec // packet: subscribe, unsubscribe
}

func newMetrics(reg prometheus.Registerer, connected func() float64) (*metrics, error) {
	opts := func(name, help string) prometheus.CounterOpts {
		return prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "mqtt_" + name, Help: help}
	}
	m := &metrics{
		refused: prometheus.NewCounterVec(opts("connects_refused_total",
			"Connections refused, by reason (bad_credentials, client_id_mismatch, no_credentials, invalid_client_id, will_denied, auth_method, tls_handshake)."), []string{"reason"}),
		aclDenied: prometheus.NewCounterVec(opts("acl_denied_total",
			"Publishes and subscriptions refused by the ACL, by action."), []string{"action"}),
		oversized: prometheus.NewCounter(opts("oversized_packets_total",
			"Packets larger than the maximum packet size; each disconnects its client.")),
		rateLimited: prometheus.NewCounter(opts("publishes_rate_limited_total",
			"Publishes refused because their connection exceeded the publish rate (an MQTT 3.1.1 client sending QoS 1 is disconnected by it).")),
		slowDisconnects: prometheus.NewCounterVec(opts("slow_client_disconnects_total",
			"Clients disconnected for not keeping up, by reason (write_buffer, write_timeout, inflight, queue)."), []string{"reason"}),
		dropped: prometheus.NewCounter(opts("messages_dropped_total",
			"Messages not delivered to a client because it was too slow (and is disconnected).")),
		received: prometheus.NewCounter(opts("messages_received_total",
			"Messages published by nodes and accepted by the ACL.")),
		sent: prometheus.NewCounter(opts("messages_sent_total",
			"Messages delivered to nodes.")),
		idCollisions: prometheus.NewCounterVec(opts("packet_id_collisions_total",
			"SUBSCRIBE and UNSUBSCRIBE packets carrying the packet identifier of a delivery the client has not acknowledged yet, which mochi refuses; the broker carries them out itself."), []string{"packet"}),
	}
	// Every known label value exists from the start, so a rate of zero is visible.
	for r := refusedBadCredentials; r <= lastRefusal; r++ {
		m.refused.WithLabelValues(r.String())
	}
	m.aclDenied.WithLabelValues("publish")
	m.aclDenied.WithLabelValues("subscribe")
	m.idCollisions.WithLabelValues("subscribe")
	m.idCollisions.WithLabelValues("unsubscribe")
	for _, r := range []dropReason{dropWriteBuffer, dropWriteTimeout, dropInflight, dropQueue} {
		m.slowDisconnects.WithLabelValues(string(r))
	}
	if reg == nil {
		return m, nil
	}
	clients := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "semnet", Subsystem: "cluster", Name: "mqtt_clients_connected",
		Help: "Connected clients (distinct identities)."}, connected)
	for _, c := range []prometheus.Collector{clients, m.refused, m.aclDenied, m.oversized, m.rateLimited, m.slowDisconnects, m.dropped, m.received, m.sent, m.idCollisions} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
