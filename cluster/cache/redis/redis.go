// Package redis is the cache.Cache that several replicas of a cluster service share: the
// entries, the index, the tombstones and the change-stream cursor live in Redis, so a
// replica that starts (or takes over) finds the cache warm and resumes from the cursor.
//
// Every key starts with a prefix, so several clusters can share one Redis:
//
//	<prefix>jobs    hash  job name → entry (JSON, as cache.Entry marshals)
//	<prefix>index   hash  "id:<service ID>", "ip:<address>" → job name
//	<prefix>state   hash  job name → {"r": revision, "n": instances, "k": [index keys]}
//	<prefix>tomb    hash  job name → revision of its delete
//	<prefix>tombs   zset  job name, scored by when its tombstone was laid (ms)
//	<prefix>meta    hash  "cursor", "instances", "drops"
//	<prefix>holds:<job>    zset  replica ids holding the job, scored by expiry (ms)
//	<prefix>retaken:<job>  set   holders Renew tells to re-read the job
//
// state lets the write scripts check revisions and unindex a job without decoding its
// entry, which Lua would have to do with doubles. Writes are Lua scripts (see scripts.go),
// which is what makes Put atomic with its revision check and reindexing, and Release
// atomic with removing the entry of a job nobody holds. A job's holds and retaken keys
// expire with its last hold (PEXPIRE, relative, so the server's clock does not matter),
// so replicas that died leave nothing behind.
//
// New connects to one Redis server. A Redis Cluster would need all keys in one slot: a
// prefix with a hash tag, such as "{semnet:c1}:", and a cluster client.
package redis

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/semnet/semnet/cluster/cache"
)

// Cache is a cache.Cache in Redis.
type Cache struct {
	rdb    *goredis.Client
	opt    cache.Options
	prefix string
	keys   []string // the six fixed keys of the package comment, in the order the scripts use

	get, put, del, setCursor            *goredis.Script
	hold, release, dropped, renewScript *goredis.Script
}

var _ cache.Cache = (*Cache)(nil)

// Indexes into Cache.keys.
const (
	keyJobs = iota
	keyIndex
	keyState
	keyTomb
	keyTombs
	keyMeta
)

// New connects to the Redis server at url (redis://[user:password@]host:port/db, or
// rediss:// for TLS) and returns a cache whose keys all start with prefix, for example
// "semnet:<clusterID>:". It pings the server, so a wrong address fails here.
func New(ctx context.Context, url, prefix string, opt cache.Options) (*Cache, error) {
	if prefix == "" {
		return nil, errors.New(`cache: redis: the key prefix is empty; pass one such as "semnet:<clusterID>:" so clusters sharing a Redis do not mix their entries`)
	}
	ropt, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("cache: redis: %w", err)
	}
	rdb := goredis.NewClient(ropt)
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("cache: redis ping %s: %w", ropt.Addr, err)
	}
	c := &Cache{
		rdb:         rdb,
		opt:         opt.WithDefaults(),
		prefix:      prefix,
		get:         goredis.NewScript(getLua),
		put:         goredis.NewScript(putLua),
		del:         goredis.NewScript(deleteLua),
		setCursor:   goredis.NewScript(setCursorLua),
		hold:        goredis.NewScript(holdLua),
		release:     goredis.NewScript(releaseLua),
		dropped:     goredis.NewScript(droppedLua),
		renewScript: goredis.NewScript(renewLua),
	}
	for _, name := range []string{"jobs", "index", "state", "tomb", "tombs", "meta"} {
		c.keys = append(c.keys, prefix+name)
	}
	return c, nil
}

// Get implements cache.Cache. It is one round trip: the script follows the index.
func (c *Cache) Get(ctx context.Context, key string) (*cache.Entry, error) {
	if key == "" {
		return nil, cache.ErrNotFound
	}
	ipKey := ""
	if a, ok := cache.ParseAddr(key); ok {
		ipKey = "ip:" + a.String()
	}
	res, err := c.get.Run(ctx, c.rdb, c.keys, key, "id:"+key, ipKey).StringSlice()
	if errors.Is(err, goredis.Nil) {
		return nil, cache.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("cache: redis get %s: %w", key, err)
	}
	if len(res) != 2 {
		return nil, fmt.Errorf("cache: redis get %s: script returned %d values, want 2", key, len(res))
	}
	e := new(cache.Entry)
	if err := json.Unmarshal([]byte(res[1]), e); err != nil {
		return nil, fmt.Errorf("cache: redis get %s: entry of job %s in %s is not valid JSON (delete the field; a resync refetches it): %w",
			key, res[0], c.keys[keyJobs], err)
	}
	return e, nil
}

