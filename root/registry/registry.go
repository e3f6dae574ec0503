// Package registry is root's core: it allocates Service IPs, Instance IPs and worker
// subnets, keeps the geo-tagged instance records, registers gateways and the exposures
// they serve, resolves table entries and feeds the change stream. It has no HTTP in it;
// root/rest adapts it to REST.
//
// Allocation is two-phase. The in-memory pools (package ippool) propose addresses in
// O(1); the store then claims them as leases together with the record. The store is the
// authority: if another root process sharing the database took an address first, the
// store says so, the pool learns it and the allocation is retried with the next address.
// After a restart the pools are rebuilt from the store's leases, quarantine included.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/ippool"
)

// ErrInvalid marks bad input; the message says what and how to fix it.
var ErrInvalid = errors.New("invalid")

// kindError is an error of a known kind (a sentinel, for errors.Is) whose message is
// only the operator-facing text, without the sentinel's words tacked on.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: kind}
}

func invalidf(format string, args ...any) error { return errorf(ErrInvalid, format, args...) }

// maxClaimAttempts bounds retries when another root process claims the address this one
// proposed. Each retry marks that address used, so a retry storm cannot cycle.
const maxClaimAttempts = 16

// numberingStripes is the number of instance-numbering locks.
const numberingStripes = 64

// nameRE is the platform's rule for each of the four parts of a job name.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9]{1,30}$`)

// Registry is root's core. It is safe for concurrent use.
type Registry struct {
	plan  addrplan.Plan
	store store.Store
	log   *slog.Logger
	now   func() time.Time

	service4   *ippool.Pool // every IPv4 Service IP and Instance IP
	rr6        *ippool.Pool
	closest6   *ippool.Pool
	instance6  *ippool.Pool
	subnet4    *ippool.Pool // blocks of plan.SubnetV4Bits
	subnetStep int          // log2 of the v6 subnet size, to derive /120 number i from /26 number i

	observer Observer

	// numbering serialises "lowest free instance number" choices per service (striped, so
	// unrelated services don't wait on each other).
	numbering [numberingStripes]sync.Mutex
	// gatewayLocks serialise the registrations and deletions of one gateway (striped by
	// its ID), so concurrent registrations never give it two instances.
	gatewayLocks [numberingStripes]sync.Mutex

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every local mutation (long-poll wake-up)

	pollInterval time.Duration // a waiting long-poll's re-read when nothing woke it
	waiting      atomic.Int32  // long-polls waiting now
	watchEvery   atomic.Int64  // WatchStore's period (ns); 0 when it does not run
	storeRev     atomic.Uint64 // the newest revision known in the store: WatchStore's reads, peers' notifications

	clustersSeen sync.Map // cluster ID -> time.Time its registration was last read (see knownCluster)

	// changeEntries shares the entries built for change batches (ChangeEntries) among
	// the clusters a change wakes together: keyed by service and change revision.
	changeEntries singleflight.Group
}

// Observer hears about mutations (metrics, reference notifications). Calls are made after
// the store acknowledged the change, never while holding a lock, and must not block.
type Observer interface {
	Allocated(pool string)
	Changed(c store.Change)
}

type nopObserver struct{}

func (nopObserver) Allocated(string)     {}
func (nopObserver) Changed(store.Change) {}

// Options configure a Registry.
type Options struct {
	Logger   *slog.Logger
	Observer Observer
	Now      func() time.Time
	// Shared: other root processes allocate from the same store. Each process's pools
	// then propose addresses from random places rather than the lowest free ones
	// (ippool.Options.Spread), so that two processes rarely propose the same address
	// and pay for it with a rolled-back claim. A lone process keeps the lowest free
	// addresses, which read better.
	Shared bool
	// PollInterval is how often a waiting change-stream long-poll re-reads the store
	// when nothing woke it (default 1 s): the safety net under the wake-ups, local
	// writes and WatchStore.
	PollInterval time.Duration
}

