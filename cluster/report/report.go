// Package report delivers worker nodes' instance status reports (deployed, undeployed,
// address changed) to root, in the order the nodes sent them, through root outages:
// nothing is lost while the cluster runs. A report root rejects for good (an unknown
// service, an address outside the plan) is logged and counted, not retried forever.
package report

import (
	"context"
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
	// the reporter's goroutine and must not block.
	Done func(api.Instance, error)
}

// Root is what the reporter needs from root's API (a *client.Client).
type Root interface {
	PlaceInstance(ctx context.Context, service string, n int, p api.Placement) (api.Instance, error)
}

// Reporter queues reports and delivers them one at a time, in order.
type Reporter struct {
	root    Root
	log     *slog.Logger
	timeout time.Duration

	mu      sync.Mutex
	lastSeq uint64 // of the newest report queued (see api.Placement.Sequence)
	queue   []Report
	wake    chan struct{} // signalled (non-blocking) when the queue grows
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
	r := &Reporter{root: root, log: log, timeout: 5 * time.Second, wake: make(chan struct{}, 1)}
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

// Enqueue queues a report behind the ones before it.
// It gets the next sequence number (the wall clock, strictly increasing), so that root
// ignores it should an earlier attempt at delivering it arrive after its successors.
func (r *Reporter) Enqueue(rep Report) {
	r.mu.Lock()
	r.lastSeq = max(r.lastSeq+1, uint64(time.Now().UnixNano()))
	rep.Placement.Sequence = r.lastSeq
	r.queue = append(r.queue, rep)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Pending returns how many reports wait for delivery.
func (r *Reporter) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

func (r *Reporter) head() (Report, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return Report{}, false
	}
	return r.queue[0], true
}

func (r *Reporter) pop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queue[0] = Report{}
	r.queue = r.queue[1:]
	if len(r.queue) == 0 {
		r.queue = nil // let the backing array go after a burst
	}
}

// Run delivers reports until ctx ends; it returns ctx's error. While root is unreachable
// it retries the oldest report with backoff, holding the others back to keep the order.
func (r *Reporter) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for {
		rep, ok := r.head()
		if !ok {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-r.wake:
				continue
			}
		}
		cctx, cancel := context.WithTimeout(ctx, r.timeout)
		in, err := r.root.PlaceInstance(cctx, rep.Job, rep.Instance, rep.Placement)
		cancel()
		switch {
		case err == nil:
			r.metrics.delivered.Inc()
			r.pop()
			bo.Reset()
			if rep.Done != nil {
				rep.Done(in, nil)
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case client.Temporary(err) || cctx.Err() != nil:
			r.metrics.retries.Inc()
			wait := max(bo.NextBackOff(), client.RetryAfter(err))
			r.log.Warn("root unreachable or busy; status report kept for retry", "job", rep.Job, "instance", rep.Instance, "pending", r.Pending(), "retry_in", wait, "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		default:
			r.metrics.rejected.Inc()
			r.log.Error("root refused a status report; dropped", "node", rep.Node, "job", rep.Job, "instance", rep.Instance, "status", rep.Placement.Status, "err", err)
			r.pop()
			if rep.Done != nil {
				rep.Done(api.Instance{}, err)
			}
		}
	}
}
