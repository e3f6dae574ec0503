package bolt

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"go.etcd.io/bbolt"
)

// TestCommitterIsolatesFailures: in a group, a function that fails gets its own error
// and nothing it wrote; every other function's write is committed, exactly once.
func TestCommitterIsolatesFailures(t *testing.T) {
	db, err := bbolt.Open(filepath.Join(t.TempDir(), "c.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	c := newCommitter(db)
	boom := errors.New("boom")
	const n = 200
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.do(func(tx *bbolt.Tx) error {
				b := tx.Bucket([]byte("b"))
				k := []byte(fmt.Sprint(i))
				if b.Get(k) != nil {
					return fmt.Errorf("key %d written twice", i)
				}
				if err := b.Put(k, []byte("v")); err != nil {
					return err
				}
				if i%7 == 0 {
					return boom // after writing: the write must be rolled back
				}
				return nil
			})
		}()
	}
	wg.Wait()
	c.close()
	c.close() // idempotent
	if err := c.do(func(*bbolt.Tx) error { return nil }); !errors.Is(err, errClosed) {
		t.Fatalf("do after close: %v, want errClosed", err)
	}
	err = db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket([]byte("b"))
		for i := range n {
			got := b.Get([]byte(fmt.Sprint(i))) != nil
			switch {
			case i%7 == 0 && !errors.Is(errs[i], boom):
				t.Errorf("write %d: err %v, want boom", i, errs[i])
			case i%7 == 0 && got:
				t.Errorf("write %d failed but its key was committed", i)
			case i%7 != 0 && errs[i] != nil:
				t.Errorf("write %d: %v", i, errs[i])
			case i%7 != 0 && !got:
				t.Errorf("write %d acknowledged but not committed", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
