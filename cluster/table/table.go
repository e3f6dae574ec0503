// Package table is the cluster's view of the services its worker nodes use: table entries
// answered from the cache when it has them, fetched from root (registering the cluster's
// interest) when it does not, and kept fresh by following root's change stream.
//
// The follower is the only writer of fresh state: a change at root (an instance placed,
// deleted, moved) reaches the cache as the entry read after it (root sends it with the
// change; the follower re-reads one root did not send) tagged with the revision it
// reflects, and OnChange tells the cluster so it can push it to interested nodes. The
// cursor of the stream is kept in the cache, so a restarted cluster (or another replica
// sharing a Redis cache) resumes where it left off; when root says the log no longer
// reaches back that far, every cached entry is re-read.
//
// Root keeps one interest per cluster and job, shared by the replicas of a cluster
// service that share a Redis cache. A replica holds the jobs its nodes need in the cache
// (cache.Holds) and drops the cluster's interest only when it releases the last hold;
// it answers a cached entry at once only for a job it holds, so a hit costs no more
// round trips than the read itself. The protocol that keeps drops and lookups racing
// across replicas from leaving an entry nobody follows is in cache.Holds; Lookup, Forget
// and RunHolds carry it out.
package table

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/singleflight"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// Root is what the table needs from root's API (a *client.Client).
type Root interface {
	Resolve(ctx context.Context, key, clusterID string) (api.TableEntry, error)
	Changes(ctx context.Context, clusterID string, since uint64, wait time.Duration) (api.ChangeBatch, error)
	CurrentRevision(ctx context.Context, clusterID string) (uint64, error)
	RemoveInterest(ctx context.Context, clusterID, service string) error
	Interests(ctx context.Context, clusterID string) ([]string, error)
}

// Cache is the part of cache.Cache the table uses.
type Cache interface {
	Get(ctx context.Context, key string) (*cache.Entry, error)
	Put(ctx context.Context, e *cache.Entry) (bool, error)
	Delete(ctx context.Context, jobName string, rev uint64) error
	Jobs(ctx context.Context) ([]string, error)
	Cursor(ctx context.Context) (uint64, error)
	SetCursor(ctx context.Context, rev uint64) error
	cache.Holds
}

// ErrUnknown is returned by Lookup when root knows no service by the key.
var ErrUnknown = errors.New("unknown service")

// Options configure a Table.
type Options struct {
	ClusterID string
	// StaleAfter is how long without an answer from root before entries are served as
	// stale (default 30s).
	StaleAfter time.Duration
	// Wait is the long-poll duration of change-stream reads (default 25s).
	Wait time.Duration
	// PollMargin is how long past Wait a change-stream read may take before it is given
	// up and sent again (default 10s). A read whose answer a partition lost (the link
	// went silent under it, with no reset to tell) would otherwise wait for TCP to give
	// up on the connection, minutes after the link is back, and no change would reach
	// the cache meanwhile. It must leave room for a busy root answering late.
	PollMargin time.Duration
	// UnknownTTL is how long a key root knows no service by is answered unknown
	// without asking root again (default 2s; negative: root is asked every time). Nodes
	// retry a name or address they cannot resolve with every packet that needs it; this
	// keeps them from turning root's load into theirs. A service created meanwhile is
	// found once it runs out.
	UnknownTTL time.Duration
	// FetchTimeout bounds one read of an entry from root (default 5s, the time a
	// reference node waits for its answer).
	FetchTimeout time.Duration
	// OnChange is called by the follower after a job's cached entry changed (e is the new
	// entry) or the job was deleted (e is nil). at is when root logged the change that
	// made it (its clock), zero when the entry was re-read for another reason (a resync,
	// an interest taken up again, the reference root's push). It is called for several
	// jobs at once (one job's calls come in revision order); it should not block for
	// long.
	OnChange func(job string, e *cache.Entry, at time.Time)
	// OnGateways is called by the follower when root reports a change to gateways or
	// exposures, and after a resync (which may have skipped some).
	OnGateways func()
	// Replica names this replica in the holds of a cache it may share with other
	// replicas (cache.Holds); New picks a random one when it is empty.
	Replica string
	// HoldRenew is how often RunHolds renews the replica's holds (default 10s); it must
	// be well within the cache's HoldTTL (default 30s).
	HoldRenew time.Duration
	// InterestCheck is how often RunHolds compares the jobs this replica holds with the
	// interests root has for the cluster (default 30s; negative: never).
	InterestCheck time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
	Now           func() time.Time
}

