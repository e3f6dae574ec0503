// Package subnets hands worker nodes their subnet pairs. Each comes from root, recorded
// there under the node's id; a few spare pairs are allocated ahead (recorded under the
// node id "_spare") so a node that starts during a short root outage still gets one.
// A spare handed out is logged with the node that got it.
package subnets

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// SpareNode is the node id spare subnets are recorded under at root.
const SpareNode = "_spare"

// Root is what the pool needs from root's API (a *client.Client).
type Root interface {
	AllocateSubnet(ctx context.Context, clusterID, nodeID string) (api.Subnet, error)
	ReleaseSubnet(ctx context.Context, subnetV4 netip.Prefix) error
}

// Pool allocates subnets for one cluster's nodes.
type Pool struct {
	root      Root
	clusterID string
	spares    int
	timeout   time.Duration
	log       *slog.Logger

	mu    sync.Mutex
	spare []api.Subnet
	fill  chan struct{}
}

// New returns a pool keeping the given number of spares. Start refilling with Run.
func New(root Root, clusterID string, spares int, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pool{root: root, clusterID: clusterID, spares: spares, timeout: 3 * time.Second, log: log, fill: make(chan struct{}, 1)}
}

// Get returns a fresh subnet pair for a node: from root, or from the spares when root
// cannot be reached.
func (p *Pool) Get(ctx context.Context, nodeID string) (api.Subnet, error) {
	cctx, cancel := context.WithTimeout(ctx, p.timeout)
	sn, err := p.root.AllocateSubnet(cctx, p.clusterID, nodeID)
	cancel()
	if err == nil {
		return sn, nil
	}
	if !client.Temporary(err) && cctx.Err() == nil {
		return api.Subnet{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.spare) == 0 {
		return api.Subnet{}, fmt.Errorf("no spare subnet left and root is unreachable: %w", err)
	}
	sn = p.spare[len(p.spare)-1]
	p.spare = p.spare[:len(p.spare)-1]
	p.log.Warn("root unreachable; handed out a spare subnet (recorded at root under node id "+SpareNode+")", "node", nodeID, "subnet_v4", sn.SubnetV4, "subnet_v6", sn.SubnetV6)
	select {
	case p.fill <- struct{}{}:
	default:
	}
	return sn, nil
}

// Spares returns how many spare pairs the pool holds.
func (p *Pool) Spares() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.spare)
}

// Run keeps the spares topped up until ctx ends, retrying while root is unreachable.
func (p *Pool) Run(ctx context.Context) error {
	for {
		for p.Spares() < p.spares {
			cctx, cancel := context.WithTimeout(ctx, p.timeout)
			sn, err := p.root.AllocateSubnet(cctx, p.clusterID, SpareNode)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				p.log.Debug("cannot allocate a spare subnet yet", "err", err)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(5 * time.Second):
				}
				continue
			}
			p.mu.Lock()
			p.spare = append(p.spare, sn)
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.fill:
		}
	}
}

// Release gives the spares back to root (at shutdown), so they don't stay recorded under
// SpareNode for good. Spares root can't take back now are logged.
func (p *Pool) Release(ctx context.Context) {
	p.mu.Lock()
	spare := p.spare
	p.spare = nil
	p.mu.Unlock()
	for _, sn := range spare {
		if err := p.root.ReleaseSubnet(ctx, sn.SubnetV4); err != nil {
			p.log.Warn("could not give a spare subnet back to root", "subnet_v4", sn.SubnetV4, "err", err)
		}
	}
}
