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

// addrKey is the lease key: 4 bytes for IPv4, 16 for IPv6, so the families never collide.
func addrKey(a netip.Addr) []byte { return a.AsSlice() }

// held reports whether l still blocks its address at now.
func (s *Store) held(l store.Lease, now time.Time) bool {
	return l.ReleasedAt.IsZero() || now.Before(l.ReleasedAt.Add(s.quarantine))
}

// claim puts the leases ls after checking that every address is free, so it writes
// nothing when it fails (fail(*store.AddressTakenError)).
func (s *Store) claim(tx *bbolt.Tx, ls []store.Lease) error {
	b := bk(tx, bucketLeases)
	now := s.now()
	for i, l := range ls {
		for _, prev := range ls[:i] {
			if prev.Addr == l.Addr {
				return fail(&store.AddressTakenError{Addr: l.Addr, Lease: prev})
			}
		}
		var cur store.Lease
		ok, err := getJSON(b, addrKey(l.Addr), &cur)
		if err != nil {
			return err
		}
		if ok && s.held(cur, now) {
			return fail(&store.AddressTakenError{Addr: l.Addr, Lease: cur})
		}
	}
	for _, l := range ls {
		if err := putJSON(b, addrKey(l.Addr), l); err != nil {
			return fmt.Errorf("put lease %s: %w", l.Addr, err)
		}
	}
	return nil
}

// release puts the leases of addrs held by (role, owner, instance) into quarantine.
// Leases held by someone else are left alone.
func (s *Store) release(tx *bbolt.Tx, role, owner string, instance int, now time.Time, addrs ...netip.Addr) error {
	b := bk(tx, bucketLeases)
	for _, a := range addrs {
		var l store.Lease
		ok, err := getJSON(b, addrKey(a), &l)
		if err != nil {
			return err
		}
		if !ok || l.Role != role || l.Owner != owner || l.Instance != instance || !l.ReleasedAt.IsZero() {
			continue
		}
		l.ReleasedAt = now
		if err := putJSON(b, addrKey(a), l); err != nil {
			return fmt.Errorf("release lease %s: %w", a, err)
		}
	}
	return nil
}

func newLease(a netip.Addr, role, owner string, instance int, now time.Time) store.Lease {
	return store.Lease{Addr: a, Role: role, Owner: owner, Instance: instance, CreatedAt: now}
}

// GetLease returns the lease of addr, active or in quarantine.
func (s *Store) GetLease(ctx context.Context, addr netip.Addr) (store.Lease, error) {
	var l store.Lease
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		ok, err := getJSON(bk(tx, bucketLeases), addrKey(addr), &l)
		if err != nil {
			return err
		}
		if !ok || !s.held(l, s.now()) {
			return store.ErrNotFound
		}
		return nil
	})
	if err != nil {
		return store.Lease{}, fmt.Errorf("bolt: lease of %s: %w", addr, err)
	}
	return l, nil
}

// listLeasesPage is how many leases ListLeases reads per transaction. fn runs outside
// any transaction, so it may call the store.
const listLeasesPage = 1024

// ListLeases calls fn for every lease, active or in quarantine.
func (s *Store) ListLeases(ctx context.Context, fn func(store.Lease) error) error {
	var after []byte
	for {
		page := make([]store.Lease, 0, listLeasesPage)
		err := s.view(ctx, func(tx *bbolt.Tx) error {
			now := s.now()
			c := bk(tx, bucketLeases).Cursor()
			k, v := c.First()
			if after != nil {
				k, v = c.Seek(after)
				if bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(page) < listLeasesPage; k, v = c.Next() {
				var l store.Lease
				if err := json.Unmarshal(v, &l); err != nil {
					return fmt.Errorf("decode lease %x: %w", k, err)
				}
				after = append(after[:0], k...)
				if s.held(l, now) {
					page = append(page, l)
				}
			}
			if k == nil {
				after = nil
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("bolt: list leases: %w", err)
		}
		for _, l := range page {
			if err := fn(l); err != nil {
				return err
			}
		}
		if after == nil {
			return nil
		}
	}
}
