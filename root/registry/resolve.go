package registry

import (
	"context"
	"fmt"
	"strconv"

	"golang.org/x/sync/errgroup"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/geo"
)

// Entry is a resolved table entry: a service and its live instances.
type Entry struct {
	Service   store.Service
	Instances []store.Instance
	// Matched is the instance number when the entry was resolved by an Instance IP, else -1.
	Matched int
	// DistanceKM holds each instance's distance from the caller when resolved with a
	// location (same order as Instances), else nil.
	DistanceKM []float64
	// Revision is the store's revision read before the entry: the entry reflects every
	// change up to it (and maybe later ones), so a cache keeping the entry with the
	// highest Revision never goes back in time.
	Revision uint64
}

// Resolve returns the table entry for a Service IP, Instance IP, job name or service ID.
// Only live instances (running and placed) are listed. With a caller location they are
// ordered nearest first (the Closest policy: great-circle distance, stable tie-break);
// instances without a location come last, in number order.
func (r *Registry) Resolve(ctx context.Context, key string, from *geo.Point) (Entry, error) {
	rev, err := r.store.Revision(ctx)
	if err != nil {
		return Entry{}, fmt.Errorf("revision: %w", err)
	}
	s, matched, err := r.lookup(ctx, key)
	if err != nil {
		return Entry{}, err
	}
	all, err := r.Instances(ctx, s.ID)
	if err != nil {
		return Entry{}, err
	}
	e := liveEntry(s, matched, all, rev)
	if from == nil {
		return e, nil
	}
	located := e.Instances[:0:0]
	var unlocated []store.Instance
	for _, in := range e.Instances {
		if in.Location != nil {
			located = append(located, in)
		} else {
			unlocated = append(unlocated, in)
		}
	}
	job := s.JobName()
	geo.SortByDistance(located, *from,
		func(in store.Instance) geo.Point { return *in.Location },
		func(in store.Instance) string { return job + "/" + strconv.Itoa(in.Number) })
	e.Instances = append(located, unlocated...)
	e.DistanceKM = make([]float64, len(e.Instances))
	for i, in := range e.Instances {
		e.DistanceKM[i] = -1
		if in.Location != nil {
			e.DistanceKM[i] = geo.DistanceKM(*from, *in.Location)
		}
	}
	return e, nil
}

// serviceEntry is Resolve for a service ID, without a caller location and with the
// store's revision read before (rev): the service and its instances are read at once
// (listing them needs only the ID), which takes a database round trip off the way of
// every change to the clusters (ChangeEntries).
func (r *Registry) serviceEntry(ctx context.Context, id string, rev uint64) (Entry, error) {
	var (
		s   store.Service
		all []store.Instance
	)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() (err error) {
		if s, err = r.store.GetService(gctx, id); err != nil {
			return fmt.Errorf("service %q: %w", id, err)
		}
		return nil
	})
	g.Go(func() (err error) {
		all, err = r.Instances(gctx, id)
		return err
	})
	if err := g.Wait(); err != nil {
		return Entry{}, err
	}
	return liveEntry(s, -1, all, rev), nil
}

// liveEntry is the entry of s listing its live instances of all.
func liveEntry(s store.Service, matched int, all []store.Instance, rev uint64) Entry {
	e := Entry{Service: s, Matched: matched, Instances: all[:0:0], Revision: rev}
	for _, in := range all {
		if isLive(in) {
			e.Instances = append(e.Instances, in)
		}
	}
	return e
}
