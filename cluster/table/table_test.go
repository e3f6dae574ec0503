package table_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/fakeclock"
	"github.com/semnet/semnet/shared/geo"
)

// startRoot runs a real root (embedded store) on a loopback port.
func startRoot(t *testing.T, dir string) (*root.Server, *client.Client) {
	t.Helper()
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: dir, Insecure: true, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := client.New("http://"+srv.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	return srv, rc
}

// startJob runs a real root with cluster c1 registered and one service.
func startJob(t *testing.T) (*root.Server, *client.Client, api.Service) {
	t.Helper()
	srv, rc := startRoot(t, t.TempDir())
	if _, err := rc.RegisterCluster(t.Context(), api.ClusterRequest{ID: "c1", Name: "c1", Address: "127.0.0.1", Port: 10110, Location: geo.Point{Lat: 48, Lon: 11}}); err != nil {
		t.Fatal(err)
	}
	svc, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	return srv, rc, svc
}

type changes struct {
	mu   sync.Mutex
	seen []string    // "job" or "job:deleted"
	at   []time.Time // when root logged each (zero: not from the change stream)
	ch   chan struct{}
}

func (c *changes) record(job string, e *cache.Entry, at time.Time) {
	c.mu.Lock()
	if e == nil {
		job += ":deleted"
	}
	c.seen = append(c.seen, job)
	c.at = append(c.at, at)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// saw returns a condition for waitFor: a change of job was seen.
func (c *changes) saw(job string) func() bool {
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return slices.Contains(c.seen, job)
	}
}

// waitFor waits until cond holds, re-checking after each change.
func (c *changes) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-c.ch:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			t.Fatalf("timed out waiting for %s; changes seen: %v", what, c.seen)
		}
	}
}

