package mongo

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/root/store"
)

// PutCluster creates or replaces a cluster.
func (s *Store) PutCluster(ctx context.Context, c store.Cluster) error {
	if err := checkID("cluster", c.ID); err != nil {
		return fmt.Errorf("mongo: put cluster: %w", err)
	}
	_, err := s.clusters.ReplaceOne(ctx, bson.D{{Key: "_id", Value: c.ID}}, toClusterDoc(c), options.Replace().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("mongo: put cluster %s: %w", c.ID, dbErr(err))
	}
	return nil
}

// GetCluster returns the cluster with this ID.
func (s *Store) GetCluster(ctx context.Context, id string) (store.Cluster, error) {
	var d clusterDoc
	err := s.clusters.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return store.Cluster{}, fmt.Errorf("mongo: cluster %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return store.Cluster{}, fmt.Errorf("mongo: cluster %s: %w", id, dbErr(err))
	}
	return d.cluster(), nil
}

// ListClusters returns every cluster, by ID.
func (s *Store) ListClusters(ctx context.Context) ([]store.Cluster, error) {
	cur, err := s.clusters.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("mongo: list clusters: %w", dbErr(err))
	}
	var docs []clusterDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list clusters: %w", dbErr(err))
	}
	out := make([]store.Cluster, len(docs))
	for i, d := range docs {
		out[i] = d.cluster()
	}
	return out, nil
}

