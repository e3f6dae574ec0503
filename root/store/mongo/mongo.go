// Package mongo is the MongoDB store, for deployments where several root processes share
// one database. It runs on MongoDB and on FerretDB v1 (the test server), which has no
// multi-document transactions and no change streams, and, as an experiment showed,
// does not apply a conditional update atomically either: it evaluates the filter, then
// writes by _id, so two concurrent $inc lose counts and two revision-conditional
// replaces can both "win". The one primitive both servers make atomic is an insert
// checked by a unique index, so every race here is decided by an insert:
//
//   - Leases: the leases collection is keyed by the address string, so only one claim
//     can insert it. A create claims its leases (one unordered insertMany) before it
//     inserts the record, and deletes what it inserted if anything fails (each lease
//     carries the call's claim token, so a rollback never touches another lease).
//     Taking over a released lease whose quarantine is over needs a ticket, a document
//     whose _id names the old lease's claim token: one claimer inserts it, drops the old
//     lease and inserts its own.
//   - Revisions: a writer reserves revision n by inserting a document with _id n into
//     revisions, writes its record, then inserts the change with _id n into changes (or
//     a void entry if the write failed). Each process counts locally and jumps ahead
//     when its reservation collides with another process's. (Inserts, not replaces:
//     FerretDB v1 serves a replace by decoding the whole collection.)
//   - Instance updates and deletes take a lock: a document in locks with the instance
//     as _id, inserted by the holder, renewed while held and deleted on unlock. A lock
//     not renewed for Options.LockTTL is taken for dead and broken by one waiter (again
//     chosen by a ticket insert); waiters poll it with reads. The update is also
//     conditional on the revision read, which on MongoDB is atomic.
//   - DeleteService holds the service's lock; CreateInstance and CreateExposure check
//     for it after inserting, so no instance or exposure survives under a deleted
//     service.
//   - A public port is unique per protocol because it is the exposure's _id. Gateways
//     are replaced whole by _id (last writer wins: root serialises the registrations of
//     one gateway).
//
// Unique indexes on job names, (service, instance number) and every address field of
// services and instances back this up. FerretDB v1 hands only filters of the form {_id:
// <string>} to SQLite; any other filter, sort or range decodes every document of the
// collection in Go (tens of microseconds each). So the hot paths use _id: revisions
// are 20-digit string _ids, a job name is looked up through its own document (names.go),
// a service's instances are read by key up to its instance slots, interests are keyed
// by their pair. A find or an update ($set, $max) by _id plus another field is served
// as the _id lookup with the rest checked after; a replace, or a delete with another
// field, decodes the collection inside SQLite's one write transaction, so instance
// updates $set their fields (setAll). Lists, sorts and ranges still scan there and use
// indexes on MongoDB. Inserts are checked through the indexes. (Measured figures: the
// README, Stores.)
//
// # Crashes
//
// A process that dies between claiming leases and inserting the record, or between
// deleting a record and releasing its leases, leaves active leases without an owning
// record. Reconcile (run by Open) puts every such lease older than Options.OrphanGrace
// into quarantine: quarantine rather than deletion, because the address may have been
// in use until the crash. A write whose outcome is unknown (network error) keeps its
// leases for the same reason; Reconcile frees them if the record never appeared. It also
// drops leases whose quarantine is over. Timing assumptions (a create finishes within
// OrphanGrace; a lock holder is not silent for 30 s) are where a crash-free design
// without transactions has to draw the line.
//
// # The change log
//
// Several processes reserve revisions concurrently and finish in any order, so revision
// 7 may become readable after 8. Changes returns only the contiguous run after since,
// stopping at the first revision not in changes (a write in progress). Void entries are
// skipped. A revision missing for longer than Options.AbandonAfter (measured on this
// process's clock from when a reader first met it) is taken as abandoned by a crashed
// writer: the reader logs the abandonment in the writer's place and reports a change of
// what the reservation names. A writer that was only slow (a loaded database) finds
// that mark when it logs its change, and logs the change again under a new revision,
// so followers that re-read the record too early still hear of the write. CompactChanges never
// drops revisions from a write in progress younger than OrphanGrace.
//
// Durability follows the write concern in the URI (for a replica set use w=majority).
// Driver and server failures are returned wrapping store.ErrUnavailable; while the
// driver knows of no server that takes writes, operations fail so at once, but for one
// per Options.ProbeEvery that finds out whether the server is back.
package mongo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/event"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
	"go.mongodb.org/mongo-driver/mongo/readpref"

	"github.com/semnet/semnet/root/store"
)

