package bolt

import (
	"errors"
	"fmt"
	"sync"

	"go.etcd.io/bbolt"
)

// maxGroup bounds how many writes one commit carries, so a burst does not build one
// huge transaction whose commit delays everyone in it.
const maxGroup = 512

// write is one transaction function waiting to be committed and where its result goes.
type write struct {
	fn   func(tx *bbolt.Tx) error
	done chan error // buffered(1)
}

// committer is group commit without a timer. bbolt commits one read-write transaction
// at a time and each commit pays two fsyncs, so durable throughput comes from putting
// many writes in one commit. bbolt's own Batch does it with a timer (every batch waits
// MaxBatchDelay for company), which puts the delay into every write's latency; here a
// single goroutine commits whatever queued up while the previous commit ran. A lone
// write commits at once; under load a write waits at most for the commit in progress
// and then its own, and groups grow with the load instead of with a timer.
type committer struct {
	db    *bbolt.DB
	queue chan write
	stop  chan struct{}
	wg    sync.WaitGroup

	// mu orders submissions before close: writers hold it shared while they enqueue,
	// close takes it exclusively, so after close no write sits in the queue unanswered.
	mu     sync.RWMutex
	closed bool
}

func newCommitter(db *bbolt.DB) *committer {
	c := &committer{db: db, queue: make(chan write, 4*maxGroup), stop: make(chan struct{})}
	c.wg.Add(1)
	go c.run()
	return c
}

// errClosed answers writes submitted after Close.
var errClosed = errors.New("bolt: store closed")

// do runs fn in a read-write transaction shared with other writes and waits until that
// transaction committed. fn may run more than once (when another write in its group
// fails the group is retried without it) and must start from scratch each time.
func (c *committer) do(fn func(tx *bbolt.Tx) error) error {
	w := write{fn: fn, done: make(chan error, 1)}
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return errClosed
	}
	c.queue <- w // the committer runs until close, so this does not block for long
	c.mu.RUnlock()
	return <-w.done
}

// close commits what is queued and stops the committer. It may be called more than once.
func (c *committer) close() {
	c.mu.Lock()
	already := c.closed
	c.closed = true
	c.mu.Unlock()
	if !already {
		close(c.stop)
	}
	c.wg.Wait()
}

func (c *committer) run() {
	defer c.wg.Done()
	group := make([]write, 0, maxGroup)
	for {
		select {
		case w := <-c.queue:
			group = append(group[:0], w)
		case <-c.stop:
			// Writers that got into the queue before close still get an answer.
			for {
				select {
				case w := <-c.queue:
					c.commit([]write{w})
				default:
					return
				}
			}
		}
	fill:
		for len(group) < maxGroup {
			select {
			case w := <-c.queue:
				group = append(group, w)
			default:
				break fill
			}
		}
		c.commit(group)
	}
}

// commit runs group in one transaction. A function that fails rolls the transaction
// back; it gets its error and the others are committed without it.
func (c *committer) commit(group []write) {
	for len(group) > 0 {
		failed := -1
		var failure error
		err := c.db.Update(func(tx *bbolt.Tx) error {
			for i, w := range group {
				if err := w.fn(tx); err != nil {
					failed, failure = i, err
					return err
				}
			}
			return nil
		})
		switch {
		case failed >= 0:
			group[failed].done <- failure
			group = append(group[:failed:failed], group[failed+1:]...)
		case err != nil:
			// The commit itself failed (disk full, I/O error): nobody's write is durable.
			for _, w := range group {
				w.done <- fmt.Errorf("bolt: commit: %w", err)
			}
			return
		default:
			for _, w := range group {
				w.done <- nil
			}
			return
		}
	}
}
