package mongo

import (
	"context"
	"errors"
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
	rev, err := s.reserve(ctx)
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
	if err := s.commit(ctx, rev, changeDoc{Kind: store.KindGateway, Op: store.OpPut, Instance: -1, Object: g.ID, Time: now}); err != nil {
		return store.Gateway{}, err
	}
	return g, nil
}

// GetGateway returns the gateway with this ID.
func (s *Store) GetGateway(ctx context.Context, id string) (store.Gateway, error) {
	var d gatewayDoc
	err := s.gateways.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return store.Gateway{}, fmt.Errorf("mongo: gateway %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Gateway{}, fmt.Errorf("mongo: gateway %s: %w", id, dbErr(err))
	}
	g, err := d.gateway()
	if err != nil {
		return store.Gateway{}, fmt.Errorf("mongo: gateway %s: %w", id, err)
	}
	return g, nil
}

// ListGateways returns every gateway, by ID.
func (s *Store) ListGateways(ctx context.Context) ([]store.Gateway, error) {
	cur, err := s.gateways.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongo: list gateways: %w", dbErr(err))
	}
	var docs []gatewayDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list gateways: %w", dbErr(err))
	}
	out := make([]store.Gateway, len(docs))
	for i, d := range docs {
		if out[i], err = d.gateway(); err != nil {
			return nil, fmt.Errorf("mongo: list gateways: %s: %w", d.ID, err)
		}
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
	res, err := s.gateways.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return dbErr(err)
	}
	if res.DeletedCount == 0 {
		return store.ErrNotFound
	}
	rev, err := s.reserve(ctx)
	if err != nil {
		return err
	}
	return s.commit(ctx, rev, changeDoc{Kind: store.KindGateway, Op: store.OpDelete, Instance: -1, Object: id, Time: s.nowMS()})
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
	rev, err := s.reserve(ctx)
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
	if err := s.commit(ctx, rev, changeDoc{Kind: store.KindExposure, Op: store.OpPut, ServiceID: e.ServiceID,
		JobName: e.JobName, Instance: -1, Object: e.ID, Time: now}); err != nil {
		return store.Exposure{}, err
	}
	return e, nil
}

// GetExposure returns the exposure with this ID.
func (s *Store) GetExposure(ctx context.Context, id string) (store.Exposure, error) {
	var d exposureDoc
	err := s.exposures.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return store.Exposure{}, fmt.Errorf("mongo: exposure %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: exposure %s: %w", id, dbErr(err))
	}
	e, err := d.exposure()
	if err != nil {
		return store.Exposure{}, fmt.Errorf("mongo: exposure %s: %w", id, err)
	}
	return e, nil
}

func (s *Store) exposureDocs(ctx context.Context, filter bson.D) ([]exposureDoc, error) {
	cur, err := s.exposures.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, dbErr(err)
	}
	var docs []exposureDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, dbErr(err)
	}
	return docs, nil
}

// ListExposures returns a service's exposures, or with "" every exposure, by ID.
func (s *Store) ListExposures(ctx context.Context, serviceID string) ([]store.Exposure, error) {
	filter := bson.D{}
	if serviceID != "" {
		filter = bson.D{{Key: "service_id", Value: serviceID}}
	}
	docs, err := s.exposureDocs(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("mongo: list exposures of %q: %w", serviceID, err)
	}
	out := make([]store.Exposure, len(docs))
	for i, d := range docs {
		if out[i], err = d.exposure(); err != nil {
			return nil, fmt.Errorf("mongo: list exposures: %s: %w", d.ID, err)
		}
	}
	return out, nil
}

// deleteExposure deletes the exposure document and logs the delete. Of two concurrent
// deletes only the one whose delete removed the document logs it.
func (s *Store) deleteExposure(ctx context.Context, d exposureDoc) error {
	res, err := s.exposures.DeleteOne(ctx, bson.D{{Key: "_id", Value: d.ID}})
	if err != nil {
		return dbErr(err)
	}
	if res.DeletedCount == 0 {
		return store.ErrNotFound
	}
	rev, err := s.reserve(ctx)
	if err != nil {
		return err
	}
	return s.commit(ctx, rev, changeDoc{Kind: store.KindExposure, Op: store.OpDelete, ServiceID: d.ServiceID,
		JobName: d.JobName, Instance: -1, Object: d.ID, Time: s.nowMS()})
}

// DeleteExposure removes an exposure and logs the delete.
func (s *Store) DeleteExposure(ctx context.Context, id string) error {
	var d exposureDoc
	err := s.exposures.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		err = store.ErrNotFound
	} else if err == nil {
		err = s.deleteExposure(ctx, d)
	} else {
		err = dbErr(err)
	}
	if err != nil {
		return fmt.Errorf("mongo: delete exposure %s: %w", id, err)
	}
	return nil
}
