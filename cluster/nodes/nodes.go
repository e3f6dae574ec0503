// Package nodes serves the worker-node contract over MQTT (CONTRACT.md "Cluster MQTT";
// topics and payloads in proto/mqttapi): table queries, subnets, instance status reports
// and interest bookkeeping, and the pushes that tell interested nodes a job changed.
//
// Handlers run in the broker's goroutine of the node that published, so one node's
// messages are handled in order and a slow node only slows itself. Table queries that
// miss the cache wait for root in a goroutine of their own (bounded), so a miss does not
// hold up the node's other messages. Every bad message (malformed JSON, wrong types,
// missing fields, unknown topics) is logged with the node id and counted; where the
// contract has a result topic the node gets an error reply there.
package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/geo"
)

// Publisher publishes a message to the nodes (the broker's inline client, QoS 0).
type Publisher interface {
	Publish(topic string, payload []byte) error
}

// Table answers lookups and follows jobs (a *table.Table). It holds the jobs this
// replica needs (Lookup and Follow take the hold, Forget releases it) in a cache other
// replicas may share: the cluster's interest at root is dropped when no replica holds a
// job.
type Table interface {
	// Cached answers from the cache only, without waiting for root.
	Cached(ctx context.Context, key string) (*cache.Entry, bool)
	Lookup(ctx context.Context, key string) (*cache.Entry, error)
	Forget(ctx context.Context, job string) error
	Follow(ctx context.Context, job string) error
	Holding(job string) bool
	Stale() bool
}

// Reporter queues instance status reports for root (a *report.Reporter).
type Reporter interface {
	Enqueue(report.Report)
}

// Subnets hands out worker subnets (a *subnets.Pool).
type Subnets interface {
	Get(ctx context.Context, nodeID string) (api.Subnet, error)
}

// Gateways serves gateway nodes (a *gateways.Relay).
type Gateways interface {
	// Register queues a gateway's registration; the relay answers the node.
	Register(nodeID string, req mqttapi.GatewayRegister)
	NodeGone(nodeID string)
}

// Options configure a Server.
type Options struct {
	// Location is the cluster's; an instance whose node reports no location of its own
	// is placed here for the Closest policy.
	Location *geo.Point
	// ClusterID names this cluster in the placements it reports to root, so an instance
	// that migrated here from another cluster moves with it.
	ClusterID string
	// MaxPendingMisses bounds table queries waiting for root at once (default 1024);
	// beyond it queries are answered with an error at once.
	MaxPendingMisses int
	// Gateways relays gateway nodes to root; nil answers their registrations with an
	// error.
	Gateways Gateways
	// NodeGrace is how long a disconnected node may stay away before the instances it
	// announced are reported failed to root: zero reports them at once, a negative grace
	// never (for nodes that do not re-announce their instances when they reconnect).
	NodeGrace time.Duration
	// Presence tells whether a node is connected (the broker); nil counts a node back
	// only once a message from it arrives.
	Presence   Presence
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Presence tells whether a node is connected (a *broker.Broker).
type Presence interface {
	Connected(nodeID string) bool
}

// Server handles node messages.
type Server struct {
	table    Table
	pub      Publisher
	reports  Reporter
	subnets  Subnets
	opt      Options
	log      *slog.Logger
	in       *interests
	live     *liveness
	misses   chan struct{} // semaphore of queries waiting for root
	rechecks chan string   // jobs to hold or release, by the reconciler goroutine
	memo     sync.Map      // query key -> *encodedResult
	ctx      context.Context
	m        serverMetrics
}

type serverMetrics struct {
	messages  *prometheus.CounterVec // topic suffix, result
	pushes    prometheus.Counter
	pushDelay prometheus.Histogram   // root's change -> this cluster's push
	queries   *prometheus.CounterVec // hit, miss, unknown, error
}

// New returns a server. ctx bounds the work it starts in the background (cache misses).
func New(ctx context.Context, t Table, pub Publisher, r Reporter, s Subnets, opt Options) *Server {
	if opt.MaxPendingMisses <= 0 {
		opt.MaxPendingMisses = 1024
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	srv := &Server{table: t, pub: pub, reports: r, subnets: s, opt: opt, log: log, in: newInterests(),
		misses: make(chan struct{}, opt.MaxPendingMisses), rechecks: make(chan string, 4096), ctx: ctx}
	var present func(string) bool
	if opt.Presence != nil {
		present = opt.Presence.Connected
	}
	srv.live = newLiveness(ctx, opt.NodeGrace, opt.ClusterID, present, r.Enqueue, srv.died, log)
	go srv.reconciler()
	srv.m = serverMetrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "node_messages_total",
			Help: "Messages from worker nodes by topic suffix and result (ok, malformed, invalid, unknown_topic, error)."}, []string{"topic", "result"}),
		pushes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "pushes_total",
			Help: "Update messages published on jobs/<key>/updates_available."}),
		pushDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "semnet", Subsystem: "cluster", Name: "change_push_delay_seconds",
			Help:    "From root logging a change (root's clock) to this cluster pushing it to its nodes, per change.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "table_queries_total",
			Help: "Table queries by outcome (hit, miss, unknown, error)."}, []string{"outcome"}),
	}
	if opt.Registerer != nil {
		opt.Registerer.MustRegister(srv.m.messages, srv.m.pushes, srv.m.pushDelay, srv.m.queries)
		opt.Registerer.MustRegister(srv.live.collectors()...)
	}
	return srv
}