func TestLookupFollowAndResync(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	c := cache.NewMemory(cache.Options{})
	ch := &changes{ch: make(chan struct{}, 1)}
	tb := table.New(rc, c, table.Options{ClusterID: "c1", Wait: time.Second, OnChange: ch.record})

	// A miss asks root (registering interest); the next lookup by another key hits.
	if _, ok := tb.Cached(ctx, svc.JobName); ok {
		t.Fatal("cached before any lookup")
	}
	e, err := tb.Lookup(ctx, svc.RRIP.String())
	if err != nil || e.JobName() != svc.JobName || e.Revision == 0 {
		t.Fatalf("lookup by RR IP: %+v, %v", e, err)
	}
	if got, ok := tb.Cached(ctx, svc.ClosestIPv6.String()); !ok || got.JobName() != svc.JobName {
		t.Fatalf("cached by closest v6 after the miss: %v %v", got, ok)
	}
	if ids, err := rc.Interests(ctx, "c1"); err != nil || len(ids) != 1 || ids[0] != svc.ID {
		t.Fatalf("interests after miss: %v %v", ids, err)
	}
	if _, err := tb.Lookup(ctx, "no.such.job.here"); !errors.Is(err, table.ErrUnknown) {
		t.Fatalf("unknown job: %v, want ErrUnknown", err)
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- tb.Run(runCtx) }()

	// An instance placed at root reaches the cache through the change stream.
	in, err := rc.CreateInstance(ctx, svc.ID, api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.PlaceInstance(ctx, svc.ID, in.Number, api.Placement{Status: "running", NamespaceIP: mustAddr("10.18.0.2"), HostIP: mustAddr("127.0.0.1"), HostPort: 50103}); err != nil {
		t.Fatal(err)
	}
	ch.waitFor(t, "the placed instance in the cache", func() bool {
		e, ok := tb.Cached(ctx, in.InstanceIP.String())
		return ok && len(e.Table.Instances) == 1 && e.Table.Instances[0].Status == "running"
	})
	// Deleting the service drops it and reports the deletion, with root's time of it
	// (same clock here; root keeps milliseconds).
	deleted := time.Now()
	if err := rc.DeleteService(ctx, svc.ID, true); err != nil {
		t.Fatal(err)
	}
	ch.waitFor(t, "the deletion", func() bool {
		_, ok := tb.Cached(ctx, svc.JobName)
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return !ok && len(ch.seen) > 0 && ch.seen[len(ch.seen)-1] == svc.JobName+":deleted"
	})
	ch.mu.Lock()
	at := ch.at[len(ch.at)-1]
	ch.mu.Unlock()
	if at.Before(deleted.Add(-time.Millisecond)) || at.After(time.Now()) {
		t.Errorf("the deletion reported as made at %v, want between %v and now", at, deleted)
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if cur, _ := c.Cursor(ctx); cur == 0 {
		t.Error("cursor not recorded")
	}
}

// TestRootReplaced: a root whose database was replaced is behind the cluster's cursor; the
// cluster re-reads what it caches (dropping what the new root does not know) and
// re-registers its interest.
func TestRootReplaced(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	srv, rc := startRoot(t, dir)
	if _, err := rc.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}); err != nil {
		t.Fatal(err)
	}
	svc, err := rc.CreateService(ctx, api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s1", "s2", "s3"} { // move the revision ahead of the new root's
		if _, err := rc.CreateService(ctx, api.ServiceRequest{App: "x", AppNS: "b", Service: name, ServiceNS: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	c := cache.NewMemory(cache.Options{})
	ch := &changes{ch: make(chan struct{}, 1)}
	tb := table.New(rc, c, table.Options{ClusterID: "c1", Wait: 200 * time.Millisecond, OnChange: ch.record})
	if _, err := tb.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go tb.Run(runCtx)
	ch.waitFor(t, "the follower to record its cursor", func() bool { cur, _ := c.Cursor(ctx); return cur > 0 })
	srv.Close()

	// A new, empty root on the same address.
	srv2, err := root.Start(ctx, root.Config{Listen: srv.Addr.String(), DataDir: t.TempDir(), Insecure: true, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Close()
	if _, err := rc.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}); err != nil {
		t.Fatal(err)
	}
	ch.waitFor(t, "the unknown job dropped after resync", func() bool {
		_, ok := tb.Cached(ctx, svc.JobName)
		return !ok
	})
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// gatedRoot is a real root client whose RemoveInterest waits for its gate: the drop of an
// interest still on its way to root.
type gatedRoot struct {
	*client.Client
	entered, gate chan struct{}
}

func (g *gatedRoot) RemoveInterest(ctx context.Context, clusterID, service string) error {
	close(g.entered)
	<-g.gate
	return g.Client.RemoveInterest(ctx, clusterID, service)
}

// TestForgetRacingLookup: a lookup that registers the interest again while its drop is
// on the way to root must not leave the cache trusting an entry root no longer sends
// changes for (a soak run found caches answering from such entries for good): the drop
// sees the lookup's hold and takes the interest up again.
func TestForgetRacingLookup(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	g := &gatedRoot{Client: rc, entered: make(chan struct{}), gate: make(chan struct{})}
	ch := &changes{ch: make(chan struct{}, 1)}
	tb := table.New(g, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1", Wait: 200 * time.Millisecond, OnChange: ch.record})
	if _, err := tb.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	forgot := make(chan error, 1)
	go func() { forgot <- tb.Forget(ctx, svc.JobName) }()
	<-g.entered
	if _, err := tb.Lookup(ctx, svc.JobName); err != nil { // a node asks again meanwhile
		t.Fatal(err)
	}
	close(g.gate)
	if err := <-forgot; err != nil {
		t.Fatal(err)
	}
	wantInterest(t, rc, svc, true)
	// A change at root reaches the cache.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go tb.Run(runCtx)
	in, err := rc.CreateInstance(ctx, svc.JobName, api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	ch.waitFor(t, "the change in the cache", func() bool {
		e, err := tb.Lookup(ctx, svc.JobName)
		return err == nil && e.Revision >= in.Revision
	})
}

// wantInterest fails unless root's interests of cluster c1 include svc exactly when want.
func wantInterest(t *testing.T, rc *client.Client, svc api.Service, want bool) {
	t.Helper()
	ids, err := rc.Interests(t.Context(), "c1")
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(ids, svc.ID) != want {
		t.Fatalf("root's interests of c1: %v; want %s in them: %v", ids, svc.ID, want)
	}
}

// lateRoot is a real root client whose first answer to Resolve waits for its gate: a
// fetch whose registration of interest reached root, and whose answer is still on its
// way.
type lateRoot struct {
	*client.Client
	entered, gate chan struct{}
	once          sync.Once
}

func (l *lateRoot) Resolve(ctx context.Context, key, clusterID string) (api.TableEntry, error) {
	te, err := l.Client.Resolve(ctx, key, clusterID)
	l.once.Do(func() {
		close(l.entered)
		<-l.gate
	})
	return te, err
}

// TestReplicaDropRacingFetch: replicas a and b share a cache. b fetches by address (so
// it holds the job only once the answer is in) while a drops the job: b's fetch
// registers the interest before a's drop reaches root, and b holds the job after a
// recorded the drop. b must fetch again, or root has no interest while b holds the job.
func TestReplicaDropRacingFetch(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	c := cache.NewMemory(cache.Options{})
	g := &gatedRoot{Client: rc, entered: make(chan struct{}), gate: make(chan struct{})}
	a := table.New(g, c, table.Options{ClusterID: "c1", Replica: "a"})
	late := &lateRoot{Client: rc, entered: make(chan struct{}), gate: make(chan struct{})}
	b := table.New(late, c, table.Options{ClusterID: "c1", Replica: "b"})
	if _, err := a.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	forgot := make(chan error, 1)
	go func() { forgot <- a.Forget(ctx, svc.JobName) }()
	<-g.entered // a released the last hold; its drop is on the way to root
	looked := make(chan error, 1)
	go func() {
		_, err := b.Lookup(ctx, svc.RRIPv6.String())
		looked <- err
	}()
	<-late.entered // b's fetch registered the interest
	close(g.gate)
	if err := <-forgot; err != nil {
		t.Fatal(err)
	}
	wantInterest(t, rc, svc, false) // a's drop removed b's registration
	close(late.gate)
	if err := <-looked; err != nil {
		t.Fatal(err)
	}
	if !b.Holding(svc.JobName) {
		t.Fatal("b does not hold the job it looked up")
	}
	wantInterest(t, rc, svc, true)
}

// TestReplicaDropRacingHold: b takes its hold while a's drop is on the way to root, so
// a's drop removes the interest b's fetch registered: a takes it up again, and b re-reads
// the job at its next renewal (root sent no changes to anyone in between).
func TestReplicaDropRacingHold(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	c := cache.NewMemory(cache.Options{})
	g := &gatedRoot{Client: rc, entered: make(chan struct{}), gate: make(chan struct{})}
	a := table.New(g, c, table.Options{ClusterID: "c1", Replica: "a"})
	ch := &changes{ch: make(chan struct{}, 1)}
	b := table.New(rc, c, table.Options{ClusterID: "c1", Replica: "b", OnChange: ch.record, HoldRenew: 20 * time.Millisecond})
	if _, err := a.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	forgot := make(chan error, 1)
	go func() { forgot <- a.Forget(ctx, svc.JobName) }()
	<-g.entered
	if _, err := b.Lookup(ctx, svc.RRIP.String()); err != nil {
		t.Fatal(err)
	}
	close(g.gate)
	if err := <-forgot; err != nil {
		t.Fatal(err)
	}
	wantInterest(t, rc, svc, true)
	if a.Holding(svc.JobName) || !b.Holding(svc.JobName) {
		t.Fatalf("a holds the job: %v, b: %v; want b only", a.Holding(svc.JobName), b.Holding(svc.JobName))
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go b.RunHolds(runCtx)
	ch.waitFor(t, "b to re-read the job", ch.saw(svc.JobName))
}

// TestInterestLostAtRoot: root drops the cluster's interest in a job the table holds
// behind its back (a drop the table gave up on, delivered late after a partition): the
// interest check finds it missing and takes it up again, and the table re-reads the job.
func TestInterestLostAtRoot(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	ch := &changes{ch: make(chan struct{}, 1)}
	tb := table.New(rc, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1", OnChange: ch.record,
		HoldRenew: time.Hour, InterestCheck: 20 * time.Millisecond})
	if _, err := tb.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	if err := rc.RemoveInterest(ctx, "c1", svc.JobName); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go tb.RunHolds(runCtx)
	ch.waitFor(t, "the table to re-read the job", ch.saw(svc.JobName))
	wantInterest(t, rc, svc, true)
}

// TestHoldExpiry: a replica that stops renewing (it died) holds nothing once its holds
// expire: the other replica's release is then the last and drops the interest.
func TestHoldExpiry(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	clock := fakeclock.New()
	c := cache.NewMemory(cache.Options{HoldTTL: time.Minute, Now: clock.Now})
	a := table.New(rc, c, table.Options{ClusterID: "c1", Replica: "a"})
	b := table.New(rc, c, table.Options{ClusterID: "c1", Replica: "b"})
	for _, tb := range []*table.Table{a, b} {
		if _, err := tb.Lookup(ctx, svc.JobName); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Forget(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	wantInterest(t, rc, svc, true) // a holds it
	if _, err := b.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute) // a died a minute ago
	if err := b.Forget(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	wantInterest(t, rc, svc, false)
}

// countingCache counts the hold calls that reach the cache.
type countingCache struct {
	*cache.Memory
	holds atomic.Int64
}

func (c *countingCache) Hold(ctx context.Context, replica, job string) (bool, uint64, error) {
	c.holds.Add(1)
	return c.Memory.Hold(ctx, replica, job)
}

// TestHitTakesNoHold: a job is held once, when the replica starts needing it; lookups
// that hit the cache after that cost the cache read alone (with Redis, one round trip).
func TestHitTakesNoHold(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	c := &countingCache{Memory: cache.NewMemory(cache.Options{})}
	tb := table.New(rc, c, table.Options{ClusterID: "c1"})
	if _, err := tb.Lookup(ctx, svc.RRIP.String()); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{svc.JobName, svc.ID, svc.RRIP.String(), svc.ClosestIPv6.String()} {
		if _, err := tb.Lookup(ctx, key); err != nil {
			t.Fatal(err)
		}
		if _, ok := tb.Cached(ctx, key); !ok {
			t.Fatalf("Cached(%s) missed", key)
		}
	}
	if n := c.holds.Load(); n != 1 {
		t.Errorf("%d holds reached the cache, want 1", n)
	}
}

// countingRoot counts the reads of entries from root.
type countingRoot struct {
	*client.Client
	resolves atomic.Int64
}

func (c *countingRoot) Resolve(ctx context.Context, key, clusterID string) (api.TableEntry, error) {
	c.resolves.Add(1)
	return c.Client.Resolve(ctx, key, clusterID)
}

// TestUnknownRemembered: a key root knows no service by is answered unknown for
// UnknownTTL without asking root again (a node asks with every packet it cannot send);
// a service created meanwhile is found once that runs out. With a negative TTL root is
// asked every time.
func TestUnknownRemembered(t *testing.T) {
	ctx := t.Context()
	srv, rc, _ := startJob(t)
	defer srv.Close()
	const job = "shop.prod.later.eu"
	for _, c := range []struct {
		name      string
		ttl       time.Duration
		remembers bool
	}{{"remembered", time.Second, true}, {"not remembered", -1, false}} {
		t.Run(c.name, func(t *testing.T) {
			clock := fakeclock.New()
			cr := &countingRoot{Client: rc}
			tb := table.New(cr, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1", UnknownTTL: c.ttl, Now: clock.Now})
			key := job
			if !c.remembers {
				key = "shop.prod.never.eu"
			}
			for i := range 3 {
				if _, err := tb.Lookup(ctx, key); !errors.Is(err, table.ErrUnknown) {
					t.Fatalf("lookup %d of %s: %v, want ErrUnknown", i, key, err)
				}
			}
			want := int64(1)
			if !c.remembers {
				want = 3
			}
			if got := cr.resolves.Load(); got != want {
				t.Fatalf("root asked %d times for 3 lookups of an unknown key, want %d", got, want)
			}
			if !c.remembers {
				return
			}
			if _, err := rc.CreateService(ctx, api.ServiceRequest{App: "shop", AppNS: "prod", Service: "later", ServiceNS: "eu"}); err != nil {
				t.Fatal(err)
			}
			if _, err := tb.Lookup(ctx, key); !errors.Is(err, table.ErrUnknown) {
				t.Fatalf("lookup within the TTL after the service was created: %v, want the remembered ErrUnknown", err)
			}
			clock.Advance(c.ttl)
			e, err := tb.Lookup(ctx, key)
			if err != nil || e.JobName() != job {
				t.Fatalf("lookup once the TTL ran out: %v, %v; want %s", e, err, job)
			}
		})
	}
}

// pollingRoot is a real root client that reports each read of the change stream as it
// starts (to a receiver waiting on polling then), and counts those given up at their
// deadline.
type pollingRoot struct {
	*client.Client
	polling  chan struct{} // unbuffered: what it reports is a poll just started
	timedOut atomic.Int64
}

func (p *pollingRoot) Changes(ctx context.Context, clusterID string, since uint64, wait time.Duration) (api.ChangeBatch, error) {
	select {
	case p.polling <- struct{}{}:
	default:
	}
	b, err := p.Client.Changes(ctx, clusterID, since, wait)
	if errors.Is(err, context.DeadlineExceeded) {
		p.timedOut.Add(1)
	}
	return b, err
}

// TestPollGivenUpAfterPartition: a partition that loses a long poll's answer, with no
// reset to tell, leaves the poll's connection silent for good; the poll is given up
// PollMargin past its wait and sent again on a new connection once the link is back, so
// root's changes reach the cache again (without the margin they stopped until TCP gave up
// on the connection, minutes later).
func TestPollGivenUpAfterPartition(t *testing.T) {
	ctx := t.Context()
	srv, rc, svc := startJob(t)
	defer srv.Close()
	p := startProxy(t, srv.Addr.String())
	defer p.Close() // before root's: its shutdown would wait for the silenced connections
	hc := client.HTTPClient(nil)
	defer hc.CloseIdleConnections()
	prc, err := client.New("http://"+p.Addr(), "", hc)
	if err != nil {
		t.Fatal(err)
	}
	pr := &pollingRoot{Client: prc, polling: make(chan struct{})}
	ch := &changes{ch: make(chan struct{}, 1)}
	c := cache.NewMemory(cache.Options{})
	// FetchTimeout too is short: should a re-read of the entry take a connection the
	// partition caught, it is given up before the test's deadline.
	tb := table.New(pr, c, table.Options{ClusterID: "c1", Wait: 300 * time.Millisecond, PollMargin: 500 * time.Millisecond,
		FetchTimeout: time.Second, OnChange: ch.record})
	if _, err := tb.Lookup(ctx, svc.JobName); err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- tb.Run(runCtx) }()

	select { // a poll starts, and waits for root's answer
	case <-pr.polling:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower sent no poll")
	}
	p.Silence()
	select { // the poll's answer (or the poll itself) is lost
	case <-p.dropped:
	case <-time.After(10 * time.Second):
		t.Fatal("the silenced link dropped nothing: it caught no poll")
	}
	p.Heal()

	in, err := rc.CreateInstance(ctx, svc.ID, api.InstanceRequest{ClusterID: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	ch.waitFor(t, "the instance created after the partition in the cache", func() bool {
		e, ok := tb.Cached(ctx, svc.JobName)
		return ok && e.Revision >= in.Revision
	})
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
	if pr.timedOut.Load() == 0 {
		t.Error("no poll was given up at its deadline: the partition caught none")
	}
}

// barrierRoot is a real root client whose re-reads after changes (Resolve without
// interest) are answered only once n of them wait at the same time; one that waited
// 5 s alone fails. It sends its batches of changes without entries, as a root from
// before them did, so the follower re-reads every changed service.
type barrierRoot struct {
	*client.Client
	n       int
	mu      sync.Mutex
	waiting int
	all     chan struct{}
}

func (b *barrierRoot) Changes(ctx context.Context, clusterID string, since uint64, wait time.Duration) (api.ChangeBatch, error) {
	batch, err := b.Client.Changes(ctx, clusterID, since, wait)
	batch.Entries = nil
	return batch, err
}

func (b *barrierRoot) Resolve(ctx context.Context, key, clusterID string) (api.TableEntry, error) {
	if clusterID == "" {
		b.mu.Lock()
		if b.waiting++; b.waiting == b.n {
			close(b.all)
		}
		b.mu.Unlock()
		select {
		case <-b.all:
		case <-time.After(5 * time.Second):
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.waiting < b.n { // (else it closed just now)
				b.waiting--
				return api.TableEntry{}, fmt.Errorf("barrier: only %d of %d re-reads came together", b.waiting+1, b.n)
			}
		}
	}
	return b.Client.Resolve(ctx, key, clusterID)
}

// TestBatchRefreshedAtOnce: the jobs of one batch of changes are re-read at once, not
// one after another (each push waited for every re-read before it). The fake root
// answers the re-reads only once all four wait together.
func TestBatchRefreshedAtOnce(t *testing.T) {
	ctx := t.Context()
	srv, rc, first := startJob(t)
	defer srv.Close()
	svcs := withServices(t, rc, first, "api", "db", "cache")
	b := &barrierRoot{Client: rc, n: len(svcs), all: make(chan struct{})}
	// The follower starts behind four changes, so it reads them in one batch.
	tb, ch := following(t, b, rc, svcs)
	for _, s := range svcs {
		if _, err := rc.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	after, err := rc.CurrentRevision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go tb.Run(runCtx)
	ch.waitFor(t, "the four jobs re-read and reported", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return len(ch.seen) >= len(svcs)
	})
	for _, s := range svcs {
		if e, ok := tb.Cached(ctx, s.JobName); !ok || e.Revision < after {
			t.Errorf("%s after the batch: revision %d (%v), want at least %d", s.JobName, e.Revision, ok, after)
		}
	}
}

// TestChangesCarryEntries: root sends the entries of the services a batch of changes
// touches with it, so the follower brings them up to date without reading anything
// itself, and reports each with the time root logged its change.
func TestChangesCarryEntries(t *testing.T) {
	ctx := t.Context()
	srv, rc, first := startJob(t)
	defer srv.Close()
	svcs := withServices(t, rc, first, "api", "db")
	cr := &countingRoot{Client: rc}
	tb, ch := following(t, cr, rc, svcs)
	looked := cr.resolves.Load()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go tb.Run(runCtx)
	var want []uint64
	for _, s := range svcs {
		in, err := rc.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"})
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, in.Revision)
	}
	ch.waitFor(t, "the three jobs brought up to date", func() bool {
		for i, s := range svcs {
			if e, ok := tb.Cached(ctx, s.JobName); !ok || e.Revision < want[i] {
				return false
			}
		}
		return true
	})
	if n := cr.resolves.Load() - looked; n != 0 {
		t.Errorf("the follower read %d entries from root itself, want none (root sent them with the changes)", n)
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	for i, at := range ch.at {
		if at.IsZero() {
			t.Errorf("%s reported without root's change time", ch.seen[i])
		}
	}
}

// withServices returns first and services of the given names, created at root.
func withServices(t *testing.T, rc *client.Client, first api.Service, names ...string) []api.Service {
	t.Helper()
	svcs := []api.Service{first}
	for _, name := range names {
		s, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "shop", AppNS: "prod", Service: name, ServiceNS: "eu"})
		if err != nil {
			t.Fatal(err)
		}
		svcs = append(svcs, s)
	}
	return svcs
}

// following returns a table over r (cluster c1, a memory cache) holding svcs, whose
// follower, once run, starts at root's current revision (with no cursor it would
// re-read everything first), and the record of its changes.
func following(t *testing.T, r table.Root, rc *client.Client, svcs []api.Service) (*table.Table, *changes) {
	t.Helper()
	ctx := t.Context()
	c := cache.NewMemory(cache.Options{})
	ch := &changes{ch: make(chan struct{}, 1)}
	tb := table.New(r, c, table.Options{ClusterID: "c1", Wait: 200 * time.Millisecond, OnChange: ch.record})
	for _, s := range svcs {
		if _, err := tb.Lookup(ctx, s.JobName); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := rc.CurrentRevision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetCursor(ctx, rev); err != nil {
		t.Fatal(err)
	}
	return tb, ch
}
