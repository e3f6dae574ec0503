package root_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/bson/primitive"
	mongodrv "go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/syncbuf"
	"github.com/semnet/semnet/shared/testservers"
)

// TestPeriodicReconcile runs a real root on MongoDB repairing its store every 200 ms, and
// leaves in the database what a root that crashed in the middle of a service create
// leaves: the create's four address leases (one claim) and no service record. Without a
// restart, the periodic run puts them into quarantine (0 here), so a create asking for
// the address gets it; an orphan left later is repaired by a later run; an orphan younger
// than the store's grace (a create still in flight, as far as root can tell) is left alone
// and keeps its address taken throughout.
func TestPeriodicReconcile(t *testing.T) {
	uri := testservers.MongoURI(t)
	ctx := t.Context()
	raw, err := mongodrv.Connect(ctx, options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	db := raw.Database(fmt.Sprintf("semnet_root_reconcile_%d", time.Now().UnixNano()))
	t.Cleanup(func() {
		_ = db.Drop(context.Background())
		_ = raw.Disconnect(context.Background())
	})
	plan := addrplan.Default()
	plan.Quarantine = 0 // a repaired lease frees its address at once
	srv, err := root.Start(ctx, root.Config{Listen: "127.0.0.1:0", MongoURI: uri, MongoDB: db.Name(), Insecure: true,
		Plan: plan, ReconcileInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, err := client.New("http://"+srv.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}

	// orphan inserts the leases a service create claims (RR and Closest, v4 and v6),
	// created at created, as the store's claim writes them; the crash kept the record
	// from following.
	leases := db.Collection("leases")
	orphan := func(created time.Time, rr4, rr6, cl4, cl6 string) []string {
		t.Helper()
		claim := primitive.NewObjectID()
		lease := func(addr, role string) any {
			return bson.D{{Key: "_id", Value: addr}, {Key: "role", Value: role}, {Key: "owner", Value: "crashed-" + claim.Hex()},
				{Key: "instance", Value: -1}, {Key: "created_at", Value: created.UTC().Truncate(time.Millisecond)}, {Key: "claim", Value: claim}}
		}
		docs := []any{lease(rr4, store.RoleRoundRobin), lease(rr6, store.RoleRoundRobin), lease(cl4, store.RoleClosest), lease(cl6, store.RoleClosest)}
		if _, err := leases.InsertMany(ctx, docs); err != nil {
			t.Fatal(err)
		}
		return []string{rr4, rr6, cl4, cl6}
	}
	// released reports whether every lease of addrs is in quarantine.
	released := func(addrs []string) bool {
		t.Helper()
		n, err := leases.CountDocuments(ctx, bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: addrs}}},
			{Key: "released_at", Value: bson.D{{Key: "$exists", Value: true}}}})
		if err != nil {
			t.Fatal(err)
		}
		return n == int64(len(addrs))
	}
	waitReleased := func(what string, addrs []string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !released(addrs); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: leases %v still active after 15 s of reconciling every 200 ms", what, addrs)
			}
		}
	}
	create := func(name, rr string) (api.Service, error) {
		return rc.CreateService(ctx, api.ServiceRequest{App: name, AppNS: "prod", Service: "web", ServiceNS: "eu", RRIP: rr})
	}

	// Within the grace (a minute): reconciling must not take it, and it holds its address.
	young := orphan(time.Now(), "10.30.7.1", "fdff:2000::7:1", "10.30.7.2", "fdff:1000::7:2")
	if _, err := create("young", young[0]); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("create asking for an address a young orphan lease holds: %v, want a conflict", err)
	}

	// A crash two minutes ago: repaired by the periodic run, and the address is free.
	crashed := orphan(time.Now().Add(-2*time.Minute), "10.30.7.3", "fdff:2000::7:3", "10.30.7.4", "fdff:1000::7:4")
	waitReleased("the orphan of a crash", crashed)
	reclaimed, err := create("reclaimed", crashed[0])
	if err != nil || reclaimed.RRIP.String() != crashed[0] {
		t.Fatalf("create asking for the repaired address %s: %+v, %v", crashed[0], reclaimed, err)
	}

	// Not a one-off: an orphan found later is repaired by a later run.
	later := orphan(time.Now().Add(-2*time.Minute), "10.30.7.5", "fdff:2000::7:5", "10.30.7.6", "fdff:1000::7:6")
	waitReleased("an orphan left after the first repair", later)

	if released(young[:1]) {
		t.Error("reconciling released a lease younger than the grace")
	}
	if _, err := create("young", young[0]); !errors.Is(err, client.ErrConflict) {
		t.Errorf("create asking for the young orphan's address after the repairs: %v, want a conflict", err)
	}
	var l struct {
		Owner      string     `bson:"owner"`
		ReleasedAt *time.Time `bson:"released_at"`
	}
	if err := leases.FindOne(ctx, bson.D{{Key: "_id", Value: crashed[0]}}).Decode(&l); err != nil || l.Owner != reclaimed.ID || l.ReleasedAt != nil {
		t.Errorf("lease of the reclaimed address: %+v, %v; want the new service's (%s), active", l, err, reclaimed.ID)
	}
}

