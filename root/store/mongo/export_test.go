package mongo

import (
	"context"
	"net/netip"
	"time"

	"github.com/semnet/semnet/root/store"
)

// ServiceDoc exposes the stored form of a service to the benchmarks.
func ServiceDoc(sv store.Service) any { return toServiceDoc(sv) }

// KeyedReads is keyedReads, for the tests of package mongo_test.
const KeyedReads = keyedReads

// Release is release, for the tests of package mongo_test.
func (s *Store) Release(ctx context.Context, now time.Time, owner string, instance int, roles []string, addrs ...netip.Addr) error {
	return s.release(ctx, now, owner, instance, roles, addrs...)
}