// Table answers table queries from the cache and root, and follows root's changes.
type Table struct {
	root  Root
	cache Cache
	opt   Options
	log   *slog.Logger

	flight      singleflight.Group
	lastContact atomic.Int64 // unix nanoseconds of root's last answer

	// held records the jobs this replica holds in the cache (job -> struct{}). A
	// sync.Map: every cache hit reads it, it rarely changes.
	held  sync.Map
	nheld atomic.Int64
	// holdMu serializes taking and releasing the hold of a job (by a hash of its name),
	// so held stays what the cache has: a release overtaking a hold's round trip would
	// leave the job held here and released in the cache.
	holdMu   [64]sync.Mutex
	holdSeed maphash.Seed
	// refollow holds the held jobs whose interest must be taken up again (job ->
	// struct{}): the renewal found the hold lapsed or another replica's drop, or a fetch
	// that was to take it up failed. RunHolds retries them.
	refollow sync.Map
	// unknown holds the keys root knew no service by, until when that answer stands.
	unknown struct {
		mu sync.Mutex
		m  map[string]time.Time
	}
	m metrics
}

// maxUnknown bounds the remembered unknown keys: when full (after dropping the expired
// ones), root is asked again rather than the memory grown.
const maxUnknown = 1 << 16

type metrics struct {
	releases   *prometheus.CounterVec // outcome: shared, dropped, retaken
	refollowed prometheus.Counter
}

// New returns a table over the cache, fetching from root. Start following with Run.
func New(root Root, c Cache, opt Options) *Table {
	if opt.StaleAfter <= 0 {
		opt.StaleAfter = 30 * time.Second
	}
	if opt.Wait <= 0 {
		opt.Wait = 25 * time.Second
	}
	if opt.PollMargin <= 0 {
		opt.PollMargin = defaultPollMargin
	}
	if opt.UnknownTTL == 0 {
		opt.UnknownTTL = 2 * time.Second
	}
	if opt.FetchTimeout <= 0 {
		opt.FetchTimeout = 5 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.OnGateways == nil {
		opt.OnGateways = func() {}
	}
	if opt.OnChange == nil {
		opt.OnChange = func(string, *cache.Entry, time.Time) {}
	}
	if opt.Replica == "" {
		opt.Replica = NewReplicaID("")
	}
	if opt.HoldRenew <= 0 {
		opt.HoldRenew = 10 * time.Second
	}
	if opt.InterestCheck == 0 {
		opt.InterestCheck = 30 * time.Second
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Table{root: root, cache: c, opt: opt, log: log, holdSeed: maphash.MakeSeed()}
	t.m = metrics{
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "interest_releases_total",
			Help: "Jobs this replica's nodes stopped needing, by outcome: shared (another replica holds them: the interest at root stays), dropped (at root), retaken (dropped, then taken up again for a replica that asked meanwhile)."}, []string{"outcome"}),
		refollowed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "semnet", Subsystem: "cluster", Name: "holds_refollowed_total",
			Help: "Held jobs whose interest at root was taken up again: the hold had lapsed (Redis lost it, or it expired), another replica's drop raced a lookup, root was away, or root lacked the interest."}),
	}
	if opt.Registerer != nil {
		opt.Registerer.MustRegister(t.m.releases, t.m.refollowed, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "semnet", Subsystem: "cluster", Name: "held_jobs",
			Help: "Jobs this replica holds in the cache: those its nodes need, whose interest at root it keeps.",
		}, func() float64 { return float64(t.nheld.Load()) }))
	}
	t.contact()
	return t
}