var _ store.Store = (*Store)(nil)

// DefaultServerSelectionTimeout bounds how long an operation waits for a reachable
// server unless the URI sets serverSelectionTimeoutMS: an operation caught by MongoDB
// going down fails (503) after it instead of hanging. Once the driver knows the server
// gone, operations fail at once (see reach).
const DefaultServerSelectionTimeout = 2 * time.Second

// Options configure the MongoDB store.
type Options struct {
	store.Options
	// SkipMigrate: Open does not apply the schema migrations (run Migrate separately).
	SkipMigrate bool
	// OrphanGrace is how old an active lease without an owning record must be before
	// Reconcile releases it. It must exceed the time a create takes. Default 1 minute.
	OrphanGrace time.Duration
	// AbandonAfter is how long a missing revision may block the change log before
	// readers skip it. Default 5 seconds.
	AbandonAfter time.Duration
	// LockTTL is how long a lock may go without renewal before others break it (its
	// holder renews it every quarter of that). Default 20 seconds.
	LockTTL time.Duration
	// Logger, when set, is told about a repair at Open that failed for want of the
	// server, and about lock renewals that failed.
	Logger *slog.Logger
	// Monitor, when set, watches every command the store's client sends: root exports
	// their durations per collection, the one view of what its database spends time on.
	Monitor *event.CommandMonitor
	// ProbeEvery is how often an operation goes to a server the driver knows to be
	// gone, to find out whether it is back; the others fail at once with
	// store.ErrUnavailable. Default DefaultProbeEvery.
	ProbeEvery time.Duration
}

// Store is the MongoDB-backed store.Store. It is safe for concurrent use.
type Store struct {
	client *mongo.Client
	db     *mongo.Database

	services, instances, leases, subnets, clusters, interests, changes, revisions, meta, locks, tickets *collection
	gateways, exposures, names                                                                          *collection

	now        func() time.Time
	log        *slog.Logger
	lockTTL    time.Duration
	quarantine time.Duration
	grace      time.Duration
	abandon    time.Duration

	local localLocks // per-key queues in front of the shared locks
	batch batches    // the writes of concurrent creates and updates, combined
	reach *reach     // fails operations at once while the server is known gone

	mu   sync.Mutex
	next uint64               // the next revision to try
	gaps map[uint64]time.Time // missing revisions → when a reader first found them (monotonic clock)
}

