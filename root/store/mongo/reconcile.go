package mongo

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// ticketKeep is how long one-shot tickets are kept. A ticket must outlive every
// claimer that read the lease it refers to before it was replaced.
const ticketKeep = 24 * time.Hour

// Reconcile repairs what crashed writers leave behind (Open runs it; it is safe to run
// at any time and from several processes, which take turns):
//   - active leases older than OrphanGrace whose address no record uses are put into
//     quarantine (not deleted: the address may have been in use until the crash);
//   - leases whose quarantine is over are deleted, as is an expired lease whose
//     takeover was won by a claimer that did not finish within claimTimeout;
//   - tickets older than a day are deleted.
//
// It reads every record's addresses into memory (a few tens of bytes per address).
func (s *Store) Reconcile(ctx context.Context) error {
	if err := s.reconcile(ctx); err != nil {
		return fmt.Errorf("mongo: reconcile: %w", err)
	}
	return nil
}

func (s *Store) reconcile(ctx context.Context) error {
	unlock, err := s.lock(ctx, "reconcile")
	if err != nil {
		return err
	}
	defer unlock()
	now := s.nowMS()
	if _, err := s.tickets.DeleteMany(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$lt", Value: time.Now().Add(-ticketKeep)}}}}); err != nil {
		return fmt.Errorf("drop old tickets: %w", dbErr(err))
	}

	// Expired leases: dropping one is a takeover like a claim's, so it takes the same
	// ticket and cannot race a claimer.
	var expired []leaseDoc
	err = find(ctx, s.leases, bson.D{{Key: "released_at", Value: bson.D{{Key: "$lte", Value: now.Add(-s.quarantine)}}}}, &expired)
	if err != nil {
		return err
	}
	for _, l := range expired {
		ticket := takeoverTicket(l.Addr, l.Claim)
		_, err := s.tickets.InsertOne(ctx, ticketDoc{ID: ticket, At: time.Now()})
		if mongo.IsDuplicateKeyError(err) {
			// A claimer holds the takeover. If it has not finished long after, it died
			// in between: drop the lease for it (this process holds the reconcile lock,
			// and no claimer acts on a lease whose ticket is taken).
			var t ticketDoc
			if err := s.tickets.FindOne(ctx, bson.D{{Key: "_id", Value: ticket}}).Decode(&t); err != nil || time.Since(t.At) < claimTimeout {
				continue
			}
			err = nil
		}
		if err != nil {
			return fmt.Errorf("drop expired lease %s: %w", l.Addr, dbErr(err))
		}
		var cur leaseDoc
		if err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: l.Addr}}).Decode(&cur); err != nil || cur.Claim != l.Claim {
			continue
		}
		if _, err := s.leases.DeleteOne(ctx, bson.D{{Key: "_id", Value: l.Addr}}); err != nil {
			return fmt.Errorf("drop expired lease %s: %w", l.Addr, dbErr(err))
		}
	}

	// Leases first, records second: a record inserted while this runs still shows up
	// in the scan below. A create slower than OrphanGrace can still lose its leases,
	// which is why the grace must exceed the time a create takes.
	var old []leaseDoc
	err = find(ctx, s.leases, bson.D{
		{Key: "released_at", Value: bson.D{{Key: "$exists", Value: false}}},
		{Key: "created_at", Value: bson.D{{Key: "$lt", Value: now.Add(-s.grace)}}},
	}, &old)
	if err != nil || len(old) == 0 {
		return err
	}
	used := map[string]struct{}{}
	add := func(addrs ...string) {
		for _, a := range addrs {
			used[a] = struct{}{}
		}
	}
	err = scan(ctx, s.services, bson.D{{Key: "rr", Value: 1}, {Key: "closest", Value: 1}}, func(d serviceDoc) {
		add(d.RR.V4, d.RR.V6, d.Closest.V4, d.Closest.V6)
	})
	if err == nil {
		err = scan(ctx, s.instances, bson.D{{Key: "ip", Value: 1}}, func(d instanceDoc) { add(d.IP.V4, d.IP.V6) })
	}
	if err == nil {
		err = scan(ctx, s.subnets, bson.D{{Key: "v6", Value: 1}}, func(d subnetDoc) {
			for _, p := range []string{d.V4, d.V6} {
				if pf, err := netip.ParsePrefix(p); err == nil {
					add(pf.Masked().Addr().String())
				}
			}
		})
	}
	if err != nil {
		return err
	}
	for _, l := range old {
		if _, ok := used[l.Addr]; ok {
			continue
		}
		var cur leaseDoc
		if err := s.leases.FindOne(ctx, bson.D{{Key: "_id", Value: l.Addr}}).Decode(&cur); err != nil || cur.Claim != l.Claim || cur.ReleasedAt != nil {
			continue
		}
		_, err := s.leases.UpdateOne(ctx, bson.D{{Key: "_id", Value: l.Addr}}, bson.D{{Key: "$set", Value: bson.D{{Key: "released_at", Value: now}}}})
		if err != nil {
			return fmt.Errorf("release orphan lease %s: %w", l.Addr, dbErr(err))
		}
	}
	return nil
}

// find decodes every document of c matching filter into out.
func find[T any](ctx context.Context, c *collection, filter bson.D, out *[]T) error {
	cur, err := c.Find(ctx, filter)
	if err != nil {
		return fmt.Errorf("find in %s: %w", c.Name(), dbErr(err))
	}
	if err := cur.All(ctx, out); err != nil {
		return fmt.Errorf("find in %s: %w", c.Name(), dbErr(err))
	}
	return nil
}

// scan decodes every document of c (with projection proj) into a T and calls fn.
func scan[T any](ctx context.Context, c *collection, proj bson.D, fn func(T)) error {
	cur, err := c.Find(ctx, bson.D{}, options.Find().SetProjection(proj))
	if err != nil {
		return fmt.Errorf("scan %s: %w", c.Name(), dbErr(err))
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		var d T
		if err := cur.Decode(&d); err != nil {
			return fmt.Errorf("scan %s: decode: %w", c.Name(), err)
		}
		fn(d)
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("scan %s: %w", c.Name(), dbErr(err))
	}
	return nil
}