// NewReplicaID returns a replica id unique to this process: host (the host name, say;
// it helps an operator reading the holds in Redis) and 80 random bits.
func NewReplicaID(host string) string {
	if host == "" {
		return rand.Text()[:16]
	}
	return host + "/" + rand.Text()[:16]
}

// Replica returns the replica id this table holds jobs by.
func (t *Table) Replica() string { return t.opt.Replica }

func (t *Table) contact() { t.lastContact.Store(t.opt.Now().UnixNano()) }

// Stale reports whether root has not answered for longer than StaleAfter: cached entries
// may be out of date.
func (t *Table) Stale() bool {
	return t.opt.Now().Sub(time.Unix(0, t.lastContact.Load())) > t.opt.StaleAfter
}

// Cached returns the cached entry for a key, if the cache has one of a job this replica
// holds (and so follows); it never waits for root, nor asks the cache more than Get.
func (t *Table) Cached(ctx context.Context, key string) (*cache.Entry, bool) {
	e, err := t.cache.Get(ctx, key)
	if err != nil || !t.Holding(e.JobName()) {
		return nil, false
	}
	return e, true
}

// Holding reports whether this replica holds job: it answers its cached entry at once,
// and keeps the cluster's interest in it at root.
func (t *Table) Holding(job string) bool {
	_, ok := t.held.Load(job)
	return ok
}

// Lookup returns the entry for a job name, service ID, Service IP or Instance IP, and
// takes this replica's hold of its job: from the cache, or else from root, registering
// the cluster's interest so the follower keeps it fresh. Concurrent misses on one key
// share one fetch. It returns ErrUnknown (wrapped) when root knows no such service, and
// an error satisfying client.Temporary when root cannot be reached.
func (t *Table) Lookup(ctx context.Context, key string) (*cache.Entry, error) {
	e, err := t.cache.Get(ctx, key)
	if err == nil && t.Holding(e.JobName()) {
		return e, nil
	}
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		// The cache (Redis) failing is no reason to fail the node: root can answer.
		t.log.Warn("cache read failed; asking root", "key", key, "err", err)
	}
	if e == nil && t.knownUnknown(key) {
		return nil, fmt.Errorf("%w %q", ErrUnknown, key)
	}
	v, err, _ := t.flight.Do(key, func() (any, error) {
		if e != nil {
			return t.adopt(ctx, key, e)
		}
		return t.miss(ctx, key)
	})
	if errors.Is(err, ErrUnknown) {
		t.rememberUnknown(key)
	}
	if err != nil {
		return nil, err
	}
	return v.(*cache.Entry), nil
}

// knownUnknown reports whether root answered, less than UnknownTTL ago, that it knows
// no service by key.
func (t *Table) knownUnknown(key string) bool {
	if t.opt.UnknownTTL < 0 {
		return false
	}
	t.unknown.mu.Lock()
	defer t.unknown.mu.Unlock()
	until, ok := t.unknown.m[key]
	if ok && !t.opt.Now().Before(until) {
		delete(t.unknown.m, key)
		return false
	}
	return ok
}

// rememberUnknown records that root knows no service by key, for UnknownTTL.
func (t *Table) rememberUnknown(key string) {
	if t.opt.UnknownTTL < 0 {
		return
	}
	now := t.opt.Now()
	t.unknown.mu.Lock()
	defer t.unknown.mu.Unlock()
	if t.unknown.m == nil {
		t.unknown.m = map[string]time.Time{}
	}
	if len(t.unknown.m) >= maxUnknown {
		for k, until := range t.unknown.m {
			if !now.Before(until) {
				delete(t.unknown.m, k)
			}
		}
		if len(t.unknown.m) >= maxUnknown {
			return
		}
	}
	t.unknown.m[key] = now.Add(t.opt.UnknownTTL)
}

// forgetUnknown drops what is remembered of keys root now knows.
func (t *Table) forgetUnknown(keys ...string) {
	t.unknown.mu.Lock()
	defer t.unknown.mu.Unlock()
	for _, k := range keys {
		delete(t.unknown.m, k)
	}
}

