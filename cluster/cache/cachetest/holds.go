package cachetest

import (
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func (h *harness) hold(t *testing.T, replica, job string, wantFirst bool) uint64 {
	t.Helper()
	first, drops, err := h.Hold(h.ctx, replica, job)
	if err != nil {
		t.Fatalf("Hold(%s, %s): %v", replica, job, err)
	}
	if first != wantFirst {
		t.Fatalf("Hold(%s, %s) first = %v, want %v", replica, job, first, wantFirst)
	}
	return drops
}

func (h *harness) release(t *testing.T, replica, job string, wantLast bool) {
	t.Helper()
	last, err := h.Release(h.ctx, replica, job)
	if err != nil {
		t.Fatalf("Release(%s, %s): %v", replica, job, err)
	}
	if last != wantLast {
		t.Fatalf("Release(%s, %s) last = %v, want %v", replica, job, last, wantLast)
	}
}

func (h *harness) dropped(t *testing.T, replica, job string, wantHeld bool) {
	t.Helper()
	held, err := h.Dropped(h.ctx, replica, job)
	if err != nil {
		t.Fatalf("Dropped(%s, %s): %v", replica, job, err)
	}
	if held != wantHeld {
		t.Fatalf("Dropped(%s, %s) held = %v, want %v", replica, job, held, wantHeld)
	}
}

func (h *harness) renew(t *testing.T, replica string, jobs []string, want ...string) {
	t.Helper()
	got, err := h.Renew(h.ctx, replica, jobs)
	if err != nil {
		t.Fatalf("Renew(%s, %q): %v", replica, jobs, err)
	}
	slices.Sort(got)
	slices.Sort(want)
	if len(got)+len(want) > 0 && !slices.Equal(got, want) {
		t.Fatalf("Renew(%s, %q) = %q, want %q", replica, jobs, got, want)
	}
}

func (h *harness) wantDrops(t *testing.T, want uint64) {
	t.Helper()
	if got, err := h.Drops(h.ctx); err != nil || got != want {
		t.Fatalf("Drops = %d, %v; want %d", got, err, want)
	}
}

func testHolds(t *testing.T, h *harness) {
	j1, j2 := JobName(1), JobName(2)
	if d := h.hold(t, "r1", j1, true); d != 0 {
		t.Fatalf("Hold reported %d drops in a fresh cache", d)
	}
	h.hold(t, "r2", j1, false)
	h.hold(t, "r1", j1, false) // holding again is no first hold
	h.hold(t, "r1", j2, true)  // jobs are held one by one
	e := Entry(1, 5, 2, 0)
	h.put(t, e, true)

	// The entry stays while a replica holds the job; the last release removes it,
	// leaving no tombstone: a fetch of the same revision is cached again.
	h.release(t, "r1", j1, false)
	h.want(t, e, keys(e)...)
	h.release(t, "r2", j1, true)
	h.wantNotFound(t, keys(e)...)
	h.wantJobs(t)
	h.wantLen(t, 0, 0)
	h.put(t, Entry(1, 5, 2, 0), true)
	h.want(t, e, keys(e)...)
	h.hold(t, "r2", j1, true) // held anew after the last release

	// Releasing what a replica does not hold: last only when nobody holds the job.
	h.release(t, "r3", j1, false)
	h.release(t, "r3", JobName(3), true)
	h.release(t, "r3", JobName(3), true)
	h.release(t, "r1", j2, true)
	h.wantDrops(t, 0) // releases are no drops

	for _, c := range []struct{ replica, job string }{{"", j1}, {"r1", ""}} {
		if _, _, err := h.Hold(h.ctx, c.replica, c.job); err == nil {
			t.Errorf("Hold(%q, %q) succeeded", c.replica, c.job)
		}
		if _, err := h.Release(h.ctx, c.replica, c.job); err == nil {
			t.Errorf("Release(%q, %q) succeeded", c.replica, c.job)
		}
		if _, err := h.Dropped(h.ctx, c.replica, c.job); err == nil {
			t.Errorf("Dropped(%q, %q) succeeded", c.replica, c.job)
		}
	}
	if _, err := h.Renew(h.ctx, "", []string{j1}); err == nil {
		t.Error(`Renew("") succeeded`)
	}
}

func testHoldExpiry(t *testing.T, h *harness) { // HoldTTL is a minute
	j1, j2 := JobName(1), JobName(2)
	h.hold(t, "r1", j1, true)
	h.hold(t, "r2", j1, false)
	h.clock.Advance(30 * time.Second)
	h.renew(t, "r1", []string{j1}) // r1 until 1m30s, r2 until 1m
	h.clock.Advance(30 * time.Second)
	// r2 stopped renewing (it died): its hold has just expired, and does not keep the
	// job held; r1's renewed one does.
	h.hold(t, "r3", j1, false)
	h.release(t, "r3", j1, false)
	h.release(t, "r1", j1, true)

	// A renewal comes too late for an expired hold: it is reported, not taken again
	// (another replica may have dropped the interest meanwhile).
	h.hold(t, "r1", j2, true)
	h.clock.Advance(time.Minute + time.Millisecond)
	h.renew(t, "r1", []string{j2}, j2)
	h.hold(t, "r2", j2, true)
	// Nor is a job the replica never held.
	h.renew(t, "r1", []string{j1, j2}, j1, j2)
	h.renew(t, "r1", nil)
}

func testDropped(t *testing.T, h *harness) {
	j1 := JobName(1)
	e := Entry(1, 5, 1, 0)
	h.hold(t, "r1", j1, true)
	h.release(t, "r1", j1, true)
	h.put(t, e, true) // a fetch that raced the release
	h.dropped(t, "r1", j1, false)
	h.wantNotFound(t, keys(e)...)
	h.wantDrops(t, 1)

	// Replicas that took holds while the interest was being dropped.
	if d := h.hold(t, "r2", j1, true); d != 1 {
		t.Fatalf("Hold after a drop reported %d drops, want 1", d)
	}
	h.hold(t, "r3", j1, false)
	h.put(t, e, true)
	h.dropped(t, "r1", j1, true)
	h.want(t, e, keys(e)...) // followed again
	h.wantDrops(t, 2)
	// Each other holder is told once to re-read the job; a job it does not ask about
	// tells it nothing.
	h.renew(t, "r2", []string{JobName(2)}, JobName(2))
	h.renew(t, "r2", []string{j1}, j1)
	h.renew(t, "r2", []string{j1})
	// A holder recording the drop itself is not told; releasing clears the mark.
	h.dropped(t, "r2", j1, true)
	h.renew(t, "r2", []string{j1})
	h.release(t, "r3", j1, false)
	h.hold(t, "r3", j1, false)
	h.renew(t, "r3", []string{j1})
	h.wantDrops(t, 3)
}

// testConcurrentHolds has replicas take and release holds of the same jobs at once:
// exactly one hold is the first and one release the last, each time.
func testConcurrentHolds(t *testing.T, h *harness) {
	const replicas, rounds = 8, 5
	for round := range rounds {
		job := JobName(round)
		var firsts, lasts atomic.Int32
		var wg sync.WaitGroup
		for r := range replicas {
			id := string(rune('a' + r))
			wg.Go(func() {
				first, _, err := h.Hold(h.ctx, id, job)
				if err != nil {
					t.Errorf("Hold(%s, %s): %v", id, job, err)
				}
				if first {
					firsts.Add(1)
				}
			})
		}
		wg.Wait()
		for r := range replicas {
			id := string(rune('a' + r))
			wg.Go(func() {
				last, err := h.Release(h.ctx, id, job)
				if err != nil {
					t.Errorf("Release(%s, %s): %v", id, job, err)
				}
				if last {
					lasts.Add(1)
				}
			})
		}
		wg.Wait()
		if firsts.Load() != 1 || lasts.Load() != 1 {
			t.Fatalf("round %d: %d first holds and %d last releases, want 1 and 1", round, firsts.Load(), lasts.Load())
		}
	}
}