// Open connects to uri, applies the migrations unless opt.SkipMigrate, and reconciles
// leases left behind by crashed writers.
func Open(ctx context.Context, uri, dbName string, opt Options) (*Store, error) {
	if dbName == "" {
		return nil, errors.New("mongo: open: database name is empty")
	}
	co := options.Client().ApplyURI(uri)
	if err := co.Validate(); err != nil {
		return nil, fmt.Errorf("mongo: URI: %w", err) // not ErrUnavailable: retrying cannot help
	}
	if co.ServerSelectionTimeout == nil {
		// The driver's default (30 s) holds every request that long while the server is
		// down; the API should answer 503 well before a client gives up.
		co.SetServerSelectionTimeout(DefaultServerSelectionTimeout)
	}
	if opt.Monitor != nil {
		co.SetMonitor(opt.Monitor)
	}
	r := newReach(opt.ProbeEvery)
	co.SetServerMonitor(r.monitor())
	client, err := mongo.Connect(ctx, co)
	if err != nil {
		return nil, fmt.Errorf("mongo: connect: %w", dbErr(err))
	}
	s, err := newStore(ctx, client, r, dbName, opt)
	if err != nil {
		client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

func newStore(ctx context.Context, client *mongo.Client, r *reach, dbName string, opt Options) (*Store, error) {
	if err := client.Ping(ctx, readpref.Primary()); err != nil {
		return nil, fmt.Errorf("mongo: open %s: %w", dbName, dbErr(err))
	}
	if !opt.SkipMigrate {
		if _, err := migrateDB(ctx, client, dbName); err != nil {
			return nil, err
		}
	}
	db := client.Database(dbName)
	coll := func(name string) *collection { return &collection{Collection: db.Collection(name), reach: r} }
	s := &Store{
		client: client, db: db,
		services: coll("services"), instances: coll("instances"),
		leases: coll("leases"), subnets: coll("subnets"),
		clusters: coll("clusters"), interests: coll("interests"),
		changes: coll("changes"), revisions: coll("revisions"), meta: coll("meta"),
		locks: coll("locks"), tickets: coll("tickets"),
		gateways: coll("gateways"), exposures: coll("exposures"), names: coll("names"),
		reach: r,
		now:   opt.Now, quarantine: opt.Quarantine, grace: opt.OrphanGrace, abandon: opt.AbandonAfter,
		gaps: map[uint64]time.Time{},
	}
	s.batch = newBatches(s)
	if s.now == nil {
		s.now = time.Now
	}
	if s.grace <= 0 {
		s.grace = time.Minute
	}
	if s.abandon <= 0 {
		s.abandon = 5 * time.Second
	}
	s.lockTTL, s.log = opt.LockTTL, opt.Logger
	if s.lockTTL <= 0 {
		s.lockTTL = defaultLockTTL
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	rev, err := s.newestRevision(ctx)
	if err != nil {
		return nil, fmt.Errorf("mongo: open %s: %w", dbName, err)
	}
	// A database written before the newest-revision counter existed: start it from the
	// reservations. (Every root process on one database must raise it, that is, run
	// this version or a later one.)
	if rev > 0 {
		if err := s.raiseNewest(ctx, rev); err != nil {
			return nil, fmt.Errorf("mongo: open %s: %w", dbName, err)
		}
	}
	s.next = rev + 1
	// Bring a database written by an older root up to what this one reads by key.
	for _, up := range []struct {
		flag, what string
		fn         func(context.Context) error
	}{
		{namesFilled, "fill in job name documents", s.fillNames},
		{slotsFilled, "fill in instance slots", s.fillSlots},
		{interestsKeyed, "key interests by their pair", s.keyInterests},
	} {
		if err := s.oncePerDatabase(ctx, up.flag, up.fn); err != nil {
			return nil, fmt.Errorf("mongo: open %s: %s: %w", dbName, up.what, err)
		}
	}
	if err := s.Reconcile(ctx); err != nil {
		if !errors.Is(err, store.ErrUnavailable) {
			return nil, err
		}
		// A server too busy for the repair now (FerretDB answers "database is locked"
		// under load) need not keep root from starting: what the repair frees only holds
		// addresses until root's next periodic run (root.Config.ReconcileInterval).
		if opt.Logger != nil {
			opt.Logger.Warn("store repair at start failed; the periodic run retries", "err", err)
		}
	}
	return s, nil
}

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.reach.pass(); err != nil {
		return fmt.Errorf("mongo: ping: %w", err)
	}
	if err := s.client.Ping(ctx, readpref.Primary()); err != nil {
		return fmt.Errorf("mongo: ping: %w", dbErr(err))
	}
	return nil
}

// Close disconnects.
func (s *Store) Close() error {
	if err := s.client.Disconnect(context.Background()); err != nil {
		return fmt.Errorf("mongo: close: %w", err)
	}
	return nil
}

// dbErr marks an error from the driver as the store being unavailable (the API answers
// 503), except a cancelled context, which is the caller's doing. Callers handle
// duplicate keys and missing documents before.
func dbErr(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, store.ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// definite reports whether a failed write certainly did not happen: the server refused
// it. After a network error or timeout the write may have been applied.
func definite(err error) bool {
	if mongo.IsDuplicateKeyError(err) {
		return true
	}
	var we mongo.WriteException
	if errors.As(err, &we) {
		return we.WriteConcernError == nil && len(we.WriteErrors) > 0
	}
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) {
		return bwe.WriteConcernError == nil && len(bwe.WriteErrors) > 0
	}
	return false
}

// detached returns a context for cleanup that must run even when ctx was cancelled.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
}

// nowMS is the store clock at the precision BSON keeps (milliseconds), in UTC, so a
// record returned by a write equals the one read back.
func (s *Store) nowMS() time.Time { return ms(s.now()) }

func ms(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Truncate(time.Millisecond)
}

// addrString is how addresses are stored: their text form, "" for none.
func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// parser decodes stored text forms, keeping the first error.
type parser struct{ err error }

func (p *parser) addr(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	a, err := netip.ParseAddr(s)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("stored address %q: %w", s, err)
	}
	return a
}