// adopt takes this replica's hold of a cached job it does not hold. While another
// replica holds it, that one keeps it followed; if none did, nobody may have followed
// it since it was cached, so it is fetched again with interest (after the hold, so a
// drop racing the fetch sees it and takes the interest up again).
func (t *Table) adopt(ctx context.Context, key string, e *cache.Entry) (*cache.Entry, error) {
	job := e.JobName()
	first, _, err := t.hold(ctx, job)
	if err == nil && !first {
		return e, nil
	}
	if err != nil {
		t.log.Warn("cache hold failed; asking root", "job", job, "err", err)
	}
	f, err := t.fetch(ctx, key, true)
	switch {
	case err == nil && f.JobName() != job:
		// The key (an address) went to another job since it was cached: that one is
		// held as after any miss, and no node gets this one from here.
		if _, rerr := t.release(ctx, job); rerr != nil {
			t.log.Warn("cache release failed", "job", job, "err", rerr)
		}
		return t.miss(ctx, key)
	case err == nil:
		return f, nil
	case errors.Is(err, ErrUnknown):
		// No node gets the job from this lookup, so none will release it.
		if _, rerr := t.release(ctx, job); rerr != nil {
			t.log.Warn("cache release failed", "job", job, "err", rerr)
		}
		return nil, err
	default:
		// Root is away: answer what the cache has (marked stale once root has been
		// away for StaleAfter), and follow the job as soon as root answers.
		t.log.Warn("could not follow a cached job nobody held; answering the cached entry, will retry", "job", job, "err", err)
		t.refollow.Store(job, struct{}{})
		return e, nil
	}
}

// miss fetches an entry the cache does not have, registering the cluster's interest,
// and takes this replica's hold of its job. The job is known only from the answer (the
// key may be an address), so the hold comes after the fetch: if it is the job's first
// and a drop was recorded since the fetch began, that drop may have removed the
// interest the fetch registered, and the fetch is repeated (see cache.Holds).
func (t *Table) miss(ctx context.Context, key string) (*cache.Entry, error) {
	drops, derr := t.cache.Drops(ctx)
	e, err := t.fetch(ctx, key, true)
	if err != nil {
		return nil, err
	}
	job := e.JobName()
	first, now, err := t.hold(ctx, job)
	if err != nil {
		// The renewal finds the hold missing once the cache answers, and follows the
		// job again then.
		t.log.Warn("cache hold failed", "job", job, "err", err)
		return e, nil
	}
	if !first || derr == nil && now == drops {
		return e, nil
	}
	again, err := t.fetch(ctx, key, true)
	if err != nil {
		t.refollow.Store(job, struct{}{})
		return e, nil
	}
	return again, nil
}

// hold takes this replica's hold of job, unless it holds it already (then first is
// false and drops 0). Should the cache fail, the job counts as held all the same: the
// renewal finds the hold missing and follows the job again.
func (t *Table) hold(ctx context.Context, job string) (first bool, drops uint64, err error) {
	mu := t.holdLock(job)
	mu.Lock()
	defer mu.Unlock()
	if t.Holding(job) {
		return false, 0, nil
	}
	first, drops, err = t.cache.Hold(ctx, t.opt.Replica, job)
	t.held.Store(job, struct{}{})
	t.nheld.Add(1)
	return first, drops, err
}

// release drops this replica's hold of job, and reports whether it was the last.
func (t *Table) release(ctx context.Context, job string) (last bool, err error) {
	mu := t.holdLock(job)
	mu.Lock()
	defer mu.Unlock()
	if _, ok := t.held.LoadAndDelete(job); ok {
		t.nheld.Add(-1)
	}
	t.refollow.Delete(job)
	return t.cache.Release(ctx, t.opt.Replica, job)
}

func (t *Table) holdLock(job string) *sync.Mutex {
	return &t.holdMu[maphash.String(t.holdSeed, job)%uint64(len(t.holdMu))]
}

