package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

// PutCluster creates or replaces a cluster.
func (s *Store) PutCluster(ctx context.Context, c store.Cluster) error {
	if err := checkID("cluster", c.ID); err != nil {
		return fmt.Errorf("bolt: put cluster: %w", err)
	}
	c.LastSeen, c.CreatedAt = normTime(c.LastSeen), normTime(c.CreatedAt)
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		return putJSON(bk(tx, bucketClusters), []byte(c.ID), c)
	})
	if err != nil {
		return fmt.Errorf("bolt: put cluster %s: %w", c.ID, err)
	}
	return nil
}

// GetCluster returns the cluster with this ID.
func (s *Store) GetCluster(ctx context.Context, id string) (store.Cluster, error) {
	var c store.Cluster
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		ok, err := getJSON(bk(tx, bucketClusters), []byte(id), &c)
		if err == nil && !ok {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return store.Cluster{}, fmt.Errorf("bolt: cluster %s: %w", id, err)
	}
	return c, nil
}

// ListClusters returns every cluster, by ID.
func (s *Store) ListClusters(ctx context.Context) ([]store.Cluster, error) {
	var out []store.Cluster
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return bk(tx, bucketClusters).ForEach(func(k, v []byte) error {
			var c store.Cluster
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("decode cluster %s: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list clusters: %w", err)
	}
	return out, nil
}

// DeleteCluster removes the cluster's interests and the cluster. ErrNotFound if there
// was no such cluster (its interests, if any, are removed all the same).
func (s *Store) DeleteCluster(ctx context.Context, id string) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		services, err := prefixSuffixes(bk(tx, bucketInterests), id)
		if err != nil {
			return err
		}
		for _, sid := range services {
			if err := removeInterest(tx, id, sid); err != nil {
				return err
			}
		}
		b := bk(tx, bucketClusters)
		if b.Get([]byte(id)) == nil {
			return fail(store.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("bolt: delete cluster %s: %w", id, err)
	}
	return nil
}

// AddInterest records that clusterID follows serviceID.
func (s *Store) AddInterest(ctx context.Context, clusterID, serviceID string) error {
	if err := checkID("cluster", clusterID); err != nil {
		return fmt.Errorf("bolt: add interest: %w", err)
	}
	if err := checkID("service", serviceID); err != nil {
		return fmt.Errorf("bolt: add interest: %w", err)
	}
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		if err := bk(tx, bucketInterests).Put(pairKey(clusterID, serviceID), nil); err != nil {
			return err
		}
		return bk(tx, bucketInterestsBy).Put(pairKey(serviceID, clusterID), nil)
	})
	if err != nil {
		return fmt.Errorf("bolt: add interest of cluster %s in service %s: %w", clusterID, serviceID, err)
	}
	return nil
}

func removeInterest(tx *bbolt.Tx, clusterID, serviceID string) error {
	if err := bk(tx, bucketInterests).Delete(pairKey(clusterID, serviceID)); err != nil {
		return err
	}
	return bk(tx, bucketInterestsBy).Delete(pairKey(serviceID, clusterID))
}

// Interested reports whether clusterID follows serviceID.
func (s *Store) Interested(ctx context.Context, clusterID, serviceID string) (bool, error) {
	var ok bool
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		// By the key, not Get's value: interests are stored with an empty one.
		key := pairKey(clusterID, serviceID)
		k, _ := bk(tx, bucketInterests).Cursor().Seek(key)
		ok = bytes.Equal(k, key)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("bolt: interest of cluster %s in service %s: %w", clusterID, serviceID, err)
	}
	return ok, nil
}

// RemoveInterest forgets that clusterID follows serviceID; no error if it did not.
func (s *Store) RemoveInterest(ctx context.Context, clusterID, serviceID string) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error { return removeInterest(tx, clusterID, serviceID) })
	if err != nil {
		return fmt.Errorf("bolt: remove interest of cluster %s in service %s: %w", clusterID, serviceID, err)
	}
	return nil
}

// prefixSuffixes lists, in key order, what follows "id\x00" in b's keys.
func prefixSuffixes(b *bbolt.Bucket, id string) ([]string, error) {
	out := []string{}
	prefix := append([]byte(id), 0)
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		out = append(out, string(k[len(prefix):]))
	}
	return out, nil
}

