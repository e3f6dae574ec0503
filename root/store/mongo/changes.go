package mongo

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/root/store"
)

// Revision allocation. maxReserveAttempts bounds the retries when other processes take
// the revisions this one tries; hintEvery is how often a process publishes its newest
// revision for processes that fell behind.
const (
	maxReserveAttempts = 64
	hintEvery          = 64
)

// Revision returns the newest revision handed out: the highest reservation or the
// compaction mark, whichever is higher.
func (s *Store) Revision(ctx context.Context) (uint64, error) {
	rev, err := s.newestRevision(ctx)
	if err != nil {
		return 0, fmt.Errorf("mongo: revision: %w", err)
	}
	return rev, nil
}

func (s *Store) newestRevision(ctx context.Context) (uint64, error) {
	_, newest, err := s.marks(ctx)
	return newest, err
}

// marks reads the compaction mark and the newest revision handed out (the higher of
// the newest-revision counter and the mark), in one command: the change stream's
// readers and root's store watcher read them many times a second.
func (s *Store) marks(ctx context.Context) (compacted, newest uint64, err error) {
	cur, err := s.meta.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{metaCompacted, metaNewest}}}}})
	if err != nil {
		return 0, 0, dbErr(err)
	}
	var docs []struct {
		ID string `bson:"_id"`
		N  int64  `bson:"n"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return 0, 0, dbErr(err)
	}
	for _, d := range docs {
		switch d.ID {
		case metaCompacted:
			compacted = uint64(d.N)
		case metaNewest:
			newest = uint64(d.N)
		}
	}
	if newest == 0 { // a database no reservation has raised it in yet
		if newest, err = s.scanNewestRevision(ctx); err != nil {
			return 0, 0, err
		}
	}
	return compacted, max(newest, compacted), nil
}

// raiseNewest raises the newest-revision counter to rev (never lowers it), in one
// command with the raises of other writers.
func (s *Store) raiseNewest(ctx context.Context, rev uint64) error {
	op := raiseOp{rev: rev}
	s.batch.newest.do(ctx, &op)
	return op.err
}

func (s *Store) raiseNewestTo(ctx context.Context, rev uint64) error {
	id := bson.D{{Key: "_id", Value: metaNewest}}
	up := bson.D{{Key: "$max", Value: bson.D{{Key: "n", Value: int64(rev)}}}}
	_, err := s.meta.UpdateOne(ctx, id, up, options.Update().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) { // a concurrent first upsert won; raise it
		_, err = s.meta.UpdateOne(ctx, id, up)
	}
	return dbErr(err)
}

// scanNewestRevision finds the newest reservation itself: for a database written before
// the counter existed (Open raises the counter from it).
func (s *Store) scanNewestRevision(ctx context.Context) (uint64, error) {
	var d reservationDoc
	err := s.revisions.FindOne(ctx, bson.D{}, options.FindOne().SetSort(bson.D{{Key: "_id", Value: -1}})).Decode(&d)
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		return 0, dbErr(err)
	}
	var newest uint64
	if d.ID != "" {
		if newest, err = strconv.ParseUint(d.ID, 10, 64); err != nil {
			return 0, fmt.Errorf("stored revision %q: %w", d.ID, err)
		}
	}
	return newest, nil
}

func (s *Store) metaN(ctx context.Context, id string) (uint64, error) {
	var d counterDoc
	err := s.meta.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return 0, nil
	}
	if err != nil {
		return 0, dbErr(err)
	}
	return uint64(d.N), nil
}

// setMetaN writes n to a meta document (a plain write: the callers either hold the
// compaction lock or write a hint, which may be stale).
func (s *Store) setMetaN(ctx context.Context, id string, n uint64) error {
	_, err := s.meta.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, counterDoc{N: int64(n)}, options.Replace().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) { // a concurrent first upsert won; write over it
		_, err = s.meta.ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}}, counterDoc{N: int64(n)})
	}
	return dbErr(err)
}

// candidate returns the next revision this process should try.
func (s *Store) candidate() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.next
	s.next++
	return n
}

// skipTo makes later candidates greater than rev.
func (s *Store) skipTo(rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next = max(s.next, rev+1)
}

// reserve takes the next revision by inserting a reservation with it as _id: the
// unique _id decides between processes. The caller then commits or voids it; until it
// does, readers wait at that revision. subject is the change the caller means to log
// (its kind, service, job, instance or object): readers report it in place of a
// revision its writer abandoned.
func (s *Store) reserve(ctx context.Context, subject changeDoc) (uint64, error) {
	for attempt := 0; attempt < maxReserveAttempts; attempt++ {
		n := s.candidate()
		err := insertOne(ctx, s.batch.revisions, reservationDoc{ID: revID(n), At: time.Now(), Subject: &subject})
		if mongo.IsDuplicateKeyError(err) {
			// Another process took n. Resume after the newest revision (a reservation
			// raises it just after its insert, so it may lag by the ones in flight; the
			// published hint covers a store that has no counter yet).
			newest, err := s.metaN(ctx, metaNewest)
			if err == nil && newest == 0 {
				newest, err = s.metaN(ctx, metaHint)
			}
			if err != nil {
				return 0, fmt.Errorf("reserve revision: %w", err)
			}
			s.skipTo(max(n, newest))
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("reserve revision %d: %w", n, dbErr(err))
		}
		// A process whose counter fell behind can reserve a revision that a compaction
		// deleted; the mark, raised before deleting, tells.
		mark := readOp{}
		s.batch.compacted.do(ctx, &mark)
		if err := mark.err; err != nil {
			s.void(ctx, n)
			return 0, fmt.Errorf("reserve revision: %w", err)
		}
		if n <= mark.n {
			cctx, cancel := detached(ctx)
			s.revisions.DeleteOne(cctx, bson.D{{Key: "_id", Value: revID(n)}})
			cancel()
			s.skipTo(mark.n)
			continue
		}
		if attempt > 0 || n%hintEvery == 0 {
			if err := s.setMetaN(ctx, metaHint, n); err != nil {
				s.void(ctx, n)
				return 0, fmt.Errorf("reserve revision: hint: %w", err)
			}
		}
		// Before n is used: a reader that sees change n must see a newest revision of
		// at least n (or it would take itself to be ahead of the store and resync).
		if err := s.raiseNewest(ctx, n); err != nil {
			s.void(ctx, n)
			return 0, fmt.Errorf("reserve revision %d: raise the newest: %w", n, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("reserve revision: %d attempts collided with other writers: %w", maxReserveAttempts, store.ErrUnavailable)
}

// commit logs the change for a reserved revision. The record write succeeded, so the
// change is retried on a fresh context before giving up. If readers passed the revision
// meanwhile (this writer was slower than AbandonAfter: a loaded database), the change
// is logged again under a new revision, or followers that re-read the record before
// the write landed would never hear of it.
func (s *Store) commit(ctx context.Context, rev uint64, c changeDoc) error {
	for range maxRelogs {
		c.ID, c.Rev = revID(rev), int64(rev)
		var err error
		for range 3 {
			wctx, cancel := detached(ctx)
			err = insertOne(wctx, s.batch.changes, c)
			cancel()
			if err == nil || mongo.IsDuplicateKeyError(err) {
				break
			}
		}
		if err == nil {
			return nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("log change %d (the write itself succeeded): %w", rev, dbErr(err))
		}
		var cur changeDoc
		wctx, cancel := detached(ctx)
		err = s.changes.FindOne(wctx, bson.D{{Key: "_id", Value: revID(rev)}}).Decode(&cur)
		cancel()
		if err != nil || !cur.Abandoned {
			return nil // an earlier try landed (or the check failed: assume so, as before)
		}
		s.log.Warn("readers passed a revision while its write was in progress; logging the change again", "revision", rev, "kind", c.Kind, "job", c.JobName, "instance", c.Instance)
		subject := c
		subject.ID, subject.Rev = "", 0
		if rev, err = s.reserve(context.WithoutCancel(ctx), subject); err != nil {
			return fmt.Errorf("log change again after revision %d was passed (the write itself succeeded): %w", c.Rev, err)
		}
	}
	return fmt.Errorf("log change: passed by readers %d times (the write itself succeeded): %w", maxRelogs, store.ErrUnavailable)
}

// deleteLogged deletes the document id of c and logs change for it. The revision is
// reserved before the delete: a delete whose log a failure or a crash cut off (it
// used to come after, and a request that timed out between the two left followers
// never hearing of the delete) is read as a change of its subject once abandoned.
// After the delete, release (the addresses it freed, if any) and the log run on a
// context of their own: the delete happened whatever the caller does now.
func (s *Store) deleteLogged(ctx context.Context, c *collection, id string, change changeDoc, release func(context.Context) error) error {
	rev, err := s.reserve(ctx, change)
	if err != nil {
		return err
	}
	res, err := c.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		if definite(err) { // else it may have happened: readers report the subject
			s.void(ctx, rev)
		}
		return dbErr(err)
	}
	if res.DeletedCount == 0 {
		s.void(ctx, rev)
		return store.ErrNotFound
	}
	if release != nil {
		rctx, cancel := detached(ctx)
		err := release(rctx)
		cancel()
		if err != nil {
			// Leases no record uses: the store's repair puts them into quarantine.
			s.log.Warn("releasing a deleted record's addresses failed; the periodic repair releases them", "collection", c.Name(), "id", id, "err", err)
		}
	}
	return s.commit(ctx, rev, change)
}

// maxRelogs bounds how often commit logs a change again after readers passed it.
const maxRelogs = 3

// void logs a reserved revision as unused, so readers need not wait for it (best
// effort: if this fails, readers skip it after AbandonAfter).
func (s *Store) void(ctx context.Context, rev uint64) {
	ctx, cancel := detached(ctx)
	defer cancel()
	insertOne(ctx, s.batch.changes, changeDoc{ID: revID(rev), Rev: int64(rev), Instance: -1, Time: s.nowMS(), Void: true})
}

// maxGaps bounds the memory of missing revisions; when full, entries older than a few
// AbandonAfter periods are forgotten (a reader that meets them again waits again).
const maxGaps = 4096

// abandoned reports whether revision rev, missing while later ones exist,
// has been so for AbandonAfter, counted from the first time a reader of this process
// found it.
func (s *Store) abandoned(rev uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, ok := s.gaps[rev]
	if !ok {
		if len(s.gaps) >= maxGaps {
			for r, t := range s.gaps {
				if time.Since(t) > 4*s.abandon {
					delete(s.gaps, r)
				}
			}
		}
		s.gaps[rev] = time.Now()
		return false
	}
	return time.Since(first) >= s.abandon
}

// Changes returns up to limit changes after since (limit <= 0: all readable), stopping
// at the first missing revision that is not yet abandoned.
func (s *Store) Changes(ctx context.Context, since uint64, limit int) ([]store.Change, error) {
	out, err := s.readChanges(ctx, since, limit)
	if err != nil {
		return nil, fmt.Errorf("mongo: changes since %d: %w", since, err)
	}
	return out, nil
}

// keyedReads is the most revisions readChanges reads one by one, by key, rather than
// with one ranged read: on FerretDB a ranged read decodes every change the log holds
// (150 ms at 5,000), a read by key does not (about 1 ms); on MongoDB both are cheap.
const keyedReads = 8

func (s *Store) readChanges(ctx context.Context, since uint64, limit int) ([]store.Change, error) {
	mark, newest, err := s.marks(ctx)
	if err != nil {
		return nil, err
	}
	if since < mark {
		return nil, store.ErrCompacted
	}
	if newest <= since { // nothing reserved after since: no change can follow it yet
		return nil, nil
	}
	if newest-since <= keyedReads {
		return s.readChangesByKey(ctx, since, newest, limit)
	}
	opt := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}})
	if limit > 0 {
		// Void documents do not count against limit; a little slack saves a round trip.
		opt.SetBatchSize(int32(min(limit+16, 10000)))
	}
	cur, err := s.changes.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: revID(since)}}}}, opt)
	if err != nil {
		return nil, dbErr(err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var out []store.Change
	next := since + 1
	for (limit <= 0 || len(out) < limit) && cur.Next(ctx) {
		var d changeDoc
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("decode change: %w", err)
		}
		rev := uint64(d.Rev)
		for ; next < rev; next++ {
			if pass, err := s.passGap(ctx, next, &out); err != nil || !pass {
				return out, err
			}
		}
		next = rev + 1
		if !d.Void {
			out = append(out, d.change())
		}
	}
	if err := cur.Err(); err != nil {
		return nil, dbErr(err)
	}
	return out, nil
}

// readChangesByKey is readChanges for the few revisions after since up to newest, read
// one by one. As the ranged read, it looks at a missing revision only when a later one
// is logged: one still being written at the end of the log holds nobody back yet.
func (s *Store) readChangesByKey(ctx context.Context, since, newest uint64, limit int) ([]store.Change, error) {
	docs := make([]*changeDoc, 0, newest-since)
	last := -1
	for r := since + 1; r <= newest; r++ {
		var d changeDoc
		err := s.changes.FindOne(ctx, bson.D{{Key: "_id", Value: revID(r)}}).Decode(&d)
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			docs = append(docs, nil)
		case err != nil:
			return nil, dbErr(err)
		default:
			docs = append(docs, &d)
			last = len(docs) - 1
		}
	}
	var out []store.Change
	for i, d := range docs[:last+1] {
		if limit > 0 && len(out) >= limit {
			break
		}
		if d == nil {
			if pass, err := s.passGap(ctx, since+1+uint64(i), &out); err != nil || !pass {
				return out, err
			}
			continue
		}
		if !d.Void {
			out = append(out, d.change())
		}
	}
	return out, nil
}

// passGap decides whether a reader may pass revision r, which is missing while a later
// one is logged: only once its writer has been silent for AbandonAfter (it died between
// reserving and logging), and then the change it meant to log is reported (appended to
// out) as a put of its subject, since the record may have changed all the same.
func (s *Store) passGap(ctx context.Context, r uint64, out *[]store.Change) (bool, error) {
	if mark, err := s.metaN(ctx, metaCompacted); err != nil {
		return false, err
	} else if r <= mark {
		return false, store.ErrCompacted // compacted under us
	}
	if !s.abandoned(r) {
		return false, nil
	}
	// Log the abandonment in the writer's place, so that every reader passes r the same
	// way and a writer that was only slow learns of it (commit).
	d, err := s.abandonedSubject(ctx, r)
	if err != nil {
		return false, err
	}
	_, err = s.changes.InsertOne(ctx, d)
	if mongo.IsDuplicateKeyError(err) { // the writer (or another reader) logged r after all
		err = s.changes.FindOne(ctx, bson.D{{Key: "_id", Value: revID(r)}}).Decode(&d)
	}
	if err != nil {
		return false, dbErr(err)
	}
	if !d.Void {
		*out = append(*out, d.change())
	}
	return true, nil
}

// abandonedSubject returns the abandonment marker of revision rev: the change its
// writer meant to log, as a put of its subject (whether the write happened is unknown;
// a follower re-reading it finds out), or a void one if its reservation names none.
func (s *Store) abandonedSubject(ctx context.Context, rev uint64) (changeDoc, error) {
	var d reservationDoc
	err := s.revisions.FindOne(ctx, bson.D{{Key: "_id", Value: revID(rev)}}).Decode(&d)
	if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
		// Not a marker without a subject: it would be for good. The next poll retries.
		return changeDoc{}, dbErr(err)
	}
	if err != nil || d.Subject == nil || d.Subject.Kind == "" {
		return changeDoc{ID: revID(rev), Rev: int64(rev), Instance: -1, Time: s.nowMS(), Void: true, Abandoned: true}, nil
	}
	c := *d.Subject
	c.ID, c.Rev, c.Op, c.Time, c.Abandoned = revID(rev), int64(rev), store.OpPut, d.At, true
	return c, nil
}

// CompactChanges drops changes up to upTo. It stops below the oldest revision still
// being written (reserved, not logged) unless that reservation is older than
// OrphanGrace, and raises the mark before deleting, so readers and writers that meet a
// compacted range know it.
func (s *Store) CompactChanges(ctx context.Context, upTo uint64) error {
	if err := s.compact(ctx, upTo); err != nil {
		return fmt.Errorf("mongo: compact changes up to %d: %w", upTo, err)
	}
	return nil
}

func (s *Store) compact(ctx context.Context, upTo uint64) error {
	unlock, err := s.lock(ctx, "compact")
	if err != nil {
		return err
	}
	defer unlock()
	rev, err := s.newestRevision(ctx)
	if err != nil {
		return err
	}
	mark, err := s.metaN(ctx, metaCompacted)
	if err != nil {
		return err
	}
	upTo = min(upTo, rev)
	if upTo <= mark {
		return nil
	}
	rng := bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: revID(mark)}, {Key: "$lte", Value: revID(upTo)}}}}
	var reserved []reservationDoc
	if err := find(ctx, s.revisions, rng, &reserved); err != nil {
		return err
	}
	var logged []changeDoc
	if err := find(ctx, s.changes, rng, &logged); err != nil {
		return err
	}
	done := make(map[string]bool, len(logged))
	for _, c := range logged {
		done[c.ID] = true
	}
	for _, r := range reserved {
		if !done[r.ID] && time.Since(r.At) < s.grace {
			n, err := strconv.ParseUint(r.ID, 10, 64)
			if err != nil {
				return fmt.Errorf("stored revision %q: %w", r.ID, err)
			}
			upTo = min(upTo, n-1)
		}
	}
	if upTo <= mark {
		return nil
	}
	if err := s.setMetaN(ctx, metaCompacted, upTo); err != nil {
		return err
	}
	through := bson.D{{Key: "_id", Value: bson.D{{Key: "$lte", Value: revID(upTo)}}}}
	if _, err := s.changes.DeleteMany(ctx, through); err != nil {
		return dbErr(err)
	}
	if _, err := s.revisions.DeleteMany(ctx, through); err != nil {
		return dbErr(err)
	}
	return nil
}
