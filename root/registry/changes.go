package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/semnet/semnet/root/store"
)

// defaultPollInterval is how often a long-poll re-reads the store when nothing woke it:
// another root process sharing the database may have written.
const defaultPollInterval = time.Second

// WatchStore wakes the change-stream long-polls when another root process sharing the
// store writes. This process's writes wake them at once; another's were found only by
// a long-poll's own re-read, once a second, so a cluster following this process heard
// of a change made through the other up to a second late. While a long-poll waits,
// WatchStore reads the store's newest revision every `every` (two small reads on
// MongoDB, however many clusters wait) and wakes the long-polls when it advanced. It
// returns when ctx ends.
func (r *Registry) WatchStore(ctx context.Context, every time.Duration) {
	r.watchEvery.Store(int64(every))
	defer r.watchEvery.Store(0)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.waiting.Load() == 0 {
			continue
		}
		rev, err := r.store.Revision(ctx)
		if err != nil {
			continue // the long-polls' own reads meet the store's trouble and report it
		}
		if old := r.storeRev.Swap(rev); rev > old {
			r.wake()
		}
	}
}

// PeerChanged tells the registry that another root process on the same store logged a
// change at revision rev (root's --peer): the long polls waiting here re-read the store
// at once, where WatchStore would find the change only at its next read.
func (r *Registry) PeerChanged(rev uint64) {
	for {
		old := r.storeRev.Load()
		if rev <= old || r.storeRev.CompareAndSwap(old, rev) {
			break
		}
	}
	r.wake()
}

// ChangeBatch is what a cluster reads from the change stream.
type ChangeBatch struct {
	Changes  []store.Change
	Revision uint64 // continue from here
	Resync   bool   // the log no longer reaches back to `since`: re-read everything
}

// Changes returns the changes after revision since to the services the cluster is
// interested in, and every gateway and exposure change: a cluster needs those to
// configure its gateway nodes whatever it caches. With wait > 0 it long-polls: it returns as soon as there is something,
// or with an empty batch after wait. Revision always advances past changes the cluster is
// not interested in, so a reader never re-reads them.
func (r *Registry) Changes(ctx context.Context, clusterID string, since uint64, limit int, wait time.Duration) (ChangeBatch, error) {
	if limit <= 0 || limit > 10000 {
		return ChangeBatch{}, invalidf("limit %d must be between 1 and 10000", limit)
	}
	if err := r.knownCluster(ctx, clusterID); err != nil {
		return ChangeBatch{}, err
	}
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	r.waiting.Add(1)
	defer r.waiting.Add(-1)
	for {
		wake := r.changedCh() // taken before reading, so no mutation slips between
		b, err := r.changesOnce(ctx, clusterID, since, limit)
		if err != nil || len(b.Changes) > 0 || b.Resync || wait <= 0 {
			return b, err
		}
		since = b.Revision
		interval := r.pollInterval
		if every := time.Duration(r.watchEvery.Load()); every > 0 && r.storeRev.Load() > since {
			// The store has a revision this poll has not read: reserved by a writer whose
			// change is not logged yet. That commit, in another process, wakes no one:
			// look again at the watcher's pace.
			interval = every
		}
		poll := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			poll.Stop()
			return b, nil
		case <-deadline.C:
			poll.Stop()
			return b, nil
		case <-wake:
		case <-poll.C:
		}
		poll.Stop()
	}
}

// entriesParallel bounds the entries of one batch read at once: a batch after a
// partition holds many services.
const entriesParallel = 8

