package mongo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"

	"github.com/semnet/semnet/root/store"
)

// Lock timing. A lock is held for a few round trips, and its holder renews it every
// quarter of the lock TTL (Options.LockTTL, 20 s by default) while it holds it longer; a
// lock not renewed for the TTL belongs to a dead (or stalled) process and may be broken.
// The TTL is what a restarted root's predecessor's locks block their keys for; it is not
// shorter because a renewal is a write like any other, and an overloaded server (the
// soak run saw FerretDB take over 10 s) must not let a live holder's lock lapse.
// lockWait bounds how long a caller waits for a lock.
//
// claimTimeout is how long a claimer may take to finish an address takeover before
// others take it for dead (leases.go, reconcile.go); claims are not renewed.
const (
	defaultLockTTL = 20 * time.Second
	lockWait       = 40 * time.Second
	claimTimeout   = 30 * time.Second
)

// localLocks serialises this process's callers per key before they touch the database,
// so waiters queue here instead of polling the locks collection.
type localLocks struct {
	mu   sync.Mutex
	keys map[string]*localLock
}

type localLock struct {
	ch   chan struct{} // holds one token while the key is locked
	refs int
}

func (l *localLocks) acquire(ctx context.Context, key string) (release func(), err error) {
	l.mu.Lock()
	if l.keys == nil {
		l.keys = map[string]*localLock{}
	}
	e := l.keys[key]
	if e == nil {
		e = &localLock{ch: make(chan struct{}, 1)}
		l.keys[key] = e
	}
	e.refs++
	l.mu.Unlock()
	done := func() {
		l.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(l.keys, key)
		}
		l.mu.Unlock()
	}
	select {
	case e.ch <- struct{}{}:
		return func() { <-e.ch; done() }, nil
	case <-ctx.Done():
		done()
		return nil, ctx.Err()
	}
}

// lock takes the lock named key, shared by every process using the database: a
// document in locks with _id key, which only one insert can create. It returns the
// unlock function; until it is called the lock is renewed. A lock not renewed for the
// lock TTL is broken by one waiter, chosen by a ticket insert, so two waiters cannot both
// break it.
func (s *Store) lock(ctx context.Context, key string) (unlock func(), err error) {
	release, err := s.local.acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	token := primitive.NewObjectID()
	deadline := time.Now().Add(lockWait)
	pause := time.Millisecond
	free := true // as far as we know: try the insert
	for {
		if free {
			_, err := s.locks.InsertOne(ctx, lockDoc{Key: key, Token: token, At: time.Now()})
			if err == nil {
				stop := s.renew(ctx, key, token)
				return func() { stop(); s.unlock(ctx, key, token); release() }, nil
			}
			if !mongo.IsDuplicateKeyError(err) {
				// The insert may have happened with only its answer lost (the caller gave
				// up): remove our own lock rather than leave it blocking for the lock TTL.
				s.unlock(ctx, key, token)
				release()
				return nil, fmt.Errorf("lock %s: %w", key, dbErr(err))
			}
		}
		// Held: wait by reading the lock, and insert again only once it is gone. An
		// insert is a write, and on FerretDB every write queues for SQLite's one write
		// lock: a waiter inserting every few milliseconds (137,000 inserts in a
		// 10-minute load run) slowed the very holder it waited for.
		free = false
		var cur lockDoc
		err = s.locks.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&cur)
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			free = true // released meanwhile
			continue
		case err != nil:
			release()
			return nil, fmt.Errorf("lock %s: %w", key, dbErr(err))
		case time.Since(cur.At) > s.lockTTL:
			_, err := s.tickets.InsertOne(ctx, ticketDoc{ID: "break " + key + " " + cur.Token.Hex(), At: time.Now()})
			if err == nil {
				_, err = s.locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: key}, {Key: "token", Value: cur.Token}})
			}
			if err != nil && !mongo.IsDuplicateKeyError(err) {
				release()
				return nil, fmt.Errorf("lock %s: break stale lock: %w", key, dbErr(err))
			}
			free = true
			continue
		}
		if time.Now().After(deadline) {
			release()
			return nil, fmt.Errorf("lock %s: held by another process since %s: %w", key, cur.At.UTC().Format(time.RFC3339), store.ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			release()
			return nil, ctx.Err()
		case <-time.After(pause/2 + rand.N(pause)):
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

func (s *Store) unlock(ctx context.Context, key string, token primitive.ObjectID) {
	ctx, cancel := detached(ctx)
	defer cancel()
	// Best effort: a lock left behind is broken after the lock TTL.
	s.locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: key}, {Key: "token", Value: token}})
}

// locked reports whether a live lock named key is held (by anyone).
func (s *Store) locked(ctx context.Context, key string) (bool, error) {
	var cur lockDoc
	err := s.locks.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&cur)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	if err != nil {
		return false, dbErr(err)
	}
	return time.Since(cur.At) <= s.lockTTL, nil
}

// renew keeps the lock key (ours while token is its token) alive: every quarter of the
// lock TTL it moves the lock's time to now, until the returned function is called. A
// renewal that finds the lock gone or someone else's means this process was taken for
// dead (stalled, or its renewals did not reach the server, past the TTL): it is logged,
// and the revision-conditional writes behind the lock keep the other holder's work from
// being overwritten.
func (s *Store) renew(ctx context.Context, key string, token primitive.ObjectID) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		t       *time.Timer
	)
	every := s.lockTTL / 4
	var tick func()
	tick = func() {
		rctx, cancel := detached(ctx)
		defer cancel()
		res, err := s.locks.UpdateOne(rctx, bson.D{{Key: "_id", Value: key}, {Key: "token", Value: token}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "at", Value: time.Now()}}}})
		mu.Lock()
		defer mu.Unlock()
		switch {
		case stopped: // unlocked meanwhile: the update may have come after the delete
			return
		case err != nil:
			s.log.Warn("renewing a lock failed; retrying", "lock", key, "err", err)
		case res.MatchedCount == 0:
			s.log.Warn("a lock this process holds was broken by another (this process, or its renewals, did not reach the server within the lock TTL)", "lock", key, "ttl", s.lockTTL)
			return
		}
		t.Reset(every)
	}
	mu.Lock()
	t = time.AfterFunc(every, tick)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}
