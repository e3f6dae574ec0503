// Package notify pushes the reference platform's root -> cluster job updates: for every
// committed instance change, each interested cluster registered through the reference API
// (store.Cluster.Reference) gets
//
//	POST http://<address>:<port>/api/net/job/update {job_name, instance_number, type}
//
// (CONTRACT.md). semnet's own clusters follow the change stream instead and are skipped.
//
// Which update a change makes:
//   - an instance put whose instance is now running: DEPLOYMENT (the cluster re-queries
//     the job); scheduled instances make none (nothing to route to yet);
//   - an instance put whose instance failed, and an instance delete: UNDEPLOYMENT of that
//     instance (the cluster drops it from its cache);
//   - a service delete: UNDEPLOYMENT with instance_number -1;
//   - service puts make none (a new service has no instances and no interested cluster).
//
// The Notifier is the registry's Observer: Changed only queues the change, never waits.
// One dispatcher goroutine reads the queue in order, looks up the instance and the
// interested clusters, and hands each update to the target cluster's own sender goroutine
// (started on the cluster's first update, kept until Run ends: reference clusters are few),
// which delivers its updates in order with retries (by default 5 attempts, 2 s timeout
// each, as the reference, with exponential backoff). So a dead cluster delays only its own
// updates, and updates to one cluster are never reordered. Both queues are bounded: a
// full one drops the update with a warning and a counted metric rather than block the API
// request that made the change.
//
// The registry needs its Observer at construction and the Notifier needs the registry, so
// the Notifier is built first and given the registry with SetRegistry; changes that
// arrive before are dropped with a warning (none do: the registry makes none while it is
// being built). Lookups happen when the dispatcher gets to a change, not when it was
// made: an instance deleted meanwhile makes no DEPLOYMENT (its delete makes the
// UNDEPLOYMENT), and the clusters last notified about a service are remembered until its
// delete so that the final UNDEPLOYMENTs do not depend on the store keeping interests of
// a deleted service.
package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/root/store"
)

// Source is what the Notifier reads from root's core (registry.Registry implements it):
// the clusters, those interested in a service, and an instance's current status.
type Source interface {
	Clusters(ctx context.Context) ([]store.Cluster, error)
	InterestedClusters(ctx context.Context, serviceID string) ([]store.Cluster, error)
	Instance(ctx context.Context, key string, number int) (store.Instance, store.Service, error)
}

// Options configure a Notifier. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the notifier's metrics; nil registers none.
	Registerer prometheus.Registerer
	// Client sends the updates; its own Timeout should be zero (Timeout below applies to
	// each attempt). Default: a client with no proxy, so cluster addresses are dialled
	// directly.
	Client *http.Client
	// QueueSize bounds the changes waiting for the dispatcher (default 1024).
	QueueSize int
	// ClusterQueueSize bounds the updates waiting for one cluster (default 256).
	ClusterQueueSize int
	// Attempts per update (default 5), each bounded by Timeout (default 2 s). Between
	// attempts the sender waits Backoff (default 500 ms), doubling up to MaxBackoff
	// (default 8 s).
	Attempts   int
	Timeout    time.Duration
	Backoff    time.Duration
	MaxBackoff time.Duration
}

func (o *Options) defaults() {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 1024
	}
	if o.ClusterQueueSize <= 0 {
		o.ClusterQueueSize = 256
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Backoff <= 0 {
		o.Backoff = 500 * time.Millisecond
	}
	if o.MaxBackoff < o.Backoff {
		o.MaxBackoff = max(8*time.Second, o.Backoff)
	}
}

// Notifier delivers reference job updates. Build it with New, give it the registry with
// SetRegistry, run it with Run and stop it with Close.
type Notifier struct {
	opt Options
	log *slog.Logger

	queue chan store.Change
	done  chan struct{} // closed by Close

	mu      sync.Mutex
	src     Source
	running bool
	closed  bool
	stopped chan struct{} // closed when Run returns

	// senders and followers are touched only by Run's goroutine.
	senders   map[string]*sender
	followers map[string][]store.Cluster // service ID -> reference clusters last notified
	senderWG  sync.WaitGroup

	dropped *prometheus.CounterVec
	sent    *prometheus.CounterVec
	retries prometheus.Counter
}

// delivery is one update for one cluster.
type delivery struct {
	url    string
	update refapi.JobUpdate
}

type sender struct {
	cluster string
	queue   chan delivery
}

