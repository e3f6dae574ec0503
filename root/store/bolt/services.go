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

func serviceLeases(sv store.Service, now time.Time) []store.Lease {
	return []store.Lease{
		newLease(sv.RR.V4, store.RoleRoundRobin, sv.ID, -1, now),
		newLease(sv.RR.V6, store.RoleRoundRobin, sv.ID, -1, now),
		newLease(sv.Closest.V4, store.RoleClosest, sv.ID, -1, now),
		newLease(sv.Closest.V6, store.RoleClosest, sv.ID, -1, now),
	}
}

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

// CreateService stores sv and claims its four addresses in one transaction.
func (s *Store) CreateService(ctx context.Context, sv store.Service) (store.Service, error) {
	if err := checkService(sv); err != nil {
		return store.Service{}, fmt.Errorf("bolt: create service %s: %w", sv.ID, err)
	}
	in := sv
	in.CreatedAt = normTime(in.CreatedAt)
	var out store.Service
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		sv, now := in, s.nowUTC()
		if sv.CreatedAt.IsZero() {
			sv.CreatedAt = now
		}
		services, jobs := bk(tx, bucketServices), bk(tx, bucketJobs)
		if services.Get([]byte(sv.ID)) != nil {
			return fail(fmt.Errorf("service ID %s: %w", sv.ID, store.ErrAlreadyExists))
		}
		job := sv.JobName()
		if id := jobs.Get([]byte(job)); id != nil {
			return fail(fmt.Errorf("job name %s (service %s): %w", job, id, store.ErrAlreadyExists))
		}
		if err := s.claim(tx, serviceLeases(sv, now)); err != nil {
			return err
		}
		rev, err := logChange(tx, store.Change{Kind: store.KindService, Op: store.OpPut, ServiceID: sv.ID,
			JobName: job, Instance: -1, Time: now})
		if err != nil {
			return err
		}
		sv.Revision = rev
		if err := putJSON(services, []byte(sv.ID), sv); err != nil {
			return err
		}
		if err := jobs.Put([]byte(job), []byte(sv.ID)); err != nil {
			return err
		}
		out = sv
		return nil
	})
	if err != nil {
		return store.Service{}, fmt.Errorf("bolt: create service %s: %w", sv.JobName(), err)
	}
	return out, nil
}

func getService(tx *bbolt.Tx, id string) (store.Service, error) {
	var sv store.Service
	ok, err := getJSON(bk(tx, bucketServices), []byte(id), &sv)
	if err != nil {
		return sv, err
	}
	if !ok {
		return sv, store.ErrNotFound
	}
	return sv, nil
}

// GetService returns the service with this ID.
func (s *Store) GetService(ctx context.Context, id string) (store.Service, error) {
	var sv store.Service
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		sv, err = getService(tx, id)
		return err
	})
	if err != nil {
		return store.Service{}, fmt.Errorf("bolt: service %s: %w", id, err)
	}
	return sv, nil
}

// GetServiceByJobName returns the service with this job name.
func (s *Store) GetServiceByJobName(ctx context.Context, jobName string) (store.Service, error) {
	var sv store.Service
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		id := bk(tx, bucketJobs).Get([]byte(jobName))
		if id == nil {
			return store.ErrNotFound
		}
		sv, err = getService(tx, string(id))
		return err
	})
	if err != nil {
		return store.Service{}, fmt.Errorf("bolt: service %s: %w", jobName, err)
	}
	return sv, nil
}

// ListServices returns up to limit services with ID > after, by ID (limit <= 0: all).
func (s *Store) ListServices(ctx context.Context, after string, limit int) ([]store.Service, error) {
	var out []store.Service
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		c := bk(tx, bucketServices).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			var sv store.Service
			if err := json.Unmarshal(v, &sv); err != nil {
				return fmt.Errorf("decode service %s: %w", k, err)
			}
			out = append(out, sv)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list services after %q: %w", after, err)
	}
	return out, nil
}

// DeleteService removes the service, its exposures and with force its instances,
// releasing their addresses into quarantine, in one transaction.
func (s *Store) DeleteService(ctx context.Context, id string, force bool) (store.Deleted, error) {
	var del store.Deleted
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		sv, err := getService(tx, id)
		if err != nil {
			return fail(err)
		}
		prefix := append([]byte(id), 0)
		var ins []store.Instance
		c := bk(tx, bucketInstances).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if !force {
				return fail(fmt.Errorf("service %s: %w", sv.JobName(), store.ErrHasInstances))
			}
			var in store.Instance
			if err := json.Unmarshal(v, &in); err != nil {
				return fmt.Errorf("decode instance: %w", err)
			}
			ins = append(ins, in)
		}
		exs, err := serviceExposures(tx, id)
		if err != nil {
			return err
		}
		now := s.nowUTC()
		for _, e := range exs {
			if err := deleteExposure(tx, e, now); err != nil {
				return err
			}
		}
		for _, in := range ins {
			if err := s.deleteInstance(tx, sv, in, now); err != nil {
				return err
			}
		}
		if err := bk(tx, bucketServices).Delete([]byte(id)); err != nil {
			return err
		}
		if err := bk(tx, bucketJobs).Delete([]byte(sv.JobName())); err != nil {
			return err
		}
		if err := s.release(tx, store.RoleRoundRobin, id, -1, now, sv.RR.V4, sv.RR.V6); err != nil {
			return err
		}
		if err := s.release(tx, store.RoleClosest, id, -1, now, sv.Closest.V4, sv.Closest.V6); err != nil {
			return err
		}
		if _, err = logChange(tx, store.Change{Kind: store.KindService, Op: store.OpDelete, ServiceID: id,
			JobName: sv.JobName(), Instance: -1, Time: now}); err != nil {
			return err
		}
		del = store.Deleted{Service: sv, Instances: ins}
		if len(exs) > 0 {
			del.Exposures = exs // nil when none, as the instances
		}
		return nil
	})
	if err != nil {
		return store.Deleted{}, fmt.Errorf("bolt: delete service %s: %w", id, err)
	}
	return del, nil
}
