package mongo

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/root/store"
)

// PutGateway reserves a revision, replaces (or inserts) the gateway and logs the put.
func (s *Store) PutGateway(ctx context.Context, g store.Gateway) (store.Gateway, error) {
	if err := checkID("gateway", g.ID); err != nil {
		return store.Gateway{}, fmt.Errorf("mongo: put gateway: %w", err)
	}
	out, err := s.putGateway(ctx, g)
	if err != nil {
		return store.Gateway{}, fmt.Errorf("mongo: put gateway %s: %w", g.ID, err)
	}
	return out, nil
}

func (s *Store) putGateway(ctx context.Context, g store.Gateway) (store.Gateway, error) {
	now := s.nowMS()
	g.CreatedAt, g.UpdatedAt = ms(g.CreatedAt), ms(g.UpdatedAt)
	if g.CreatedAt.IsZero() {
		g.CreatedAt = now
	}
	if g.UpdatedAt.IsZero() {
		g.UpdatedAt = now
	}
	change := changeDoc{Kind: store.KindGateway, Op: store.OpPut, Instance: -1, Object: g.ID, Time: now}
	rev, err := s.reserve(ctx, change)
	if err != nil {
		return store.Gateway{}, err
	}
	g.Revision = rev
	filter := bson.D{{Key: "_id", Value: g.ID}}
	_, err = s.gateways.ReplaceOne(ctx, filter, toGatewayDoc(g), options.Replace().SetUpsert(true))
	if mongo.IsDuplicateKeyError(err) { // a concurrent first upsert won; write over it
		_, err = s.gateways.ReplaceOne(ctx, filter, toGatewayDoc(g))
	}
	if err != nil {
		s.void(ctx, rev)
		return store.Gateway{}, dbErr(err)
	}
	if err := s.commit(ctx, rev, change); err != nil {
		return store.Gateway{}, err
	}
	return g, nil
}

// GetGateway returns the gateway with this ID.
func (s *Store) GetGateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := getRecord(ctx, s.gateways, id, gatewayDoc.gateway)
	if err != nil {
		return store.Gateway{}, fmt.Errorf("mongo: gateway %s: %w", id, err)
	}
	return g, nil
}

// ListGateways returns every gateway, by ID.
func (s *Store) ListGateways(ctx context.Context) ([]store.Gateway, error) {
	out, err := listRecords(ctx, s.gateways, bson.D{}, gatewayDoc.gateway)
	if err != nil {
		return nil, fmt.Errorf("mongo: list gateways: %w", err)
	}
	return out, nil
}

// DeleteGateway deletes the gateway, then logs the delete.
func (s *Store) DeleteGateway(ctx context.Context, id string) error {
	if err := s.deleteGateway(ctx, id); err != nil {
		return fmt.Errorf("mongo: delete gateway %s: %w", id, err)
	}
	return nil
}

func (s *Store) deleteGateway(ctx context.Context, id string) error {
	change := changeDoc{Kind: store.KindGateway, Op: store.OpDelete, Instance: -1, Object: id, Time: s.nowMS()}
	return s.deleteLogged(ctx, s.gateways, id, change, nil)
}

// CreateExposure checks that the service exists and is not being deleted, inserts the
// exposure (its _id decides between two creates of one public port), checks the
// service again and logs the put.
func (s *Store) CreateExposure(ctx context.Context, e store.Exposure) (store.Exposure, error) {
	if err := checkID("exposure", e.ID); err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: create exposure: %w", err)
	}
	if err := checkID("service", e.ServiceID); err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: create exposure %s: %w", e.ID, err)
	}
	out, err := s.createExposure(ctx, e)
	if err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: create exposure %s of %s: %w", e.ID, e.ServiceID, err)
	}
	return out, nil
}

func (s *Store) createExposure(ctx context.Context, e store.Exposure) (store.Exposure, error) {
	now := s.nowMS()
	e.CreatedAt = ms(e.CreatedAt)
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	sv, err := s.liveService(ctx, e.ServiceID)
	if err != nil {
		return store.Exposure{}, err
	}
	e.JobName = sv.JobName
	change := changeDoc{Kind: store.KindExposure, Op: store.OpPut, ServiceID: e.ServiceID, JobName: e.JobName, Instance: -1, Object: e.ID, Time: now}
	rev, err := s.reserve(ctx, change)
	if err != nil {
		return store.Exposure{}, err
	}
	e.Revision = rev
	if _, err := s.exposures.InsertOne(ctx, toExposureDoc(e)); err != nil {
		s.void(ctx, rev)
		if mongo.IsDuplicateKeyError(err) {
			return store.Exposure{}, fmt.Errorf("exposure %s: %w", e.ID, store.ErrAlreadyExists)
		}
		return store.Exposure{}, dbErr(err)
	}
	if deleted, err := s.serviceGone(ctx, e.ServiceID); err != nil || deleted {
		if err == nil {
			cctx, cancel := detached(ctx)
			defer cancel()
			if _, derr := s.exposures.DeleteOne(cctx, bson.D{{Key: "_id", Value: e.ID}, {Key: "revision", Value: int64(rev)}}); derr == nil {
				s.void(ctx, rev)
			}
			err = fmt.Errorf("service %s is being deleted: %w", e.ServiceID, store.ErrNotFound)
		}
		return store.Exposure{}, err
	}
	if err := s.commit(ctx, rev, change); err != nil {
		return store.Exposure{}, err
	}
	return e, nil
}

// GetExposure returns the exposure with this ID.
func (s *Store) GetExposure(ctx context.Context, id string) (store.Exposure, error) {
	e, err := getRecord(ctx, s.exposures, id, exposureDoc.exposure)
	if err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: exposure %s: %w", id, err)
	}
	return e, nil
}

// ListExposures returns a service's exposures, or with "" every exposure, by ID.
func (s *Store) ListExposures(ctx context.Context, serviceID string) ([]store.Exposure, error) {
	filter := bson.D{}
	if serviceID != "" {
		filter = bson.D{{Key: "service_id", Value: serviceID}}
	}
	out, err := listRecords(ctx, s.exposures, filter, exposureDoc.exposure)
	if err != nil {
		return nil, fmt.Errorf("mongo: list exposures of %q: %w", serviceID, err)
	}
	return out, nil
}

// deleteExposure deletes the exposure document and logs the delete. Of two concurrent
// deletes only the one whose delete removed the document logs it.
func (s *Store) deleteExposure(ctx context.Context, d exposureDoc) error {
	change := changeDoc{Kind: store.KindExposure, Op: store.OpDelete, ServiceID: d.ServiceID, JobName: d.JobName, Instance: -1, Object: d.ID, Time: s.nowMS()}
	return s.deleteLogged(ctx, s.exposures, d.ID, change, nil)
}

// DeleteExposure removes an exposure and logs the delete.
func (s *Store) DeleteExposure(ctx context.Context, id string) error {
	d, err := byID[exposureDoc](ctx, s.exposures, id)
	if err == nil {
		err = s.deleteExposure(ctx, d)
	}
	if err != nil {
		return fmt.Errorf("mongo: delete exposure %s: %w", id, err)
	}
	return nil
}