// errInvalid marks a message that decoded but says something impossible.
var errInvalid = errors.New("invalid")

// Handle processes one message a node published. nodeID is the sender's authenticated
// identity (the broker's ACL makes it match the topic).
func (s *Server) Handle(nodeID, topic string, payload []byte) {
	id, suffix, ok := mqttapi.ParseNodeTopic(topic)
	if !ok || id != nodeID {
		s.bad(nodeID, topic, "unknown_topic", errors.New("not a nodes/<id>/net/<suffix> topic of this node"))
		return
	}
	var err error
	switch suffix {
	case mqttapi.SuffixTableQuery:
		err = s.tableQuery(nodeID, payload)
	case mqttapi.SuffixSubnet:
		err = s.subnet(nodeID, payload)
	case mqttapi.SuffixDeployed:
		err = s.deployed(nodeID, payload)
	case mqttapi.SuffixUndeployed:
		err = s.undeployed(nodeID, payload)
	case mqttapi.SuffixAddressChanged:
		err = s.addressChanged(nodeID, payload)
	case mqttapi.SuffixInterestRemove:
		err = s.interestRemove(nodeID, payload)
	case mqttapi.SuffixGatewayRegister:
		err = s.gatewayRegister(nodeID, payload)
	case mqttapi.SuffixTableQueryResult, mqttapi.SuffixSubnetResult, mqttapi.SuffixGatewayConfig:
		return // answers, which a node may publish to itself: not requests
	default:
		s.bad(nodeID, topic, "unknown_topic", errors.New("no such request"))
		return
	}
	switch {
	case err == nil:
		s.m.messages.WithLabelValues(suffix, "ok").Inc()
	case errors.Is(err, errInvalid):
		s.bad(nodeID, suffix, "invalid", err)
	case isDecodeError(err):
		s.bad(nodeID, suffix, "malformed", err)
	default:
		s.bad(nodeID, suffix, "error", err)
	}
}

func (s *Server) bad(nodeID, topic, result string, err error) {
	s.m.messages.WithLabelValues(labelOf(topic, result), result).Inc()
	s.log.Warn("bad message from node", "node", nodeID, "topic", topic, "result", result, "err", err)
}

// labelOf keeps metric label values bounded: unknown topics are one label.
func labelOf(topic, result string) string {
	if result == "unknown_topic" {
		return "other"
	}
	return topic
}

// decodeError marks a payload that is not the JSON the contract says.
type decodeError struct{ err error }

func (e *decodeError) Error() string { return "malformed payload: " + e.err.Error() }
func (e *decodeError) Unwrap() error { return e.err }

func isDecodeError(err error) bool {
	var d *decodeError
	return errors.As(err, &d)
}

func decode(payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		return &decodeError{err}
	}
	return nil
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalid, fmt.Sprintf(format, args...))
}

