package registry_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/mongo"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/syncbuf"
	"github.com/semnet/semnet/shared/testservers"
)

// TestSharedSpreadsAllocations: two root processes on one MongoDB, creating services
// in turn, each with pools that know only their own allocations. Proposing the lowest
// free addresses, every create of one collides with the other's last ones and is
// retried; spread (Options.Shared) they rarely meet.
func TestSharedSpreadsAllocations(t *testing.T) {
	uri := testservers.MongoURI(t)
	collisions := func(shared bool) int {
		db := fmt.Sprintf("semnet_registry_shared_%d", time.Now().UnixNano())
		var logs syncbuf.Buffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		var regs []*registry.Registry
		for range 2 {
			st, err := mongo.Open(t.Context(), uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			reg, err := registry.New(t.Context(), addrplan.Default(), st, registry.Options{Logger: log, Shared: shared})
			if err != nil {
				t.Fatal(err)
			}
			regs = append(regs, reg)
		}
		for i := range 20 {
			if _, err := regs[i%2].CreateService(t.Context(), svcReq(fmt.Sprintf("s%d", i))); err != nil {
				t.Fatalf("create %d: %v", i, err)
			}
		}
		return strings.Count(logs.String(), "address taken by another root process")
	}
	if n := collisions(false); n < 10 {
		t.Fatalf("lowest-first pools collided %d times in 20 alternating creates; the test's premise is that most creates do", n)
	}
	if n := collisions(true); n > 2 {
		t.Errorf("spread pools collided %d times in 20 alternating creates", n)
	}
}
