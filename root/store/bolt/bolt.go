// Package bolt is the embedded store, root's default: one bbolt file, no server to run.
//
// Records are JSON values in buckets; the secondary indexes (job name → service ID,
// address → lease, instances by (service ID, number), interests both ways, exposures
// by service) are buckets
// too, kept in step with the records inside the same transaction. Every mutation is one
// bbolt read-write transaction that writes the record, its leases, its change log entry
// and the revision counter (the change bucket's sequence) together, so a crash leaves
// either all of it or none of it. Commits are fsynced (bbolt's default), so an
// acknowledged write survives a power cut.
//
// Writes are group-committed (see committer): bbolt commits one transaction at a time
// and each commit costs two fsyncs, so grouping concurrent writers into one commit is
// what makes thousands of creates per second possible. A write function may run more
// than once (when another function in its group fails, the group is retried without
// it), so every transaction function here starts from scratch on each run, and domain
// errors (not found, address taken, …) are not returned to the committer — that would
// roll back everyone else in the group — but passed out through a captured variable
// after every check has been made and before anything was written.
//
// The file is locked by the process that opens it: one root process per file. Use the
// mongo store to run several.
package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

var _ store.Store = (*Store)(nil)

// Bucket names. Keys are described next to each.
const (
	bucketMeta        = "meta"         // "compacted" → uint64 BE
	bucketClusters    = "clusters"     // cluster ID → Cluster JSON
	bucketServices    = "services"     // service ID → Service JSON
	bucketJobs        = "jobs"         // job name → service ID
	bucketInstances   = "instances"    // instanceKey(service ID, number) → Instance JSON
	bucketLeases      = "leases"       // address bytes (4 or 16) → Lease JSON
	bucketSubnets     = "subnets"      // IPv4 prefix (binary) → Subnet JSON
	bucketInterests   = "interests"    // cluster ID 0 service ID → nothing
	bucketInterestsBy = "interests_by" // service ID 0 cluster ID → nothing
	bucketChanges     = "changes"      // revision uint64 BE → Change JSON; its sequence is the revision counter
	bucketGateways    = "gateways"     // gateway ID → Gateway JSON
	bucketExposures   = "exposures"    // exposure ID → Exposure JSON
	bucketExposuresBy = "exposures_by" // service ID 0 exposure ID → nothing

	keyCompacted = "compacted"
)

func allBuckets() []string {
	return []string{bucketMeta, bucketClusters, bucketServices, bucketJobs, bucketInstances,
		bucketLeases, bucketSubnets, bucketInterests, bucketInterestsBy, bucketChanges,
		bucketGateways, bucketExposures, bucketExposuresBy}
}

// bk returns a bucket Open created.
func bk(tx *bbolt.Tx, name string) *bbolt.Bucket { return tx.Bucket([]byte(name)) }

// Store is the bbolt-backed store.Store. It is safe for concurrent use.
type Store struct {
	db         *bbolt.DB
	now        func() time.Time
	quarantine time.Duration
	commits    *committer
}

// mmapSize is the file mapping bbolt starts with: address space, not memory (the file
// grows only as data is written). bbolt maps the file again each time it outgrows the
// mapping (doubling from 32 KiB), and a commit that remaps waits for every read
// transaction in flight, while new ones wait behind it: under `rootload -rate 5000`
// those stalls made the create p99 4.7-150 ms (max up to 182 ms) from run to run, and
// 5-10 ms (max 14-22 ms) with the mapping large from the start. 1 GiB holds far more
// than a root's records on 64-bit machines; a 32-bit one keeps bbolt's default.
const mmapSize = (1 << 30) * (strconv.IntSize / 64)

