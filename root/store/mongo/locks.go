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

// Lock timing. A lock is held for a few round trips; a holder silent for lockTTL is
// taken for dead and its lock may be broken. lockWait bounds how long a caller waits.
const (
	lockTTL  = 30 * time.Second
	lockWait = 40 * time.Second
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
// unlock function. A lock older than lockTTL is broken by one waiter, chosen by a
// ticket insert, so two waiters cannot both break it.
func (s *Store) lock(ctx context.Context, key string) (unlock func(), err error) {
	release, err := s.local.acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	token := primitive.NewObjectID()
	deadline := time.Now().Add(lockWait)
	pause := time.Millisecond
	for {
		_, err := s.locks.InsertOne(ctx, lockDoc{Key: key, Token: token, At: time.Now()})
		if err == nil {
			return func() { s.unlock(ctx, key, token); release() }, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			// The insert may have happened with only its answer lost (the caller gave
			// up): remove our own lock rather than leave it blocking for lockTTL.
			s.unlock(ctx, key, token)
			release()
			return nil, fmt.Errorf("lock %s: %w", key, dbErr(err))
		}
		var cur lockDoc
		err = s.locks.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&cur)
		switch {
		case errors.Is(err, mongo.ErrNoDocuments):
			continue // released meanwhile
		case err != nil:
			release()
			return nil, fmt.Errorf("lock %s: %w", key, dbErr(err))
		case time.Since(cur.At) > lockTTL:
			_, err := s.tickets.InsertOne(ctx, ticketDoc{ID: "break " + key + " " + cur.Token.Hex(), At: time.Now()})
			if err == nil {
				_, err = s.locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: key}, {Key: "token", Value: cur.Token}})
			}
			if err != nil && !mongo.IsDuplicateKeyError(err) {
				release()
				return nil, fmt.Errorf("lock %s: break stale lock: %w", key, dbErr(err))
			}
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
		pause = min(2*pause, 20*time.Millisecond)
	}
}

func (s *Store) unlock(ctx context.Context, key string, token primitive.ObjectID) {
	ctx, cancel := detached(ctx)
	defer cancel()
	// Best effort: a lock left behind is broken after lockTTL.
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
	return time.Since(cur.At) <= lockTTL, nil
}
