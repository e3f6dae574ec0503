// Package cache holds the table entries a cluster service serves to its worker nodes: one
// per job, found by job name, service ID, or any of the job's Service IPs and Instance IPs.
//
// The cache is fed by root's change stream. Every entry carries the root revision it
// reflects, and the cache keeps, per job, only the highest revision it has seen: change
// events and the fetches they trigger race each other (a fetch started before a delete may
// land after it), so "newest revision wins" is what makes the order of arrival irrelevant.
// Deletes leave a tombstone for the same reason, bounded by age and count (see Options).
//
// Memory (this package) is the default; cluster/cache/redis shares one cache between
// several replicas of a cluster service. Both are held to the same semantics by
// cluster/cache/cachetest.
package cache

import (
	"context"
	"errors"
	"iter"
	"net/netip"
	"time"

	"github.com/semnet/semnet/proto/api"
)

// Entry is one cached table entry. Entries returned by Get are shared between callers and
// must not be modified, nor may an entry given to Put be modified afterwards (a backend
// may keep what it points to).
type Entry struct {
	// Table is the service and its instances, as root served it. The cache never sets
	// Table.MatchedInstance: an entry is shared by all its keys, so a caller that resolved
	// an Instance IP finds the instance itself (Addrs lists the keys).
	Table api.TableEntry `json:"table"`
	// Revision is the root revision this entry reflects.
	Revision uint64 `json:"revision"`
	// Fetched is when the entry was read from root; callers use it to mark answers stale.
	Fetched time.Time `json:"fetched"`
}

// JobName is the entry's identity in the cache: the job name of its service.
func (e *Entry) JobName() string { return e.Table.Service.JobName }

// Addrs yields the addresses Get finds e by: its round-robin and closest Service IPs (v4,
// v6) and the Instance IP pair of each instance, in that order. Unset addresses are
// skipped; IPv4-mapped IPv6 addresses are yielded as IPv4, as Get looks them up.
func (e *Entry) Addrs() iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		sv := &e.Table.Service
		for _, a := range [...]netip.Addr{sv.RRIP, sv.RRIPv6, sv.ClosestIP, sv.ClosestIPv6} {
			if a.IsValid() && !yield(a.Unmap()) {
				return
			}
		}
		for i := range e.Table.Instances {
			in := &e.Table.Instances[i]
			if in.InstanceIP.IsValid() && !yield(in.InstanceIP.Unmap()) {
				return
			}
			if in.InstanceIPv6.IsValid() && !yield(in.InstanceIPv6.Unmap()) {
				return
			}
		}
	}
}