// Open opens (creating if needed) the store file at path. It fails after a second if
// another process holds the file.
func Open(path string, opt store.Options) (*Store, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType, InitialMmapSize: mmapSize})
	if err != nil {
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	s := &Store{db: db, now: opt.Now, quarantine: opt.Quarantine, commits: newCommitter(db)}
	if s.now == nil {
		s.now = time.Now
	}
	// Leases whose quarantine is over are logically gone (GetLease and ListLeases skip
	// them); dropping them here keeps the file from accumulating them.
	cutoff := s.now().Add(-s.quarantine)
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, name := range allBuckets() {
			if _, err := tx.CreateBucketIfNotExists([]byte(name)); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		var expired [][]byte
		err := bk(tx, bucketLeases).ForEach(func(k, v []byte) error {
			var l store.Lease
			if err := json.Unmarshal(v, &l); err != nil {
				return fmt.Errorf("decode lease %x: %w", k, err)
			}
			if !l.ReleasedAt.IsZero() && !l.ReleasedAt.After(cutoff) {
				expired = append(expired, k)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range expired {
			if err := bk(tx, bucketLeases).Delete(k); err != nil {
				return fmt.Errorf("drop expired lease: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		s.commits.close()
		db.Close()
		return nil, fmt.Errorf("bolt: open %s: %w", path, err)
	}
	return s, nil
}

// Ping reports whether the store is open.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.view(ctx, func(*bbolt.Tx) error { return nil }); err != nil {
		return fmt.Errorf("bolt: ping: %w", err)
	}
	return nil
}

// Close closes the file; queued writes are committed first.
func (s *Store) Close() error {
	s.commits.close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("bolt: close: %w", err)
	}
	return nil
}

// domainError carries an answer for the caller (not found, taken, an error from an
// UpdateInstance function) out of a transaction function without failing the batch.
type domainError struct{ err error }

func (e *domainError) Error() string { return e.err.Error() }

// fail returns err as the outcome of a transaction function. Only use it before the
// function has written anything, or when what it wrote should be kept: the transaction
// commits.
func fail(err error) error { return &domainError{err: err} }

// update runs fn in a read-write transaction, group-committed with concurrent writes. fn may run more than once and must start from scratch
// each time. Errors wrapped with fail come back unchanged after a commit; any other
// error from fn rolls back and is returned.
func (s *Store) update(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var outcome error
	txfn := func(tx *bbolt.Tx) error {
		outcome = nil
		err := fn(tx)
		var d *domainError
		if errors.As(err, &d) {
			outcome = d.err
			return nil
		}
		return err
	}
	if err := s.commits.do(txfn); err != nil {
		return err
	}
	return outcome
}

// view runs fn in a read-only transaction.
func (s *Store) view(ctx context.Context, fn func(tx *bbolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(fn)
}

// nowUTC is the store clock without monotonic reading or zone, so a record read back
// compares equal to the one returned at write time.
func (s *Store) nowUTC() time.Time { return s.now().UTC().Round(0) }

func normTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Round(0)
}

// Revision returns the newest revision handed out.
func (s *Store) Revision(ctx context.Context) (uint64, error) {
	var rev uint64
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		rev = bk(tx, bucketChanges).Sequence()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("bolt: revision: %w", err)
	}
	return rev, nil
}

// logChange takes the next revision and appends c with it to the change log.
func logChange(tx *bbolt.Tx, c store.Change) (uint64, error) {
	b := bk(tx, bucketChanges)
	rev, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("next revision: %w", err)
	}
	c.Revision = rev
	if err := putJSON(b, u64(rev), c); err != nil {
		return 0, fmt.Errorf("log change %d: %w", rev, err)
	}
	return rev, nil
}

// Changes returns up to limit changes after since (limit <= 0: all). The log has no
// gaps: revisions are taken and logged in one transaction.
func (s *Store) Changes(ctx context.Context, since uint64, limit int) ([]store.Change, error) {
	var out []store.Change
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		if since < getU64(bk(tx, bucketMeta), []byte(keyCompacted)) {
			return store.ErrCompacted
		}
		c := bk(tx, bucketChanges).Cursor()
		for k, v := c.Seek(u64(since + 1)); k != nil; k, v = c.Next() {
			var ch store.Change
			if err := json.Unmarshal(v, &ch); err != nil {
				return fmt.Errorf("decode change %d: %w", binary.BigEndian.Uint64(k), err)
			}
			out = append(out, ch)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bolt: changes since %d: %w", since, err)
	}
	return out, nil
}

// CompactChanges drops changes up to upTo (at most the current revision).
func (s *Store) CompactChanges(ctx context.Context, upTo uint64) error {
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := bk(tx, bucketChanges)
		upTo := min(upTo, b.Sequence())
		meta := bk(tx, bucketMeta)
		if upTo <= getU64(meta, []byte(keyCompacted)) {
			return nil
		}
		if err := meta.Put([]byte(keyCompacted), u64(upTo)); err != nil {
			return err
		}
		c := b.Cursor()
		for k, _ := c.First(); k != nil && binary.BigEndian.Uint64(k) <= upTo; k, _ = c.First() {
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("bolt: compact changes up to %d: %w", upTo, err)
	}
	return nil
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 8), v) }

func getU64(b *bbolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putJSON(b *bbolt.Bucket, k []byte, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, buf)
}

// getJSON decodes the value at k into v; false if there is none.
func getJSON(b *bbolt.Bucket, k []byte, v any) (bool, error) {
	buf := b.Get(k)
	if buf == nil {
		return false, nil
	}
	if err := json.Unmarshal(buf, v); err != nil {
		return false, fmt.Errorf("decode %s %q: %w", "record", k, err)
	}
	return true, nil
}

// getRecord decodes the record at key in bucket; store.ErrNotFound if there is none.
func getRecord[T any](tx *bbolt.Tx, bucket string, key []byte) (T, error) {
	var v T
	ok, err := getJSON(bk(tx, bucket), key, &v)
	if err == nil && !ok {
		err = store.ErrNotFound
	}
	return v, err
}

// viewRecord reads one record in a read-only transaction.
func viewRecord[T any](ctx context.Context, s *Store, bucket string, key []byte) (T, error) {
	var v T
	err := s.view(ctx, func(tx *bbolt.Tx) (err error) {
		v, err = getRecord[T](tx, bucket, key)
		return err
	})
	return v, err
}

// listRecords decodes every record in bucket, in key order.
func listRecords[T any](tx *bbolt.Tx, bucket string) ([]T, error) {
	var out []T
	err := bk(tx, bucket).ForEach(func(k, v []byte) error {
		var r T
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode %s %s: %w", bucket, k, err)
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// pairKey joins two IDs for the interest buckets; IDs never contain NUL (checked).
func pairKey(a, b string) []byte {
	k := make([]byte, 0, len(a)+1+len(b))
	k = append(k, a...)
	k = append(k, 0)
	return append(k, b...)
}

// instanceKey orders a service's instances by number: the number's sign bit is flipped
// so negative numbers (never handed out, but representable) sort first.
func instanceKey(serviceID string, number int) []byte {
	k := make([]byte, 0, len(serviceID)+9)
	k = append(k, serviceID...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, uint64(number)^(1<<63))
}

func checkID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%s ID is empty", what)
	}
	for i := 0; i < len(id); i++ {
		if id[i] == 0 {
			return fmt.Errorf("%s ID %q contains a NUL byte", what, id)
		}
	}
	return nil
}

func checkAddr(what string, a netip.Addr) error {
	if !a.IsValid() {
		return fmt.Errorf("%s is not set", what)
	}
	return nil
}