// TestReconcileIntervalValidated: a negative interval is refused; zero is the default.
func TestReconcileIntervalValidated(t *testing.T) {
	cfg := root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, Plan: addrplan.Default(), ReconcileInterval: -time.Second}
	if err := cfg.Validate(); err == nil {
		t.Error("a negative reconcile interval was accepted")
	}
	cfg.ReconcileInterval = 0
	if err := cfg.Validate(); err != nil {
		t.Errorf("the default reconcile interval: %v", err)
	}
}

// TestStoreWait starts root while its MongoDB server is down: with a store wait, root
// keeps trying and serves once the server is up; without one, or with a URI no retry can
// fix, it fails at once with an error saying why.
func TestStoreWait(t *testing.T) {
	db := testservers.StartFerretDB(t)
	db.Kill()
	cfg := root.Config{Listen: "127.0.0.1:0", MongoURI: db.URI(), MongoDB: "semnet", Insecure: true, Plan: addrplan.Default()}

	t.Run("try once", func(t *testing.T) {
		_, err := root.Start(t.Context(), cfg)
		if !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("Start with the server down and no store wait: %v, want an error wrapping store.ErrUnavailable", err)
		}
	})
	t.Run("bad URI", func(t *testing.T) {
		c := cfg
		c.MongoURI, c.StoreWait = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=nonsense", time.Hour
		_, err := root.Start(t.Context(), c)
		if err == nil || errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("Start with a malformed URI: %v, want a URI error that is not store.ErrUnavailable", err)
		}
	})
	t.Run("waits", func(t *testing.T) {
		logs := &syncbuf.Buffer{}
		c := cfg
		c.StoreWait, c.Logger = time.Minute, slog.New(slog.NewTextHandler(logs, nil))
		type started struct {
			srv *root.Server
			err error
		}
		done := make(chan started, 1)
		go func() {
			srv, err := root.Start(t.Context(), c)
			done <- started{srv, err}
		}()
		// The server comes up only after root has failed to reach it at least once.
		for !strings.Contains(logs.String(), "MongoDB unavailable; retrying") {
			select {
			case s := <-done:
				t.Fatalf("Start returned before the server was up: %v", s.err)
			case <-time.After(50 * time.Millisecond):
			}
		}
		db.Start()
		s := <-done
		if s.err != nil {
			t.Fatalf("Start after the server came up: %v\nroot's log:\n%s", s.err, logs)
		}
		defer s.srv.Close()
		rc, err := client.New("http://"+s.srv.Addr.String(), "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "wait", AppNS: "db", Service: "up", ServiceNS: "test"}); err != nil {
			t.Fatalf("create a service on the root that waited: %v", err)
		}
	})
}