// New builds a Notifier. It does nothing until Run.
func New(opt Options) *Notifier {
	opt.defaults()
	n := &Notifier{
		opt: opt, log: opt.Logger,
		queue:     make(chan store.Change, opt.QueueSize),
		done:      make(chan struct{}),
		stopped:   make(chan struct{}),
		senders:   map[string]*sender{},
		followers: map[string][]store.Cluster{},
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semnet_root", Subsystem: "notify", Name: "dropped_total",
			Help: "Reference job updates dropped because a queue was full (queue: changes waiting for the dispatcher; cluster: updates waiting for one cluster) or the notifier had no registry.",
		}, []string{"reason"}),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "semnet_root", Subsystem: "notify", Name: "updates_total",
			Help: "Reference job updates finished, by result (ok, or failed after every attempt or with a client error).",
		}, []string{"result"}),
		retries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "semnet_root", Subsystem: "notify", Name: "retries_total",
			Help: "Reference job update attempts that were retried.",
		}),
	}
	if opt.Registerer != nil {
		opt.Registerer.MustRegister(n.dropped, n.sent, n.retries)
	}
	return n
}

// SetRegistry gives the Notifier the registry it reads interests and instances from.
func (n *Notifier) SetRegistry(src Source) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.src = src
}

func (n *Notifier) source() Source {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.src
}

// Allocated is part of the registry's Observer; allocations need no notification.
func (n *Notifier) Allocated(string) {}

// Changed queues a committed change for the dispatcher. It never blocks: when the queue
// is full the change is dropped, counted and logged.
func (n *Notifier) Changed(c store.Change) {
	if c.Kind == store.KindService && c.Op != store.OpDelete {
		return // service puts make no update
	}
	select {
	case <-n.done:
		return // shutting down: nothing will send it
	case n.queue <- c:
	default:
		n.dropped.WithLabelValues("queue").Inc()
		n.log.Warn("reference notification queue full; change dropped", "job", c.JobName, "instance", c.Instance, "op", c.Op)
	}
}

// Run dispatches changes until ctx is done or Close is called, then stops the senders
// (aborting updates in flight) and returns. It runs at most once.
func (n *Notifier) Run(ctx context.Context) {
	n.mu.Lock()
	if n.running || n.closed {
		n.mu.Unlock()
		return
	}
	n.running = true
	n.mu.Unlock()
	defer close(n.stopped)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			n.stopSenders()
			return
		case <-n.done:
			cancel()
			n.stopSenders()
			return
		case c := <-n.queue:
			n.dispatch(ctx, c)
		}
	}
}

// Close stops Run (if it runs) and waits for it. Changes still queued are not sent.
func (n *Notifier) Close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	running := n.running
	n.mu.Unlock()
	close(n.done)
	if running {
		<-n.stopped
	}
}

func (n *Notifier) stopSenders() {
	for _, s := range n.senders {
		close(s.queue)
	}
	n.senderWG.Wait()
}

// dispatch turns one change into updates for the interested reference clusters.
func (n *Notifier) dispatch(ctx context.Context, c store.Change) {
	src := n.source()
	if src == nil {
		n.dropped.WithLabelValues("no_registry").Inc()
		n.log.Warn("reference notification before the registry was set; change dropped", "job", c.JobName, "instance", c.Instance)
		return
	}
	if !n.mayConcernReference(ctx, src, c) {
		return
	}
	u := refapi.JobUpdate{JobName: c.JobName, InstanceNumber: c.Instance}
	switch {
	case c.Kind == store.KindService && c.Op == store.OpDelete:
		u.Type, u.InstanceNumber = refapi.UpdateUndeployment, -1
	case c.Kind == store.KindInstance && c.Op == store.OpDelete:
		u.Type = refapi.UpdateUndeployment
	case c.Kind == store.KindInstance && c.Op == store.OpPut:
		in, _, err := src.Instance(ctx, c.ServiceID, c.Instance)
		if errors.Is(err, store.ErrNotFound) {
			return // deleted since; its delete change makes the update
		}
		if err != nil {
			n.log.Warn("reference notification: cannot read instance; update not sent", "job", c.JobName, "instance", c.Instance, "err", err)
			return
		}
		switch in.Status {
		case store.StatusRunning:
			u.Type = refapi.UpdateDeployment
		case store.StatusFailed, store.StatusStopped:
			u.Type = refapi.UpdateUndeployment
		default:
			return
		}
	default:
		return
	}
	cs, err := src.InterestedClusters(ctx, c.ServiceID)
	if err != nil {
		n.log.Warn("reference notification: cannot read interested clusters; update not sent", "job", c.JobName, "instance", c.Instance, "err", err)
		return
	}
	for _, cl := range n.targets(c, cs) {
		n.enqueue(ctx, cl, u)
	}
}

