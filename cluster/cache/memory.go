package cache

import (
	"context"
	"slices"
	"sync"
	"time"
)

// Memory is the in-process Cache.
//
// Reads vastly outnumber writes (every node query is a Get; writes follow root's changes),
// and Get on a hit allocates nothing: job names and service IDs are looked up in string
// maps, addresses in a map keyed by their 16-byte form, and netip.ParseAddr allocates
// nothing for an address without a zone. One RWMutex guards it all: a read is two atomic
// operations around a few map lookups (BenchmarkGet*: tens of nanoseconds). A copy-on-write
// snapshot behind an atomic.Pointer would make reads lock-free, but every Put would copy
// maps of hundreds of thousands of keys; sharding would spread the readers' shared counter
// over several cache lines, which matters only at core counts well beyond an edge cluster's.
//
// Memory: about 440 bytes of heap per cached instance (TestHeap: 42 MiB for 10,000 jobs of
// 10 instances): its api.Instance (216 bytes) and what it points to, two slots in the
// address map, and a tenth of its job's api.Service and keys.
type Memory struct {
	opt Options

	mu        sync.RWMutex
	jobs      map[string]*Entry   // by job name: the entries themselves
	ids       map[string]*Entry   // by service ID
	addrs     map[[16]byte]*Entry // by address (As16; Addrs and ParseAddr unmap IPv4 first)
	instances int                 // sum of len(Instances) over jobs
	cursor    uint64
	tombs     map[string]tombstone // by job name
	tombq     []tombRef            // tombstones in the order they were laid, oldest first
	tombSeq   uint64

	// Holds (see Holds), usually of one replica; tests share a Memory between several.
	holds   map[string]map[string]time.Time // job -> replica -> expiry
	retaken map[string]map[string]struct{}  // job -> replicas Renew tells to re-read it
	drops   uint64
}

var _ Cache = (*Memory)(nil)

// tombstone records a delete. seq tells the current tombstone of a job from an older one
// still queued in tombq.
type tombstone struct {
	rev uint64
	at  time.Time
	seq uint64
}

type tombRef struct {
	job string
	seq uint64
}

// NewMemory returns an empty in-memory cache.
func NewMemory(opt Options) *Memory {
	return &Memory{
		opt:     opt.WithDefaults(),
		jobs:    make(map[string]*Entry),
		ids:     make(map[string]*Entry),
		addrs:   make(map[[16]byte]*Entry),
		tombs:   make(map[string]tombstone),
		holds:   make(map[string]map[string]time.Time),
		retaken: make(map[string]map[string]struct{}),
	}
}

// Get implements Cache. It allocates nothing on a hit.
func (m *Memory) Get(_ context.Context, key string) (*Entry, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if e := m.jobs[key]; e != nil {
		return e, nil
	}
	if e := m.ids[key]; e != nil {
		return e, nil
	}
	// A failed parse allocates its error, but that is a miss.
	if a, ok := ParseAddr(key); ok {
		if e := m.addrs[a.As16()]; e != nil {
			return e, nil
		}
	}
	return nil, ErrNotFound
}

// Put implements Cache.
func (m *Memory) Put(_ context.Context, e *Entry) (bool, error) {
	if err := CheckPut(e); err != nil {
		return false, err
	}
	job := e.JobName()
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tombs[job]; ok {
		if !m.expired(t, now) && t.rev >= e.Revision {
			return false, nil
		}
		// Expired, or overtaken by e: either way it has nothing left to guard.
		delete(m.tombs, job)
	}
	old := m.jobs[job]
	if old != nil && old.Revision > e.Revision {
		return false, nil
	}
	e = compact(e)
	m.jobs[job] = e
	// Index e's keys first: then the keys still pointing to old, which unindex removes,
	// are exactly those e no longer has.
	if id := e.Table.Service.ID; id != "" && mayClaim(m.ids[id], e) {
		m.ids[id] = e
	}
	for a := range e.Addrs() {
		k := a.As16() // Addrs yields IPv4 unmapped, as ParseAddr returns it
		if mayClaim(m.addrs[k], e) {
			m.addrs[k] = e
		}
	}
	if old != nil {
		m.unindex(old)
		m.instances -= len(old.Table.Instances)
	}
	m.instances += len(e.Table.Instances)
	return true, nil
}

// compact returns a copy of e whose Instances has no spare capacity. encoding/json grows
// slices by half again as it decodes, so an entry decoded from root carries room for up to
// half as many instances again, at 216 bytes each: TestHeap measured 59 MiB without this
// copy, 42 MiB with it. The copy also means the cache never shares an Entry with its caller.
func compact(e *Entry) *Entry {
	c := *e
	c.Table.Instances = slices.Clip(slices.Clone(e.Table.Instances))
	return &c
}

// mayClaim reports whether e may take a key held by owner (nil when the key is free): not
// from an entry at a higher revision, which can only be another job's (Put has checked e's).
func mayClaim(owner, e *Entry) bool {
	return owner == nil || owner.Revision <= e.Revision
}

// unindex removes the keys that still point to e.
func (m *Memory) unindex(e *Entry) {
	if id := e.Table.Service.ID; m.ids[id] == e {
		delete(m.ids, id)
	}
	for a := range e.Addrs() {
		k := a.As16() // Addrs yields IPv4 unmapped, as ParseAddr returns it
		if m.addrs[k] == e {
			delete(m.addrs, k)
		}
	}
}

