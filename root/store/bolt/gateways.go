package bolt

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

// PutGateway creates or replaces a gateway and logs the put, in one transaction.
func (s *Store) PutGateway(ctx context.Context, g store.Gateway) (store.Gateway, error) {
	if err := checkID("gateway", g.ID); err != nil {
		return store.Gateway{}, fmt.Errorf("bolt: put gateway: %w", err)
	}
	in := g
	in.CreatedAt, in.UpdatedAt = normTime(in.CreatedAt), normTime(in.UpdatedAt)
	var out store.Gateway
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		g, now := in, s.nowUTC()
		if g.CreatedAt.IsZero() {
			g.CreatedAt = now
		}
		if g.UpdatedAt.IsZero() {
			g.UpdatedAt = now
		}
		rev, err := logChange(tx, store.Change{Kind: store.KindGateway, Op: store.OpPut, Instance: -1, Object: g.ID, Time: now})
		if err != nil {
			return err
		}
		g.Revision = rev
		if err := putJSON(bk(tx, bucketGateways), []byte(g.ID), g); err != nil {
			return err
		}
		out = g
		return nil
	})
	if err != nil {
		return store.Gateway{}, fmt.Errorf("bolt: put gateway %s: %w", g.ID, err)
	}
	return out, nil
}

// GetGateway returns the gateway with this ID.
func (s *Store) GetGateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := viewRecord[store.Gateway](ctx, s, bucketGateways, []byte(id))
	if err != nil {
		return store.Gateway{}, fmt.Errorf("bolt: gateway %s: %w", id, err)
	}
	return g, nil
}

// ListGateways returns every gateway, by ID.
func (s *Store) ListGateways(ctx context.Context) ([]store.Gateway, error) {
	var out []store.Gateway
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		out, err = listRecords[store.Gateway](tx, bucketGateways)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list gateways: %w", err)
	}
	return out, nil
}

// DeleteGateway removes a gateway and logs the delete, in one transaction.
func (s *Store) DeleteGateway(ctx context.Context, id string) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := bk(tx, bucketGateways)
		if b.Get([]byte(id)) == nil {
			return fail(store.ErrNotFound)
		}
		if err := b.Delete([]byte(id)); err != nil {
			return err
		}
		_, err := logChange(tx, store.Change{Kind: store.KindGateway, Op: store.OpDelete, Instance: -1, Object: id, Time: s.nowUTC()})
		return err
	})
	if err != nil {
		return fmt.Errorf("bolt: delete gateway %s: %w", id, err)
	}
	return nil
}

// CreateExposure stores e under its service in one transaction, which also makes the
// check that the service exists atomic with the insert.
func (s *Store) CreateExposure(ctx context.Context, e store.Exposure) (store.Exposure, error) {
	if err := checkID("exposure", e.ID); err != nil {
		return store.Exposure{}, fmt.Errorf("bolt: create exposure: %w", err)
	}
	if err := checkID("service", e.ServiceID); err != nil {
		return store.Exposure{}, fmt.Errorf("bolt: create exposure %s: %w", e.ID, err)
	}
	in := e
	in.CreatedAt = normTime(in.CreatedAt)
	var out store.Exposure
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		e, now := in, s.nowUTC()
		if e.CreatedAt.IsZero() {
			e.CreatedAt = now
		}
		sv, err := getService(tx, e.ServiceID)
		if err != nil {
			return fail(fmt.Errorf("service %s: %w", e.ServiceID, err))
		}
		b := bk(tx, bucketExposures)
		if b.Get([]byte(e.ID)) != nil {
			return fail(fmt.Errorf("exposure %s: %w", e.ID, store.ErrAlreadyExists))
		}
		e.JobName = sv.JobName()
		rev, err := logChange(tx, exposureChange(e, store.OpPut, now))
		if err != nil {
			return err
		}
		e.Revision = rev
		if err := putJSON(b, []byte(e.ID), e); err != nil {
			return err
		}
		if err := bk(tx, bucketExposuresBy).Put(pairKey(e.ServiceID, e.ID), nil); err != nil {
			return err
		}
		out = e
		return nil
	})
	if err != nil {
		return store.Exposure{}, fmt.Errorf("bolt: create exposure %s of %s: %w", e.ID, e.ServiceID, err)
	}
	return out, nil
}

func exposureChange(e store.Exposure, op string, now time.Time) store.Change {
	return store.Change{Kind: store.KindExposure, Op: op, ServiceID: e.ServiceID, JobName: e.JobName,
		Instance: -1, Object: e.ID, Time: now}
}

func getExposure(tx *bbolt.Tx, id string) (store.Exposure, error) {
	return getRecord[store.Exposure](tx, bucketExposures, []byte(id))
}

// GetExposure returns the exposure with this ID.
func (s *Store) GetExposure(ctx context.Context, id string) (store.Exposure, error) {
	e, err := viewRecord[store.Exposure](ctx, s, bucketExposures, []byte(id))
	if err != nil {
		return store.Exposure{}, fmt.Errorf("bolt: exposure %s: %w", id, err)
	}
	return e, nil
}

// serviceExposures returns the exposures of a service, by ID.
func serviceExposures(tx *bbolt.Tx, serviceID string) ([]store.Exposure, error) {
	ids, err := prefixSuffixes(bk(tx, bucketExposuresBy), serviceID)
	if err != nil {
		return nil, err
	}
	out := make([]store.Exposure, 0, len(ids))
	for _, id := range ids {
		e, err := getExposure(tx, id)
		if err != nil {
			return nil, fmt.Errorf("exposure %s of service %s: %w", id, serviceID, err)
		}
		out = append(out, e)
	}
	return out, nil
}

// ListExposures returns a service's exposures, or with "" every exposure, by ID.
func (s *Store) ListExposures(ctx context.Context, serviceID string) ([]store.Exposure, error) {
	var out []store.Exposure
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		if serviceID != "" {
			out, err = serviceExposures(tx, serviceID)
		} else {
			out, err = listRecords[store.Exposure](tx, bucketExposures)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list exposures of %q: %w", serviceID, err)
	}
	return out, nil
}

// deleteExposure removes e and its index entry and logs the delete.
func deleteExposure(tx *bbolt.Tx, e store.Exposure, now time.Time) error {
	if err := bk(tx, bucketExposures).Delete([]byte(e.ID)); err != nil {
		return err
	}
	if err := bk(tx, bucketExposuresBy).Delete(pairKey(e.ServiceID, e.ID)); err != nil {
		return err
	}
	_, err := logChange(tx, exposureChange(e, store.OpDelete, now))
	return err
}

// DeleteExposure removes an exposure and logs the delete, in one transaction.
func (s *Store) DeleteExposure(ctx context.Context, id string) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		e, err := getExposure(tx, id)
		if err != nil {
			return fail(err)
		}
		return deleteExposure(tx, e, s.nowUTC())
	})
	if err != nil {
		return fmt.Errorf("bolt: delete exposure %s: %w", id, err)
	}
	return nil
}
