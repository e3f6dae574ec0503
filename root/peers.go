package root

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root/store"
)

// peerTimeout bounds one notification of a peer: a peer that does not answer in time
// finds the change through its store watch.
const peerTimeout = 2 * time.Second

// peers tells the other root processes on the same MongoDB of the changes this one
// logs (POST /api/v1/peer/changes), so the clusters following them hear of a change
// at once, where each found the changes of the others only at its store watch's next
// read (every 50 ms). A notification is a hint: one lost leaves that watch as before.
// Each peer gets at most one request at a time, carrying the newest revision logged
// when it is sent, so a burst of changes costs a few requests, not one per change.
type peers struct {
	log     *slog.Logger
	urls    []string
	clients []*client.Client // one per peer, as urls
	latest  atomic.Uint64
	kick    []chan struct{} // one per peer: a change to tell it about
	sent    *prometheus.CounterVec
}

func newPeers(urls []string, token string, tc *tls.Config, log *slog.Logger, reg prometheus.Registerer) (*peers, error) {
	p := &peers{log: log, urls: urls,
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "semnet_root", Name: "peer_notifications_total",
			Help: "Notifications of this root's changes sent to the other root processes (--peer), by peer and result (ok, error)."}, []string{"peer", "result"})}
	hc := client.HTTPClient(tc)
	for _, u := range urls {
		c, err := client.New(u, token, hc)
		if err != nil {
			return nil, fmt.Errorf("--peer: %w", err)
		}
		p.clients = append(p.clients, c)
		p.kick = append(p.kick, make(chan struct{}, 1))
	}
	reg.MustRegister(p.sent)
	return p, nil
}

// run notifies the peers until ctx ends.
func (p *peers) run(ctx context.Context) {
	for i := range p.urls {
		go p.notify(ctx, i)
	}
}

func (p *peers) Allocated(string) {}

// Changed records a logged change and wakes the peers' senders; it never blocks.
func (p *peers) Changed(c store.Change) {
	for {
		old := p.latest.Load()
		if c.Revision <= old || p.latest.CompareAndSwap(old, c.Revision) {
			break
		}
	}
	for _, k := range p.kick {
		select {
		case k <- struct{}{}:
		default: // a notification is already due: it will carry this revision too
		}
	}
}

// notify sends peer i the newest revision each time there is something new.
func (p *peers) notify(ctx context.Context, i int) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick[i]:
		}
		rev := p.latest.Load()
		result := "ok"
		pctx, cancel := context.WithTimeout(ctx, peerTimeout)
		err := p.clients[i].PeerChanged(pctx, rev)
		cancel()
		if err != nil {
			result = "error"
			if ctx.Err() == nil {
				p.log.Debug("notifying a peer of a change failed; it finds the change through its store watch", "peer", p.urls[i], "revision", rev, "err", err)
			}
		}
		p.sent.WithLabelValues(p.urls[i], result).Inc()
	}
}

// validPeer checks a --peer URL as the client that notifies it will.
func validPeer(s string) error {
	if _, err := client.New(s, "", nil); err != nil {
		return fmt.Errorf("peer %q must be an http:// or https:// URL of another root process", s)
	}
	return nil
}
