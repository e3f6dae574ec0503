package mongo_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	"go.mongodb.org/mongo-driver/event"
	mongodrv "go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/migrations"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/root/store/mongo"
	"github.com/semnet/semnet/root/store/storetest"
	"github.com/semnet/semnet/shared/fakeclock"
	"github.com/semnet/semnet/shared/testservers"
)

// testURI returns the test server's URI or skips.
func testURI(t testing.TB) string {
	t.Helper()
	uri := testservers.MongoURI(t)
	return uri
}

// rawClient is a driver client for looking behind the store's back.
func rawClient(t testing.TB, uri string) *mongodrv.Client {
	t.Helper()
	c, err := mongodrv.Connect(context.Background(), options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Disconnect(context.Background()) })
	return c
}

// freshDB names a new database and drops it when the test ends.
func freshDB(t testing.TB, uri string) string {
	t.Helper()
	name := fmt.Sprintf("semnet_test_%016x", rand.Uint64())
	c := rawClient(t, uri)
	t.Cleanup(func() {
		if err := c.Database(name).Drop(context.Background()); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	return name
}

func open(t testing.TB, uri, db string, opt mongo.Options) *mongo.Store {
	t.Helper()
	s, err := mongo.Open(context.Background(), uri, db, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	uri := testURI(t)
	storetest.Run(t, func(t *testing.T, opt store.Options) store.Store {
		s := open(t, uri, freshDB(t, uri), mongo.Options{Options: opt})
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestDurability(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	storetest.Durability(t, func(opt store.Options) store.Store {
		return open(t, uri, db, mongo.Options{Options: opt})
	})
}

func TestMigrate(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	v1, err := mongo.Migrate(ctx, uri, db)
	if err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	v2, err := mongo.Migrate(ctx, uri, db)
	if err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if v1 != 3 || v2 != v1 {
		t.Fatalf("versions %d then %d, want 3 both times", v1, v2)
	}
	c := rawClient(t, uri)
	want := map[string]map[string]bool{ // collection → index name → unique
		"services":  {"job_name_unique": true, "rr_v4_unique": true, "rr_v6_unique": true, "closest_v4_unique": true, "closest_v6_unique": true},
		"instances": {"service_id_number_unique": true, "ip_v4_unique": true, "ip_v6_unique": true},
		"subnets":   {"v6_unique": true},
		"interests": {"service_id_cluster_id": false}, // unique by _id since 3_interest_keys
		"leases":    {"released_at": false},
		"exposures": {"service_id": false},
	}
	for coll, idx := range want {
		specs, err := c.Database(db).Collection(coll).Indexes().ListSpecifications(ctx)
		if err != nil {
			t.Fatalf("list indexes of %s: %v", coll, err)
		}
		got := map[string]bool{}
		for _, s := range specs {
			got[s.Name] = s.Unique != nil && *s.Unique
		}
		for name, unique := range idx {
			u, ok := got[name]
			if !ok || u != unique {
				t.Errorf("%s: index %s present=%v unique=%v, want unique=%v (have %v)", coll, name, ok, u, unique, got)
			}
		}
		if len(got) != len(idx)+1 {
			t.Errorf("%s: indexes %v, want _id_ and %v", coll, got, idx)
		}
	}
	// Open on a migrated database does not migrate again (nor fail).
	s := open(t, uri, db, mongo.Options{})
	s.Close()

	// The down migrations undo the ups (run by hand, newest first: Migrate only goes up).
	for _, name := range []string{"3_interest_keys.down.json", "2_gateways.down.json", "1_init.down.json"} {
		down, err := migrations.FS.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		var cmds []bson.D
		if err := bson.UnmarshalExtJSON(down, true, &cmds); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, cmd := range cmds {
			if err := c.Database(db).RunCommand(ctx, cmd).Err(); err != nil {
				t.Fatalf("%s: down %v: %v", name, cmd, err)
			}
		}
	}
	for coll := range want {
		specs, err := c.Database(db).Collection(coll).Indexes().ListSpecifications(ctx)
		if err != nil {
			t.Fatalf("list indexes of %s: %v", coll, err)
		}
		if len(specs) != 1 || specs[0].Name != "_id_" {
			t.Errorf("%s after down: %d indexes, want only _id_", coll, len(specs))
		}
	}
}

// TestTwoProcesses runs two stores on one database, as two root processes would, and
// has them race for the same addresses.
func TestTwoProcesses(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour}}
	stores := []*mongo.Store{open(t, uri, db, opt), open(t, uri, db, opt)}
	for _, s := range stores {
		t.Cleanup(func() { s.Close() })
	}
	ctx := t.Context()
	const rounds, perStore = 20, 3
	var wg sync.WaitGroup
	type result struct {
		sv  store.Service
		err error
	}
	results := make([][]result, rounds)
	for r := range rounds {
		shared := netip.AddrFrom4([4]byte{10, 0, 0, byte(r + 1)})
		results[r] = make([]result, len(stores)*perStore)
		for i := range results[r] {
			sv := store.Service{ID: fmt.Sprintf("r%02d-%d", r, i), App: "app", AppNS: "ns", Name: fmt.Sprintf("r%02d-%d", r, i), NS: "ns",
				RR:      store.AddrPair{V4: shared, V6: netip.AddrFrom16([16]byte{0xfd, 1, 14: byte(r), 15: byte(i)})},
				Closest: store.AddrPair{V4: netip.AddrFrom4([4]byte{10, 1, byte(r), byte(i)}), V6: netip.AddrFrom16([16]byte{0xfd, 2, 14: byte(r), 15: byte(i)})}}
			s := stores[i%len(stores)]
			wg.Go(func() {
				out, err := s.CreateService(ctx, sv)
				results[r][i] = result{out, err}
			})
		}
	}
	wg.Wait()
	for r, rs := range results {
		var winners []string
		for _, res := range rs {
			switch {
			case res.err == nil:
				winners = append(winners, res.sv.ID)
			case !errors.Is(res.err, store.ErrAddressTaken):
				t.Fatalf("round %d: %v, want success or ErrAddressTaken", r, res.err)
			}
		}
		if len(winners) != 1 {
			t.Fatalf("round %d: %d creates got the shared address: %v", r, len(winners), winners)
		}
		for _, s := range stores {
			l, err := s.GetLease(ctx, netip.AddrFrom4([4]byte{10, 0, 0, byte(r + 1)}))
			if err != nil || l.Owner != winners[0] {
				t.Fatalf("round %d: lease %+v, %v; want held by %s", r, l, err, winners[0])
			}
		}
	}
	// Both processes update one instance: no update is lost.
	sv := results[0][0].sv
	for _, rs := range results[0] {
		if rs.err == nil {
			sv = rs.sv
		}
	}
	if _, err := stores[0].CreateInstance(ctx, store.Instance{ServiceID: sv.ID, Number: 0,
		IP: store.AddrPair{V4: netip.MustParseAddr("10.9.0.1"), V6: netip.MustParseAddr("fd09::1")}}); err != nil {
		t.Fatal(err)
	}
	const updates = 10
	for i := range updates * len(stores) {
		wg.Go(func() {
			_, err := stores[i%len(stores)].UpdateInstance(ctx, sv.ID, 0, func(in *store.Instance) error {
				in.HostPort++
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	in, err := stores[1].GetInstance(ctx, sv.ID, 0)
	if err != nil || in.HostPort != updates*len(stores) {
		t.Fatalf("after %d updates from two stores: HostPort %d, %v", updates*len(stores), in.HostPort, err)
	}

	// Every revision was handed out once, and both stores read the same log.
	cs0, err := stores[0].Changes(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	cs1, err := stores[1].Changes(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	want := rounds + 1 + updates*len(stores)
	if len(cs0) != want || len(cs1) != want {
		t.Fatalf("changes: %d and %d, want %d", len(cs0), len(cs1), want)
	}
	seen := map[uint64]bool{}
	for i, c := range cs0 {
		if seen[c.Revision] || c != cs1[i] {
			t.Fatalf("change %d: %+v (other store: %+v), revision seen before: %v", i, c, cs1[i], seen[c.Revision])
		}
		seen[c.Revision] = true
	}
}

// TestAbandonedRevision: a revision reserved by a writer that never finished blocks the
// log until AbandonAfter, then is skipped.
func TestAbandonedRevision(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	s := open(t, uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}, AbandonAfter: 300 * time.Millisecond})
	defer s.Close()
	// A "crashed writer" reserved revision 1 and never finished.
	_, err := rawClient(t, uri).Database(db).Collection("revisions").InsertOne(ctx, bson.D{
		{Key: "_id", Value: fmt.Sprintf("%020d", 1)}, {Key: "at", Value: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	sv, err := s.CreateService(ctx, store.Service{ID: "a", App: "a", AppNS: "a", Name: "a", NS: "a",
		RR:      store.AddrPair{V4: netip.MustParseAddr("10.0.0.1"), V6: netip.MustParseAddr("fd00::1")},
		Closest: store.AddrPair{V4: netip.MustParseAddr("10.0.0.2"), V6: netip.MustParseAddr("fd00::2")}})
	if err != nil {
		t.Fatal(err)
	}
	if sv.Revision != 2 {
		t.Fatalf("revision %d, want 2", sv.Revision)
	}
	cs, err := s.Changes(ctx, 0, 10)
	if err != nil || len(cs) != 0 {
		t.Fatalf("Changes with revision 1 missing = %v, %v; want nothing yet", cs, err)
	}
	time.Sleep(350 * time.Millisecond)
	cs, err = s.Changes(ctx, 0, 10)
	if err != nil || len(cs) != 1 || cs[0].Revision != 2 {
		t.Fatalf("Changes after AbandonAfter = %v, %v; want revision 2", cs, err)
	}

	// A writer that named what it reserved revision 3 for (an update of instance 7 of
	// a) and died before logging it: once abandoned, the revision reads as a change of
	// that instance, so followers re-read the service (the update may have happened).
	_, err = rawClient(t, uri).Database(db).Collection("revisions").InsertOne(ctx, bson.D{
		{Key: "_id", Value: fmt.Sprintf("%020d", 3)}, {Key: "at", Value: time.Now()},
		{Key: "subject", Value: bson.D{{Key: "kind", Value: store.KindInstance}, {Key: "op", Value: store.OpPut},
			{Key: "service_id", Value: "a"}, {Key: "job_name", Value: "a.a.a.a"}, {Key: "instance", Value: 7}}}})
	if err != nil {
		t.Fatal(err)
	}
	in, err := s.CreateInstance(ctx, store.Instance{ServiceID: "a", Number: 0, Status: store.StatusScheduled,
		IP: store.AddrPair{V4: netip.MustParseAddr("10.0.0.3"), V6: netip.MustParseAddr("fd00::3")}})
	if err != nil || in.Revision != 4 {
		t.Fatalf("CreateInstance: revision %d, %v; want 4", in.Revision, err)
	}
	if cs, err := s.Changes(ctx, 2, 10); err != nil || len(cs) != 0 {
		t.Fatalf("Changes with revision 3 missing = %v, %v; want nothing yet", cs, err)
	}
	time.Sleep(350 * time.Millisecond)
	cs, err = s.Changes(ctx, 2, 10)
	if err != nil || len(cs) != 2 {
		t.Fatalf("Changes after revision 3 was abandoned = %v, %v; want its subject and revision 4", cs, err)
	}
	if c := cs[0]; c.Revision != 3 || c.Kind != store.KindInstance || c.Op != store.OpPut || c.ServiceID != "a" || c.Instance != 7 {
		t.Errorf("abandoned revision 3 read as %+v, want a put of instance 7 of a", c)
	}
	if cs[1].Revision != 4 {
		t.Errorf("then %+v, want revision 4", cs[1])
	}
}

// TestSlowWriterLogsAgain: a writer slower than AbandonAfter (a loaded database) is
// passed by readers, who log the abandonment in its place; when its own log of the
// change then meets that, it logs the change again under a new revision. Before,
// followers that re-read the record when they passed the revision (before the write
// landed) never heard of the write.
func TestSlowWriterLogsAgain(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	var armed atomic.Bool
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	slow := &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if coll, _ := e.Command.Lookup(e.CommandName).StringValueOK(); e.CommandName == "insert" && coll == "changes" && armed.CompareAndSwap(true, false) {
			held <- struct{}{}
			<-hold // the writer stalls just before logging its change
		}
	}}
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour}, AbandonAfter: 300 * time.Millisecond}
	reader := open(t, uri, db, opt)
	defer reader.Close()
	opt.Monitor = slow
	writer := open(t, uri, db, opt)
	defer writer.Close()

	sv, err := writer.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	in, err := writer.CreateInstance(ctx, store.Instance{ServiceID: sv.ID, Number: 0,
		IP: store.AddrPair{V4: netip.MustParseAddr("10.9.0.1"), V6: netip.MustParseAddr("fd09::1")}})
	if err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	updated := make(chan error, 1)
	go func() {
		_, err := writer.UpdateInstance(ctx, sv.ID, 0, func(p *store.Instance) error { p.HostPort = 4242; return nil })
		updated <- err
	}()
	<-held // the update is written, its change not logged
	if _, err := reader.CreateService(ctx, storetest.BenchService(2)); err != nil {
		t.Fatal(err) // a later revision, logged
	}
	gap := in.Revision + 1
	if cs, err := reader.Changes(ctx, in.Revision, 10); err != nil || len(cs) != 0 {
		t.Fatalf("Changes with revision %d being written = %v, %v; want nothing yet", gap, cs, err)
	}
	time.Sleep(350 * time.Millisecond)
	cs, err := reader.Changes(ctx, in.Revision, 10)
	if err != nil || len(cs) != 2 || cs[0].Revision != gap || cs[0].Kind != store.KindInstance || cs[0].Instance != 0 {
		t.Fatalf("Changes after revision %d was taken for abandoned = %+v, %v; want a put of instance 0, then the service", gap, cs, err)
	}
	close(hold)
	if err := <-updated; err != nil {
		t.Fatalf("the slow update: %v", err)
	}
	cs, err = reader.Changes(ctx, cs[1].Revision, 10)
	if err != nil || len(cs) != 1 || cs[0].Kind != store.KindInstance || cs[0].ServiceID != sv.ID || cs[0].Instance != 0 {
		t.Fatalf("Changes after the slow writer finished = %+v, %v; want its change logged again", cs, err)
	}
	got, err := reader.GetInstance(ctx, sv.ID, 0)
	if err != nil || got.HostPort != 4242 {
		t.Fatalf("instance after the slow update: port %d, %v; want 4242", got.HostPort, err)
	}
}

// TestDeleteOutlivesItsCaller: a delete whose caller gives up just after the record is
// gone still logs its change (and releases the addresses): the revision is reserved
// before the delete and the rest runs on a context of its own. Before, a REST call
// that timed out there left followers never hearing of the delete (the load run's
// cluster caches kept a deleted instance).
func TestDeleteOutlivesItsCaller(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	var cancelAfterDelete atomic.Pointer[context.CancelFunc]
	mon := &event.CommandMonitor{Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
		if e.CommandName == "delete" {
			if c := cancelAfterDelete.Swap(nil); c != nil {
				(*c)() // the caller gives up as soon as the record is deleted
			}
		}
	}}
	s := open(t, uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}, Monitor: mon})
	defer s.Close()
	ctx := t.Context()
	sv, err := s.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	ip := store.AddrPair{V4: netip.MustParseAddr("10.9.0.1"), V6: netip.MustParseAddr("fd09::1")}
	in, err := s.CreateInstance(ctx, store.Instance{ServiceID: sv.ID, Number: 0, IP: ip})
	if err != nil {
		t.Fatal(err)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelAfterDelete.Store(&cancel)
	if err := s.DeleteInstance(dctx, sv.ID, 0); err != nil {
		t.Fatalf("DeleteInstance whose caller gave up after the delete: %v (the delete happened)", err)
	}
	cs, err := s.Changes(ctx, in.Revision, 10)
	if err != nil || len(cs) != 1 || cs[0].Kind != store.KindInstance || cs[0].Op != store.OpDelete || cs[0].Instance != 0 {
		t.Fatalf("changes after the delete: %+v, %v; want the instance's delete", cs, err)
	}
	if l, err := s.GetLease(ctx, ip.V4); err != nil || l.ReleasedAt.IsZero() {
		t.Errorf("Instance IP lease after the delete: %+v, %v; want released", l, err)
	}
}

// TestReleaseOnlyOwnActiveLeases: releasing puts into quarantine only a lease held by
// the releasing owner, instance and role, and leaves a lease already in quarantine with
// the time it was released.
func TestReleaseOnlyOwnActiveLeases(t *testing.T) {
	uri := testURI(t)
	s := open(t, uri, freshDB(t, uri), mongo.Options{Options: store.Options{Quarantine: time.Hour}})
	defer s.Close()
	ctx := t.Context()
	sv, err := s.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	rr := []string{store.RoleRoundRobin}
	released := func(what string) time.Time {
		t.Helper()
		l, err := s.GetLease(ctx, sv.RR.V4)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return l.ReleasedAt
	}
	at := time.Now().UTC().Truncate(time.Millisecond)
	for _, wrong := range []struct {
		what     string
		owner    string
		instance int
		roles    []string
	}{
		{"another owner", "other", -1, rr},
		{"another instance number", sv.ID, 0, rr},
		{"another role", sv.ID, -1, []string{store.RoleClosest, store.RoleInstance}},
	} {
		if err := s.Release(ctx, at, wrong.owner, wrong.instance, wrong.roles, sv.RR.V4); err != nil {
			t.Fatal(err)
		}
		if r := released(wrong.what); !r.IsZero() {
			t.Errorf("a release by %s put the lease into quarantine at %s", wrong.what, r)
		}
	}
	if err := s.Release(ctx, at, sv.ID, -1, rr, sv.RR.V4); err != nil {
		t.Fatal(err)
	}
	if r := released("release by the holder"); !r.Equal(at) {
		t.Fatalf("released at %s by its holder, want %s", r, at)
	}
	if err := s.Release(ctx, at.Add(time.Minute), sv.ID, -1, rr, sv.RR.V4); err != nil {
		t.Fatal(err)
	}
	if r := released("second release"); !r.Equal(at) {
		t.Errorf("a second release moved the quarantine's start from %s to %s", at, r)
	}
}

// TestReconcile: Open quarantines leases a crashed create left without a record, and
// drops leases whose quarantine is over.
func TestReconcile(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	clock := fakeclock.New()
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour, Now: clock.Now}, OrphanGrace: time.Minute}
	s := open(t, uri, db, opt)
	sv, err := s.CreateService(ctx, store.Service{ID: "a", App: "a", AppNS: "a", Name: "a", NS: "a",
		RR:      store.AddrPair{V4: netip.MustParseAddr("10.0.0.1"), V6: netip.MustParseAddr("fd00::1")},
		Closest: store.AddrPair{V4: netip.MustParseAddr("10.0.0.2"), V6: netip.MustParseAddr("fd00::2")}})
	if err != nil {
		t.Fatal(err)
	}
	leases := rawClient(t, uri).Database(db).Collection("leases")
	old := clock.Now().UTC()
	_, err = leases.InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: "10.0.0.9"}, {Key: "role", Value: "rr"}, {Key: "owner", Value: "crashed"}, {Key: "instance", Value: -1}, {Key: "created_at", Value: old}, {Key: "claim", Value: primitive.NewObjectID()}},
		bson.D{{Key: "_id", Value: "10.0.0.10"}, {Key: "role", Value: "rr"}, {Key: "owner", Value: "gone"}, {Key: "instance", Value: -1}, {Key: "created_at", Value: old.Add(-2 * time.Hour)}, {Key: "released_at", Value: old.Add(-time.Hour)}, {Key: "claim", Value: primitive.NewObjectID()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	clock.Advance(30 * time.Second) // within the grace: the orphan may still be a create in flight
	s = open(t, uri, db, opt)
	if l, err := s.GetLease(ctx, netip.MustParseAddr("10.0.0.9")); err != nil || !l.ReleasedAt.IsZero() {
		t.Fatalf("young orphan lease: %+v, %v; want it untouched", l, err)
	}
	s.Close()

	clock.Advance(time.Minute)
	s = open(t, uri, db, opt)
	defer s.Close()
	l, err := s.GetLease(ctx, netip.MustParseAddr("10.0.0.9"))
	if err != nil || !l.ReleasedAt.Equal(clock.Now()) {
		t.Fatalf("orphan lease after reconcile: %+v, %v; want released now", l, err)
	}
	if n, err := leases.CountDocuments(ctx, bson.D{{Key: "_id", Value: "10.0.0.10"}}); err != nil || n != 0 {
		t.Fatalf("expired lease: count %d, %v; want it dropped", n, err)
	}
	for _, a := range []netip.Addr{sv.RR.V4, sv.RR.V6, sv.Closest.V4, sv.Closest.V6} {
		if l, err := s.GetLease(ctx, a); err != nil || !l.ReleasedAt.IsZero() || l.Owner != "a" {
			t.Fatalf("lease of a live service after reconcile: %+v, %v", l, err)
		}
	}
}

// TestUnavailable: a server that cannot be reached is store.ErrUnavailable. It needs no
// server (port 1 on loopback refuses).
func TestUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := mongo.Open(ctx, "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300&connectTimeoutMS=300", "x", mongo.Options{})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Open of an unreachable server: %v, want ErrUnavailable", err)
	}
}

// TestLockRenewal: a lock is renewed while its holder works, so a second process waits
// for it even when the work outlasts the lock TTL (without renewal it would break the
// lock after the TTL and the two updates would overlap); a lock left by a process that
// died (never renewed) is broken once the TTL has passed.
func TestLockRenewal(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	// Renewals every 500 ms: each a FerretDB write, which a loaded CI machine may delay,
	// but not by the whole TTL.
	const ttl = 2 * time.Second
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour}, LockTTL: ttl}
	a, b := open(t, uri, db, opt), open(t, uri, db, opt)
	t.Cleanup(func() { a.Close(); b.Close() })
	ctx := t.Context()
	pair := func(i byte) store.AddrPair {
		return store.AddrPair{V4: netip.AddrFrom4([4]byte{10, 30, 9, i}), V6: netip.AddrFrom16([16]byte{0xfd, 0xff, 15: i})}
	}
	if _, err := a.CreateService(ctx, store.Service{ID: "web", App: "app", AppNS: "ns", Name: "web", NS: "ns", RR: pair(1), Closest: pair(2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateInstance(ctx, store.Instance{ServiceID: "web", Number: 0, IP: pair(3), Status: store.StatusScheduled}); err != nil {
		t.Fatal(err)
	}

	var inside atomic.Int32 // updates inside the lock now
	var overlapped atomic.Bool
	update := func(s *mongo.Store, hold time.Duration) error {
		_, err := s.UpdateInstance(ctx, "web", 0, func(in *store.Instance) error {
			if inside.Add(1) > 1 {
				overlapped.Store(true)
			}
			defer inside.Add(-1)
			time.Sleep(hold)
			in.HostPort++
			return nil
		})
		return err
	}
	errs := make(chan error, 2)
	go func() {
		errs <- update(a, 3*ttl)
	}()
	go func() {
		for inside.Load() == 0 { // until a holds the lock
			time.Sleep(time.Millisecond)
		}
		errs <- update(b, 0)
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if overlapped.Load() {
		t.Fatalf("b updated the instance while a held its lock past the TTL (%v): the lock was not renewed", ttl)
	}
	in, err := b.GetInstance(ctx, "web", 0)
	if err != nil || in.HostPort != 2 {
		t.Fatalf("instance after both updates: port %d, %v; want 2 (neither update lost)", in.HostPort, err)
	}

	// A dead holder's lock: inserted as the store inserts it, then never renewed.
	locks := rawClient(t, uri).Database(db).Collection("locks")
	if _, err := locks.InsertOne(ctx, bson.D{{Key: "_id", Value: "instance web/0"}, {Key: "token", Value: primitive.NewObjectID()}, {Key: "at", Value: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if err := update(b, 0); err != nil {
		t.Fatalf("update behind a dead holder's lock: %v", err)
	}
}

// commandLog records the commands a store sends while it is on, as "name collection".
type commandLog struct {
	mu     sync.Mutex
	on     bool
	cmds   []string
	failed []string
}

func (l *commandLog) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.on {
				coll, _ := e.Command.Lookup(e.CommandName).StringValueOK()
				l.cmds = append(l.cmds, e.CommandName+" "+coll)
			}
		},
		Failed: func(_ context.Context, e *event.CommandFailedEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.on {
				l.failed = append(l.failed, e.CommandName+": "+e.Failure)
			}
		},
	}
}

// during returns the commands sent while fn ran, and those that failed.
func (l *commandLog) during(fn func()) (cmds, failed []string) {
	l.mu.Lock()
	l.on, l.cmds, l.failed = true, nil, nil
	l.mu.Unlock()
	fn()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = false
	return l.cmds, l.failed
}

// TestCommandsPerCreate pins the round trips of the two hottest writes: on FerretDB each
// costs about a millisecond of a server that serialises writers, so a create's latency
// and the store's throughput follow their number. Reads whose answer the create already
// has (or that a later check makes redundant) must not come back.
func TestCommandsPerCreate(t *testing.T) {
	s, log := openMonitored(t)
	ctx := t.Context()
	sv := storetest.BenchService(1)
	cmds, failed := log.during(func() {
		if _, err := s.CreateService(ctx, sv); err != nil {
			t.Fatalf("CreateService: %v", err)
		}
	})
	want := []string{
		"insert leases",    // claim the four Service IPs, one unordered insert
		"insert revisions", // reserve the revision
		"find meta",        // the compaction mark, in case this process's counter fell behind
		"update meta",      // raise the newest revision
		"insert names",     // the job name's document, read by key for lookups by name
		"insert services",
		"insert changes", // commit
	}
	if !slices.Equal(cmds, want) || len(failed) > 0 {
		t.Errorf("CreateService sent\n  %v\nwant\n  %v\nfailed: %v", cmds, want, failed)
	}
	in := store.Instance{ServiceID: sv.ID, Number: 0, IP: store.AddrPair{V4: netip.MustParseAddr("10.200.0.1"), V6: netip.MustParseAddr("fd00::200:1")},
		Status: store.StatusScheduled, UpdatedAt: time.Now()}
	cmds, failed = log.during(func() {
		if _, err := s.CreateInstance(ctx, in); err != nil {
			t.Fatalf("CreateInstance: %v", err)
		}
	})
	want = []string{
		"find services",    // the service exists; its job name goes into the record
		"insert leases",    // claim the Instance IP pair
		"insert revisions", // reserve
		"find meta",
		"update meta",
		"insert instances",
		"find locks",    // no DeleteService started meanwhile...
		"find services", // ...or finished
		"insert changes",
	}
	if !slices.Equal(cmds, want) || len(failed) > 0 {
		t.Errorf("CreateInstance sent\n  %v\nwant\n  %v\nfailed: %v", cmds, want, failed)
	}

	// The newest revision is one read of two small meta documents, not a sorted read of
	// every reservation (FerretDB decodes them all for that): every resolve, every
	// change poll and root's store watcher ask for it.
	var rev uint64
	cmds, failed = log.during(func() {
		var err error
		if rev, err = s.Revision(ctx); err != nil {
			t.Fatalf("Revision: %v", err)
		}
	})
	if want := []string{"find meta"}; !slices.Equal(cmds, want) || len(failed) > 0 || rev != 2 {
		t.Errorf("Revision = %d, sent\n  %v\nwant 2, sent\n  %v\nfailed: %v", rev, cmds, want, failed)
	}
}

// TestCommandsPerPoll pins what a cluster's change poll costs the store: nothing but
// small meta reads when no change follows, and reads by key, not a ranged read of the
// whole log (which FerretDB serves by decoding every change), when a few do.
func TestCommandsPerPoll(t *testing.T) {
	s, log := openMonitored(t)
	ctx := t.Context()
	for i := range 3 {
		if _, err := s.CreateService(ctx, storetest.BenchService(uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	poll := func(since uint64, wantChanges int, want ...string) {
		t.Helper()
		var got []store.Change
		cmds, failed := log.during(func() {
			var err error
			if got, err = s.Changes(ctx, since, 100); err != nil {
				t.Fatalf("Changes(%d): %v", since, err)
			}
		})
		if len(got) != wantChanges || !slices.Equal(cmds, want) || len(failed) > 0 {
			t.Errorf("Changes(%d): %d changes, sent\n  %v\nwant %d, sent\n  %v\nfailed: %v", since, len(got), cmds, wantChanges, want, failed)
		}
	}
	meta := []string{"find meta"} // compaction mark and newest, in one read
	poll(3, 0, meta...)
	poll(1, 2, append(meta, "find changes", "find changes")...)
	for i := 3; i < 3+mongo.KeyedReads; i++ {
		if _, err := s.CreateService(ctx, storetest.BenchService(uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	// More than keyedReads behind: one ranged read.
	poll(0, 3+mongo.KeyedReads, append(meta, "find changes")...)
}

// TestJobNameReadsByKey: a lookup by job name reads the name's document and the service
// by key (FerretDB decodes every service for a filter on job_name); an unknown name
// costs one read. A stale name document (its service gone, or the name's holder another)
// is answered right, by the filter, and repaired, so the next lookup reads by key again.
func TestJobNameReadsByKey(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	log := &commandLog{}
	ctx := t.Context()
	s, err := mongo.Open(ctx, uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}, Monitor: log.monitor()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	sv, err := s.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	job := sv.JobName()
	lookup := func(name string, wantErr error, want ...string) {
		t.Helper()
		cmds, failed := log.during(func() {
			got, err := s.GetServiceByJobName(ctx, name)
			if !errors.Is(err, wantErr) || (err == nil && got.ID != sv.ID) {
				t.Errorf("GetServiceByJobName(%s) = %s, %v; want %s, %v", name, got.ID, err, sv.ID, wantErr)
			}
		})
		if !slices.Equal(cmds, want) || len(failed) > 0 {
			t.Errorf("GetServiceByJobName(%s) sent\n  %v\nwant\n  %v\nfailed: %v", name, cmds, want, failed)
		}
	}
	lookup(job, nil, "find names", "find services")
	lookup("no.such.job.here", store.ErrNotFound, "find names")

	names := rawClient(t, uri).Database(db).Collection("names")
	repair := []string{"find names", "find services", "find services"}
	// The name's document points at a service that is gone: found by the filter,
	// repaired.
	if _, err := names.UpdateOne(ctx, bson.D{{Key: "_id", Value: job}}, bson.D{{Key: "$set", Value: bson.D{{Key: "service_id", Value: "ghost"}}}}); err != nil {
		t.Fatal(err)
	}
	lookup(job, nil, append(repair, "update names")...)
	lookup(job, nil, "find names", "find services")
	// A document left for a name no service holds: not found, and removed.
	if _, err := names.InsertOne(ctx, bson.D{{Key: "_id", Value: "a.b.c.d"}, {Key: "service_id", Value: "ghost"}}); err != nil {
		t.Fatal(err)
	}
	lookup("a.b.c.d", store.ErrNotFound, "find names", "find services", "find services", "delete names")
	lookup("a.b.c.d", store.ErrNotFound, "find names")
	// A create of a name whose document is stale takes it over.
	if _, err := names.InsertOne(ctx, bson.D{{Key: "_id", Value: storetest.BenchService(2).JobName()}, {Key: "service_id", Value: "ghost"}}); err != nil {
		t.Fatal(err)
	}
	sv2, err := s.CreateService(ctx, storetest.BenchService(2))
	if err != nil {
		t.Fatalf("create over a stale name document: %v", err)
	}
	if got, err := s.GetServiceByJobName(ctx, sv2.JobName()); err != nil || got.ID != sv2.ID {
		t.Errorf("after the create: %s, %v; want %s", got.ID, err, sv2.ID)
	}
	// A duplicate name is refused, and leaves the holder's document alone.
	dup := storetest.BenchService(3)
	dup.App, dup.AppNS, dup.Name, dup.NS = sv.App, sv.AppNS, sv.Name, sv.NS
	if _, err := s.CreateService(ctx, dup); !errors.Is(err, store.ErrAlreadyExists) {
		t.Errorf("create of a taken job name: %v, want ErrAlreadyExists", err)
	}
	lookup(job, nil, "find names", "find services")
	// A deleted service's name is unknown at one read.
	if _, err := s.DeleteService(ctx, sv.ID, true); err != nil {
		t.Fatal(err)
	}
	lookup(job, store.ErrNotFound, "find names")
}

// TestNamesFilledAtOpen: a database written before name documents existed gets them
// when a root opens it, once.
func TestNamesFilledAtOpen(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	open := func() *mongo.Store {
		s, err := mongo.Open(ctx, uri, db, mongo.Options{Options: store.Options{Quarantine: time.Hour}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	s := open()
	sv, err := s.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	raw := rawClient(t, uri).Database(db)
	if _, err := raw.Collection("names").DeleteMany(ctx, bson.D{}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Collection("meta").DeleteOne(ctx, bson.D{{Key: "_id", Value: "names_filled"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetServiceByJobName(ctx, sv.JobName()); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("without its name document: %v, want ErrNotFound (the test's premise)", err)
	}
	got, err := open().GetServiceByJobName(ctx, sv.JobName())
	if err != nil || got.ID != sv.ID {
		t.Errorf("after a reopen: %s, %v; want %s", got.ID, err, sv.ID)
	}
}

// TestInterestsKeyed: an interest is keyed by its pair, so adding one that exists (every
// resolve a cluster asks for adds one) is one read by key and no write; the interests
// of a database written before are rewritten at Open, none lost.
func TestInterestsKeyed(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	first, err := mongo.Open(ctx, uri, db, mongo.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	raw := rawClient(t, uri).Database(db)
	for _, svc := range []string{"s1", "s2"} { // as written before, under ObjectIDs
		if _, err := raw.Collection("interests").InsertOne(ctx, bson.D{{Key: "cluster_id", Value: "c1"}, {Key: "service_id", Value: svc}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := raw.Collection("meta").DeleteOne(ctx, bson.D{{Key: "_id", Value: "interests_keyed"}}); err != nil {
		t.Fatal(err)
	}
	log := &commandLog{}
	s, err := mongo.Open(ctx, uri, db, mongo.Options{Monitor: log.monitor()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	interests := func(want ...string) {
		t.Helper()
		got, err := s.Interests(ctx, "c1")
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Interests(c1) = %v, %v; want %v", got, err, want)
		}
	}
	interests("s1", "s2")
	if n, err := raw.Collection("interests").CountDocuments(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$type", Value: "objectId"}}}}); err != nil || n != 0 {
		t.Errorf("%d interests left under ObjectIDs (%v), want 0", n, err)
	}
	op := func(what string, fn func() error, want ...string) {
		t.Helper()
		cmds, failed := log.during(func() {
			if err := fn(); err != nil {
				t.Errorf("%s: %v", what, err)
			}
		})
		if !slices.Equal(cmds, want) || len(failed) > 0 {
			t.Errorf("%s sent\n  %v\nwant\n  %v\nfailed: %v", what, cmds, want, failed)
		}
	}
	op("AddInterest of an existing pair", func() error { return s.AddInterest(ctx, "c1", "s1") }, "find interests")
	op("AddInterest of a new pair", func() error { return s.AddInterest(ctx, "c1", "s3") }, "find interests", "insert interests")
	op("RemoveInterest", func() error { return s.RemoveInterest(ctx, "c1", "s1") }, "delete interests")
	interests("s2", "s3")
	// One interest is read by its key (a change poll's few services), also one an old
	// database wrote under an ObjectID, which Open rewrote.
	for _, c := range []struct {
		svc  string
		want bool
	}{{"s2", true}, {"s1", false}} {
		op("Interested", func() error {
			ok, err := s.Interested(ctx, "c1", c.svc)
			if err == nil && ok != c.want {
				err = fmt.Errorf("Interested(c1, %s) = %v, want %v", c.svc, ok, c.want)
			}
			return err
		}, "find interests")
	}
}

// TestLockWaitReads: a process waiting for another's lock polls it with reads, and
// inserts again only once it is gone: on FerretDB each insert waits for SQLite's one
// write lock, so a waiter inserting every few milliseconds slowed the holder down.
func TestLockWaitReads(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour}}
	a := open(t, uri, db, opt)
	defer a.Close()
	log := &commandLog{}
	opt.Monitor = log.monitor()
	b := open(t, uri, db, opt)
	defer b.Close()
	sv := storetest.BenchService(1)
	if _, err := a.CreateService(ctx, sv); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateInstance(ctx, store.Instance{ServiceID: sv.ID, Number: 0,
		IP: store.AddrPair{V4: netip.MustParseAddr("10.9.0.1"), V6: netip.MustParseAddr("fd09::1")}}); err != nil {
		t.Fatal(err)
	}
	holding, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, err := a.UpdateInstance(ctx, sv.ID, 0, func(*store.Instance) error {
			close(holding)
			<-release
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}()
	<-holding
	cmds, failed := log.during(func() {
		done := make(chan error)
		go func() {
			_, err := b.UpdateInstance(ctx, sv.ID, 0, func(*store.Instance) error { return nil })
			done <- err
		}()
		time.Sleep(500 * time.Millisecond) // b waits meanwhile
		close(release)
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	inserts, reads := 0, 0
	for _, c := range cmds {
		switch c {
		case "insert locks":
			inserts++
		case "find locks":
			reads++
		}
	}
	// One insert finds the lock held, one takes it once it is gone.
	if inserts != 2 || reads < 2 || len(failed) > 0 {
		t.Errorf("waiting half a second for a lock: %d inserts, %d reads of locks, failed %v; want 2 inserts and the waiting done by reads", inserts, reads, failed)
	}
}

// TestInstancesReadByKey: a service's instances are read by key, one per instance slot
// (FerretDB decodes every instance of every service for the filter on service_id); a
// create past the slots raises them first. A database written before slots existed is
// read with the filter until Open fills them in.
func TestInstancesReadByKey(t *testing.T) {
	uri := testURI(t)
	db := freshDB(t, uri)
	ctx := t.Context()
	log := &commandLog{}
	opt := mongo.Options{Options: store.Options{Quarantine: time.Hour}, Monitor: log.monitor()}
	s := open(t, uri, db, opt)
	defer s.Close()
	sv, err := s.CreateService(ctx, storetest.BenchService(1))
	if err != nil {
		t.Fatal(err)
	}
	create := func(n int) []string {
		t.Helper()
		cmds, _ := log.during(func() {
			ip := store.AddrPair{V4: netip.AddrFrom4([4]byte{10, 9, 0, byte(n + 1)}), V6: netip.AddrFrom16([16]byte{0xfd, 0x09, 15: byte(n + 1)})}
			if _, err := s.CreateInstance(ctx, store.Instance{ServiceID: sv.ID, Number: n, IP: ip}); err != nil {
				t.Fatal(err)
			}
		})
		return cmds
	}
	list := func(s *mongo.Store, slots int, numbers ...int) {
		t.Helper()
		var got []store.Instance
		cmds, failed := log.during(func() {
			var err error
			if got, err = s.ListInstances(ctx, sv.ID); err != nil {
				t.Fatal(err)
			}
		})
		var nums []int
		for _, in := range got {
			nums = append(nums, in.Number)
		}
		want := []string{"find services"}
		for range slots {
			want = append(want, "find instances")
		}
		if slots == 0 { // no slots: the filter
			want = append(want, "find instances")
		}
		if !slices.Equal(nums, numbers) || !slices.Equal(cmds, want) || len(failed) > 0 {
			t.Errorf("ListInstances: numbers %v, sent %v (failed %v); want %v, %v", nums, cmds, failed, numbers, want)
		}
	}
	for _, n := range []int{0, 2} {
		if cmds := create(n); slices.Contains(cmds, "update services") {
			t.Errorf("create of instance %d raised the slots of a new service: %v", n, cmds)
		}
	}
	list(s, 4, 0, 2)
	if cmds := create(6); !slices.Contains(cmds, "update services") {
		t.Errorf("create of instance 6 did not raise the slots: %v", cmds)
	}
	list(s, 7, 0, 2, 6)

	// As written before slots existed.
	raw := rawClient(t, uri).Database(db)
	if _, err := raw.Collection("services").UpdateOne(ctx, bson.D{{Key: "_id", Value: sv.ID}}, bson.D{{Key: "$unset", Value: bson.D{{Key: "instance_slots", Value: ""}}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Collection("meta").DeleteOne(ctx, bson.D{{Key: "_id", Value: "instance_slots_filled"}}); err != nil {
		t.Fatal(err)
	}
	list(s, 0, 0, 2, 6)
	reopened := open(t, uri, db, opt)
	defer reopened.Close()
	list(reopened, 7, 0, 2, 6)
}

// openMonitored opens a store on a fresh database with every command logged.
func openMonitored(t *testing.T) (*mongo.Store, *commandLog) {
	t.Helper()
	uri := testURI(t)
	log := &commandLog{}
	s, err := mongo.Open(t.Context(), uri, freshDB(t, uri), mongo.Options{Options: store.Options{Quarantine: time.Hour}, Monitor: log.monitor()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, log
}

// TestUnreachable: once the driver has found the server gone, the store's operations
// fail at once with ErrUnavailable (but for one per probe interval) rather than each
// waiting the server selection timeout, and once the server is back the store serves
// again without a new Open.
func TestUnreachable(t *testing.T) {
	db := testservers.StartFerretDB(t)
	// No probes within the test: the driver's heartbeat, every 500 ms here, finds the
	// server back.
	s := open(t, db.URI()+"?heartbeatFrequencyMS=500", "unreachable", mongo.Options{ProbeEvery: time.Hour})
	defer s.Close()
	ctx := t.Context()
	if _, err := s.GetService(ctx, "nothing"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("server up: %v, want ErrNotFound", err)
	}
	db.Kill()
	// These two find the server gone, waiting for it: one before the driver knows, one
	// as the probe.
	for range 2 {
		if _, err := s.GetService(ctx, "nothing"); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("server killed: %v, want ErrUnavailable", err)
		}
	}
	start := time.Now()
	for range 20 {
		if _, err := s.GetService(ctx, "nothing"); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("server known gone: %v, want ErrUnavailable", err)
		}
	}
	if err := s.Ping(ctx); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("ping, server known gone: %v, want ErrUnavailable", err)
	}
	// Waiting for the server, 21 operations would take 21 selection timeouts.
	if took := time.Since(start); took >= mongo.DefaultServerSelectionTimeout {
		t.Fatalf("21 operations with the server known gone took %v: they waited for it", took)
	}
	db.Start()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, err := s.GetService(ctx, "nothing")
		if errors.Is(err, store.ErrNotFound) {
			break
		}
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after the restart: %v, want ErrNotFound within 30 s", err)
		}
	}
}