// New builds a registry over st, rebuilding its pools from the store's leases.
func New(ctx context.Context, plan addrplan.Plan, st store.Store, opt Options) (*Registry, error) {
	if err := plan.Validate(); err != nil {
		return nil, fmt.Errorf("address plan: %w", err)
	}
	r := &Registry{plan: plan, store: st, log: opt.Logger, now: opt.Now, observer: opt.Observer, changed: make(chan struct{}),
		pollInterval: opt.PollInterval}
	if r.pollInterval <= 0 {
		r.pollInterval = defaultPollInterval
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.observer == nil {
		r.observer = nopObserver{}
	}
	mk := func(name string, p netip.Prefix, o ippool.Options) (*ippool.Pool, error) {
		o.Quarantine = plan.Quarantine
		o.Now = r.now
		o.Spread = opt.Shared
		return ippool.New(name, p, o)
	}
	var err error
	pools := []struct {
		dst  **ippool.Pool
		name string
		p    netip.Prefix
		o    ippool.Options
	}{
		{&r.service4, "service_v4", plan.ServiceV4, ippool.Options{Reserved: plan.ReservedV4}},
		{&r.rr6, "round_robin_v6", plan.RoundRobinV6, ippool.Options{Reserved: anycast(plan.RoundRobinV6)}},
		{&r.closest6, "closest_v6", plan.ClosestV6, ippool.Options{Reserved: anycast(plan.ClosestV6)}},
		{&r.instance6, "instance_v6", plan.InstanceV6, ippool.Options{Reserved: anycast(plan.InstanceV6)}},
		{&r.subnet4, "subnet_v4", plan.SubnetV4, ippool.Options{BlockBits: plan.SubnetV4Bits, Reserved: plan.ReservedSubV4}},
	}
	for _, p := range pools {
		if *p.dst, err = mk(p.name, p.p, p.o); err != nil {
			return nil, fmt.Errorf("pool %s: %w", p.name, err)
		}
	}
	r.subnetStep = 128 - plan.SubnetV6Bits
	if err := r.restore(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// anycast reserves an IPv6 prefix's all-zeros address: RFC 4291 makes it the
// Subnet-Router anycast address, which some stacks treat specially.
func anycast(p netip.Prefix) []netip.Prefix {
	return []netip.Prefix{netip.PrefixFrom(p.Addr(), 128)}
}

// restore replays every lease into the pools so nothing leased or quarantined is handed
// out again after a restart.
func (r *Registry) restore(ctx context.Context) error {
	n := 0
	err := r.store.ListLeases(ctx, func(l store.Lease) error {
		n++
		p := r.poolOf(l.Addr)
		if p == nil {
			// A lease outside today's plan (the plan was changed): it can't collide with
			// anything this plan hands out, so it needs no tracking.
			return nil
		}
		if l.ReleasedAt.IsZero() {
			p.MarkUsed(l.Addr)
		} else {
			p.MarkQuarantined(l.Addr, l.ReleasedAt)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restore address pools from leases: %w", err)
	}
	r.log.Info("address pools restored", "leases", n)
	return nil
}

// poolOf finds the pool that tracks addr (pools never overlap: the plan is validated).
// IPv6 subnet leases are derived from the IPv4 subnet number and need no pool.
func (r *Registry) poolOf(a netip.Addr) *ippool.Pool {
	for _, p := range r.Pools() {
		if p.Contains(a) {
			return p
		}
	}
	return nil
}

// Plan returns the address plan in force.
func (r *Registry) Plan() addrplan.Plan { return r.plan }

// Pools lists every pool, for usage reports and metrics.
func (r *Registry) Pools() []*ippool.Pool {
	return []*ippool.Pool{r.service4, r.rr6, r.closest6, r.instance6, r.subnet4}
}

// notify wakes change-stream long-pollers and tells the observer. Called after commit.
func (r *Registry) notify(cs ...store.Change) {
	r.wake()
	for _, c := range cs {
		r.observer.Changed(c)
	}
}

// wake wakes the change-stream long-polls.
func (r *Registry) wake() {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// changedCh returns a channel closed at the next local mutation.
func (r *Registry) changedCh() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// claim is one address to take from a pool: a requested one (Want valid) or the next free.
type claim struct {
	pool  *ippool.Pool
	want  netip.Addr
	field string // the request field that asked for it, for error messages
	got   netip.Addr
}

// reserve takes every claim from its pool, or none (what was taken is given back). On
// failure it returns the claim that could not be had.
func reserve(cs []*claim) (*claim, error) {
	for i, c := range cs {
		var err error
		if c.want.IsValid() {
			err = c.pool.Claim(c.want)
			if err == nil {
				c.got = c.want
			}
		} else {
			c.got, err = c.pool.Allocate()
		}
		if err != nil {
			unreserve(cs[:i])
			return c, err
		}
	}
	return nil, nil
}

func unreserve(cs []*claim) {
	for _, c := range cs {
		if c.got.IsValid() {
			c.pool.Unreserve(c.got)
			c.got = netip.Addr{}
		}
	}
}

// withClaims reserves the claims and runs commit, which stores the record. When another
// root process holds an address this one proposed (the store says it is taken, and it was
// not requested), the pool learns it and everything is retried; a requested address that
// is taken fails at once.
func (r *Registry) withClaims(ctx context.Context, cs []*claim, commit func() error) error {
	for attempt := 0; ; attempt++ {
		if c, err := reserve(cs); err != nil {
			return r.explainClaim(ctx, c, err)
		}
		err := commit()
		if err == nil {
			for _, c := range cs {
				r.observer.Allocated(c.pool.Name())
			}
			return nil
		}
		var taken *store.AddressTakenError
		if !errors.As(err, &taken) || attempt+1 >= maxClaimAttempts {
			unreserve(cs)
			if taken != nil {
				// The store's own words name the address and its holder; the wrapping
				// around them is noise to an operator.
				return errorf(store.ErrAddressTaken, "%s", taken.Error())
			}
			return err
		}
		requested := false
		for _, c := range cs {
			if c.got == taken.Addr && c.want.IsValid() {
				requested = true
			}
		}
		// Give back everything but the contested address, which the other holder keeps:
		// it stays marked used here (or quarantined, if that is what the store said).
		for _, c := range cs {
			if c.got == taken.Addr {
				if !taken.Lease.ReleasedAt.IsZero() {
					c.pool.Unreserve(c.got)
					c.pool.MarkQuarantined(c.got, taken.Lease.ReleasedAt)
				}
				c.got = netip.Addr{}
			}
		}
		unreserve(cs)
		if requested {
			return errorf(store.ErrAddressTaken, "%s", taken.Error())
		}
		r.log.Debug("address taken by another root process; retrying", "addr", taken.Addr, "attempt", attempt+1)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// explainClaim turns a pool's refusal of a requested address into the operator's
// terms: which request field, and who holds the address (the store knows).
func (r *Registry) explainClaim(ctx context.Context, c *claim, err error) error {
	if !c.want.IsValid() {
		return err // exhaustion: the pool's message names the pool
	}
	if errors.Is(err, ippool.ErrInUse) || errors.Is(err, ippool.ErrQuarantined) {
		if l, lerr := r.store.GetLease(ctx, c.want); lerr == nil {
			return errorf(store.ErrAddressTaken, "%s: %s", c.field, (&store.AddressTakenError{Addr: c.want, Lease: l}).Error())
		}
		// Reserved by a create still in flight in this process.
	}
	return errorf(err, "%s %s: %v", c.field, c.want, err)
}

// wrap adds context to an internal error, but leaves errors already written for the
// operator (kindError) as they are.
func wrap(err error, format string, args ...any) error {
	var k *kindError
	if errors.As(err, &k) {
		return err
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

// release returns committed addresses to their pools' quarantine. An address this
// process's pool does not hold was allocated by another root process sharing the store
// (or before this one's pools were restored): its lease was released all the same, so
// the pool learns of the quarantine rather than proposing the address at its next
// allocation, which the store would refuse.
func (r *Registry) release(addrs ...netip.Addr) {
	for _, a := range addrs {
		p := r.poolOf(a)
		if p == nil {
			continue
		}
		err := p.Release(a)
		switch {
		case err == nil:
		case errors.Is(err, ippool.ErrNotInUse):
			p.MarkQuarantined(a, r.now())
			r.log.Debug("released an address this process had not allocated", "addr", a)
		default:
			r.log.Warn("release address", "addr", a, "err", err)
		}
	}
}

// PoolUsage reports every pool's fill level.
func (r *Registry) PoolUsage() []api.PoolUsage {
	ps := r.Pools()
	out := make([]api.PoolUsage, len(ps))
	for i, p := range ps {
		st := p.Stats()
		out[i] = api.PoolUsage{Name: p.Name(), Prefix: p.Prefix(), Size: uint64(st.Size), Used: uint64(st.Used), Quarantined: uint64(st.Quarantined)}
	}
	return out
}

// Ping checks that the store answers.
func (r *Registry) Ping(ctx context.Context) error { return r.store.Ping(ctx) }
