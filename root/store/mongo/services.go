package mongo

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"golang.org/x/sync/errgroup"

	"github.com/semnet/semnet/root/store"
)

func checkService(sv store.Service) error {
	if err := checkID("service", sv.ID); err != nil {
		return err
	}
	for _, a := range []struct {
		what string
		addr store.AddrPair
	}{{"round-robin Service IP", sv.RR}, {"closest Service IP", sv.Closest}} {
		if err := checkAddr(a.what+" (IPv4)", a.addr.V4); err != nil {
			return err
		}
		if err := checkAddr(a.what+" (IPv6)", a.addr.V6); err != nil {
			return err
		}
	}
	return nil
}

func serviceLeases(sv store.Service) []leaseReq {
	return []leaseReq{
		{sv.RR.V4, store.RoleRoundRobin, sv.ID, -1},
		{sv.RR.V6, store.RoleRoundRobin, sv.ID, -1},
		{sv.Closest.V4, store.RoleClosest, sv.ID, -1},
		{sv.Closest.V6, store.RoleClosest, sv.ID, -1},
	}
}

// CreateService claims the service's leases, reserves a revision, inserts the service
// and commits the change; a failure rolls the leases back. A taken ID or job name is
// found by the unique indexes at insert.
func (s *Store) CreateService(ctx context.Context, sv store.Service) (store.Service, error) {
	if err := checkService(sv); err != nil {
		return store.Service{}, fmt.Errorf("mongo: create service %s: %w", sv.ID, err)
	}
	out, err := s.createService(ctx, sv)
	if err != nil {
		return store.Service{}, fmt.Errorf("mongo: create service %s: %w", sv.JobName(), err)
	}
	return out, nil
}

func (s *Store) createService(ctx context.Context, sv store.Service) (store.Service, error) {
	now := s.nowMS()
	sv.CreatedAt = ms(sv.CreatedAt)
	if sv.CreatedAt.IsZero() {
		sv.CreatedAt = now
	}
	job := sv.JobName()
	token := primitive.NewObjectID()
	leases := serviceLeases(sv)
	if err := s.claim(ctx, token, leases); err != nil {
		// A retried create finds its own addresses taken: report what the embedded
		// store reports, that the service exists.
		var taken *store.AddressTakenError
		if errors.As(err, &taken) && taken.Lease.Owner == sv.ID && taken.Lease.Instance == -1 && taken.Lease.ReleasedAt.IsZero() {
			if _, gerr := s.getService(ctx, bson.D{{Key: "_id", Value: sv.ID}}); gerr == nil {
				return store.Service{}, fmt.Errorf("service ID %s: %w", sv.ID, store.ErrAlreadyExists)
			}
		}
		return store.Service{}, err
	}
	change := changeDoc{Kind: store.KindService, Op: store.OpPut, ServiceID: sv.ID, JobName: job, Instance: -1, Time: now}
	rev, err := s.reserve(ctx, change)
	if err != nil {
		s.unclaim(ctx, token, leases)
		return store.Service{}, err
	}
	if err := s.claimName(ctx, job, sv.ID); err != nil {
		s.void(ctx, rev)
		s.unclaim(ctx, token, leases)
		return store.Service{}, err
	}
	sv.Revision = rev
	if err := insertOne(ctx, s.batch.services, toServiceDoc(sv)); err != nil {
		s.void(ctx, rev)
		if definite(err) {
			s.unclaim(ctx, token, leases)
		}
		if mongo.IsDuplicateKeyError(err) {
			return store.Service{}, fmt.Errorf("service ID %s or job name %s: %w", sv.ID, job, store.ErrAlreadyExists)
		}
		return store.Service{}, dbErr(err)
	}
	err = s.commit(ctx, rev, change)
	if err != nil {
		return store.Service{}, err
	}
	return sv, nil
}

func (s *Store) getService(ctx context.Context, filter bson.D) (serviceDoc, error) {
	var d serviceDoc
	err := s.services.FindOne(ctx, filter).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return d, store.ErrNotFound
	}
	if err != nil {
		return d, dbErr(err)
	}
	return d, nil
}

// GetService returns the service with this ID.
func (s *Store) GetService(ctx context.Context, id string) (store.Service, error) {
	d, err := s.getService(ctx, bson.D{{Key: "_id", Value: id}})
	if err == nil {
		var sv store.Service
		if sv, err = d.service(); err == nil {
			return sv, nil
		}
	}
	return store.Service{}, fmt.Errorf("mongo: service %s: %w", id, err)
}

// ListServices returns up to limit services with ID > after, by ID (limit <= 0: all).
func (s *Store) ListServices(ctx context.Context, after string, limit int) ([]store.Service, error) {
	opt := options.Find().SetSort(bson.D{{Key: "_id", Value: 1}})
	if limit > 0 {
		opt.SetLimit(int64(limit))
	}
	cur, err := s.services.Find(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: after}}}}, opt)
	if err != nil {
		return nil, fmt.Errorf("mongo: list services after %q: %w", after, dbErr(err))
	}
	var docs []serviceDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list services after %q: %w", after, dbErr(err))
	}
	out := make([]store.Service, 0, len(docs))
	for _, d := range docs {
		sv, err := d.service()
		if err != nil {
			return nil, fmt.Errorf("mongo: list services: %s: %w", d.ID, err)
		}
		out = append(out, sv)
	}
	return out, nil
}

