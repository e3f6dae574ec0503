// Package table is the cluster's view of the services its worker nodes use: table entries
// answered from the cache when it has them, fetched from root (registering the cluster's
// interest) when it does not, and kept fresh by following root's change stream.
//
// The follower is the only writer of fresh state: a change at root (an instance placed,
// deleted, moved) reaches the cache as a re-read entry tagged with the revision it
// reflects, and OnChange tells the cluster so it can push it to interested nodes. The
// cursor of the stream is kept in the cache, so a restarted cluster (or another replica
// sharing a Redis cache) resumes where it left off; when root says the log no longer
// reaches back that far, every cached entry is re-read.
package table

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
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
}

// Cache is the part of cache.Cache the table uses.
type Cache interface {
	Get(ctx context.Context, key string) (*cache.Entry, error)
	Put(ctx context.Context, e *cache.Entry) (bool, error)
	Delete(ctx context.Context, jobName string, rev uint64) error
	Jobs(ctx context.Context) ([]string, error)
	Cursor(ctx context.Context) (uint64, error)
	SetCursor(ctx context.Context, rev uint64) error
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
	// FetchTimeout bounds one read of an entry from root (default 5s, the time a
	// reference node waits for its answer).
	FetchTimeout time.Duration
	// OnChange is called by the follower after a job's cached entry changed (e is the new
	// entry) or the job was deleted (e is nil). It runs in the follower's goroutine, in
	// revision order; it should not block for long.
	OnChange func(job string, e *cache.Entry)
	// OnGateways is called by the follower when root reports a change to gateways or
	// exposures, and after a resync (which may have skipped some).
	OnGateways func()
	Logger     *slog.Logger
	Now        func() time.Time
}

// Table answers table queries from the cache and root, and follows root's changes.
type Table struct {
	root  Root
	cache Cache
	opt   Options
	log   *slog.Logger

	flight      singleflight.Group
	lastContact atomic.Int64 // unix nanoseconds of root's last answer

	// unfollowed holds the jobs whose interest the cluster dropped at root (job -> true).
	// A sync.Map: every cache hit reads it, it rarely changes.
	unfollowed sync.Map
	// forgets counts the starts and ends of Forget calls: a fetch that registered
	// interest clears a job's mark only if no Forget started or ended meanwhile, as one
	// could remove at root the interest the fetch just added.
	forgets atomic.Uint64
}

