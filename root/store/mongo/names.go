package mongo

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/bson"
	"go.mongodb.org/mongo-driver/mongo"

	"github.com/semnet/semnet/root/store"
)

// A job name is looked up through a document of its own in "names", keyed by the name,
// that holds the service's ID: a read by key, where a filter on the services' job_name
// is answered by FerretDB v1 decoding every service (70 µs a document on a loaded
// server; clusters look names up for every table miss, known or not).
//
// The name document is a hint. The service record and its unique job name index stay
// the authority. CreateService writes the hint before the service, so a live service
// always has one (Open fills them in for a database written before they existed; every
// root process on a database must run a version that writes them), and a name without
// one is unknown at the cost of one read. A hint can be stale: its service is gone (a
// create failed or crashed after writing it, a delete crashed before removing it) or a
// concurrent create of the same name overwrote it and lost the race for the service.
// A lookup that meets a stale hint falls back to the filter on job_name and repairs
// the hint, so a stale one costs a scan once.

type nameDoc struct {
	JobName   string `bson:"_id"`
	ServiceID string `bson:"service_id"`
}

// namesFilled is the meta document saying every service has its name document; Open
// writes it after filling in those of a database written before names existed.
const namesFilled = "names_filled"

// claimName points job at serviceID, unless a live service holds the name.
func (s *Store) claimName(ctx context.Context, job, serviceID string) error {
	mine := nameDoc{JobName: job, ServiceID: serviceID}
	for range 3 { // each retry follows a concurrent create or delete of the name
		err := insertOne(ctx, s.batch.names, mine)
		if !mongo.IsDuplicateKeyError(err) {
			return dbErr(err)
		}
		var cur nameDoc
		err = s.names.FindOne(ctx, bson.D{{Key: "_id", Value: job}}).Decode(&cur)
		if errors.Is(err, mongo.ErrNoDocuments) {
			continue
		}
		if err != nil {
			return dbErr(err)
		}
		if cur.ServiceID == serviceID {
			return nil // a retried create's own
		}
		if _, err := s.serviceNamed(ctx, cur.ServiceID, job); err == nil {
			return fmt.Errorf("job name %s: %w", job, store.ErrAlreadyExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		// A stale hint: take it over unless another create did first.
		res, err := s.names.ReplaceOne(ctx, bson.D{{Key: "_id", Value: job}, {Key: "service_id", Value: cur.ServiceID}}, mine)
		if err != nil {
			return dbErr(err)
		}
		if res.MatchedCount == 1 {
			return nil
		}
	}
	return fmt.Errorf("job name %s: created and deleted concurrently, try again: %w", job, store.ErrUnavailable)
}

// dropName removes job's name document if it still names serviceID.
func (s *Store) dropName(ctx context.Context, job, serviceID string) {
	ctx, cancel := detached(ctx) // the service is gone: finish even if the caller gave up
	defer cancel()
	_, err := s.names.DeleteOne(ctx, bson.D{{Key: "_id", Value: job}, {Key: "service_id", Value: serviceID}})
	if err != nil {
		// A stale hint costs the next lookup of the name a scan, and is repaired by it.
		s.log.Warn("deleting a service's name document failed", "job", job, "err", err)
	}
}

// serviceNamed returns the service with this ID if its job name is job, else ErrNotFound.
func (s *Store) serviceNamed(ctx context.Context, id, job string) (serviceDoc, error) {
	d, err := s.getService(ctx, bson.D{{Key: "_id", Value: id}})
	if err == nil && d.JobName != job {
		err = store.ErrNotFound
	}
	return d, err
}

// GetServiceByJobName returns the service with this job name.
func (s *Store) GetServiceByJobName(ctx context.Context, jobName string) (store.Service, error) {
	d, err := s.serviceByName(ctx, jobName)
	if err == nil {
		var sv store.Service
		if sv, err = d.service(); err == nil {
			return sv, nil
		}
	}
	return store.Service{}, fmt.Errorf("mongo: service %s: %w", jobName, err)
}

func (s *Store) serviceByName(ctx context.Context, job string) (serviceDoc, error) {
	var n nameDoc
	err := s.names.FindOne(ctx, bson.D{{Key: "_id", Value: job}}).Decode(&n)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return serviceDoc{}, store.ErrNotFound
	}
	if err != nil {
		return serviceDoc{}, dbErr(err)
	}
	d, err := s.serviceNamed(ctx, n.ServiceID, job)
	if !errors.Is(err, store.ErrNotFound) {
		return d, err
	}
	// A stale hint: ask the authority, and point the hint at its answer (or drop it),
	// unless someone changed it meanwhile.
	stale := bson.D{{Key: "_id", Value: job}, {Key: "service_id", Value: n.ServiceID}}
	d, err = s.getService(ctx, bson.D{{Key: "job_name", Value: job}})
	switch {
	case err == nil:
		_, rerr := s.names.ReplaceOne(ctx, stale, nameDoc{JobName: job, ServiceID: d.ID})
		s.logRepair(job, rerr)
	case errors.Is(err, store.ErrNotFound):
		_, rerr := s.names.DeleteOne(ctx, stale)
		s.logRepair(job, rerr)
	}
	return d, err
}

func (s *Store) logRepair(job string, err error) {
	if err != nil {
		s.log.Warn("repairing a stale job name document failed; the next lookup tries again", "job", job, "err", err)
	}
}

// fillNames writes the name documents of services created before they existed (Open
// runs it once per database).
func (s *Store) fillNames(ctx context.Context) error {
	var docs []serviceDoc
	if err := scan(ctx, s.services, bson.D{{Key: "job_name", Value: 1}}, func(d serviceDoc) { docs = append(docs, d) }); err != nil {
		return err
	}
	for _, d := range docs {
		_, err := s.names.InsertOne(ctx, nameDoc{JobName: d.JobName, ServiceID: d.ID})
		if err != nil && !mongo.IsDuplicateKeyError(err) {
			return fmt.Errorf("name document of %s: %w", d.JobName, dbErr(err))
		}
	}
	return nil
}
