package mongo

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/event"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/description"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/root/store"
)

// DefaultProbeEvery is how often an operation goes to a server the driver knows to be
// gone (Options.ProbeEvery).
const DefaultProbeEvery = 250 * time.Millisecond

// reach follows what the driver knows of the deployment, whether it has a server that
// takes writes, and fails operations at once while it does not. Each would otherwise
// wait the server selection timeout before failing, and a create makes several writes
// (then cleans up with more), so a request caught by an outage hung for seconds, and
// a client with a few workers saw no answer at all during a 5 s outage. One operation
// per probe interval still goes through: an operation waiting for a server is what
// makes the driver look for it again, so the store serves again moments after its
// server does.
//
// The driver learns that a server is gone from the first operation that fails on it
// (or a failed heartbeat), and that it is back from a heartbeat.
type reach struct {
	down      atomic.Bool
	every     time.Duration
	start     time.Time
	nextProbe atomic.Int64 // time.Since(start) when the next operation may go through
}

func newReach(every time.Duration) *reach {
	if every <= 0 {
		every = DefaultProbeEvery
	}
	return &reach{every: every, start: time.Now()}
}

// monitor feeds r from the driver's topology events.
func (r *reach) monitor() *event.ServerMonitor {
	return &event.ServerMonitor{TopologyDescriptionChanged: func(e *event.TopologyDescriptionChangedEvent) {
		r.down.Store(!writable(e.NewDescription))
	}}
}

// writable reports whether the topology has a server that accepts writes.
func writable(t description.Topology) bool {
	for _, s := range t.Servers {
		switch s.Kind {
		case description.Standalone, description.RSPrimary, description.Mongos, description.LoadBalancer:
			return true
		}
	}
	return false
}

// errUnreachable is what operations refused by the gate fail with.
var errUnreachable = fmt.Errorf("%w: the database server is unreachable (operation not sent)", store.ErrUnavailable)

// pass reports whether an operation may go to the server now: always while the driver
// knows one that takes writes, else one per probe interval.
func (r *reach) pass() error {
	if r == nil || !r.down.Load() {
		return nil
	}
	now, at := int64(time.Since(r.start)), r.nextProbe.Load()
	if now >= at && r.nextProbe.CompareAndSwap(at, now+int64(r.every)) {
		return nil
	}
	return errUnreachable
}

// collection is a *mongo.Collection whose operations pass reach's gate first. Only
// the operations the store uses are gated; add one here before using it.
type collection struct {
	*mongo.Collection
	reach *reach
}

func (c *collection) FindOne(ctx context.Context, filter any, opts ...*options.FindOneOptions) *mongo.SingleResult {
	if err := c.reach.pass(); err != nil {
		return mongo.NewSingleResultFromDocument(bson.D{}, err, nil)
	}
	return c.Collection.FindOne(ctx, filter, opts...)
}

func (c *collection) Find(ctx context.Context, filter any, opts ...*options.FindOptions) (*mongo.Cursor, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.Find(ctx, filter, opts...)
}

func (c *collection) FindOneAndDelete(ctx context.Context, filter any, opts ...*options.FindOneAndDeleteOptions) *mongo.SingleResult {
	if err := c.reach.pass(); err != nil {
		return mongo.NewSingleResultFromDocument(bson.D{}, err, nil)
	}
	return c.Collection.FindOneAndDelete(ctx, filter, opts...)
}

func (c *collection) CountDocuments(ctx context.Context, filter any, opts ...*options.CountOptions) (int64, error) {
	if err := c.reach.pass(); err != nil {
		return 0, err
	}
	return c.Collection.CountDocuments(ctx, filter, opts...)
}

func (c *collection) InsertOne(ctx context.Context, doc any, opts ...*options.InsertOneOptions) (*mongo.InsertOneResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.InsertOne(ctx, doc, opts...)
}

func (c *collection) InsertMany(ctx context.Context, docs []any, opts ...*options.InsertManyOptions) (*mongo.InsertManyResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.InsertMany(ctx, docs, opts...)
}

func (c *collection) UpdateOne(ctx context.Context, filter, update any, opts ...*options.UpdateOptions) (*mongo.UpdateResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.UpdateOne(ctx, filter, update, opts...)
}

func (c *collection) ReplaceOne(ctx context.Context, filter, doc any, opts ...*options.ReplaceOptions) (*mongo.UpdateResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.ReplaceOne(ctx, filter, doc, opts...)
}

func (c *collection) DeleteOne(ctx context.Context, filter any, opts ...*options.DeleteOptions) (*mongo.DeleteResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.DeleteOne(ctx, filter, opts...)
}

func (c *collection) DeleteMany(ctx context.Context, filter any, opts ...*options.DeleteOptions) (*mongo.DeleteResult, error) {
	if err := c.reach.pass(); err != nil {
		return nil, err
	}
	return c.Collection.DeleteMany(ctx, filter, opts...)
}