// serviceLock is the lock DeleteService holds; CreateInstance and CreateExposure roll
// back a record they inserted while it is held (serviceGone).
func serviceLock(id string) string { return "service " + id }

// liveService returns the service a create is about to insert under (for its job
// name): ErrNotFound if it does not exist. It does not look at the service's lock:
// serviceGone does after the insert, which is what keeps a record from outliving a
// DeleteService, so a read of the lock here too would only spare a create that meets a
// delete in progress its rollback, at a round trip for every create.
func (s *Store) liveService(ctx context.Context, id string) (serviceDoc, error) {
	d, err := s.getService(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return serviceDoc{}, fmt.Errorf("service %s: %w", id, err)
	}
	return d, nil
}

// serviceGone reports whether the service was deleted or a DeleteService holds its
// lock: a create checks it again after inserting its record, and removes the record if
// so. A DeleteService that took the lock before that check either lists the record (it
// lists after locking) or is seen by the check; never neither.
func (s *Store) serviceGone(ctx context.Context, id string) (bool, error) {
	if locked, err := s.locked(ctx, serviceLock(id)); err != nil || locked {
		return locked, err
	}
	_, err := s.getService(ctx, bson.D{{Key: "_id", Value: id}})
	if errors.Is(err, store.ErrNotFound) {
		return true, nil
	}
	return false, err
}

// DeleteService marks the service as being deleted (so no instance or exposure can be
// created under it from now on), deletes its exposures, its instances if forced, then
// the service, releasing every address into quarantine.
func (s *Store) DeleteService(ctx context.Context, id string, force bool) (store.Deleted, error) {
	del, err := s.deleteService(ctx, id, force)
	if err != nil {
		return store.Deleted{}, fmt.Errorf("mongo: delete service %s: %w", id, err)
	}
	return del, nil
}

func (s *Store) deleteService(ctx context.Context, id string, force bool) (store.Deleted, error) {
	unlock, err := s.lock(ctx, serviceLock(id))
	if err != nil {
		return store.Deleted{}, err
	}
	defer unlock()
	d, err := s.getService(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return store.Deleted{}, err
	}
	del := store.Deleted{}
	if del.Service, err = d.service(); err != nil {
		return store.Deleted{}, err
	}
	// From here on no instance can appear under the service: CreateInstance checks the
	// lock after inserting, so an instance inserted before this listing is in it, and
	// one inserted after it is rolled back by its creator.
	ins, err := s.instanceDocs(ctx, id)
	if err != nil {
		return store.Deleted{}, err
	}
	if len(ins) > 0 && !force {
		return store.Deleted{}, fmt.Errorf("service %s: %w", d.JobName, store.ErrHasInstances)
	}
	for _, in := range ins {
		i, err := in.instance()
		if err != nil {
			return store.Deleted{}, err
		}
		del.Instances = append(del.Instances, i)
	}
	// Exposures go with the service, forced or not; like instances, none can be added
	// while the lock is held.
	exs, err := sortedByID[exposureDoc](ctx, s.exposures, bson.D{{Key: "service_id", Value: id}})
	if err != nil {
		return store.Deleted{}, err
	}
	for _, e := range exs {
		x, err := e.exposure()
		if err != nil {
			return store.Deleted{}, err
		}
		del.Exposures = append(del.Exposures, x)
	}
	for _, e := range exs {
		if err := s.deleteExposure(ctx, e); err != nil && !errors.Is(err, store.ErrNotFound) {
			return store.Deleted{}, err
		}
	}
	// Each instance is deleted under its own lock with its own revision: deleting them
	// at once costs the caller about one delete's round trips, not one per instance.
	// Every one is tried (none is cut off by another's failure); the service goes last,
	// so followers hear of its instances' deletes first.
	var g errgroup.Group
	g.SetLimit(perService)
	for _, in := range ins {
		g.Go(func() error {
			if err := s.deleteInstance(ctx, in.ServiceID, in.Number); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return store.Deleted{}, err
	}
	now := s.nowMS()
	change := changeDoc{Kind: store.KindService, Op: store.OpDelete, ServiceID: id, JobName: d.JobName, Instance: -1, Time: now}
	sv := del.Service
	err = s.deleteLogged(ctx, s.services, id, change, func(ctx context.Context) error {
		s.dropName(ctx, d.JobName, id)
		return s.release(ctx, now, id, -1, []string{store.RoleRoundRobin, store.RoleClosest},
			sv.RR.V4, sv.RR.V6, sv.Closest.V4, sv.Closest.V6)
	})
	if err != nil {
		return store.Deleted{}, err
	}
	return del, nil
}