// InterestedClusters lists the clusters following serviceID, by ID.
func (s *Store) InterestedClusters(ctx context.Context, serviceID string) ([]string, error) {
	var out []string
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		out, err = prefixSuffixes(bk(tx, bucketInterestsBy), serviceID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: clusters interested in %s: %w", serviceID, err)
	}
	return out, nil
}

// Interests lists the services clusterID follows, by ID.
func (s *Store) Interests(ctx context.Context, clusterID string) ([]string, error) {
	var out []string
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		out, err = prefixSuffixes(bk(tx, bucketInterests), clusterID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: interests of cluster %s: %w", clusterID, err)
	}
	return out, nil
}

func prefixKey(p netip.Prefix) []byte {
	k, _ := p.Masked().MarshalBinary()
	return k
}

// subnetLeases are the leases of a subnet: each prefix's first address.
func subnetLeases(sn store.Subnet, now time.Time) []store.Lease {
	return []store.Lease{
		newLease(sn.V4.Masked().Addr(), store.RoleSubnet, sn.NodeID, -1, now),
		newLease(sn.V6.Masked().Addr(), store.RoleSubnet, sn.NodeID, -1, now),
	}
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

// CreateSubnet stores sn and claims its two leases in one transaction.
func (s *Store) CreateSubnet(ctx context.Context, sn store.Subnet) error {
	if err := checkSubnet(sn); err != nil {
		return fmt.Errorf("bolt: create subnet for node %s: %w", sn.NodeID, err)
	}
	sn.V4, sn.V6 = sn.V4.Masked(), sn.V6.Masked()
	sn.CreatedAt = normTime(sn.CreatedAt)
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		sn, now := sn, s.nowUTC()
		if sn.CreatedAt.IsZero() {
			sn.CreatedAt = now
		}
		// A subnet with this prefix holds its first address, so claim reports it.
		if err := s.claim(tx, subnetLeases(sn, now)); err != nil {
			return err
		}
		return putJSON(bk(tx, bucketSubnets), prefixKey(sn.V4), sn)
	})
	if err != nil {
		return fmt.Errorf("bolt: create subnet %s for node %s: %w", sn.V4, sn.NodeID, err)
	}
	return nil
}

// GetSubnet returns the subnet with this IPv4 prefix.
func (s *Store) GetSubnet(ctx context.Context, v4 netip.Prefix) (store.Subnet, error) {
	var sn store.Subnet
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		ok, err := getJSON(bk(tx, bucketSubnets), prefixKey(v4), &sn)
		if err == nil && !ok {
			err = store.ErrNotFound
		}
		return err
	})
	if err != nil {
		return store.Subnet{}, fmt.Errorf("bolt: subnet %s: %w", v4, err)
	}
	return sn, nil
}

// ListSubnets returns every subnet, by IPv4 prefix.
func (s *Store) ListSubnets(ctx context.Context) ([]store.Subnet, error) {
	var out []store.Subnet
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return bk(tx, bucketSubnets).ForEach(func(k, v []byte) error {
			var sn store.Subnet
			if err := json.Unmarshal(v, &sn); err != nil {
				return fmt.Errorf("decode subnet: %w", err)
			}
			out = append(out, sn)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: list subnets: %w", err)
	}
	return out, nil
}

// DeleteSubnet removes the subnet and releases its leases into quarantine.
func (s *Store) DeleteSubnet(ctx context.Context, v4 netip.Prefix) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := bk(tx, bucketSubnets)
		var sn store.Subnet
		ok, err := getJSON(b, prefixKey(v4), &sn)
		if err != nil {
			return err
		}
		if !ok {
			return fail(store.ErrNotFound)
		}
		if err := b.Delete(prefixKey(v4)); err != nil {
			return err
		}
		return s.release(tx, store.RoleSubnet, sn.NodeID, -1, s.nowUTC(), sn.V4.Addr(), sn.V6.Addr())
	})
	if err != nil {
		return fmt.Errorf("bolt: delete subnet %s: %w", v4, err)
	}
	return nil
}
