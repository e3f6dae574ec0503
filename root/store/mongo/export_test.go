package mongo

import (
	"github.com/semnet/semnet/root/store"
)

// ServiceDoc exposes the stored form of a service to the benchmarks.
func ServiceDoc(sv store.Service) any { return toServiceDoc(sv) }

// KeyedReads is keyedReads, for the tests of package mongo_test.
const KeyedReads = keyedReads