// Refresh re-reads a job (or any key of it) from root, stores it and reports the change
// through OnChange; a job root no longer knows is dropped. The reference root's job update
// push lands here.
func (t *Table) Refresh(ctx context.Context, key string) error {
	return t.refresh(ctx, key, time.Time{})
}

// refresh is Refresh for a change root logged at at.
func (t *Table) refresh(ctx context.Context, key string, at time.Time) error {
	e, err := t.fetch(ctx, key, false)
	if errors.Is(err, ErrUnknown) {
		if old, gerr := t.cache.Get(ctx, key); gerr == nil {
			return t.drop(ctx, old.JobName(), old.Revision, at)
		}
		return nil
	}
	if err != nil {
		return err
	}
	t.opt.OnChange(e.JobName(), e, at)
	return nil
}

// Follow takes this replica's hold of a job and re-reads it registering the cluster's
// interest, reporting it through OnChange: for a job a node of this replica needs (asked
// for again while its interest was being dropped, or runs) that the replica does not
// hold, whose changes root may not have sent. Should root not answer, RunHolds tries
// again.
func (t *Table) Follow(ctx context.Context, job string) error {
	if _, _, err := t.hold(ctx, job); err != nil {
		t.log.Warn("cache hold failed", "job", job, "err", err)
	}
	return t.follow(ctx, job)
}

// follow re-reads a held job registering the cluster's interest, and reports it through
// OnChange.
func (t *Table) follow(ctx context.Context, job string) error {
	e, err := t.fetch(ctx, job, true)
	switch {
	case errors.Is(err, ErrUnknown):
		if _, rerr := t.release(ctx, job); rerr != nil {
			t.log.Warn("cache release failed", "job", job, "err", rerr)
		}
		return err
	case err != nil:
		t.refollow.Store(job, struct{}{})
		return err
	}
	t.refollow.Delete(job)
	t.opt.OnChange(job, e, time.Time{})
	return nil
}

// Prefetch makes sure a job is cached and followed (the orchestrator announces a job
// before its instances start). It takes no hold: the deployment is the cluster's, not
// this replica's (the orchestrator's DELETE may reach another replica), and the nodes
// that run the job hold it.
func (t *Table) Prefetch(ctx context.Context, key string) (*cache.Entry, error) {
	if e, ok := t.Cached(ctx, key); ok {
		return e, nil
	}
	return t.fetch(ctx, key, true)
}

// Forget releases this replica's hold of a job its nodes no longer need. When no other
// replica holds it, the cluster's interest at root is dropped (and the cached entry with
// it: a lookup fetches it again). Should a replica, this one included, have taken a hold
// meanwhile, its fetch may have registered the interest the drop then removed, so the
// interest is taken up again, and the other holders re-read the job at their next
// renewal (root sent no changes in between).
func (t *Table) Forget(ctx context.Context, job string) error {
	last, err := t.release(ctx, job)
	if err != nil {
		// Whether another replica holds it is unknown: an interest too many costs only
		// changes nobody needs; one too few, a stale cache.
		return fmt.Errorf("release %s in the cache, keeping the interest at root: %w", job, err)
	}
	if !last {
		t.m.releases.WithLabelValues("shared").Inc()
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, t.opt.FetchTimeout)
	err = t.root.RemoveInterest(rctx, t.opt.ClusterID, job)
	cancel()
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		// It may have reached root all the same: record the drop either way.
		err = fmt.Errorf("drop interest in %s at root: %w", job, err)
	} else {
		err = nil
	}
	held, derr := t.cache.Dropped(ctx, t.opt.Replica, job)
	if derr == nil && !held {
		t.m.releases.WithLabelValues("dropped").Inc()
		return err
	}
	if derr != nil {
		t.log.Warn("cache failed recording a drop; taking the interest up again in case a replica needs it", "job", job, "err", derr)
	}
	t.m.releases.WithLabelValues("retaken").Inc()
	e, ferr := t.fetch(ctx, job, true)
	if ferr != nil {
		if t.Holding(job) {
			t.refollow.Store(job, struct{}{})
		}
		return errors.Join(err, fmt.Errorf("take the interest in %s up again: %w", job, ferr))
	}
	t.opt.OnChange(job, e, time.Time{})
	return err
}

