package mongo

import (
	"context"

	"go.mongodb.org/mongo-driver/event"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/root/store"
)

// ServiceDoc exposes the stored form of a service to the benchmarks.
func ServiceDoc(sv store.Service) any { return toServiceDoc(sv) }

// OpenMonitored is Open with mon watching every command the store's client sends, for
// tests that count what an operation costs.
func OpenMonitored(ctx context.Context, uri, dbName string, opt Options, mon *event.CommandMonitor) (*Store, error) {
	client, err := mongo.Connect(ctx, options.Client().ApplyURI(uri).SetMonitor(mon))
	if err != nil {
		return nil, err
	}
	s, err := newStore(ctx, client, dbName, opt)
	if err != nil {
		client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	return s, nil
}

// KeyedReads is keyedReads, for the tests of package mongo_test.
const KeyedReads = keyedReads