func (s *Server) publishJSON(topic string, v any) {
	b, err := json.Marshal(v)
	if err == nil {
		err = s.pub.Publish(topic, b)
	}
	if err != nil {
		s.log.Error("publish failed", "topic", topic, "err", err)
	}
}

// NodeGone forgets the query interests of a node that disconnected; jobs no node needs
// any more are dropped at root. Its deployed instances keep their jobs interesting until
// its grace (Options.NodeGrace) ends: then they are reported failed.
func (s *Server) NodeGone(nodeID string) {
	if s.opt.Gateways != nil {
		s.opt.Gateways.NodeGone(nodeID)
	}
	for _, job := range s.in.dropNode(nodeID) {
		s.recheck(job)
	}
	s.live.gone(nodeID)
}

// GatewayRunning records that node serves gateway gw, root having registered it: like an
// instance the node announced, the gateway is reported failed to root when the node
// stays away longer than the grace (and the restart sweep covers it), until it
// registers again. The failure is conditional on the gateway's host only: a
// registration's answer carries no revision.
func (s *Server) GatewayRunning(nodeID string, gw api.Gateway) {
	_, done := s.live.running(nodeID, api.GatewayJobName, gw.InstanceNumber, gw.HostIP, gw.HostPort)
	done(api.Instance{}, errNoRevision)
}

// errNoRevision tells liveness a report's revision is unknown.
var errNoRevision = errors.New("no revision known")

// died drops the deployments of a node reported dead from the interests.
func (s *Server) died(nodeID string, refs []instanceRef) {
	for _, ref := range refs {
		if ref.job == api.GatewayJobName {
			continue // a gateway is no deployment the interests count
		}
		if s.in.undeploy(nodeID, ref.job) {
			s.recheck(ref.job)
		}
	}
}

// Release drops the cluster's interest in a job the orchestrator no longer needs, unless
// a node of this replica still queries it or runs one of its instances (or a node of
// another replica does: see Table).
func (s *Server) Release(ctx context.Context, job string) error {
	if !s.in.unused(job) {
		return nil
	}
	return s.drop(ctx, job)
}

// drop releases this replica's hold of job (dropping the cluster's interest at root when
// it was the last) and, should a node have asked for it again meanwhile without the
// table taking the hold (a query answered from the cache before the release), follows
// it again at once: the changes since would never reach that node.
func (s *Server) drop(ctx context.Context, job string) error {
	if err := s.table.Forget(ctx, job); err != nil {
		return err
	}
	if s.in.unused(job) || s.table.Holding(job) {
		return nil
	}
	return s.table.Follow(ctx, job)
}

// recheck queues a job whose use by this replica's nodes changed for the reconciler:
// holding or releasing it is a round trip to the cache and maybe root, and it is asked
// for from the broker's goroutines (a node going away) that must not wait for them.
func (s *Server) recheck(job string) {
	select {
	case s.rechecks <- job:
	default:
		// Full (root or Redis is slow or away). Keeping an interest costs only some
		// pushes; a job needed but not held is followed at its next lookup miss.
		s.log.Warn("too many jobs to hold or release; leaving this one as it is", "job", job)
	}
}

// reconciler makes this replica hold the queued jobs its nodes need and release those
// they do not, re-checking each when its turn comes: a node may have asked for it again,
// or let it go, since.
func (s *Server) reconciler() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case job := <-s.rechecks:
			var err error
			switch used, held := !s.in.unused(job), s.table.Holding(job); {
			case !used && held:
				err = s.drop(s.ctx, job)
			case used && !held:
				err = s.table.Follow(s.ctx, job)
			}
			if err != nil && s.ctx.Err() == nil {
				s.log.Warn("could not hold or release the job at root", "job", job, "err", err)
			}
		}
	}
}

// validJob checks a job name has the four dot-separated parts of the contract.
func validJob(job string) error {
	if err := refapi.CheckJobName(job); err != nil {
		return invalidf("appname %v", err)
	}
	return nil
}

func parseAddr(field, v string, need bool) (netip.Addr, error) {
	if v == "" {
		if need {
			return netip.Addr{}, invalidf("%s is required", field)
		}
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Addr{}, invalidf("%s %q is not an IP address", field, v)
	}
	return a.Unmap(), nil
}
