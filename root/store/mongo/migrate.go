package mongo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database/mongodb"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/migrations"
)

// staleLockAge: golang-migrate's advisory lock has no expiry, so a process that died
// while migrating would block every later start. Migrations here take seconds; a lock
// older than this is a leftover and is removed.
const staleLockAge = 2 * time.Minute

// Migrate applies every migration in package migrations to database dbName (no error
// if it is already up to date) and returns the schema version. Concurrent runs from
// several processes are serialised by golang-migrate's advisory lock.
func Migrate(ctx context.Context, uri, dbName string) (version uint, err error) {
	client, err := mongo.Connect(ctx, options.Client().ApplyURI(uri))
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: connect: %w", dbName, dbErr(err))
	}
	defer client.Disconnect(context.WithoutCancel(ctx))
	return migrateDB(ctx, client, dbName)
}

// migrateDB runs the migrations over an existing client (which it leaves connected).
func migrateDB(ctx context.Context, client *mongo.Client, dbName string) (uint, error) {
	lock := client.Database(dbName).Collection(mongodb.DefaultLockingCollection)
	_, err := lock.DeleteMany(ctx, bson.D{{Key: "created_at", Value: bson.D{{Key: "$lt", Value: time.Now().Add(-staleLockAge)}}}})
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: remove stale lock: %w", dbName, dbErr(err))
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: migration files: %w", dbName, err)
	}
	defer src.Close()
	drv, err := mongodb.WithInstance(client, &mongodb.Config{
		DatabaseName: dbName,
		Locking:      mongodb.Locking{Enabled: true, Timeout: int(staleLockAge / time.Second), Interval: 1},
	})
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: %w", dbName, dbErr(err))
	}
	// Not m.Close: that would disconnect the client, which belongs to the caller.
	m, err := migrate.NewWithInstance("iofs", src, "mongodb", drv)
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: %w", dbName, err)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			m.GracefulStop <- true
		case <-done:
		}
	}()
	if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
		return 0, fmt.Errorf("mongo: migrate %s: %w", dbName, dbErr(err))
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: %w", dbName, err)
	}
	v, dirty, err := m.Version()
	if err != nil {
		return 0, fmt.Errorf("mongo: migrate %s: read version: %w", dbName, dbErr(err))
	}
	if dirty {
		return v, fmt.Errorf("mongo: migrate %s: version %d is dirty: a migration was interrupted; check its indexes, then reset the version in schema_migrations", dbName, v)
	}
	return v, nil
}
