package mongo

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	mongodrv "go.mongodb.org/mongo-driver/mongo"
	"go.mongodb.org/mongo-driver/mongo/options"

	"github.com/semnet/semnet/shared/testservers"
)

// sizedOp is a batcher op for the tests: in goes in, run doubles it into out.
type sizedOp struct {
	size, in, out int
	ranAlone      bool
}

// blockedBatcher returns a batcher whose first batch waits for release, and the list of
// batches run (the inputs of each).
func blockedBatcher(max int) (b *batcher[sizedOp], release func(), batches func() [][]int) {
	var mu sync.Mutex
	var ran [][]int
	gate := make(chan struct{})
	first := true
	b = newBatcher(max, func(op *sizedOp) int { return op.size }, func(ctx context.Context, ops []*sizedOp) {
		mu.Lock()
		wait := first
		first = false
		mu.Unlock()
		if wait {
			<-gate
		}
		var ins []int
		for _, op := range ops {
			op.out = 2 * op.in
			op.ranAlone = len(ops) == 1
			ins = append(ins, op.in)
		}
		mu.Lock()
		ran = append(ran, ins)
		mu.Unlock()
	})
	return b, func() { close(gate) }, func() [][]int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(ran)
	}
}

func (b *batcher[T]) queued() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.queue)
}

func (b *batcher[T]) busy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running
}

// TestBatcherCombines: a lone op runs at once; the ops that come while it runs go in the
// next batch together, in order, up to max in size (an op bigger than max alone), and
// each gets its own result.
func TestBatcherCombines(t *testing.T) {
	b, release, batches := blockedBatcher(4)
	var wg sync.WaitGroup
	results := make([]*sizedOp, 6)
	start := func(i, size int) {
		results[i] = &sizedOp{size: size, in: i}
		wg.Go(func() { b.do(t.Context(), results[i]) })
	}
	start(0, 1)
	for deadline := time.Now().Add(10 * time.Second); !b.busy() || b.queued() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first op did not start")
		}
	}
	for i, size := range []int{3, 1, 1, 5, 2} {
		start(i+1, size)
		for deadline := time.Now().Add(10 * time.Second); b.queued() != i+1; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("op %d not queued behind the running batch", i+1)
			}
		}
	}
	release()
	wg.Wait()
	want := [][]int{{0}, {1, 2}, {3}, {4}, {5}}
	if got := batches(); !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches %v, want %v", got, want)
	}
	for i, op := range results {
		if op.out != 2*i {
			t.Errorf("op %d got %d, want %d", i, op.out, 2*i)
		}
	}
	if b.queued() != 0 || b.busy() {
		t.Errorf("after the last batch: %d queued, running %v", b.queued(), b.busy())
	}
}

// TestBatcherPanic: a batch whose run panics makes every op of that batch panic in its
// own caller (none takes its op for done), and the batcher goes on with the next.
func TestBatcherPanic(t *testing.T) {
	gate := make(chan struct{})
	var once sync.Once
	b := newBatcher(8, func(*sizedOp) int { return 1 }, func(ctx context.Context, ops []*sizedOp) {
		once.Do(func() { <-gate })
		for _, op := range ops {
			if op.in == 3 {
				panic("op 3")
			}
			op.out = 2 * op.in
		}
	})
	var mu sync.Mutex
	panicked := map[int]bool{}
	var wg sync.WaitGroup
	start := func(in int) {
		wg.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					mu.Lock()
					panicked[in] = true
					mu.Unlock()
				}
			}()
			b.do(t.Context(), &sizedOp{in: in})
		})
	}
	start(0)
	for deadline := time.Now().Add(10 * time.Second); !b.busy() || b.queued() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first op did not start")
		}
	}
	for in := 1; in <= 4; in++ {
		start(in)
	}
	for deadline := time.Now().Add(10 * time.Second); b.queued() != 4; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ops not queued behind the running batch")
		}
	}
	close(gate)
	wg.Wait()
	if want := map[int]bool{1: true, 2: true, 3: true, 4: true}; !maps.Equal(panicked, want) {
		t.Errorf("panicked %v, want the ops of the panicking batch: %v", panicked, want)
	}
	op := &sizedOp{in: 5}
	b.do(t.Context(), op)
	if op.out != 10 || b.busy() {
		t.Errorf("after the panic: op 5 got %d, batcher running %v", op.out, b.busy())
	}
}

