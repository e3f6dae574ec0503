package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

// CreateInstance stores in and claims its Instance IP pair in one transaction.
func (s *Store) CreateInstance(ctx context.Context, in store.Instance) (store.Instance, error) {
	if err := checkID("service", in.ServiceID); err != nil {
		return store.Instance{}, fmt.Errorf("bolt: create instance %d: %w", in.Number, err)
	}
	if err := checkAddr("Instance IP (IPv4)", in.IP.V4); err != nil {
		return store.Instance{}, fmt.Errorf("bolt: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	if err := checkAddr("Instance IP (IPv6)", in.IP.V6); err != nil {
		return store.Instance{}, fmt.Errorf("bolt: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	in.UpdatedAt = normTime(in.UpdatedAt)
	var out store.Instance
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		in := in
		sv, err := getService(tx, in.ServiceID)
		if err != nil {
			return fail(fmt.Errorf("service %s: %w", in.ServiceID, err))
		}
		b := bk(tx, bucketInstances)
		key := instanceKey(in.ServiceID, in.Number)
		if b.Get(key) != nil {
			return fail(fmt.Errorf("instance %d: %w", in.Number, store.ErrAlreadyExists))
		}
		now := s.nowUTC()
		if err := s.claim(tx, []store.Lease{
			newLease(in.IP.V4, store.RoleInstance, in.ServiceID, in.Number, now),
			newLease(in.IP.V6, store.RoleInstance, in.ServiceID, in.Number, now),
		}); err != nil {
			return err
		}
		rev, err := logChange(tx, store.Change{Kind: store.KindInstance, Op: store.OpPut, ServiceID: in.ServiceID,
			JobName: sv.JobName(), Instance: in.Number, Time: now})
		if err != nil {
			return err
		}
		in.Revision = rev
		if err := putJSON(b, key, in); err != nil {
			return err
		}
		out = in
		return nil
	})
	if err != nil {
		return store.Instance{}, fmt.Errorf("bolt: create instance %d of %s: %w", in.Number, in.ServiceID, err)
	}
	return out, nil
}

func getInstance(tx *bbolt.Tx, serviceID string, number int) (store.Instance, error) {
	var in store.Instance
	ok, err := getJSON(bk(tx, bucketInstances), instanceKey(serviceID, number), &in)
	if err != nil {
		return in, err
	}
	if !ok {
		return in, store.ErrNotFound
	}
	return in, nil
}

// GetInstance returns one instance.
func (s *Store) GetInstance(ctx context.Context, serviceID string, number int) (store.Instance, error) {
	var in store.Instance
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		in, err = getInstance(tx, serviceID, number)
		return err
	})
	if err != nil {
		return store.Instance{}, fmt.Errorf("bolt: instance %d of %s: %w", number, serviceID, err)
	}
	return in, nil
}

// ListInstances returns the service's instances by number.
func (s *Store) ListInstances(ctx context.Context, serviceID string) ([]store.Instance, error) {
	var out []store.Instance
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		prefix := append([]byte(serviceID), 0)
		c := bk(tx, bucketInstances).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var in store.Instance
			if err := json.Unmarshal(v, &in); err != nil {
				return fmt.Errorf("decode instance: %w", err)
			}
			out = append(out, in)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: instances of %s: %w", serviceID, err)
	}
	return out, nil
}

// maxUpdateAttempts bounds UpdateInstance's optimistic retries. Each conflict means
// another update committed, so the loop only fails under sustained contention on one
// instance.
const maxUpdateAttempts = 100

// UpdateInstance runs fn on a copy of the instance outside any transaction (so fn may
// take its time or call the store) and commits the result only if the instance has not
// changed meanwhile; otherwise it reads the instance again and reruns fn.
func (s *Store) UpdateInstance(ctx context.Context, serviceID string, number int, fn func(*store.Instance) error) (store.Instance, error) {
	for attempt := 0; attempt < maxUpdateAttempts; attempt++ {
		var old store.Instance
		err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
			old, err = getInstance(tx, serviceID, number)
			return err
		})
		if err != nil {
			return store.Instance{}, fmt.Errorf("bolt: update instance %d of %s: %w", number, serviceID, err)
		}
		in := old
		if old.Location != nil {
			loc := *old.Location
			in.Location = &loc
		}
		if err := fn(&in); err != nil {
			return store.Instance{}, err
		}
		if in.ServiceID != old.ServiceID || in.Number != old.Number || in.IP != old.IP {
			return store.Instance{}, fmt.Errorf("bolt: update instance %d of %s: service ID, number and Instance IP cannot change", number, serviceID)
		}
		in.UpdatedAt = normTime(in.UpdatedAt)
		conflict := false
		var out store.Instance
		err = s.update(ctx, func(tx *bbolt.Tx) error {
			conflict = false
			cur, err := getInstance(tx, serviceID, number)
			if err != nil {
				return fail(err)
			}
			if cur.Revision != old.Revision {
				conflict = true
				return nil
			}
			sv, err := getService(tx, serviceID)
			if err != nil {
				return fail(err)
			}
			in := in
			rev, err := logChange(tx, store.Change{Kind: store.KindInstance, Op: store.OpPut, ServiceID: serviceID,
				JobName: sv.JobName(), Instance: number, Time: s.nowUTC()})
			if err != nil {
				return err
			}
			in.Revision = rev
			if err := putJSON(bk(tx, bucketInstances), instanceKey(serviceID, number), in); err != nil {
				return err
			}
			out = in
			return nil
		})
		if err != nil {
			return store.Instance{}, fmt.Errorf("bolt: update instance %d of %s: %w", number, serviceID, err)
		}
		if !conflict {
			return out, nil
		}
	}
	return store.Instance{}, fmt.Errorf("bolt: update instance %d of %s: gave up after %d conflicting concurrent updates", number, serviceID, maxUpdateAttempts)
}

// deleteInstance removes in, releases its addresses and logs the delete.
func (s *Store) deleteInstance(tx *bbolt.Tx, sv store.Service, in store.Instance, now time.Time) error {
	if err := bk(tx, bucketInstances).Delete(instanceKey(in.ServiceID, in.Number)); err != nil {
		return err
	}
	if err := s.release(tx, store.RoleInstance, in.ServiceID, in.Number, now, in.IP.V4, in.IP.V6); err != nil {
		return err
	}
	_, err := logChange(tx, store.Change{Kind: store.KindInstance, Op: store.OpDelete, ServiceID: in.ServiceID,
		JobName: sv.JobName(), Instance: in.Number, Time: now})
	return err
}

// DeleteInstance removes an instance and releases its addresses into quarantine.
func (s *Store) DeleteInstance(ctx context.Context, serviceID string, number int) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		in, err := getInstance(tx, serviceID, number)
		if err != nil {
			return fail(err)
		}
		sv, err := getService(tx, serviceID)
		if err != nil {
			return fail(err)
		}
		return s.deleteInstance(tx, sv, in, s.nowUTC())
	})
	if err != nil {
		return fmt.Errorf("bolt: delete instance %d of %s: %w", number, serviceID, err)
	}
	return nil
}
