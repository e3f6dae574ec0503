package bolt

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/semnet/semnet/root/store"
)

// TestWriteWhileReading: a write that grows the file far past its first size commits
// while a read transaction stays open. bbolt maps the file again when it outgrows its
// mapping, and that waits for every reader (see mmapSize).
func TestWriteWhileReading(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	reader, err := s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Rollback()

	done := make(chan error, 1)
	go func() {
		// 4 MiB, where bbolt's own first mapping is 32 KiB.
		done <- s.db.Update(func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("growth"))
			if err != nil {
				return err
			}
			for i := range 64 {
				if err := b.Put(fmt.Appendf(nil, "%03d", i), make([]byte, 64<<10)); err != nil {
					return err
				}
			}
			return nil
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write still waits for the open read transaction after 10 s")
	}
}
