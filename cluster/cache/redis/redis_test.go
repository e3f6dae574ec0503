package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/cache/cachetest"
	"github.com/semnet/semnet/shared/testservers"
)

// testURL returns the test server's URL, or skips (fails in CI, where it must be set).
func testURL(t testing.TB) string {
	t.Helper()
	url := testservers.RedisURL(t)
	return url
}

// freshPrefix returns a prefix no other test uses, and deletes its keys when t ends.
func freshPrefix(t testing.TB, url string) string {
	t.Helper()
	prefix := fmt.Sprintf("semnet:test:%016x:", rand.Uint64())
	raw := rawClient(t, url)
	t.Cleanup(func() {
		ctx := context.Background()
		var keys []string
		iter := raw.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if err := iter.Err(); err != nil {
			t.Errorf("scan %s*: %v", prefix, err)
			return
		}
		if len(keys) > 0 {
			if err := raw.Del(ctx, keys...).Err(); err != nil {
				t.Errorf("delete %s*: %v", prefix, err)
			}
		}
	})
	return prefix
}

// rawClient is a client for looking behind the cache's back.
func rawClient(t testing.TB, url string) *goredis.Client {
	t.Helper()
	opt, err := goredis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := goredis.NewClient(opt)
	t.Cleanup(func() { c.Close() })
	return c
}

func open(t testing.TB, url, prefix string, opt cache.Options) *Cache {
	t.Helper()
	c, err := New(t.Context(), url, prefix, opt)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func TestConformance(t *testing.T) {
	url := testURL(t)
	cachetest.Run(t, func(t *testing.T, opt cache.Options) cache.Cache {
		return open(t, url, freshPrefix(t, url), opt)
	})
}

// TestReplicas checks that two caches with the same prefix (two replicas of a cluster
// service) are one cache, and that another prefix (another cluster) is not.
func TestReplicas(t *testing.T) {
	url := testURL(t)
	prefix := freshPrefix(t, url)
	a := open(t, url, prefix, cache.Options{})
	defer a.Close()
	b := open(t, url, prefix, cache.Options{})
	defer b.Close()
	other := open(t, url, freshPrefix(t, url), cache.Options{})
	defer other.Close()
	ctx := t.Context()

	e := cachetest.Entry(1, 7, 2, 0)
	if _, err := a.Put(ctx, e); err != nil {
		t.Fatal(err)
	}
	ip := e.Table.Instances[1].InstanceIPv6.String()
	if got, err := b.Get(ctx, ip); err != nil || got.Revision != 7 {
		t.Fatalf("replica b: Get(%s) = %v, %v; want revision 7", ip, got, err)
	}
	if stored, err := b.Put(ctx, cachetest.Entry(1, 6, 1, 0)); err != nil || stored {
		t.Fatalf("replica b: Put of an older revision = %v, %v; want ignored", stored, err)
	}
	if _, err := other.Get(ctx, ip); !errors.Is(err, cache.ErrNotFound) {
		t.Fatalf("another prefix: Get(%s) = %v; want ErrNotFound", ip, err)
	}
	if err := a.SetCursor(ctx, 42); err != nil {
		t.Fatal(err)
	}
	if cur, err := b.Cursor(ctx); err != nil || cur != 42 {
		t.Fatalf("replica b: Cursor = %d, %v; want 42", cur, err)
	}
	if cur, err := other.Cursor(ctx); err != nil || cur != 0 {
		t.Fatalf("another prefix: Cursor = %d, %v; want 0", cur, err)
	}
	if err := b.Delete(ctx, e.JobName(), 8); err != nil {
		t.Fatal(err)
	}
	if stored, err := a.Put(ctx, cachetest.Entry(1, 8, 1, 0)); err != nil || stored {
		t.Fatalf("replica a: Put after b's delete = %v, %v; want kept out by the tombstone", stored, err)
	}
}

// TestNoLeftovers checks that reindexing and deleting leave no index or state fields
// behind, which the conformance suite cannot see.
func TestNoLeftovers(t *testing.T) {
	url := testURL(t)
	prefix := freshPrefix(t, url)
	c := open(t, url, prefix, cache.Options{})
	defer c.Close()
	raw := rawClient(t, url)
	ctx := t.Context()
	for r := uint64(1); r <= 6; r++ {
		if _, err := c.Put(ctx, cachetest.Entry(1, r, int(r%4), int(r%2))); err != nil {
			t.Fatal(err)
		}
		want := 5 + 2*int(r%4) // service ID, four Service IPs, two per instance
		if n := raw.HLen(ctx, prefix+"index").Val(); n != int64(want) {
			t.Fatalf("revision %d: %d index fields, want %d: %v", r, n, want, raw.HGetAll(ctx, prefix+"index").Val())
		}
	}
	if err := c.Delete(ctx, cachetest.JobName(1), 6); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"jobs", "index", "state"} {
		if n := raw.HLen(ctx, prefix+k).Val(); n != 0 {
			t.Errorf("%s%s has %d fields after the delete: %v", prefix, k, n, raw.HGetAll(ctx, prefix+k).Val())
		}
	}
	if n := raw.HGet(ctx, prefix+"meta", "instances").Val(); n != "0" {
		t.Errorf("instances = %s after the delete, want 0", n)
	}
}

