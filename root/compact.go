package root

import (
	"context"
	"time"
)

// DefaultChangeRetention is how long root keeps the change log unless told otherwise:
// longer than a cluster is likely to be cut off (a cluster further behind re-reads
// everything it caches), short enough that the log stays small.
const DefaultChangeRetention = 15 * time.Minute

// changeLog is what the compactor needs of the store.
type changeLog interface {
	Revision(ctx context.Context) (uint64, error)
	CompactChanges(ctx context.Context, upTo uint64) error
}

// compactor drops the changes older than the retention from the log: without it the log
// grows with every write for good (and a MongoDB-wire server without indexes, such as
// FerretDB, reads all of it for every cluster's poll). Run every retention/10, tick notes
// the current revision and compacts up to the newest revision it noted at least
// retention ago, so a change is kept for at least the retention and at most 1.1 times it. A root
// that just started compacts nothing until it has run for the retention; several roots
// on one database each compact (the store serialises compactions).
type compactor struct {
	log       changeLog
	retention time.Duration
	now       func() time.Time
	marks     []revisionMark
}

type revisionMark struct {
	rev uint64
	at  time.Time
}

// tick notes the current revision and compacts what is older than the retention.
func (c *compactor) tick(ctx context.Context) error {
	rev, err := c.log.Revision(ctx)
	if err != nil {
		return err
	}
	now := c.now()
	c.marks = append(c.marks, revisionMark{rev, now})
	var upTo uint64
	i := 0
	for ; i < len(c.marks) && now.Sub(c.marks[i].at) >= c.retention; i++ {
		upTo = c.marks[i].rev
	}
	if i == 0 {
		return nil
	}
	c.marks = append(c.marks[:0], c.marks[i:]...)
	if upTo == 0 {
		return nil
	}
	return c.log.CompactChanges(ctx, upTo)
}