// Put implements cache.Cache.
func (c *Cache) Put(ctx context.Context, e *cache.Entry) (bool, error) {
	if err := cache.CheckPut(e); err != nil {
		return false, err
	}
	job := e.JobName()
	b, err := json.Marshal(e)
	if err != nil {
		return false, fmt.Errorf("cache: redis put job %s: %w", job, err)
	}
	now := c.opt.Now()
	args := make([]any, 0, 8+2*len(e.Table.Instances))
	args = append(args, job, strconv.FormatUint(e.Revision, 10), b, len(e.Table.Instances),
		now.UnixMilli(), now.Add(-c.opt.TombstoneTTL).UnixMilli())
	if id := e.Table.Service.ID; id != "" {
		args = append(args, "id:"+id)
	}
	for a := range e.Addrs() {
		args = append(args, "ip:"+a.String())
	}
	stored, err := c.put.Run(ctx, c.rdb, c.keys, args...).Int()
	if err != nil {
		return false, fmt.Errorf("cache: redis put job %s at revision %d: %w", job, e.Revision, err)
	}
	return stored == 1, nil
}

// Delete implements cache.Cache.
func (c *Cache) Delete(ctx context.Context, jobName string, rev uint64) error {
	if err := cache.CheckDelete(jobName); err != nil {
		return err
	}
	now := c.opt.Now()
	err := c.del.Run(ctx, c.rdb, c.keys, jobName, strconv.FormatUint(rev, 10),
		now.UnixMilli(), now.Add(-c.opt.TombstoneTTL).UnixMilli(), c.opt.MaxTombstones).Err()
	if err != nil {
		return fmt.Errorf("cache: redis delete job %s at revision %d: %w", jobName, rev, err)
	}
	return nil
}

// Jobs implements cache.Cache.
func (c *Cache) Jobs(ctx context.Context) ([]string, error) {
	names, err := c.rdb.HKeys(ctx, c.keys[keyJobs]).Result()
	if err != nil {
		return nil, fmt.Errorf("cache: redis jobs: %w", err)
	}
	slices.Sort(names)
	return names, nil
}

// Len implements cache.Cache.
func (c *Cache) Len(ctx context.Context) (jobs, instances int, err error) {
	var hlen *goredis.IntCmd
	var inst *goredis.StringCmd
	_, err = c.rdb.Pipelined(ctx, func(p goredis.Pipeliner) error {
		hlen = p.HLen(ctx, c.keys[keyJobs])
		inst = p.HGet(ctx, c.keys[keyMeta], "instances")
		return nil
	})
	if err != nil && !errors.Is(err, goredis.Nil) {
		return 0, 0, fmt.Errorf("cache: redis len: %w", err)
	}
	if s := inst.Val(); s != "" {
		if instances, err = strconv.Atoi(s); err != nil {
			return 0, 0, fmt.Errorf("cache: redis len: field instances of %s is %q, not a number", c.keys[keyMeta], s)
		}
	}
	return int(hlen.Val()), instances, nil
}

// Cursor implements cache.Cache.
func (c *Cache) Cursor(ctx context.Context) (uint64, error) {
	s, err := c.rdb.HGet(ctx, c.keys[keyMeta], "cursor").Result()
	if errors.Is(err, goredis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cache: redis cursor: %w", err)
	}
	rev, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cache: redis cursor: field cursor of %s is %q, not a revision (delete it to resync from root)", c.keys[keyMeta], s)
	}
	return rev, nil
}

// SetCursor implements cache.Cache.
func (c *Cache) SetCursor(ctx context.Context, rev uint64) error {
	if err := c.setCursor.Run(ctx, c.rdb, c.keys, strconv.FormatUint(rev, 10)).Err(); err != nil {
		return fmt.Errorf("cache: redis set cursor %d: %w", rev, err)
	}
	return nil
}

