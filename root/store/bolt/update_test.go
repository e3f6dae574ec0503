package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

// TestUpdateBatchRetry checks the contract update relies on: when one function of a
// batch fails, bbolt rolls the batch back and runs the others again, so each function
// must take effect exactly once however often it runs, and a domain error must neither
// fail the batch nor leave a partial write.
func TestUpdateBatchRetry(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "semnet.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	boom := errors.New("storage failure")
	const n = 64
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			errs[i] = s.update(t.Context(), func(tx *bbolt.Tx) error {
				b := bk(tx, bucketMeta)
				// Read-modify-write of a shared counter: applied twice, it would show.
				total := getU64(b, []byte("total"))
				switch i % 8 {
				case 0:
					return fail(fmt.Errorf("domain %d: %w", i, store.ErrNotFound))
				case 1:
					if err := b.Put([]byte(fmt.Sprint("partial", i)), nil); err != nil {
						return err
					}
					return boom
				}
				if err := b.Put([]byte("total"), binary.BigEndian.AppendUint64(nil, total+1)); err != nil {
					return err
				}
				return b.Put([]byte(fmt.Sprint("key", i)), nil)
			})
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch i % 8 {
		case 0:
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("function %d: %v, want its domain error", i, err)
			}
		case 1:
			if !errors.Is(err, boom) {
				t.Errorf("function %d: %v, want its storage error", i, err)
			}
		default:
			if err != nil {
				t.Errorf("function %d: %v", i, err)
			}
			ok++
		}
	}
	err = s.db.View(func(tx *bbolt.Tx) error {
		b := bk(tx, bucketMeta)
		if got := getU64(b, []byte("total")); got != uint64(ok) {
			t.Errorf("total = %d after %d successful increments", got, ok)
		}
		for i := range n {
			present := b.Get([]byte(fmt.Sprint("key", i))) != nil
			if want := i%8 > 1; present != want {
				t.Errorf("key%d present=%v, want %v", i, present, want)
			}
			if b.Get([]byte(fmt.Sprint("partial", i))) != nil {
				t.Errorf("partial%d was committed by a failed function", i)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
