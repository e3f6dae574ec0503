package mongo

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"
)

// batcher runs the operations concurrent writers make of one kind (inserts into one
// collection, raises of one counter, reads of one document) as one database command:
// each command is a round trip, and a transaction FerretDB's SQLite commits one at a
// time, so N creates in flight cost one command per step instead of N (group commit).
// A lone operation runs at once, with no wait for company; the ones that come while a
// command runs go together in the next. Every operation of a batch is in it before its
// command starts, so a batch never runs earlier than any of its operations would alone.
type batcher[T any] struct {
	run  func(ctx context.Context, ops []*T) // fills in each op's results
	size func(*T) int                        // what an op counts against max
	max  int                                 // per command; an op bigger than this runs alone

	mu      sync.Mutex
	queue   []*pending[T]
	running bool
}

type pending[T any] struct {
	ctx      context.Context
	op       *T
	done     chan bool // true: run the next batch (the op is still queued); false: the op ran
	panicked any       // what the batch's run panicked with, re-raised in every op's caller
}

func newBatcher[T any](max int, size func(*T) int, run func(ctx context.Context, ops []*T)) *batcher[T] {
	return &batcher[T]{run: run, size: size, max: max}
}

// do runs op in a batch and returns when its results are in. It waits for its batch even
// when ctx ends (as the driver's own calls can return before their write lands, this
// way an op is never left half-known): the batch's command runs under the latest of its
// operations' deadlines.
func (b *batcher[T]) do(ctx context.Context, op *T) {
	p := &pending[T]{ctx: ctx, op: op, done: make(chan bool, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	if b.running {
		b.mu.Unlock()
		if lead := <-p.done; !lead {
			if p.panicked != nil {
				panic(p.panicked)
			}
			return
		}
		b.mu.Lock()
	}
	b.running = true
	batch := b.take()
	b.mu.Unlock()

	panicked := b.runBatch(batch)
	for _, q := range batch {
		q.panicked = panicked
		if q != p {
			q.done <- false
		}
	}

	b.mu.Lock()
	if len(b.queue) > 0 {
		b.queue[0].done <- true // it runs the next batch; running stays set
	} else {
		b.running = false
	}
	b.mu.Unlock()
	if panicked != nil {
		panic(panicked)
	}
}

// runBatch runs a batch and returns what it panicked with, if it did: its operations'
// callers panic with it in their goroutines (an HTTP handler's recoverer answers 500),
// rather than take an op that never ran for done, and the batcher goes on.
func (b *batcher[T]) runBatch(batch []*pending[T]) (panicked any) {
	ctx, cancel := batchContext(batch)
	defer cancel()
	defer func() { panicked = recover() }()
	b.run(ctx, ops(batch))
	return nil
}

// take removes the next batch from the queue: the oldest operations, at least one, up to
// max in size. The caller holds mu.
func (b *batcher[T]) take() []*pending[T] {
	n, total := 0, 0
	for n < len(b.queue) {
		total += b.size(b.queue[n].op)
		if n > 0 && total > b.max {
			break
		}
		n++
	}
	batch := make([]*pending[T], n)
	copy(batch, b.queue)
	b.queue = append(b.queue[:0], b.queue[n:]...)
	return batch
}

func ops[T any](batch []*pending[T]) []*T {
	out := make([]*T, len(batch))
	for i, p := range batch {
		out[i] = p.op
	}
	return out
}

// batchContext is the context a batch's command runs under: no operation's cancellation
// may stop the others', and the deadline is the latest of theirs (none if one has none).
func batchContext[T any](batch []*pending[T]) (context.Context, context.CancelFunc) {
	var latest time.Time
	for _, p := range batch {
		d, ok := p.ctx.Deadline()
		if !ok {
			return context.WithoutCancel(p.ctx), func() {}
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(batch[0].ctx), latest)
}

// insertOp is one writer's insert of docs into a collection.
type insertOp struct {
	docs []any
	err  error // as InsertMany's: a BulkWriteException indexed into docs
}

// maxInsertBatch bounds the documents of one combined insert (documents here are small:
// well under MongoDB's 16 MiB per message).
const maxInsertBatch = 500

func newInserter(coll *collection) *batcher[insertOp] {
	return newBatcher(maxInsertBatch, func(op *insertOp) int { return len(op.docs) },
		func(ctx context.Context, ops []*insertOp) { insertAll(ctx, coll, ops) })
}

// insertAll inserts every op's documents with one unordered InsertMany (no document
// depends on another's) and hands each op the errors of its own documents.
func insertAll(ctx context.Context, coll *collection, ops []*insertOp) {
	if len(ops) == 1 {
		_, ops[0].err = coll.InsertMany(ctx, ops[0].docs, options.InsertMany().SetOrdered(false))
		return
	}
	var docs []any
	for _, op := range ops {
		docs = append(docs, op.docs...)
	}
	_, err := coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	var bwe mongo.BulkWriteException
	if err != nil && !errors.As(err, &bwe) {
		for _, op := range ops {
			op.err = err // a failed command: the same uncertainty for all
		}
		return
	}
	first := 0
	for _, op := range ops {
		var own mongo.BulkWriteException
		for _, we := range bwe.WriteErrors {
			if we.Index >= first && we.Index < first+len(op.docs) {
				we.Index -= first
				own.WriteErrors = append(own.WriteErrors, we)
			}
		}
		first += len(op.docs)
		if own.WriteErrors != nil || bwe.WriteConcernError != nil {
			own.WriteConcernError, own.Labels = bwe.WriteConcernError, bwe.Labels
			op.err = own
		}
	}
}

// insertOne inserts doc through b, with InsertOne's error: a WriteException.
func insertOne(ctx context.Context, b *batcher[insertOp], doc any) error {
	op := insertOp{docs: []any{doc}}
	b.do(ctx, &op)
	var bwe mongo.BulkWriteException
	if !errors.As(op.err, &bwe) {
		return op.err
	}
	we := mongo.WriteException{WriteConcernError: bwe.WriteConcernError, Labels: bwe.Labels}
	for _, e := range bwe.WriteErrors {
		we.WriteErrors = append(we.WriteErrors, e.WriteError)
	}
	return we
}

// insertMany inserts docs through b, with InsertMany's error.
func insertMany(ctx context.Context, b *batcher[insertOp], docs []any) error {
	op := insertOp{docs: docs}
	b.do(ctx, &op)
	return op.err
}

// raiseOp raises the newest-revision counter to rev.
type raiseOp struct {
	rev uint64
	err error
}

// readOp reads a counter.
type readOp struct {
	n   uint64
	err error
}

// batches are the store's combined operations: those every create and update makes.
type batches struct {
	leases, revisions, changes, names, services, instances *batcher[insertOp]
	// newest raises the counter once to the highest revision of the batch ($max).
	newest *batcher[raiseOp]
	// compacted reads the compaction mark once for all, after each op's reservation.
	compacted *batcher[readOp]
}

func newBatches(s *Store) batches {
	one := func(*raiseOp) int { return 1 }
	return batches{
		leases: newInserter(s.leases), revisions: newInserter(s.revisions), changes: newInserter(s.changes),
		names: newInserter(s.names), services: newInserter(s.services), instances: newInserter(s.instances),
		newest: newBatcher(maxInsertBatch, one, func(ctx context.Context, ops []*raiseOp) {
			var top uint64
			for _, op := range ops {
				top = max(top, op.rev)
			}
			err := s.raiseNewestTo(ctx, top)
			for _, op := range ops {
				op.err = err
			}
		}),
		compacted: newBatcher(maxInsertBatch, func(*readOp) int { return 1 }, func(ctx context.Context, ops []*readOp) {
			n, err := s.metaN(ctx, metaCompacted)
			for _, op := range ops {
				op.n, op.err = n, err
			}
		}),
	}
}