// jobKeys returns the fixed keys followed by the holds and retaken keys of each job, as
// the hold scripts take them.
func (c *Cache) jobKeys(jobs ...string) []string {
	keys := make([]string, 0, len(c.keys)+2*len(jobs))
	keys = append(keys, c.keys...)
	for _, job := range jobs {
		keys = append(keys, c.prefix+"holds:"+job, c.prefix+"retaken:"+job)
	}
	return keys
}

// Hold implements cache.Holds.
func (c *Cache) Hold(ctx context.Context, replica, job string) (bool, uint64, error) {
	if err := cache.CheckHold(replica, job); err != nil {
		return false, 0, err
	}
	now := c.opt.Now()
	res, err := c.hold.Run(ctx, c.rdb, c.jobKeys(job), replica, now.UnixMilli(), now.Add(c.opt.HoldTTL).UnixMilli()).StringSlice()
	if err != nil {
		return false, 0, fmt.Errorf("cache: redis hold job %s for replica %s: %w", job, replica, err)
	}
	if len(res) != 2 {
		return false, 0, fmt.Errorf("cache: redis hold job %s: script returned %d values, want 2", job, len(res))
	}
	drops, err := c.parseDrops(res[1])
	if err != nil {
		return false, 0, err
	}
	return res[0] == "1", drops, nil
}

// Release implements cache.Holds.
func (c *Cache) Release(ctx context.Context, replica, job string) (bool, error) {
	if err := cache.CheckHold(replica, job); err != nil {
		return false, err
	}
	last, err := c.release.Run(ctx, c.rdb, c.jobKeys(job), replica, c.opt.Now().UnixMilli(), job).Int()
	if err != nil {
		return false, fmt.Errorf("cache: redis release job %s for replica %s: %w", job, replica, err)
	}
	return last == 1, nil
}

// Dropped implements cache.Holds.
func (c *Cache) Dropped(ctx context.Context, replica, job string) (bool, error) {
	if err := cache.CheckHold(replica, job); err != nil {
		return false, err
	}
	held, err := c.dropped.Run(ctx, c.rdb, c.jobKeys(job), replica, c.opt.Now().UnixMilli(), job).Int()
	if err != nil {
		return false, fmt.Errorf("cache: redis record the drop of job %s: %w", job, err)
	}
	return held == 1, nil
}

// Drops implements cache.Holds.
func (c *Cache) Drops(ctx context.Context) (uint64, error) {
	s, err := c.rdb.HGet(ctx, c.keys[keyMeta], "drops").Result()
	if errors.Is(err, goredis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("cache: redis drops: %w", err)
	}
	return c.parseDrops(s)
}

func (c *Cache) parseDrops(s string) (uint64, error) {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("cache: redis: field drops of %s is %q, not a count (delete it)", c.keys[keyMeta], s)
	}
	return n, nil
}

// renewBatch bounds the jobs one Renew script handles: a script blocks the server while
// it runs, and a replica may hold tens of thousands of jobs.
const renewBatch = 500

// Renew implements cache.Holds, in batches of renewBatch jobs.
func (c *Cache) Renew(ctx context.Context, replica string, jobs []string) ([]string, error) {
	if err := cache.CheckReplica(replica); err != nil {
		return nil, err
	}
	var refollow []string
	for batch := range slices.Chunk(jobs, renewBatch) {
		now := c.opt.Now()
		res, err := c.renewScript.Run(ctx, c.rdb, c.jobKeys(batch...), renewArgs(replica, now, c.opt.HoldTTL, batch)...).StringSlice()
		if err != nil && !errors.Is(err, goredis.Nil) {
			return refollow, fmt.Errorf("cache: redis renew %d holds of replica %s: %w", len(batch), replica, err)
		}
		refollow = append(refollow, res...)
	}
	return refollow, nil
}

func renewArgs(replica string, now time.Time, ttl time.Duration, jobs []string) []any {
	args := make([]any, 0, 3+len(jobs))
	args = append(args, replica, now.UnixMilli(), now.Add(ttl).UnixMilli())
	for _, job := range jobs {
		args = append(args, job)
	}
	return args
}

// Close implements cache.Cache: it closes the connection pool. The data stays in Redis.
func (c *Cache) Close() error {
	if err := c.rdb.Close(); err != nil {
		return fmt.Errorf("cache: redis close: %w", err)
	}
	return nil
}