// DeleteCluster removes the cluster's interests, then the cluster (in that order, so a
// retry after a crash finishes the job). ErrNotFound if there was no such cluster.
func (s *Store) DeleteCluster(ctx context.Context, id string) error {
	if _, err := s.interests.DeleteMany(ctx, bson.D{{Key: "cluster_id", Value: id}}); err != nil {
		return fmt.Errorf("mongo: delete cluster %s: interests: %w", id, dbErr(err))
	}
	res, err := s.clusters.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	if err != nil {
		return fmt.Errorf("mongo: delete cluster %s: %w", id, dbErr(err))
	}
	if res.DeletedCount == 0 {
		return fmt.Errorf("mongo: delete cluster %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// AddInterest records that clusterID follows serviceID.
func (s *Store) AddInterest(ctx context.Context, clusterID, serviceID string) error {
	if err := checkID("cluster", clusterID); err != nil {
		return fmt.Errorf("mongo: add interest: %w", err)
	}
	if err := checkID("service", serviceID); err != nil {
		return fmt.Errorf("mongo: add interest: %w", err)
	}
	d := toInterestDoc(clusterID, serviceID)
	err := s.interests.FindOne(ctx, bson.D{{Key: "_id", Value: d.ID}}).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		_, err = s.interests.InsertOne(ctx, d)
		if mongo.IsDuplicateKeyError(err) { // a concurrent add won
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("mongo: add interest of cluster %s in service %s: %w", clusterID, serviceID, dbErr(err))
	}
	return nil
}

// Interested reports whether clusterID follows serviceID.
func (s *Store) Interested(ctx context.Context, clusterID, serviceID string) (bool, error) {
	err := s.interests.FindOne(ctx, bson.D{{Key: "_id", Value: interestID(clusterID, serviceID)}}).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("mongo: interest of cluster %s in service %s: %w", clusterID, serviceID, dbErr(err))
	}
	return true, nil
}

// RemoveInterest forgets that clusterID follows serviceID; no error if it did not.
func (s *Store) RemoveInterest(ctx context.Context, clusterID, serviceID string) error {
	_, err := s.interests.DeleteOne(ctx, bson.D{{Key: "_id", Value: interestID(clusterID, serviceID)}})
	if err != nil {
		return fmt.Errorf("mongo: remove interest of cluster %s in service %s: %w", clusterID, serviceID, dbErr(err))
	}
	return nil
}

// interestField lists one field of the interests matching filter, sorted.
func (s *Store) interestField(ctx context.Context, filter bson.D, field string) ([]string, error) {
	cur, err := s.interests.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: field, Value: 1}}))
	if err != nil {
		return nil, dbErr(err)
	}
	var docs []struct { // not interestDoc: Open may not have rewritten an old _id yet
		ClusterID string `bson:"cluster_id"`
		ServiceID string `bson:"service_id"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		return nil, dbErr(err)
	}
	out := make([]string, len(docs))
	for i, d := range docs {
		out[i] = d.ClusterID
		if field == "service_id" {
			out[i] = d.ServiceID
		}
	}
	return slices.Compact(out), nil // an old document and its rewrite, for a moment
}

// interestsKeyed is the meta document saying every interest is keyed by its pair.
const interestsKeyed = "interests_keyed"

// keyInterests rewrites the interests of a database written before they were keyed by
// their pair (Open runs it once per database): the keyed copy first, so no reader
// misses one.
func (s *Store) keyInterests(ctx context.Context) error {
	var old []struct {
		ID        any    `bson:"_id"`
		ClusterID string `bson:"cluster_id"`
		ServiceID string `bson:"service_id"`
	}
	if err := find(ctx, s.interests, bson.D{}, &old); err != nil {
		return err
	}
	for _, d := range old {
		if _, keyed := d.ID.(string); keyed {
			continue
		}
		keyed := toInterestDoc(d.ClusterID, d.ServiceID)
		_, err := s.interests.InsertOne(ctx, keyed)
		if mongo.IsDuplicateKeyError(err) {
			// Rewritten by another process, or refused by the unique index on the pair
			// that 3_interest_keys drops (migrations skipped): keep the old one then.
			err = s.interests.FindOne(ctx, bson.D{{Key: "_id", Value: keyed.ID}}).Err()
		}
		if err != nil {
			return fmt.Errorf("rewrite interest of %s in %s (run the migrations first): %w", d.ClusterID, d.ServiceID, dbErr(err))
		}
		if _, err := s.interests.DeleteOne(ctx, bson.D{{Key: "_id", Value: d.ID}}); err != nil {
			return fmt.Errorf("rewrite interest of %s in %s: %w", d.ClusterID, d.ServiceID, dbErr(err))
		}
	}
	return nil
}

// InterestedClusters lists the clusters following serviceID, by ID.
func (s *Store) InterestedClusters(ctx context.Context, serviceID string) ([]string, error) {
	out, err := s.interestField(ctx, bson.D{{Key: "service_id", Value: serviceID}}, "cluster_id")
	if err != nil {
		return nil, fmt.Errorf("mongo: clusters interested in %s: %w", serviceID, err)
	}
	return out, nil
}

// Interests lists the services clusterID follows, by ID.
func (s *Store) Interests(ctx context.Context, clusterID string) ([]string, error) {
	out, err := s.interestField(ctx, bson.D{{Key: "cluster_id", Value: clusterID}}, "service_id")
	if err != nil {
		return nil, fmt.Errorf("mongo: interests of cluster %s: %w", clusterID, err)
	}
	return out, nil
}

func checkSubnet(sn store.Subnet) error {
	if !sn.V4.IsValid() || !sn.V4.Addr().Is4() {
		return fmt.Errorf("IPv4 prefix %s is not valid", sn.V4)
	}
	if !sn.V6.IsValid() || !sn.V6.Addr().Is6() {
		return fmt.Errorf("IPv6 prefix %s is not valid", sn.V6)
	}
	return nil
}

// CreateSubnet claims both prefixes' first addresses, then inserts the subnet.
func (s *Store) CreateSubnet(ctx context.Context, sn store.Subnet) error {
	if err := checkSubnet(sn); err != nil {
		return fmt.Errorf("mongo: create subnet for node %s: %w", sn.NodeID, err)
	}
	sn.V4, sn.V6 = sn.V4.Masked(), sn.V6.Masked()
	sn.CreatedAt = ms(sn.CreatedAt)
	if sn.CreatedAt.IsZero() {
		sn.CreatedAt = s.nowMS()
	}
	token := primitive.NewObjectID()
	leases := []leaseReq{
		{sn.V4.Addr(), store.RoleSubnet, sn.NodeID, -1},
		{sn.V6.Addr(), store.RoleSubnet, sn.NodeID, -1},
	}
	if err := s.claim(ctx, token, leases); err != nil {
		return fmt.Errorf("mongo: create subnet %s for node %s: %w", sn.V4, sn.NodeID, err)
	}
	_, err := s.subnets.InsertOne(ctx, subnetDoc{V4: sn.V4.String(), V6: sn.V6.String(), ClusterID: sn.ClusterID,
		NodeID: sn.NodeID, CreatedAt: sn.CreatedAt})
	if err != nil {
		if definite(err) {
			s.unclaim(ctx, token, leases)
		}
		if mongo.IsDuplicateKeyError(err) {
			err = store.ErrAlreadyExists
		} else {
			err = dbErr(err)
		}
		return fmt.Errorf("mongo: create subnet %s for node %s: %w", sn.V4, sn.NodeID, err)
	}
	return nil
}

// GetSubnet returns the subnet with this IPv4 prefix.
func (s *Store) GetSubnet(ctx context.Context, v4 netip.Prefix) (store.Subnet, error) {
	var d subnetDoc
	err := s.subnets.FindOne(ctx, bson.D{{Key: "_id", Value: v4.Masked().String()}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return store.Subnet{}, fmt.Errorf("mongo: subnet %s: %w", v4, store.ErrNotFound)
	}
	if err != nil {
		return store.Subnet{}, fmt.Errorf("mongo: subnet %s: %w", v4, dbErr(err))
	}
	sn, err := d.subnet()
	if err != nil {
		return store.Subnet{}, fmt.Errorf("mongo: subnet %s: %w", v4, err)
	}
	return sn, nil
}

// ListSubnets returns every subnet, by IPv4 prefix.
func (s *Store) ListSubnets(ctx context.Context) ([]store.Subnet, error) {
	cur, err := s.subnets.Find(ctx, bson.D{})
	if err != nil {
		return nil, fmt.Errorf("mongo: list subnets: %w", dbErr(err))
	}
	var docs []subnetDoc
	if err := cur.All(ctx, &docs); err != nil {
		return nil, fmt.Errorf("mongo: list subnets: %w", dbErr(err))
	}
	out := make([]store.Subnet, len(docs))
	for i, d := range docs {
		if out[i], err = d.subnet(); err != nil {
			return nil, fmt.Errorf("mongo: list subnets: %w", err)
		}
	}
	// The text form does not sort numerically (10.2/16 after 10.128/16): sort here.
	slices.SortFunc(out, func(a, b store.Subnet) int {
		if c := a.V4.Addr().Compare(b.V4.Addr()); c != 0 {
			return c
		}
		return a.V4.Bits() - b.V4.Bits()
	})
	return out, nil
}

// DeleteSubnet removes the subnet, then releases its addresses into quarantine.
func (s *Store) DeleteSubnet(ctx context.Context, v4 netip.Prefix) error {
	var d subnetDoc
	err := s.subnets.FindOneAndDelete(ctx, bson.D{{Key: "_id", Value: v4.Masked().String()}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("mongo: delete subnet %s: %w", v4, store.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("mongo: delete subnet %s: %w", v4, dbErr(err))
	}
	sn, err := d.subnet()
	if err != nil {
		return fmt.Errorf("mongo: delete subnet %s: %w", v4, err)
	}
	err = s.release(ctx, s.nowMS(), sn.NodeID, -1, []string{store.RoleSubnet}, sn.V4.Addr(), sn.V6.Addr())
	if err != nil {
		return fmt.Errorf("mongo: delete subnet %s: %w", v4, err)
	}
	return nil
}