// RunHolds renews this replica's holds every HoldRenew until ctx ends, and takes the
// cluster's interest up again in the held jobs the renewal reports (the hold lapsed, or
// another replica's drop raced a lookup), whose following failed, or, checked every
// InterestCheck, that root has no interest for. It returns ctx's error. A replica that
// stops running it (it stopped, or died) holds nothing once its holds expire.
func (t *Table) RunHolds(ctx context.Context) error {
	tk := time.NewTicker(t.opt.HoldRenew)
	defer tk.Stop()
	var check <-chan time.Time
	if t.opt.InterestCheck > 0 {
		ck := time.NewTicker(t.opt.InterestCheck)
		defer ck.Stop()
		check = ck.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tk.C:
			t.renew(ctx)
		case <-check:
			t.checkInterests(ctx)
			t.refollowAll(ctx)
		}
	}
}

// checkInterests marks for refollowing the held jobs root has no interest of the
// cluster in. Each way of losing one the table knows of is mended where it happens
// (Forget, the renewal); this catches the others, such as a drop that reached root
// long after its caller gave up on it (a partition held the request back: the load run
// found one removing the interest a lookup had just found in place, and the cluster
// then answered from an entry root sent no changes for) or a root restored from a
// backup. A job that is held but not cached is left to its next lookup, which
// registers the interest.
func (t *Table) checkInterests(ctx context.Context) {
	var jobs []string
	t.held.Range(func(k, _ any) bool {
		jobs = append(jobs, k.(string))
		return true
	})
	if len(jobs) == 0 {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, t.opt.FetchTimeout)
	ids, err := t.root.Interests(rctx, t.opt.ClusterID)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			t.log.Warn("could not read the cluster's interests at root; checking again later", "err", err)
		}
		return
	}
	has := make(map[string]bool, len(ids))
	for _, id := range ids {
		has[id] = true
	}
	lost := 0
	for _, job := range jobs {
		e, err := t.cache.Get(ctx, job)
		if err != nil || has[e.Table.Service.ID] {
			continue
		}
		t.refollow.Store(job, struct{}{})
		lost++
	}
	if lost > 0 {
		t.log.Warn("root had no interest of the cluster in held jobs; taking it up again", "jobs", lost)
	}
}

func (t *Table) renew(ctx context.Context) {
	var jobs []string
	t.held.Range(func(k, _ any) bool {
		jobs = append(jobs, k.(string))
		return true
	})
	refollow, err := t.cache.Renew(ctx, t.opt.Replica, jobs)
	if err != nil && ctx.Err() == nil {
		t.log.Warn("renewing this replica's holds failed; retrying", "replica", t.opt.Replica, "jobs", len(jobs), "err", err)
	}
	if len(refollow) > 0 {
		t.log.Info("taking the interest up again in held jobs: holds lapsed, or another replica's drop raced a lookup", "jobs", len(refollow))
	}
	for _, job := range refollow {
		if t.rehold(ctx, job) {
			t.refollow.Store(job, struct{}{})
		}
	}
	t.refollowAll(ctx)
}

// refollowAll takes the interest up again in the jobs marked for it that this replica
// still holds, stopping at the first that fails for a reason other than the job being
// gone.
func (t *Table) refollowAll(ctx context.Context) {
	t.refollow.Range(func(k, _ any) bool {
		job := k.(string)
		if !t.Holding(job) {
			t.refollow.Delete(job)
			return true
		}
		err := t.follow(ctx, job)
		switch {
		case err == nil:
			t.m.refollowed.Inc()
		case errors.Is(err, ErrUnknown):
		default:
			// Root is away, most likely: the rest waits for the next round rather than
			// holding up the renewals a fetch timeout each.
			if ctx.Err() == nil {
				t.log.Warn("could not take the interest up again; retrying", "job", job, "err", err)
			}
			return false
		}
		return true
	})
}