// ChangeEntries returns the table entry of each service b's changes touch, read after
// them, so that a cluster following the stream needs no round trip of its own per
// change. Each entry is read once for all the clusters a change wakes together (they
// poll at the same time); one whose last change in b deleted it, one gone by now, and
// one whose read failed get none: the reader re-reads those itself. The entries carry
// the store's revision read before them, as Resolve's do.
func (r *Registry) ChangeEntries(ctx context.Context, b ChangeBatch) []Entry {
	var touched []store.Change // the last change of each service, in b's order
	at := map[string]int{}
	for _, c := range b.Changes {
		if forEveryCluster(c) || c.ServiceID == "" {
			continue
		}
		if i, ok := at[c.ServiceID]; ok {
			touched[i] = c
			continue
		}
		at[c.ServiceID] = len(touched)
		touched = append(touched, c)
	}
	touched = slices.DeleteFunc(touched, func(c store.Change) bool {
		return c.Kind == store.KindService && c.Op == store.OpDelete
	})
	if len(touched) == 0 {
		return nil
	}
	rev, err := r.store.Revision(ctx)
	if err != nil {
		return nil
	}
	out := make([]Entry, len(touched))
	found := make([]bool, len(touched))
	var g errgroup.Group
	g.SetLimit(entriesParallel)
	for i, c := range touched {
		g.Go(func() error {
			// The key holds the change: a cluster whose batch reaches a later change of
			// the service must not get an entry read before that change.
			v, err, _ := r.changeEntries.Do(c.ServiceID+"@"+strconv.FormatUint(c.Revision, 10), func() (any, error) {
				return r.serviceEntry(ctx, c.ServiceID, rev)
			})
			if err == nil {
				out[i], found[i] = v.(Entry), true
			} else if !errors.Is(err, store.ErrNotFound) {
				r.log.Debug("reading a changed entry for the change stream failed; the reader re-reads it", "service", c.ServiceID, "err", err)
			}
			return nil
		})
	}
	g.Wait()
	n := 0
	for i := range out {
		if found[i] {
			out[n] = out[i]
			n++
		}
	}
	return out[:n]
}

// Revision returns the current revision of the change stream, for a cluster that starts
// following it with nothing cached.
func (r *Registry) Revision(ctx context.Context, clusterID string) (uint64, error) {
	if err := r.knownCluster(ctx, clusterID); err != nil {
		return 0, err
	}
	rev, err := r.store.Revision(ctx)
	if err != nil {
		return 0, fmt.Errorf("revision: %w", err)
	}
	return rev, nil
}

func (r *Registry) changesOnce(ctx context.Context, clusterID string, since uint64, limit int) (ChangeBatch, error) {
	cs, err := r.store.Changes(ctx, since, limit)
	if errors.Is(err, store.ErrCompacted) {
		rev, err := r.store.Revision(ctx)
		if err != nil {
			return ChangeBatch{}, fmt.Errorf("revision: %w", err)
		}
		return ChangeBatch{Revision: rev, Resync: true}, nil
	}
	if err != nil {
		return ChangeBatch{}, fmt.Errorf("changes since %d: %w", since, err)
	}
	if len(cs) == 0 {
		// A reader ahead of the store followed another database (root's was replaced
		// or restored from a backup): what it cached may not exist here.
		rev, err := r.store.Revision(ctx)
		if err != nil {
			return ChangeBatch{}, fmt.Errorf("revision: %w", err)
		}
		if since > rev {
			return ChangeBatch{Revision: rev, Resync: true}, nil
		}
	}
	b := ChangeBatch{Revision: since}
	if len(cs) == 0 {
		return b, nil
	}
	// Read only when there are changes to filter: most polls find none.
	interested, err := r.interestsIn(ctx, clusterID, cs)
	if err != nil {
		return ChangeBatch{}, fmt.Errorf("interests of cluster %s: %w", clusterID, err)
	}
	for _, c := range cs {
		b.Revision = c.Revision
		if _, ok := slices.BinarySearch(interested, c.ServiceID); ok || forEveryCluster(c) {
			b.Changes = append(b.Changes, c)
		}
	}
	return b, nil
}

// keyedInterests is the most services a batch of changes may concern for their
// interests to be read one by one, by key, rather than all of the cluster's at once.
const keyedInterests = 8

// interestsIn returns the services of cs that clusterID is interested in, sorted (it
// may also return others it follows). A poll's batch is mostly a change or two: a read
// by key for each of their services costs less than reading every interest of the
// cluster (which a MongoDB store on FerretDB serves by decoding all clusters' interests).
func (r *Registry) interestsIn(ctx context.Context, clusterID string, cs []store.Change) ([]string, error) {
	var services []string
	for _, c := range cs {
		if !forEveryCluster(c) && !slices.Contains(services, c.ServiceID) {
			if len(services) == keyedInterests {
				return r.store.Interests(ctx, clusterID)
			}
			services = append(services, c.ServiceID)
		}
	}
	out := services[:0]
	for _, id := range services {
		ok, err := r.store.Interested(ctx, clusterID, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, nil
}

// forEveryCluster reports whether every cluster gets c, interested in its service or not.
func forEveryCluster(c store.Change) bool {
	return c.Kind == store.KindGateway || c.Kind == store.KindExposure
}