// TestBatcherManyWriters: many goroutines at once; every op runs exactly once and gets
// its own result, and no batch is over max.
func TestBatcherManyWriters(t *testing.T) {
	var mu sync.Mutex
	seen := map[int]int{}
	b := newBatcher(8, func(*sizedOp) int { return 1 }, func(ctx context.Context, ops []*sizedOp) {
		if len(ops) > 8 {
			t.Errorf("batch of %d", len(ops))
		}
		mu.Lock()
		for _, op := range ops {
			seen[op.in]++
			op.out = 2 * op.in
		}
		mu.Unlock()
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
	})
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 200 {
				op := &sizedOp{in: g*1000 + i}
				b.do(t.Context(), op)
				if op.out != 2*op.in {
					t.Errorf("op %d got %d", op.in, op.out)
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != 32*200 {
		t.Errorf("%d ops ran, want %d", len(seen), 32*200)
	}
	for in, n := range seen {
		if n != 1 {
			t.Errorf("op %d ran %d times", in, n)
		}
	}
}

// TestBatchContext: an op whose caller gave up still runs with its batch, under the
// latest deadline of the batch.
func TestBatchContext(t *testing.T) {
	gone, cancel := context.WithTimeout(context.Background(), time.Minute)
	cancel()
	soon, c1 := context.WithTimeout(context.Background(), time.Minute)
	defer c1()
	later, c2 := context.WithTimeout(context.Background(), time.Hour)
	defer c2()
	ctx, done := batchContext([]*pending[sizedOp]{{ctx: soon}, {ctx: gone}, {ctx: later}})
	defer done()
	if ctx.Err() != nil {
		t.Fatalf("batch context ended: %v", ctx.Err())
	}
	if d, ok := ctx.Deadline(); !ok || d.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("batch deadline %v, %v; want the latest (in an hour)", d, ok)
	}
	ctx, done = batchContext([]*pending[sizedOp]{{ctx: soon}, {ctx: context.Background()}})
	defer done()
	if _, ok := ctx.Deadline(); ok {
		t.Error("a batch with an op without deadline has a deadline")
	}
}

// TestInsertAllSplitsErrors runs inserts of several writers as one command on a real
// server: each writer gets the duplicate-key errors of its own documents, indexed into
// its own list, and the others none.
func TestInsertAllSplitsErrors(t *testing.T) {
	uri := testservers.MongoURI(t)
	c, err := mongodrv.Connect(t.Context(), options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(context.Background())
	db := c.Database(fmt.Sprintf("semnet_test_%016x", rand.Uint64()))
	defer db.Drop(context.Background())
	coll := &collection{Collection: db.Collection("docs")} // no gate (nil reach)
	doc := func(id string) any { return map[string]string{"_id": id} }
	if _, err := coll.InsertOne(t.Context(), doc("taken")); err != nil {
		t.Fatal(err)
	}
	ops := []*insertOp{
		{docs: []any{doc("a"), doc("taken"), doc("b")}},
		{docs: []any{doc("c")}},
		{docs: []any{doc("taken"), doc("d")}},
		{docs: []any{doc("a")}}, // a duplicate of another writer's document in the same command
	}
	insertAll(t.Context(), coll, ops)
	dupAt := func(err error) []int {
		var bwe mongodrv.BulkWriteException
		if !errors.As(err, &bwe) {
			return nil
		}
		var at []int
		for _, we := range bwe.WriteErrors {
			if mongodrv.IsDuplicateKeyError(mongodrv.WriteException{WriteErrors: mongodrv.WriteErrors{we.WriteError}}) {
				at = append(at, we.Index)
			}
		}
		return at
	}
	for i, want := range [][]int{{1}, nil, {0}, {0}} {
		if got := dupAt(ops[i].err); !slices.Equal(got, want) || (want == nil) != (ops[i].err == nil) {
			t.Errorf("writer %d: err %v (duplicates at %v), want duplicates at %v", i, ops[i].err, got, want)
		}
	}
	if n, err := coll.CountDocuments(t.Context(), map[string]any{}); err != nil || n != 5 {
		t.Errorf("%d documents stored (%v), want taken, a, b, c, d", n, err)
	}

	// A lone insertOne through a batcher answers as InsertOne does.
	err = insertOne(t.Context(), newInserter(coll), doc("c"))
	var we mongodrv.WriteException
	if !errors.As(err, &we) || !mongodrv.IsDuplicateKeyError(err) || !definite(err) {
		t.Errorf("insertOne of a duplicate: %v (%T), want a definite duplicate-key WriteException", err, err)
	}
	if err := insertOne(t.Context(), newInserter(coll), doc("e")); err != nil {
		t.Errorf("insertOne: %v", err)
	}
}