// rehold takes the hold of job again if this replica still holds it (the renewal found
// it lapsed), and reports whether it does.
func (t *Table) rehold(ctx context.Context, job string) bool {
	mu := t.holdLock(job)
	mu.Lock()
	defer mu.Unlock()
	if !t.Holding(job) {
		return false
	}
	if _, _, err := t.cache.Hold(ctx, t.opt.Replica, job); err != nil {
		t.log.Warn("cache hold failed", "job", job, "err", err)
	}
	return true
}

// fetch reads an entry from root and caches it. With interest it registers the cluster's
// interest in the same call.
func (t *Table) fetch(ctx context.Context, key string, interest bool) (*cache.Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, t.opt.FetchTimeout)
	defer cancel()
	cid := ""
	if interest {
		cid = t.opt.ClusterID
	}
	te, err := t.root.Resolve(ctx, key, cid)
	if errors.Is(err, client.ErrNotFound) {
		t.contact()
		return nil, fmt.Errorf("%w %q", ErrUnknown, key)
	}
	if err != nil {
		return nil, err
	}
	t.contact()
	return t.store(ctx, te, key), nil
}

// store caches an entry root answered for key.
func (t *Table) store(ctx context.Context, te api.TableEntry, key string) *cache.Entry {
	te.MatchedInstance = nil // the cached entry is shared by all its keys
	e := &cache.Entry{Table: te, Revision: te.Revision, Fetched: t.opt.Now()}
	t.forgetUnknown(key, e.JobName())
	if _, err := t.cache.Put(ctx, e); err != nil {
		t.log.Warn("cache write failed", "job", e.JobName(), "err", err)
	}
	return e
}

// drop removes a deleted job from the cache, reports it (as deleted at at) and releases
// this replica's hold (root dropped the interest with the job).
func (t *Table) drop(ctx context.Context, job string, rev uint64, at time.Time) error {
	if err := t.cache.Delete(ctx, job, rev); err != nil {
		return fmt.Errorf("drop %s from cache: %w", job, err)
	}
	t.opt.OnChange(job, nil, at)
	if t.Holding(job) {
		if _, err := t.release(ctx, job); err != nil {
			t.log.Warn("cache release failed", "job", job, "err", err)
		}
	}
	return nil
}