// mayConcernReference tells whether c may make an update: some reference cluster is
// registered, or one followed c's service. Most roots have none (semnet's own clusters
// follow the change stream), and the list of clusters is one small read where the
// instance and the service's interests were two more for every change (on FerretDB the
// interests' read decodes every cluster's). When the list cannot be read it answers
// true, and the lookups that follow report the failure.
func (n *Notifier) mayConcernReference(ctx context.Context, src Source, c store.Change) bool {
	if len(n.followers[c.ServiceID]) > 0 {
		return true
	}
	cs, err := src.Clusters(ctx)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(cs, func(cl store.Cluster) bool { return cl.Reference })
}

// targets picks the reference clusters among the interested ones cs and remembers them
// per service, so that updates about a deleted service still reach the clusters that
// followed it even if a store drops the service's interests with it (the dispatcher may
// get to those changes after the service is gone). A cluster that dropped its interest
// since may get one UNDEPLOYMENT too many, which is harmless. The memory of a service is
// forgotten with its delete.
func (n *Notifier) targets(c store.Change, cs []store.Cluster) []store.Cluster {
	var out []store.Cluster
	seen := map[string]bool{}
	for _, cl := range cs {
		if cl.Reference && !seen[cl.ID] {
			seen[cl.ID] = true
			out = append(out, cl)
		}
	}
	if c.Op == store.OpDelete {
		for _, cl := range n.followers[c.ServiceID] {
			if !seen[cl.ID] {
				seen[cl.ID] = true
				out = append(out, cl)
			}
		}
	}
	switch {
	case c.Kind == store.KindService && c.Op == store.OpDelete:
		delete(n.followers, c.ServiceID)
	case len(out) > 0:
		n.followers[c.ServiceID] = out
	}
	return out
}

// enqueue hands u to the cluster's sender, starting it on first use.
func (n *Notifier) enqueue(ctx context.Context, cl store.Cluster, u refapi.JobUpdate) {
	s, ok := n.senders[cl.ID]
	if !ok {
		s = &sender{cluster: cl.ID, queue: make(chan delivery, n.opt.ClusterQueueSize)}
		n.senders[cl.ID] = s
		n.senderWG.Add(1)
		go func() {
			defer n.senderWG.Done()
			for d := range s.queue {
				n.deliver(ctx, s.cluster, d)
			}
		}()
	}
	d := delivery{url: "http://" + net.JoinHostPort(cl.Address, strconv.Itoa(cl.Port)) + refapi.JobUpdatePath, update: u}
	select {
	case s.queue <- d:
	default:
		n.dropped.WithLabelValues("cluster").Inc()
		n.log.Warn("reference notification queue of cluster full (is it down?); update dropped", "cluster", cl.ID, "job", u.JobName, "instance", u.InstanceNumber, "type", u.Type)
	}
}

// deliver POSTs one update, retrying network errors and 429/5xx answers with exponential
// backoff. It gives up early only when ctx ends (Run stopping).
func (n *Notifier) deliver(ctx context.Context, cluster string, d delivery) {
	body, err := json.Marshal(d.update)
	if err != nil { // cannot happen: strings and an int
		n.log.Error("encode job update", "err", err)
		return
	}
	wait := n.opt.Backoff
	for attempt := 1; ; attempt++ {
		retry, err := n.post(ctx, d.url, body)
		if err == nil {
			n.sent.WithLabelValues("ok").Inc()
			n.log.Debug("job update sent", "cluster", cluster, "job", d.update.JobName, "instance", d.update.InstanceNumber, "type", d.update.Type, "attempt", attempt)
			return
		}
		if !retry || attempt >= n.opt.Attempts || ctx.Err() != nil {
			n.sent.WithLabelValues("failed").Inc()
			n.log.Warn("job update not delivered", "cluster", cluster, "url", d.url, "job", d.update.JobName,
				"instance", d.update.InstanceNumber, "type", d.update.Type, "attempts", attempt, "err", err)
			return
		}
		n.retries.Inc()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		wait = min(2*wait, n.opt.MaxBackoff)
	}
}

// post makes one attempt. retry reports whether another attempt may succeed.
func (n *Notifier) post(ctx context.Context, url string, body []byte) (retry bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, n.opt.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("build job update request to %s: %w", url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.opt.Client.Do(req)
	if err != nil {
		return true, fmt.Errorf("post job update: %w", err)
	}
	// Drain a little so the connection can be reused; clusters answer a short text.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return true, fmt.Errorf("post job update to %s: cluster answered %s", url, resp.Status)
	default:
		return false, fmt.Errorf("post job update to %s: cluster answered %s (not retried: the request itself was refused)", url, resp.Status)
	}
}