// TestHoldKeys checks that a job's hold keys expire with its last hold, by the server's
// clock (replicas that die leave nothing behind), and go with its last release.
func TestHoldKeys(t *testing.T) {
	url := testURL(t)
	prefix := freshPrefix(t, url)
	const ttl = 300 * time.Millisecond
	c := open(t, url, prefix, cache.Options{HoldTTL: ttl})
	defer c.Close()
	raw := rawClient(t, url)
	ctx := t.Context()
	job := cachetest.JobName(1)
	holds, retaken := prefix+"holds:"+job, prefix+"retaken:"+job
	for _, r := range []string{"r1", "r2"} {
		if _, _, err := c.Hold(ctx, r, job); err != nil {
			t.Fatal(err)
		}
	}
	if held, err := c.Dropped(ctx, "r1", job); err != nil || !held {
		t.Fatalf("Dropped = %v, %v; want held", held, err)
	}
	for _, k := range []string{holds, retaken} {
		if d := raw.PTTL(ctx, k).Val(); d <= 0 || d > ttl {
			t.Errorf("%s expires in %v, want within the hold TTL %v", k, d, ttl)
		}
	}
	if last, err := c.Release(ctx, "r1", job); err != nil || last {
		t.Fatalf("Release(r1) = %v, %v; want r2 still holding", last, err)
	}
	if last, err := c.Release(ctx, "r2", job); err != nil || !last {
		t.Fatalf("Release(r2) = %v, %v; want last", last, err)
	}
	if n := raw.Exists(ctx, holds, retaken).Val(); n != 0 {
		t.Errorf("%d hold keys left after the last release", n)
	}

	// A replica that stops renewing: Redis drops the keys once the hold expired.
	if _, _, err := c.Hold(ctx, "r1", job); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Dropped(ctx, "r2", job); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for raw.Exists(ctx, holds, retaken).Val() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hold keys still there long after the hold expired: %v", raw.ZRangeWithScores(ctx, holds, 0, -1).Val())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBadData checks that what Redis holds is never trusted to be well formed: bad data
// is an error that names the key, not a panic and not a miss.
func TestBadData(t *testing.T) {
	url := testURL(t)
	prefix := freshPrefix(t, url)
	c := open(t, url, prefix, cache.Options{})
	defer c.Close()
	raw := rawClient(t, url)
	ctx := t.Context()
	e := cachetest.Entry(1, 5, 1, 0)
	if _, err := c.Put(ctx, e); err != nil {
		t.Fatal(err)
	}
	job := e.JobName()
	for _, bad := range []string{"not json", `{"table": 7}`, `{"revision": "x"}`, "", "\xff"} {
		raw.HSet(ctx, prefix+"jobs", job, bad)
		for _, key := range []string{job, e.Table.Service.ID, e.Table.Instances[0].InstanceIP.String()} {
			_, err := c.Get(ctx, key)
			if err == nil || errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("Get(%s) of %q = %v; want a decoding error", key, bad, err)
			}
			for _, want := range []string{job, prefix + "jobs", "not valid JSON"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Get(%s) error %q does not name %q", key, err, want)
				}
			}
		}
	}

	raw.HSet(ctx, prefix+"state", job, "{broken")
	if _, err := c.Put(ctx, cachetest.Entry(1, 6, 1, 0)); err == nil || !strings.Contains(err.Error(), job) {
		t.Errorf("Put over a broken state = %v; want an error naming %s", err, job)
	}
	if err := c.Delete(ctx, job, 9); err == nil || !strings.Contains(err.Error(), job) {
		t.Errorf("Delete of a broken state = %v; want an error naming %s", err, job)
	}

	raw.HSet(ctx, prefix+"meta", "cursor", "soon")
	if _, err := c.Cursor(ctx); err == nil || !strings.Contains(err.Error(), prefix+"meta") {
		t.Errorf("Cursor of %q = %v; want an error naming %smeta", "soon", err, prefix)
	}
	raw.HSet(ctx, prefix+"meta", "drops", "-1")
	if _, err := c.Drops(ctx); err == nil || !strings.Contains(err.Error(), prefix+"meta") {
		t.Errorf("Drops of %q = %v; want an error naming %smeta", "-1", err, prefix)
	}
	if _, _, err := c.Hold(ctx, "r1", job); err == nil || !strings.Contains(err.Error(), prefix+"meta") {
		t.Errorf("Hold with drops %q = %v; want an error naming %smeta", "-1", err, prefix)
	}
	raw.HSet(ctx, prefix+"meta", "instances", "many")
	if _, _, err := c.Len(ctx); err == nil || !strings.Contains(err.Error(), prefix+"meta") {
		t.Errorf("Len with instances %q = %v; want an error naming %smeta", "many", err, prefix)
	}
	// A key of the wrong type is Redis's WRONGTYPE error, passed on with context.
	raw.Del(ctx, prefix+"jobs")
	raw.Set(ctx, prefix+"jobs", "a string", 0)
	if _, err := c.Jobs(ctx); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Errorf("Jobs with %sjobs a string = %v; want WRONGTYPE", prefix, err)
	}
}

func TestNewErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := New(ctx, "redis://127.0.0.1:1/0", "", cache.Options{}); err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Errorf("New with an empty prefix = %v; want an error about the prefix", err)
	}
	if _, err := New(ctx, "http://example.com", "p:", cache.Options{}); err == nil {
		t.Error("New with an http URL succeeded")
	}
	// Port 1 on loopback: nothing listens, the dial is refused at once.
	_, err := New(ctx, "redis://127.0.0.1:1/0", "p:", cache.Options{})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("New to a closed port = %v; want an error naming 127.0.0.1:1", err)
	}
}

// BenchmarkGet measures a hit over loopback, by job name and by Instance IP; reproduce with
//
//	./.ci/with-servers go test -run '^$' -bench . -benchmem ./cluster/cache/redis
func BenchmarkGet(b *testing.B) {
	url := testURL(b)
	c := open(b, url, freshPrefix(b, url), cache.Options{})
	defer c.Close()
	ctx := b.Context()
	const jobs = 1000
	for j := range jobs {
		if _, err := c.Put(ctx, cachetest.Entry(j, 1, 10, 0)); err != nil {
			b.Fatal(err)
		}
	}
	e := cachetest.Entry(432, 1, 10, 0)
	for _, k := range []struct{ name, key string }{
		{"JobName", e.JobName()},
		{"InstanceIPv6", e.Table.Instances[7].InstanceIPv6.String()},
	} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Get(ctx, k.key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPut replaces entries of 10 instances with newer revisions whose Instance IPs
// all changed.
func BenchmarkPut(b *testing.B) {
	url := testURL(b)
	c := open(b, url, freshPrefix(b, url), cache.Options{})
	defer c.Close()
	ctx := b.Context()
	b.ReportAllocs()
	rev := uint64(0)
	for b.Loop() {
		rev++
		if _, err := c.Put(ctx, cachetest.Entry(int(rev%1000), rev, 10, int(rev/1000%2))); err != nil {
			b.Fatal(err)
		}
	}
}