// New returns a table over the cache, fetching from root. Start following with Run.
func New(root Root, c Cache, opt Options) *Table {
	if opt.StaleAfter <= 0 {
		opt.StaleAfter = 30 * time.Second
	}
	if opt.Wait <= 0 {
		opt.Wait = 25 * time.Second
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
		opt.OnChange = func(string, *cache.Entry) {}
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Table{root: root, cache: c, opt: opt, log: log}
	t.contact()
	return t
}

func (t *Table) contact() { t.lastContact.Store(t.opt.Now().UnixNano()) }

// Stale reports whether root has not answered for longer than StaleAfter: cached entries
// may be out of date.
func (t *Table) Stale() bool {
	return t.opt.Now().Sub(time.Unix(0, t.lastContact.Load())) > t.opt.StaleAfter
}

// Cached returns the cached entry for a key, if the cache has one the cluster still
// follows; it never waits for root.
func (t *Table) Cached(ctx context.Context, key string) (*cache.Entry, bool) {
	e, err := t.cache.Get(ctx, key)
	if err != nil || t.isUnfollowed(e.JobName()) {
		return nil, false
	}
	return e, true
}

// Lookup returns the entry for a job name, service ID, Service IP or Instance IP: from
// the cache, or else from root, registering the cluster's interest so the follower keeps
// it fresh. Concurrent misses on one key share one fetch. It returns ErrUnknown (wrapped)
// when root knows no such service, and an error satisfying client.Temporary when root
// cannot be reached.
func (t *Table) Lookup(ctx context.Context, key string) (*cache.Entry, error) {
	e, err := t.cache.Get(ctx, key)
	if err == nil && !t.isUnfollowed(e.JobName()) {
		return e, nil
	}
	if err != nil && !errors.Is(err, cache.ErrNotFound) {
		// The cache (Redis) failing is no reason to fail the node: root can answer.
		t.log.Warn("cache read failed; asking root", "key", key, "err", err)
	}
	v, err, _ := t.flight.Do(key, func() (any, error) { return t.fetch(ctx, key, true) })
	if err != nil {
		return nil, err
	}
	return v.(*cache.Entry), nil
}

// Refresh re-reads a job (or any key of it) from root, stores it and reports the change
// through OnChange; a job root no longer knows is dropped. The reference root's job update
// push lands here.
func (t *Table) Refresh(ctx context.Context, key string) error {
	e, err := t.fetch(ctx, key, false)
	if errors.Is(err, ErrUnknown) {
		if old, gerr := t.cache.Get(ctx, key); gerr == nil {
			return t.drop(ctx, old.JobName(), old.Revision)
		}
		return nil
	}
	if err != nil {
		return err
	}
	t.opt.OnChange(e.JobName(), e)
	return nil
}

// Follow re-reads a job registering the cluster's interest again, and reports it through
// OnChange: for a job a node asked for again while its interest was being dropped, whose
// changes root did not send meanwhile.
func (t *Table) Follow(ctx context.Context, job string) error {
	e, err := t.fetch(ctx, job, true)
	if err != nil {
		return err
	}
	t.opt.OnChange(e.JobName(), e)
	return nil
}

// Prefetch makes sure a job is cached and followed (the orchestrator announces a job
// before its instances start).
func (t *Table) Prefetch(ctx context.Context, key string) (*cache.Entry, error) {
	return t.Lookup(ctx, key)
}

// Forget drops the cluster's interest in a job at root: no node needs it any more. The
// cached entry stays but is no longer trusted; the next lookup fetches it again.
func (t *Table) Forget(ctx context.Context, job string) error {
	t.unfollowed.Store(job, true)
	t.forgets.Add(1)
	defer func() {
		// Marked again: a fetch that registered interest while the removal was on its
		// way may have cleared the mark, and root has no interest now.
		t.unfollowed.Store(job, true)
		t.forgets.Add(1)
	}()
	ctx, cancel := context.WithTimeout(ctx, t.opt.FetchTimeout)
	defer cancel()
	if err := t.root.RemoveInterest(ctx, t.opt.ClusterID, job); err != nil && !errors.Is(err, client.ErrNotFound) {
		return fmt.Errorf("drop interest in %s at root: %w", job, err)
	}
	return nil
}

func (t *Table) isUnfollowed(job string) bool {
	_, ok := t.unfollowed.Load(job)
	return ok
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
	forgets := t.forgets.Load()
	te, err := t.root.Resolve(ctx, key, cid)
	if errors.Is(err, client.ErrNotFound) {
		t.contact()
		return nil, fmt.Errorf("%w %q", ErrUnknown, key)
	}
	if err != nil {
		return nil, err
	}
	t.contact()
	te.MatchedInstance = nil // the cached entry is shared by all its keys
	e := &cache.Entry{Table: te, Revision: te.Revision, Fetched: t.opt.Now()}
	if _, err := t.cache.Put(ctx, e); err != nil {
		t.log.Warn("cache write failed", "job", e.JobName(), "err", err)
	}
	if interest && t.forgets.Load() == forgets {
		// Otherwise the job stays marked, and its next lookup registers interest again.
		t.unfollowed.Delete(e.JobName())
	}
	return e, nil
}

// drop removes a deleted job from the cache and reports it.
func (t *Table) drop(ctx context.Context, job string, rev uint64) error {
	if err := t.cache.Delete(ctx, job, rev); err != nil {
		return fmt.Errorf("drop %s from cache: %w", job, err)
	}
	t.opt.OnChange(job, nil)
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

// step reads one batch of changes after cursor and applies it; it returns the new cursor.
func (t *Table) step(ctx context.Context, cursor uint64) (uint64, error) {
	b, err := t.root.Changes(ctx, t.opt.ClusterID, cursor, t.opt.Wait)
	if err != nil {
		return cursor, err
	}
	t.contact()
	if b.Resync {
		t.log.Info("root's change log no longer reaches our cursor; re-reading every cached entry", "cursor", cursor, "root_revision", b.Revision)
		if err := t.resync(ctx); err != nil {
			return cursor, err
		}
	} else if err := t.apply(ctx, b.Changes); err != nil {
		return cursor, err
	}
	if err := t.cache.SetCursor(ctx, b.Revision); err != nil {
		return cursor, fmt.Errorf("record cursor %d: %w", b.Revision, err)
	}
	return b.Revision, nil
}

// apply re-reads each service the changes touch, once, in the order of its last change.
func (t *Table) apply(ctx context.Context, cs []api.Change) error {
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
	for i, c := range cs {
		if c.Kind == api.KindGateway || c.Kind == api.KindExposure || last[c.ServiceID] != i {
			continue
		}
		if c.Kind == api.KindService && c.Op == "delete" {
			if err := t.drop(ctx, c.JobName, c.Revision); err != nil {
				return err
			}
			continue
		}
		if err := t.Refresh(ctx, c.ServiceID); err != nil {
			return fmt.Errorf("re-read %s after revision %d: %w", c.JobName, c.Revision, err)
		}
	}
	return nil
}

// resync re-reads every cached job, re-registering the cluster's interest (root may have
// lost it along with its log).
func (t *Table) resync(ctx context.Context) error {
	t.opt.OnGateways()
	jobs, err := t.cache.Jobs(ctx)
	if err != nil {
		return fmt.Errorf("list cached jobs: %w", err)
	}
	for _, job := range jobs {
		if t.isUnfollowed(job) {
			continue
		}
		e, err := t.fetch(ctx, job, true)
		switch {
		case errors.Is(err, ErrUnknown):
			old, gerr := t.cache.Get(ctx, job)
			if gerr != nil {
				continue
			}
			if err := t.drop(ctx, job, old.Revision); err != nil {
				return err
			}
		case err != nil:
			return fmt.Errorf("re-read %s: %w", job, err)
		default:
			t.opt.OnChange(job, e)
		}
	}
	return nil
}
