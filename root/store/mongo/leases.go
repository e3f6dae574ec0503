package mongo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/semnet/semnet/root/store"
)

// held reports whether a lease released at releasedAt (nil: active) still blocks its
// address at now.
func (s *Store) held(releasedAt *time.Time, now time.Time) bool {
	return releasedAt == nil || now.Before(releasedAt.Add(s.quarantine))
}

// leaseReq is one address a create wants.
type leaseReq struct {
	addr     netip.Addr
	role     string
	owner    string
	instance int
}

// maxClaimAttempts bounds the re-reads when a lease changes under a claim (dropped or
// taken over by someone else between our insert and our read).
const maxClaimAttempts = 16

// takeoverTicket names the one-shot right to replace (or drop) the expired lease of
// addr whose claim token is claim.
func takeoverTicket(addr string, claim primitive.ObjectID) string {
	return "takeover " + addr + " " + claim.Hex()
}

// claim inserts a lease for every request, all tagged with token. If an address is
// held it removes what it inserted and returns *store.AddressTakenError.
func (s *Store) claim(ctx context.Context, token primitive.ObjectID, reqs []leaseReq) error {
	now := s.nowMS()
	docs := make([]any, len(reqs))
	for i, r := range reqs {
		docs[i] = leaseDoc{Addr: addrString(r.addr), Role: r.role, Owner: r.owner, Instance: r.instance, CreatedAt: now, Claim: token}
	}
	err := insertMany(ctx, s.batch.leases, docs)
	if err == nil {
		return nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil {
		err = fmt.Errorf("claim addresses: %w", dbErr(err))
		s.undo(ctx, token, reqs, err)
		return err
	}
	for _, we := range bwe.WriteErrors {
		if !mongo.IsDuplicateKeyError(mongo.WriteException{WriteErrors: mongo.WriteErrors{we.WriteError}}) {
			err = fmt.Errorf("claim addresses: %w", dbErr(err))
			s.undo(ctx, token, reqs, err)
			return err
		}
	}
	for _, we := range bwe.WriteErrors {
		if err := s.takeOver(ctx, docs[we.Index].(leaseDoc)); err != nil {
			s.undo(ctx, token, reqs, err)
			return err
		}
	}
	return nil
}

// takeOver claims an address whose insert hit an existing lease. It succeeds only if
// that lease's quarantine is over, and only for the one claimer that wins the takeover
// ticket for it; the winner drops the old lease and inserts its own (an insert, so a
// fresh claim racing it still loses cleanly).
func (s *Store) takeOver(ctx context.Context, want leaseDoc) error {
	addr, _ := netip.ParseAddr(want.Addr)
	for range maxClaimAttempts {
		var cur leaseDoc
		err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: want.Addr}}).Decode(&cur)
		if errors.Is(err, mongo.ErrNoDocuments) {
			_, err := s.leases.InsertOne(ctx, want)
			if err == nil {
				return nil
			}
			if !mongo.IsDuplicateKeyError(err) {
				return fmt.Errorf("claim %s: %w", want.Addr, dbErr(err))
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("claim %s: %w", want.Addr, dbErr(err))
		}
		if s.held(cur.ReleasedAt, s.now()) || cur.Claim == want.Claim {
			l, err := cur.lease()
			if err != nil {
				return fmt.Errorf("claim %s: %w", want.Addr, err)
			}
			return &store.AddressTakenError{Addr: addr, Lease: l}
		}
		_, err = s.tickets.InsertOne(ctx, ticketDoc{ID: takeoverTicket(want.Addr, cur.Claim), At: time.Now()})
		if mongo.IsDuplicateKeyError(err) {
			// Another claimer is taking it over; its lease will be there in a moment,
			// unless it died in between (then Reconcile frees the address).
			var t ticketDoc
			if err := s.tickets.FindOne(ctx, bson.D{{Key: "_id", Value: takeoverTicket(want.Addr, cur.Claim)}}).Decode(&t); err == nil && time.Since(t.At) > claimTimeout {
				l, err := cur.lease()
				if err != nil {
					return fmt.Errorf("claim %s: %w", want.Addr, err)
				}
				return &store.AddressTakenError{Addr: addr, Lease: l}
			}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			return fmt.Errorf("claim %s: %w", want.Addr, dbErr(err))
		}
		// Only the expired lease we hold the ticket for: never one inserted since.
		if _, err := s.leases.DeleteOne(ctx, bson.D{{Key: "_id", Value: want.Addr}, {Key: "claim", Value: cur.Claim}}); err != nil {
			return fmt.Errorf("claim %s: drop expired lease: %w", want.Addr, dbErr(err))
		}
	}
	return fmt.Errorf("claim %s: lease changed %d times while claiming: %w", want.Addr, maxClaimAttempts, store.ErrUnavailable)
}

