// Package fakeclock is a clock tests move by hand, for code that takes a `now func()
// time.Time` (quarantines, tombstones, expiry).
package fakeclock

import (
	"sync"
	"time"
)

// Clock is a manual clock, safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock set to a fixed date (2030-01-02 03:04:05.006 UTC).
func New() *Clock {
	return &Clock{t: time.Date(2030, 1, 2, 3, 4, 5, 6e6, time.UTC)}
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