// Delete implements Cache.
func (m *Memory) Delete(_ context.Context, jobName string, rev uint64) error {
	if err := CheckDelete(jobName); err != nil {
		return err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.jobs[jobName]; old != nil {
		if old.Revision > rev {
			return nil
		}
		m.remove(old)
	}
	if t, ok := m.tombs[jobName]; ok && !m.expired(t, now) && t.rev > rev {
		return nil
	}
	m.tombSeq++
	m.tombs[jobName] = tombstone{rev: rev, at: now, seq: m.tombSeq}
	m.tombq = append(m.tombq, tombRef{job: jobName, seq: m.tombSeq})
	m.pruneTombs(now)
	return nil
}

// remove drops a cached entry and its keys.
func (m *Memory) remove(e *Entry) {
	delete(m.jobs, e.JobName())
	m.unindex(e)
	m.instances -= len(e.Table.Instances)
}

func (m *Memory) expired(t tombstone, now time.Time) bool {
	return now.Sub(t.at) > m.opt.TombstoneTTL
}

// pruneTombs drops expired tombstones and the oldest beyond MaxTombstones. tombq is in the
// order tombstones were laid, which is also the order of their times.
func (m *Memory) pruneTombs(now time.Time) {
	for len(m.tombq) > 0 {
		r := m.tombq[0]
		t, ok := m.tombs[r.job]
		live := ok && t.seq == r.seq
		if live && !m.expired(t, now) && len(m.tombs) <= m.opt.MaxTombstones {
			break
		}
		if live {
			delete(m.tombs, r.job)
		}
		m.tombq[0] = tombRef{} // let the job name be collected
		m.tombq = m.tombq[1:]
	}
	// Entries superseded by Put or a later Delete stay queued until they reach the front;
	// compact when they outnumber the live ones, so the queue stays O(MaxTombstones).
	if len(m.tombq) > 2*len(m.tombs)+64 {
		q := make([]tombRef, 0, 2*len(m.tombs))
		for _, r := range m.tombq {
			if t, ok := m.tombs[r.job]; ok && t.seq == r.seq {
				q = append(q, r)
			}
		}
		m.tombq = q
	}
}

// Jobs implements Cache.
func (m *Memory) Jobs(context.Context) ([]string, error) {
	m.mu.RLock()
	names := make([]string, 0, len(m.jobs))
	for name := range m.jobs {
		names = append(names, name)
	}
	m.mu.RUnlock()
	slices.Sort(names)
	return names, nil
}

// Len implements Cache.
func (m *Memory) Len(context.Context) (jobs, instances int, err error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.jobs), m.instances, nil
}

// Cursor implements Cache.
func (m *Memory) Cursor(context.Context) (uint64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.cursor, nil
}

// SetCursor implements Cache.
func (m *Memory) SetCursor(_ context.Context, rev uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cursor = max(m.cursor, rev)
	return nil
}

// Close implements Cache; a Memory has nothing to release and keeps working.
func (m *Memory) Close() error { return nil }

// liveHolders returns job's unexpired holds, dropping the expired ones (and the job's
// bookkeeping once none is left).
func (m *Memory) liveHolders(job string, now time.Time) map[string]time.Time {
	hs := m.holds[job]
	for r, exp := range hs {
		if !exp.After(now) {
			delete(hs, r)
		}
	}
	if len(hs) == 0 {
		delete(m.holds, job)
		delete(m.retaken, job) // only holders are told to re-read
		return nil
	}
	return hs
}

// Hold implements Holds.
func (m *Memory) Hold(_ context.Context, replica, job string) (bool, uint64, error) {
	if err := CheckHold(replica, job); err != nil {
		return false, 0, err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	hs := m.liveHolders(job, now)
	first := len(hs) == 0
	if hs == nil {
		hs = make(map[string]time.Time, 1)
		m.holds[job] = hs
	}
	hs[replica] = now.Add(m.opt.HoldTTL)
	return first, m.drops, nil
}

// Release implements Holds.
func (m *Memory) Release(_ context.Context, replica, job string) (bool, error) {
	if err := CheckHold(replica, job); err != nil {
		return false, err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if hs := m.liveHolders(job, now); hs != nil {
		delete(hs, replica)
		delete(m.retaken[job], replica)
	}
	if m.liveHolders(job, now) != nil {
		return false, nil
	}
	if e := m.jobs[job]; e != nil {
		m.remove(e)
	}
	return true, nil
}

// Dropped implements Holds.
func (m *Memory) Dropped(_ context.Context, replica, job string) (bool, error) {
	if err := CheckHold(replica, job); err != nil {
		return false, err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drops++
	hs := m.liveHolders(job, now)
	if hs == nil {
		if e := m.jobs[job]; e != nil {
			m.remove(e)
		}
		return false, nil
	}
	for r := range hs {
		if r == replica {
			continue
		}
		rs := m.retaken[job]
		if rs == nil {
			rs = make(map[string]struct{}, 1)
			m.retaken[job] = rs
		}
		rs[r] = struct{}{}
	}
	return true, nil
}

// Drops implements Holds.
func (m *Memory) Drops(context.Context) (uint64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.drops, nil
}

// Renew implements Holds.
func (m *Memory) Renew(_ context.Context, replica string, jobs []string) ([]string, error) {
	if err := CheckReplica(replica); err != nil {
		return nil, err
	}
	now := m.opt.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var refollow []string
	for _, job := range jobs {
		hs := m.liveHolders(job, now)
		if _, ok := hs[replica]; !ok {
			refollow = append(refollow, job)
			continue
		}
		hs[replica] = now.Add(m.opt.HoldTTL)
		if _, ok := m.retaken[job][replica]; ok {
			delete(m.retaken[job], replica)
			if len(m.retaken[job]) == 0 {
				delete(m.retaken, job)
			}
			refollow = append(refollow, job)
		}
	}
	return refollow, nil
}