// undo removes the leases of a claim that failed with err. When the server could not be
// reached it does so in the background: the request should fail now (503), not after
// more round trips to a server that is gone. Otherwise before returning, so that a
// client retrying at once (after a 409, say) does not meet its own leases.
func (s *Store) undo(ctx context.Context, token primitive.ObjectID, reqs []leaseReq, err error) {
	if errors.Is(err, store.ErrUnavailable) {
		go s.unclaim(ctx, token, reqs)
		return
	}
	s.unclaim(ctx, token, reqs)
}

// unclaim deletes the leases inserted with token (best effort: Reconcile catches what a
// failure here leaves).
func (s *Store) unclaim(ctx context.Context, token primitive.ObjectID, reqs []leaseReq) {
	ctx, cancel := detached(ctx)
	defer cancel()
	for _, r := range reqs {
		// Read, then delete by _id: a filter on _id alone is the only one FerretDB
		// serves without a scan, and nobody but us changes an active lease of ours.
		var cur leaseDoc
		id := addrString(r.addr)
		err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&cur)
		if err != nil && !errors.Is(err, mongo.ErrNoDocuments) {
			// The server is unreachable (why the claim failed, most likely): waiting
			// for it once per address would hold the request for seconds each. The
			// periodic Reconcile frees what is left.
			return
		}
		if err != nil || cur.Claim != token {
			continue
		}
		if _, err := s.leases.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
			return
		}
	}
}

// release puts the active leases of addrs held by owner (with this instance number and
// one of roles) into quarantine. Each is one conditional update, all at once: a delete
// waits for one round trip, not two per address.
func (s *Store) release(ctx context.Context, now time.Time, owner string, instance int, roles []string, addrs ...netip.Addr) error {
	var g errgroup.Group
	for _, a := range addrs {
		g.Go(func() error {
			_, err := s.leases.UpdateOne(ctx, bson.D{
				{Key: "_id", Value: addrString(a)},
				{Key: "owner", Value: owner},
				{Key: "instance", Value: instance},
				{Key: "role", Value: bson.D{{Key: "$in", Value: roles}}},
				{Key: "released_at", Value: bson.D{{Key: "$exists", Value: false}}},
			}, bson.D{{Key: "$set", Value: bson.D{{Key: "released_at", Value: now}}}})
			if err != nil {
				return fmt.Errorf("release %s: %w", a, dbErr(err))
			}
			return nil
		})
	}
	return g.Wait()
}

// GetLease returns the lease of addr, active or in quarantine.
func (s *Store) GetLease(ctx context.Context, addr netip.Addr) (store.Lease, error) {
	var d leaseDoc
	err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: addrString(addr)}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) || (err == nil && !s.held(d.ReleasedAt, s.now())) {
		return store.Lease{}, fmt.Errorf("mongo: lease of %s: %w", addr, store.ErrNotFound)
	}
	if err != nil {
		return store.Lease{}, fmt.Errorf("mongo: lease of %s: %w", addr, dbErr(err))
	}
	l, err := d.lease()
	if err != nil {
		return store.Lease{}, fmt.Errorf("mongo: lease of %s: %w", addr, err)
	}
	return l, nil
}

// ListLeases calls fn for every lease, active or in quarantine.
func (s *Store) ListLeases(ctx context.Context, fn func(store.Lease) error) error {
	cur, err := s.leases.Find(ctx, bson.D{})
	if err != nil {
		return fmt.Errorf("mongo: list leases: %w", dbErr(err))
	}
	defer cur.Close(context.WithoutCancel(ctx))
	now := s.now()
	for cur.Next(ctx) {
		var d leaseDoc
		if err := cur.Decode(&d); err != nil {
			return fmt.Errorf("mongo: list leases: decode: %w", err)
		}
		if !s.held(d.ReleasedAt, now) {
			continue
		}
		l, err := d.lease()
		if err != nil {
			return fmt.Errorf("mongo: list leases: %w", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("mongo: list leases: %w", dbErr(err))
	}
	return nil
}