// Run follows root's change stream until ctx ends, retrying with backoff while root is
// unreachable. It returns ctx's error.
func (t *Table) Run(ctx context.Context) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 10*time.Second, 0
	cursor, err := t.start(ctx)
	for {
		if err == nil {
			var next uint64
			next, err = t.step(ctx, cursor)
			if err == nil {
				cursor = next
				bo.Reset()
				continue
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := max(bo.NextBackOff(), client.RetryAfter(err))
		t.log.Warn("following root's changes failed; retrying", "cursor", cursor, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if cursor == 0 {
			cursor, err = t.start(ctx)
		} else {
			err = nil
		}
	}
}

// start finds where to follow from: the cache's cursor, or (nothing applied yet) root's
// current revision after re-reading whatever the cache already holds.
func (t *Table) start(ctx context.Context) (uint64, error) {
	cursor, err := t.cache.Cursor(ctx)
	if err != nil {
		return 0, fmt.Errorf("read cursor: %w", err)
	}
	if cursor > 0 {
		return cursor, nil
	}
	rev, err := t.root.CurrentRevision(ctx, t.opt.ClusterID)
	if err != nil {
		return 0, err
	}
	t.contact()
	if err := t.resync(ctx); err != nil {
		return 0, err
	}
	return rev, t.cache.SetCursor(ctx, rev)
}

// defaultPollMargin is how long past its wait a long poll may take before it is given
// up (Options.PollMargin): a poll whose answer was lost (the link went down under it,
// with no reset to tell) would otherwise wait for TCP to give up on the connection,
// minutes after the link is back. Ten seconds leave a busy root room to answer late,
// and are far less than the minutes TCP takes.
const defaultPollMargin = 10 * time.Second

// step reads one batch of changes after cursor and applies it; it returns the new cursor.
func (t *Table) step(ctx context.Context, cursor uint64) (uint64, error) {
	pctx, cancel := context.WithTimeout(ctx, t.opt.Wait+t.opt.PollMargin)
	b, err := t.root.Changes(pctx, t.opt.ClusterID, cursor, t.opt.Wait)
	cancel()
	if err != nil {
		return cursor, err
	}
	t.contact()
	if b.Resync {
		t.log.Info("root's change log no longer reaches our cursor; re-reading every cached entry", "cursor", cursor, "root_revision", b.Revision)
		if err := t.resync(ctx); err != nil {
			return cursor, err
		}
	} else if err := t.apply(ctx, b.Changes, b.Entries); err != nil {
		return cursor, err
	}
	if err := t.cache.SetCursor(ctx, b.Revision); err != nil {
		return cursor, fmt.Errorf("record cursor %d: %w", b.Revision, err)
	}
	return b.Revision, nil
}

// refreshParallel bounds the re-reads of one batch of changes in flight at once: a
// batch after a partition or a busy second holds many jobs, and re-read one at a time,
// the push of each waited for every re-read before it.
const refreshParallel = 8

// apply brings each service the changes touch up to date, once, after its last change
// in the batch: from the entry root sent with the batch, or, for a service it sent none
// for, by re-reading it. Different jobs are re-read at once; one job's services (a job
// deleted and created again under a new ID) in the order of their changes, so its last
// push is its latest state.
func (t *Table) apply(ctx context.Context, cs []api.Change, entries []api.TableEntry) error {
	sent := make(map[string]*api.TableEntry, len(entries))
	for i := range entries {
		sent[entries[i].Service.ID] = &entries[i]
	}
	last := map[string]int{}
	gateways := false
	for i, c := range cs {
		if c.Kind == api.KindGateway || c.Kind == api.KindExposure {
			gateways = true
			continue
		}
		last[c.ServiceID] = i
	}
	if gateways {
		t.opt.OnGateways()
	}
	var jobs [][]api.Change
	byJob := map[string]int{}
	for i, c := range cs {
		if c.Kind == api.KindGateway || c.Kind == api.KindExposure || last[c.ServiceID] != i {
			continue
		}
		key := cmp.Or(c.JobName, "id:"+c.ServiceID)
		k, ok := byJob[key]
		if !ok {
			k = len(jobs)
			byJob[key] = k
			jobs = append(jobs, nil)
		}
		jobs[k] = append(jobs[k], c)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(refreshParallel)
	for _, job := range jobs {
		g.Go(func() error {
			for _, c := range job {
				if c.Kind == api.KindService && c.Op == "delete" {
					if err := t.drop(gctx, c.JobName, c.Revision, c.Time); err != nil {
						return err
					}
					continue
				}
				if te, ok := sent[c.ServiceID]; ok {
					e := t.store(gctx, *te, c.ServiceID)
					t.opt.OnChange(e.JobName(), e, c.Time)
					continue
				}
				if err := t.refresh(gctx, c.ServiceID, c.Time); err != nil {
					return fmt.Errorf("re-read %s after revision %d: %w", c.JobName, c.Revision, err)
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// resync re-reads every cached job this replica holds, re-registering the cluster's
// interest (root may have lost it along with its log). The other replicas re-read the
// jobs they hold; those nobody holds are fetched again by the next lookup.
func (t *Table) resync(ctx context.Context) error {
	t.opt.OnGateways()
	jobs, err := t.cache.Jobs(ctx)
	if err != nil {
		return fmt.Errorf("list cached jobs: %w", err)
	}
	for _, job := range jobs {
		if !t.Holding(job) {
			continue
		}
		e, err := t.fetch(ctx, job, true)
		switch {
		case errors.Is(err, ErrUnknown):
			old, gerr := t.cache.Get(ctx, job)
			if gerr != nil {
				continue
			}
			if err := t.drop(ctx, job, old.Revision, time.Time{}); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("re-read %s: %w", job, err)
		default:
			t.opt.OnChange(job, e, time.Time{})
		}
	}
	return nil
}