func (p *parser) prefix(s string) netip.Prefix {
	if s == "" {
		return netip.Prefix{}
	}
	pf, err := netip.ParsePrefix(s)
	if err != nil && p.err == nil {
		p.err = fmt.Errorf("stored prefix %q: %w", s, err)
	}
	return pf
}

func (p *parser) pair(d pairDoc) store.AddrPair {
	return store.AddrPair{V4: p.addr(d.V4), V6: p.addr(d.V6)}
}

func checkID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s ID is empty", what)
	}
	return nil
}

func checkAddr(what string, a netip.Addr) error {
	if !a.IsValid() {
		return fmt.Errorf("%s is not set", what)
	}
	return nil
}

// oncePerDatabase runs fn unless the meta document flag says it has run on this
// database, and records that it has. fn must be safe to run again (two processes
// opening the database at once both run it).
func (s *Store) oncePerDatabase(ctx context.Context, flag string, fn func(context.Context) error) error {
	if done, err := s.metaN(ctx, flag); err != nil || done > 0 {
		return err
	}
	if err := fn(ctx); err != nil {
		return err
	}
	return s.setMetaN(ctx, flag, 1)
}

// setAll is the update that makes a document equal to doc: every field but _id set, the
// optional (omitempty) fields doc lacks unset. An update rather than a replacement
// because FerretDB v1 serves a replacement by decoding the whole collection, inside
// its write transaction, and an update by _id by key (12.8 against 0.7 ms at 5,000
// documents).
func setAll(doc any, optional ...string) (bson.D, error) {
	raw, err := bson.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	var fields bson.D
	if err := bson.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	set := fields[:0]
	for _, f := range fields {
		if f.Key != "_id" {
			set = append(set, f)
		}
	}
	up := bson.D{{Key: "$set", Value: set}}
	var unset bson.D
	for _, o := range optional {
		if _, err := bson.Raw(raw).LookupErr(o); err != nil {
			unset = append(unset, bson.E{Key: o, Value: ""})
		}
	}
	if len(unset) > 0 {
		up = append(up, bson.E{Key: "$unset", Value: unset})
	}
	return up, nil
}

// byID returns the document of c with this _id; store.ErrNotFound if there is none.
func byID[D any](ctx context.Context, c *collection, id string) (D, error) {
	var d D
	err := c.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&d)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return d, store.ErrNotFound
	}
	return d, dbErr(err)
}

// getRecord returns the record with this _id in c, decoded from its document.
func getRecord[D any, T any](ctx context.Context, c *collection, id string, record func(D) (T, error)) (T, error) {
	d, err := byID[D](ctx, c, id)
	if err != nil {
		var zero T
		return zero, err
	}
	return record(d)
}

// sortedByID returns the documents of c matching filter, by _id.
func sortedByID[D any](ctx context.Context, c *collection, filter bson.D) ([]D, error) {
	cur, err := c.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, dbErr(err)
	}
	var docs []D
	if err := cur.All(ctx, &docs); err != nil {
		return nil, dbErr(err)
	}
	return docs, nil
}

// listRecords returns the records of c matching filter, by _id.
func listRecords[D any, T any](ctx context.Context, c *collection, filter bson.D, record func(D) (T, error)) ([]T, error) {
	docs, err := sortedByID[D](ctx, c, filter)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(docs))
	for i, d := range docs {
		if out[i], err = record(d); err != nil {
			return nil, err
		}
	}
	return out, nil
}