// ParseAddr parses key as an address key: a valid IPv4 or IPv6 address without a zone
// (Service and Instance IPs have none), in any spelling; an IPv4-mapped IPv6 address is
// returned as IPv4, as Addrs yields it. It allocates nothing when key is an address.
func ParseAddr(key string) (netip.Addr, bool) {
	a, err := netip.ParseAddr(key)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// ErrNotFound is returned by Get when no cached entry has the key.
var ErrNotFound = errors.New("cache: not found")

// Cache is the cluster service's table-entry cache. All methods are safe for concurrent use.
//
// Keys: an entry is found by its job name, its service ID, or any address Addrs yields,
// written in any valid text form: "fdff:2000::1" and "FDFF:2000:0::1" are one key, and
// "::ffff:10.0.0.1" is 10.0.0.1 (see ParseAddr). Lookups try the job name, then the
// service ID, then the address.
// Should two cached jobs claim the same key (root reassigned an address and the cache has
// seen the new owner before the old owner's update), the key resolves to the entry with
// the higher revision; when that entry lets the key go, the key stops resolving rather
// than falling back to the older claimant, whose claim is stale by then.
type Cache interface {
	// Get returns the entry with the given key, or ErrNotFound. Malformed keys (empty,
	// garbage) are simply not found.
	Get(ctx context.Context, key string) (*Entry, error)

	// Put stores e unless the cache holds e's job at a higher revision or an unexpired
	// tombstone at e.Revision or later, and reindexes the job: keys the previous version
	// had and e has not stop resolving. Putting the same revision again replaces the entry
	// (so a re-fetch refreshes Fetched) and reports stored. The entry must have a job name.
	Put(ctx context.Context, e *Entry) (stored bool, err error)

	// Delete drops the job if its cached revision is at most rev, and leaves a tombstone
	// at rev so that a late Put of revision rev or older does not bring it back. Deleting
	// a job that is not cached still leaves the tombstone: the delete may have overtaken
	// the fetch of the entry it deletes.
	Delete(ctx context.Context, jobName string, rev uint64) error

	// Jobs returns the names of the cached jobs, sorted (a full resync re-reads them).
	Jobs(ctx context.Context) ([]string, error)

	// Len returns the number of cached jobs and of their instances (for metrics).
	Len(ctx context.Context) (jobs, instances int, err error)

	// Cursor returns the last change-stream revision fully applied (0 when none), so that a
	// restarted replica, or another one sharing the cache, resumes from it.
	Cursor(ctx context.Context) (uint64, error)

	// SetCursor records rev as applied. It never moves the cursor backwards: replicas
	// racing to record their progress cannot undo each other's.
	SetCursor(ctx context.Context, rev uint64) error

	Holds

	// Close releases the cache's resources.
	Close() error
}

// Holds is the bookkeeping that lets replicas of a cluster service share the cluster's
// interest at root. Root keeps one interest per cluster and job, so a replica whose
// nodes no longer need a job may drop it only when no other replica needs it either: a
// replica holds a job while it needs it, and the one that releases the last hold drops
// the interest.
//
// A hold expires HoldTTL after it was taken or last renewed, so a replica that died does
// not hold jobs for ever; a live replica renews its holds well within that time. Holds
// are counted and expired by the clock of the replica that asks (Options.Now): the
// replicas' clocks must agree to well within HoldTTL.
//
// Dropping an interest races with taking it up: root's interest is registered by a
// fetch and removed by a call of its own, whose order at root nobody controls. The
// protocol (cluster/table) is: hold before fetching with interest (or, where the job is
// known only from the fetch, read Drops before it and fetch again when Hold reports a
// drop since); release, remove the interest at root when Release was the last, then
// call Dropped and take the interest up again when somebody holds the job by then.
type Holds interface {
	// Hold records that replica needs job, until HoldTTL from now. first reports that no
	// replica held the job (an unexpired hold) before, not even this one; drops is the
	// drop count (see Drops) at that moment.
	Hold(ctx context.Context, replica, job string) (first bool, drops uint64, err error)

	// Release drops replica's hold of job (holding it or not). last reports that no
	// replica holds the job now; then the job's entry is removed too, without a
	// tombstone, as no replica follows it any more (its next lookup fetches it with
	// interest). Releasing a job nobody holds reports last.
	Release(ctx context.Context, replica, job string) (last bool, err error)

	// Dropped records that replica removed the cluster's interest in job at root after
	// its Release reported last: it counts the drop (see Drops) and reports whether any
	// replica holds the job now. Then the caller takes the interest up again, and every
	// other holder is told through Renew to re-read the job (root sent no changes in
	// between); else the job's entry is removed again, since a fetch racing the drop may
	// have put it back.
	Dropped(ctx context.Context, replica, job string) (held bool, err error)

	// Drops returns the number of drops Dropped has counted. A replica that fetched with
	// interest before knowing the job (a lookup by address) reads it before the fetch:
	// if Hold then reports it first and the count moved, a drop may have removed the
	// interest the fetch registered, and it fetches again.
	Drops(ctx context.Context) (uint64, error)

	// Renew extends replica's unexpired holds of jobs to HoldTTL from now. It returns the
	// jobs replica must take the interest up in again and re-read: those of jobs it no
	// longer held (expired, or lost with the server), which it does not hold again, and
	// those another replica's Dropped reported held (once each).
	Renew(ctx context.Context, replica string, jobs []string) (refollow []string, err error)
}

// Defaults of Options.
const (
	// DefaultTombstoneTTL is long enough to outlast any fetch in flight when its job was
	// deleted (they time out in seconds), short enough that tombstones of a mass deletion
	// do not pile up.
	DefaultTombstoneTTL = 10 * time.Minute
	// DefaultMaxTombstones bounds tombstones to about a megabyte.
	DefaultMaxTombstones = 10000
	// DefaultHoldTTL is three times the renewal period cluster/table uses by default:
	// a replica misses two renewals (a Redis failover) before its holds expire.
	DefaultHoldTTL = 30 * time.Second
)

// Options tune a cache. The zero value selects the defaults.
type Options struct {
	// TombstoneTTL is how long a Delete's tombstone is honoured.
	TombstoneTTL time.Duration
	// MaxTombstones is how many tombstones are kept; the oldest go first.
	MaxTombstones int
	// HoldTTL is how long a hold lasts without renewal (see Holds).
	HoldTTL time.Duration
	// Now is the clock tombstones and holds are aged by (tests pass a fake one).
	Now func() time.Time
}

// WithDefaults returns o with its zero fields set to the defaults.
func (o Options) WithDefaults() Options {
	if o.TombstoneTTL <= 0 {
		o.TombstoneTTL = DefaultTombstoneTTL
	}
	if o.MaxTombstones <= 0 {
		o.MaxTombstones = DefaultMaxTombstones
	}
	if o.HoldTTL <= 0 {
		o.HoldTTL = DefaultHoldTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

var (
	errNoJobName       = errors.New("cache: put: entry has no job name (table.service.job_name)")
	errNoDeleteJobName = errors.New("cache: delete: empty job name")
	errNoHoldJob       = errors.New("cache: hold: empty job name")
	errNoReplica       = errors.New("cache: hold: empty replica id")
)

// CheckHold returns an error unless replica may hold job: neither is empty. Backends call
// it first in Hold, Release and Dropped.
func CheckHold(replica, job string) error {
	if err := CheckReplica(replica); err != nil {
		return err
	}
	if job == "" {
		return errNoHoldJob
	}
	return nil
}

// CheckReplica returns an error unless replica is a replica id: not empty. Backends call
// it first in Renew.
func CheckReplica(replica string) error {
	if replica == "" {
		return errNoReplica
	}
	return nil
}

// CheckPut returns an error unless e can be stored: it is not nil and has a job name.
// Backends call it first in Put.
func CheckPut(e *Entry) error {
	if e == nil || e.JobName() == "" {
		return errNoJobName
	}
	return nil
}

// CheckDelete returns an error unless jobName can be deleted: it is not empty. Backends
// call it first in Delete.
func CheckDelete(jobName string) error {
	if jobName == "" {
		return errNoDeleteJobName
	}
	return nil
}
