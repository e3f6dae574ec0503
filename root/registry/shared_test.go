package registry_test

import (
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
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
		regs := sharedProcesses(t, uri, db, registry.Options{Logger: log, Shared: shared})
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

// sharedProcesses opens two registries on database db of one MongoDB, as two root
// processes sharing it.
func sharedProcesses(t *testing.T, uri, db string, opt registry.Options) []*registry.Registry {
	t.Helper()
	var regs []*registry.Registry
	for range 2 {
		st, err := mongo.Open(t.Context(), uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := registry.New(t.Context(), addrplan.Default(), st, opt)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, reg)
	}
	return regs
}

// TestReleaseOfAddressesAnotherProcessAllocated: a service created through one root process
// and deleted through the other. The deleting process's pools never held its
// addresses; they learn that the addresses are in quarantine (and so do not propose
// them next), and nothing is logged as a failure: it is the normal course with two
// replicas.
func TestReleaseOfAddressesAnotherProcessAllocated(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	db := fmt.Sprintf("semnet_registry_release_%d", time.Now().UnixNano())
	regs := sharedProcesses(t, testservers.MongoURI(t), db, registry.Options{Logger: log, Shared: true})
	svc, err := regs[0].CreateService(t.Context(), svcReq("s"))
	if err != nil {
		t.Fatal(err)
	}
	if err := regs[1].DeleteService(t.Context(), svc.JobName(), true); err != nil {
		t.Fatal(err)
	}
	var quarantined uint64
	for _, u := range regs[1].PoolUsage() {
		quarantined += u.Quarantined
	}
	if quarantined != 4 {
		t.Errorf("the deleting process's pools hold %d addresses in quarantine, want the service's 4: %+v", quarantined, regs[1].PoolUsage())
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("deleting another process's service logged a warning:\n%s", logs.String())
	}
}

// TestWatchStoreWakesLongPolls: two root processes on one MongoDB, a cluster
// long-polling one of them while a change is made through the other. The poll's own
// re-read is an hour away (PollInterval), so only WatchStore can wake it in time, and
// it must also see the change through when woken before the writer logged it (the
// newest revision is raised at the reservation, before the change is written).
func TestWatchStoreWakesLongPolls(t *testing.T) {
	ctx := t.Context()
	writer, follower, svc := twoProcesses(t, "watched", nil)
	go follower.WatchStore(ctx, 10*time.Millisecond)
	since := uint64(0)
	for round := range 5 {
		b := createCaught(t, writer, follower, svc, since, "a change made through the other root process")
		if len(b.Changes) != 1 || b.Changes[0].Instance != round {
			t.Fatalf("round %d: the long-poll returned %+v, want instance %d's creation", round, b.Changes, round)
		}
		since = b.Revision
	}
}

// peerOf is the Observer of a root process that tells another one (root's --peer) of
// its changes: here by calling the other registry directly.
type peerOf struct {
	reg atomic.Pointer[registry.Registry]
}

func (p *peerOf) Allocated(string) {}

func (p *peerOf) Changed(c store.Change) {
	if r := p.reg.Load(); r != nil {
		r.PeerChanged(c.Revision)
	}
}

// TestPeerChangedWakesLongPolls: a long poll waiting at one root process returns at once
// with a change another process on the same store logged and told it of (root's --peer),
// with neither the store watch nor the poll's own re-read (an hour here) to find it.
func TestPeerChangedWakesLongPolls(t *testing.T) {
	peer := &peerOf{}
	writer, follower, svc := twoProcesses(t, "told", peer)
	peer.reg.Store(follower)
	b := createCaught(t, writer, follower, svc, 0, "a change another root process told of")
	if len(b.Changes) != 1 || b.Changes[0].Instance != 0 {
		t.Fatalf("the long poll returned %+v, want instance 0's creation", b.Changes)
	}
}

// twoProcesses starts two registries on one fresh MongoDB database, as two root
// processes: the writer (with observer obs) registers cluster c1 and creates service
// name, which c1 is interested in; the follower's long polls re-read the store only
// every hour on their own.
func twoProcesses(t *testing.T, name string, obs registry.Observer) (writer, follower *registry.Registry, svc store.Service) {
	t.Helper()
	uri := testservers.MongoURI(t)
	ctx := t.Context()
	db := fmt.Sprintf("semnet_registry_%s_%d", name, time.Now().UnixNano())
	var regs []*registry.Registry
	for _, opt := range []registry.Options{{Shared: true, Observer: obs}, {Shared: true, PollInterval: time.Hour}} {
		st, err := mongo.Open(ctx, uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		reg, err := registry.New(ctx, addrplan.Default(), st, opt)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, reg)
	}
	writer, follower = regs[0], regs[1]
	if _, err := writer.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}, false); err != nil {
		t.Fatal(err)
	}
	svc, err := writer.CreateService(ctx, svcReq(name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.AddInterest(ctx, "c1", svc.JobName()); err != nil {
		t.Fatal(err)
	}
	return writer, follower, svc
}

// createCaught starts a long poll of c1's changes at follower, from where a poll after
// since has got to, lets it wait, creates an instance of svc through writer and returns
// what the poll returned; it fails t if nothing woke the poll (what names the change)
// within 20 s.
func createCaught(t *testing.T, writer, follower *registry.Registry, svc store.Service, since uint64, what string) registry.ChangeBatch {
	t.Helper()
	ctx := t.Context()
	b, err := follower.Changes(ctx, "c1", since, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan registry.ChangeBatch, 1)
	go func() {
		b, err := follower.Changes(ctx, "c1", b.Revision, 100, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- b
	}()
	time.Sleep(50 * time.Millisecond) // the poll waits
	if _, _, err := writer.CreateInstance(ctx, svc.ID, api.InstanceRequest{}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-done:
		return b
	case <-time.After(20 * time.Second):
		t.Fatalf("%s did not wake the long poll", what)
		return registry.ChangeBatch{}
	}
}
