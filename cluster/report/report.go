// Package report delivers worker nodes' instance status reports (deployed, undeployed,
// address changed) to root, in the order the nodes sent them for each instance (several
// instances' reports at once), through root outages:
// nothing is lost while the cluster runs. A report root rejects for good (an unknown
// service, an address outside the plan) is logged and counted, not retried forever.
package report

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// Report is one instance status change to tell root.
type Report struct {
	Node      string // the worker that reported it, for logs
	Job       string // job name
	Instance  int
	Placement api.Placement
	// Done, when set, is called once root has answered the report: with the instance
	// as root now has it, or with the error for which the report was dropped. It runs on
	// one of the reporter's goroutines and must not block.
	Done func(api.Instance, error)
}

// Root is what the reporter needs from root's API (a *client.Client).
type Root interface {
	PlaceInstance(ctx context.Context, service string, n int, p api.Placement) (api.Instance, error)
}

// Workers is how many reports the reporter delivers at once, each for a different
// instance. One at a time, a root answering in L would cap a cluster at 1/L reports per
// second: a slow store (or one stalled request) would hold every node's reports back.
const Workers = 8

// key identifies the instance a report is about: reports for one instance are delivered
// one after another, in the order they were queued; reports for different instances
// need no order between them.
type key struct {
	job      string
	instance int
}

// Reporter queues reports and delivers them, in order per instance.
type Reporter struct {
	root    Root
	log     *slog.Logger
	timeout time.Duration

	mu      sync.Mutex
	lastSeq uint64 // of the newest report queued (see api.Placement.Sequence)
	queue   []Report
	busy    map[key]bool  // instances with a report being delivered
	changed chan struct{} // closed (and replaced) when a report is queued or finished
	metrics metrics
}

type metrics struct {
	delivered, rejected, retries prometheus.Counter
	pending                      prometheus.GaugeFunc
}

// New returns a reporter delivering to root. Start it with Run.
func New(root Root, log *slog.Logger, reg prometheus.Registerer) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{root: root, log: log, timeout: 5 * time.Second, busy: map[key]bool{}, changed: make(chan struct{})}
	r.metrics = metrics{
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "reports_delivered_total", Help: "Instance status reports root accepted."}),
		rejected:  prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "reports_rejected_total", Help: "Instance status reports root refused for good (dropped)."}),
		retries:   prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "report_retries_total", Help: "Deliveries retried because root was unreachable."}),
		pending: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "semnet", Subsystem: "cluster", Name: "reports_pending", Help: "Instance status reports waiting for root."},
			func() float64 { return float64(r.Pending()) }),
	}
	if reg != nil {
		reg.MustRegister(r.metrics.delivered, r.metrics.rejected, r.metrics.retries, r.metrics.pending)
	}
	return r
}

// signal wakes the workers; r.mu must be held.
func (r *Reporter) signal() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Enqueue queues a report behind the ones before it.
// It gets the next sequence number (the wall clock, strictly increasing), so that root
// ignores it should an earlier attempt at delivering it arrive after its successors.
func (r *Reporter) Enqueue(rep Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastSeq = max(r.lastSeq+1, uint64(time.Now().UnixNano()))
	rep.Placement.Sequence = r.lastSeq
	r.queue = append(r.queue, rep)
	r.signal()
}

// Pending returns how many reports wait for delivery (being delivered included).
func (r *Reporter) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue) + len(r.busy)
}

// take removes and returns the oldest report whose instance has no earlier report queued
// or in delivery; when there is none, it returns a channel closed on the next change.
func (r *Reporter) take() (Report, <-chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var held map[key]bool // instances whose oldest queued report waits behind a busy one
	for i, rep := range r.queue {
		k := key{rep.Job, rep.Instance}
		if r.busy[k] || held[k] {
			if held == nil {
				held = map[key]bool{}
			}
			held[k] = true
			continue
		}
		r.busy[k] = true
		r.queue = append(r.queue[:i], r.queue[i+1:]...)
		if len(r.queue) == 0 {
			r.queue = nil // let the backing array go after a burst
		}
		return rep, nil, true
	}
	return Report{}, r.changed, false
}

func (r *Reporter) finish(rep Report) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.busy, key{rep.Job, rep.Instance})
	r.signal()
}

// Run delivers reports until ctx ends; it returns ctx's error. While root is unreachable
// each worker retries its report with backoff, holding back the later reports of that
// instance to keep their order.
func (r *Reporter) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(ctx)
		}()
	}
	wg.Wait()
	return ctx.Err()
}

func (r *Reporter) work(ctx context.Context) {
	for {
		rep, changed, ok := r.take()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		done := r.deliver(ctx, rep)
		r.finish(rep)
		if !done {
			return // ctx ended; the report is lost with the process
		}
	}
}

// deliver sends rep until root accepts or refuses it for good; false when ctx ended first.
func (r *Reporter) deliver(ctx context.Context, rep Report) bool {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for {
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		in, err := r.root.PlaceInstance(cctx, rep.Job, rep.Instance, rep.Placement)
		cancel()
		var answered *client.Error // root's own answer, final even if it came late
		switch {
		case err == nil:
			r.metrics.delivered.Inc()
			if rep.Done != nil {
				rep.Done(in, nil)
			}
			return true
		case ctx.Err() != nil:
			return false
		case client.Temporary(err) || (cctx.Err() != nil && !errors.As(err, &answered)):
			r.metrics.retries.Inc()
			wait := max(bo.NextBackOff(), client.RetryAfter(err))
			r.log.Warn("root unreachable or busy; status report kept for retry", "job", rep.Job, "instance", rep.Instance, "pending", r.Pending(), "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
				return false
			case <-time.After(wait):
			}
		default:
			r.metrics.rejected.Inc()
			r.log.Error("root refused a status report; dropped", "node", rep.Node, "job", rep.Job, "instance", rep.Instance, "status", rep.Placement.Status, "err", err)
			if rep.Done != nil {
				rep.Done(api.Instance{}, err)
			}
			return true
		}
	}
}
