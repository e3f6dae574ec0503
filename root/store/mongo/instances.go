package mongo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"golang.org/x/sync/errgroup"

	"github.com/semnet/semnet/root/store"
)

// CreateInstance claims the Instance IP pair, inserts the instance, checks that its
// service is not being deleted meanwhile, then logs the change.
func (s *Store) CreateInstance(ctx context.Context, in store.Instance) (store.Instance, error) {
	if err := checkID("service", in.ServiceID); err != nil {
		return store.Instance{}, fmt.Errorf("mongo: create instance %d: %w", in.Number, err)
	}
	if err := checkAddr("Instance IP (IPv4)", in.IP.V4); err != nil {
		return store.Instance{}, fmt.Errorf("mongo: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	if err := checkAddr("Instance IP (IPv6)", in.IP.V6); err != nil {
		return store.Instance{}, fmt.Errorf("mongo: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	out, err := s.createInstance(ctx, in)
	if err != nil {
		return store.Instance{}, fmt.Errorf("mongo: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	return out, nil
}

func (s *Store) createInstance(ctx context.Context, in store.Instance) (store.Instance, error) {
	in.UpdatedAt = ms(in.UpdatedAt)
	if in.Location != nil {
		loc := *in.Location
		in.Location = &loc
	}
	sv, err := s.liveService(ctx, in.ServiceID)
	if err != nil {
		return store.Instance{}, err
	}
	id := instanceID(in.ServiceID, in.Number)
	token := primitive.NewObjectID()
	leases := []leaseReq{
		{in.IP.V4, store.RoleInstance, in.ServiceID, in.Number},
		{in.IP.V6, store.RoleInstance, in.ServiceID, in.Number},
	}
	if err := s.claim(ctx, token, leases); err != nil {
		// A retried create finds its own addresses taken: the instance exists.
		var taken *store.AddressTakenError
		if errors.As(err, &taken) && taken.Lease.Owner == in.ServiceID && taken.Lease.Instance == in.Number && taken.Lease.ReleasedAt.IsZero() {
			if _, gerr := s.getInstance(ctx, in.ServiceID, in.Number); gerr == nil {
				return store.Instance{}, store.ErrAlreadyExists
			}
		}
		return store.Instance{}, err
	}
	change := changeDoc{Kind: store.KindInstance, Op: store.OpPut, ServiceID: in.ServiceID, JobName: sv.JobName, Instance: in.Number, Time: s.nowMS()}
	rev, err := s.reserve(ctx, change)
	if err != nil {
		s.unclaim(ctx, token, leases)
		return store.Instance{}, err
	}
	in.Revision = rev
	if sv.InstanceSlots == nil || *sv.InstanceSlots <= int64(in.Number) {
		// Before the insert: a reader that finds the slots too few misses the instance.
		if err := s.raiseSlots(ctx, in.ServiceID, int64(in.Number)+1); err != nil {
			s.void(ctx, rev)
			s.unclaim(ctx, token, leases)
			return store.Instance{}, err
		}
	}
	if err := insertOne(ctx, s.batch.instances, toInstanceDoc(in, sv.JobName)); err != nil {
		s.void(ctx, rev)
		if definite(err) {
			s.unclaim(ctx, token, leases)
		}
		if mongo.IsDuplicateKeyError(err) {
			return store.Instance{}, store.ErrAlreadyExists
		}
		return store.Instance{}, dbErr(err)
	}
	// A DeleteService that took the service's lock before this point either lists
	// this instance (it lists after locking) or is seen here; never neither.
	if deleted, err := s.serviceGone(ctx, in.ServiceID); err != nil || deleted {
		if err == nil {
			cctx, cancel := detached(ctx)
			defer cancel()
			if _, derr := s.instances.DeleteOne(cctx, bson.D{{Key: "_id", Value: id}}); derr == nil {
				s.void(ctx, rev)
				s.unclaim(ctx, token, leases)
			}
			err = fmt.Errorf("service %s is being deleted: %w", in.ServiceID, store.ErrNotFound)
		}
		return store.Instance{}, err
	}
	err = s.commit(ctx, rev, change)
	if err != nil {
		return store.Instance{}, err
	}
	return in, nil
}

func (s *Store) getInstance(ctx context.Context, serviceID string, number int) (instanceDoc, error) {
	var d instanceDoc
	err := s.instances.FindOne(ctx, bson.D{{Key: "_id", Value: instanceID(serviceID, number)}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return d, store.ErrNotFound
	}
	if err != nil {
		return d, dbErr(err)
	}
	return d, nil
}

// GetInstance returns one instance.
func (s *Store) GetInstance(ctx context.Context, serviceID string, number int) (store.Instance, error) {
	d, err := s.getInstance(ctx, serviceID, number)
	if err == nil {
		var in store.Instance
		if in, err = d.instance(); err == nil {
			return in, nil
		}
	}
	return store.Instance{}, fmt.Errorf("mongo: instance %d of %s: %w", number, serviceID, err)
}

// instanceDocs returns the service's instances by number. They are read by key, one per
// slot below the service's instance slots, several at a time: FerretDB v1 answers the
// filter on service_id by decoding every instance of every service. A service without
// slots (written before they existed, or gone) is read with the filter.
func (s *Store) instanceDocs(ctx context.Context, serviceID string) ([]instanceDoc, error) {
	sv, err := s.getService(ctx, bson.D{{Key: "_id", Value: serviceID}})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err != nil || sv.InstanceSlots == nil {
		var docs []instanceDoc
		err := find(ctx, s.instances, bson.D{{Key: "service_id", Value: serviceID}}, &docs)
		slices.SortFunc(docs, func(a, b instanceDoc) int { return cmp.Compare(a.Number, b.Number) })
		return docs, err
	}
	slots := make([]*instanceDoc, *sv.InstanceSlots)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(perService)
	for n := range slots {
		g.Go(func() error {
			d, err := s.getInstance(gctx, serviceID, n)
			if errors.Is(err, store.ErrNotFound) {
				return nil
			}
			slots[n] = &d
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	var docs []instanceDoc
	for _, d := range slots {
		if d != nil {
			docs = append(docs, *d)
		}
	}
	return docs, nil
}

// perService is how many records of one service (instance slots read, instances
// deleted) are worked on at once.
const perService = 8

// raiseSlots makes the service's instance slots at least n.
func (s *Store) raiseSlots(ctx context.Context, serviceID string, n int64) error {
	_, err := s.services.UpdateOne(ctx, bson.D{{Key: "_id", Value: serviceID}},
		bson.D{{Key: "$max", Value: bson.D{{Key: "instance_slots", Value: n}}}})
	if err != nil {
		return fmt.Errorf("raise instance slots of %s to %d: %w", serviceID, n, dbErr(err))
	}
	return nil
}

// slotsFilled is the meta document saying every service has its instance slots.
const slotsFilled = "instance_slots_filled"

// fillSlots gives the services of a database written before instance slots existed
// theirs (Open runs it once per database). Creates meanwhile raise them too, so none
// is missed.
func (s *Store) fillSlots(ctx context.Context) error {
	high := map[string]int64{}
	if err := scan(ctx, s.services, bson.D{{Key: "_id", Value: 1}}, func(d serviceDoc) { high[d.ID] = 0 }); err != nil {
		return err
	}
	err := scan(ctx, s.instances, bson.D{{Key: "service_id", Value: 1}, {Key: "number", Value: 1}}, func(d instanceDoc) {
		high[d.ServiceID] = max(high[d.ServiceID], int64(d.Number)+1)
	})
	if err != nil {
		return err
	}
	for id, n := range high {
		if err := s.raiseSlots(ctx, id, n); err != nil {
			return err
		}
	}
	return nil
}

// ListInstances returns the service's instances by number.
func (s *Store) ListInstances(ctx context.Context, serviceID string) ([]store.Instance, error) {
	docs, err := s.instanceDocs(ctx, serviceID)
	if err != nil {
		return nil, fmt.Errorf("mongo: instances of %s: %w", serviceID, err)
	}
	out := make([]store.Instance, 0, len(docs))
	for _, d := range docs {
		in, err := d.instance()
		if err != nil {
			return nil, fmt.Errorf("mongo: instances of %s: %w", serviceID, err)
		}
		out = append(out, in)
	}
	return out, nil
}

// instanceLock serialises UpdateInstance and DeleteInstance on one instance across
// processes: FerretDB v1 evaluates an update's filter apart from its write, so a
// revision-conditional replace alone could let two updaters both win.
func instanceLock(serviceID string, number int) string {
	return "instance " + instanceID(serviceID, number)
}

// maxUpdateAttempts bounds UpdateInstance's retries when the instance changed between
// read and write (only possible when a lock holder was silent past the lock TTL).
const maxUpdateAttempts = 10

// UpdateInstance applies fn under the instance's lock and rewrites the instance only if
// its revision is still the one read (on MongoDB that condition is atomic, a second
// guard behind the lock).
func (s *Store) UpdateInstance(ctx context.Context, serviceID string, number int, fn func(*store.Instance) error) (store.Instance, error) {
	unlock, err := s.lock(ctx, instanceLock(serviceID, number))
	if err != nil {
		return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
	}
	defer unlock()
	for range maxUpdateAttempts {
		d, err := s.getInstance(ctx, serviceID, number)
		if err != nil {
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
		}
		old, err := d.instance()
		if err != nil {
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
		}
		in := old
		if old.Location != nil {
			loc := *old.Location
			in.Location = &loc
		}
		if old.Standby != nil {
			sb := *old.Standby
			in.Standby = &sb
		}
		if err := fn(&in); err != nil {
			return store.Instance{}, err
		}
		if in.ServiceID != old.ServiceID || in.Number != old.Number || in.IP != old.IP {
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: service ID, number and Instance IP cannot change", number, serviceID)
		}
		change := changeDoc{Kind: store.KindInstance, Op: store.OpPut, ServiceID: serviceID, JobName: d.JobName, Instance: number, Time: s.nowMS()}
		rev, err := s.reserve(ctx, change)
		if err != nil {
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
		}
		in.Revision = rev
		in.UpdatedAt = ms(in.UpdatedAt)
		up, err := setAll(toInstanceDoc(in, d.JobName), "location", "reported_by", "report_seq", "standby", "placed_revision")
		if err != nil {
			s.void(ctx, rev)
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
		}
		res, err := s.instances.UpdateOne(ctx, bson.D{{Key: "_id", Value: d.ID}, {Key: "revision", Value: d.Revision}}, up)
		if err != nil {
			s.void(ctx, rev)
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, dbErr(err))
		}
		if res.MatchedCount == 0 {
			s.void(ctx, rev)
			continue
		}
		err = s.commit(ctx, rev, change)
		if err != nil {
			return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: %w", number, serviceID, err)
		}
		return in, nil
	}
	return store.Instance{}, fmt.Errorf("mongo: update instance %d of %s: changed under its lock %d times: %w", number, serviceID, maxUpdateAttempts, store.ErrUnavailable)
}

// deleteInstance deletes the instance document (under the instance's lock), releases
// its addresses and logs the delete.
func (s *Store) deleteInstance(ctx context.Context, serviceID string, number int) error {
	unlock, err := s.lock(ctx, instanceLock(serviceID, number))
	if err != nil {
		return err
	}
	defer unlock()
	d, err := s.getInstance(ctx, serviceID, number)
	if err != nil {
		return err
	}
	in, err := d.instance()
	if err != nil {
		return err
	}
	now := s.nowMS()
	change := changeDoc{Kind: store.KindInstance, Op: store.OpDelete, ServiceID: d.ServiceID, JobName: d.JobName, Instance: d.Number, Time: now}
	return s.deleteLogged(ctx, s.instances, d.ID, change, func(ctx context.Context) error {
		return s.release(ctx, now, d.ServiceID, d.Number, []string{store.RoleInstance}, in.IP.V4, in.IP.V6)
	})
}

// DeleteInstance removes an instance and releases its addresses into quarantine.
func (s *Store) DeleteInstance(ctx context.Context, serviceID string, number int) error {
	if err := s.deleteInstance(ctx, serviceID, number); err != nil {
		return fmt.Errorf("mongo: delete instance %d of %s: %w", number, serviceID, err)
	}
	return nil
}
