package integration

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
)

// acked records what the API acknowledged.
type acked struct {
	mu        sync.Mutex
	services  map[string]api.Service    // by ID
	instances map[string][]api.Instance // by service ID
}

// burst creates services (each with one instance) from several goroutines until stop is
// closed, recording every acknowledged create. observe, when not nil, is told the outcome
// of every request.
func burst(ctx context.Context, url func(string) string, workers int, prefix string, stop <-chan struct{}, a *acked, observe func(outcome)) *sync.WaitGroup {
	var wg sync.WaitGroup
	var seq atomic.Int64
	observed := func(ctx context.Context, method, url, body string, out any) (int, error) {
		start := time.Now()
		status, err := call(ctx, method, url, body, out)
		if observe != nil {
			observe(outcome{at: start, took: time.Since(start), status: status})
		}
		return status, err
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				n := seq.Add(1)
				var s api.Service
				body := fmt.Sprintf(`{"app":"dur","app_ns":"%s","service":"s%d","service_ns":"x"}`, prefix, n)
				if _, err := observed(ctx, "POST", url("/services"), body, &s); err != nil {
					continue // not acknowledged: may or may not have happened
				}
				a.mu.Lock()
				a.services[s.ID] = s
				a.mu.Unlock()
				var in api.Instance
				if _, err := observed(ctx, "POST", url("/services/"+s.ID+"/instances"), `{"cluster_id":"c1"}`, &in); err != nil {
					continue
				}
				a.mu.Lock()
				a.instances[s.ID] = append(a.instances[s.ID], in)
				a.mu.Unlock()
			}
		}()
	}
	return &wg
}

// verify checks that every acknowledged record exists with the same addresses, and that
// no address is assigned twice among everything root has.
func verify(t *testing.T, p *rootProc, a *acked) {
	t.Helper()
	ctx := context.Background()
	owner := map[netip.Addr]string{}
	claim := func(ad netip.Addr, who string) {
		if prev, ok := owner[ad]; ok && prev != who {
			t.Errorf("address %s assigned to %s and %s", ad, prev, who)
		}
		owner[ad] = who
	}
	after, total := "", 0
	for {
		var page api.ServiceList
		if _, err := call(ctx, "GET", p.url("/services?limit=1000&after="+after), "", &page); err != nil {
			t.Fatal(err)
		}
		for _, s := range page.Items {
			total++
			for _, ad := range []netip.Addr{s.RRIP, s.RRIPv6, s.ClosestIP, s.ClosestIPv6} {
				claim(ad, s.JobName)
			}
			var ins []api.Instance
			if _, err := call(ctx, "GET", p.url("/services/"+s.ID+"/instances"), "", &ins); err != nil {
				t.Fatal(err)
			}
			for _, in := range ins {
				claim(in.InstanceIP, fmt.Sprintf("%s/%d", s.JobName, in.Number))
				claim(in.InstanceIPv6, fmt.Sprintf("%s/%d", s.JobName, in.Number))
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	for id, s := range a.services {
		var got api.Service
		if _, err := call(ctx, "GET", p.url("/services/"+id), "", &got); err != nil {
			t.Errorf("acknowledged service %s lost: %v", s.JobName, err)
			continue
		}
		if got.RRIP != s.RRIP || got.ClosestIPv6 != s.ClosestIPv6 {
			t.Errorf("service %s changed addresses: %+v -> %+v", s.JobName, s, got)
		}
		for _, in := range a.instances[id] {
			var gi api.Instance
			if _, err := call(ctx, "GET", p.url(fmt.Sprintf("/services/%s/instances/%d", id, in.Number)), "", &gi); err != nil {
				t.Errorf("acknowledged instance %d of %s lost: %v", in.Number, s.JobName, err)
			} else if gi.InstanceIP != in.InstanceIP {
				t.Errorf("instance %d of %s changed address %s -> %s", in.Number, s.JobName, in.InstanceIP, gi.InstanceIP)
			}
		}
	}
	t.Logf("%d acknowledged services survived among %d stored; %d distinct addresses", len(a.services), total, len(owner))
}

func killMidBurst(t *testing.T, p *rootProc) {
	a := &acked{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}
	stop := make(chan struct{})
	wg := burst(context.Background(), p.url, 8, "k", stop, a, nil)
	time.Sleep(1500 * time.Millisecond)
	p.kill() // SIGKILL in the middle of the burst
	close(stop)
	wg.Wait()
	if len(a.services) == 0 {
		t.Fatalf("no service acknowledged before the kill; root log:\n%s", p.log)
	}
	p.start()
	verify(t, p, a)
	// After the restart, allocation goes on without reusing anything.
	a2 := &acked{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}
	stop = make(chan struct{})
	wg = burst(context.Background(), p.url, 4, "after", stop, a2, nil)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	for id, s := range a2.services {
		a.services[id] = s
		a.instances[id] = a2.instances[id]
	}
	verify(t, p, a)
}

func TestKillNineEmbeddedStore(t *testing.T) {
	p := startRoot(t, "--data-dir", t.TempDir())
	killMidBurst(t, p)
}

func TestKillNineMongoStore(t *testing.T) {
	uri := mongoURI(t)
	p := startRoot(t, "--mongo-uri", uri, "--mongo-db", uniqueDB(t))
	killMidBurst(t, p)
}

// TestTwoRootsOneMongo runs two root processes on one database and creates services on
// both at once: no address may be handed out twice.
func TestTwoRootsOneMongo(t *testing.T) {
	uri := mongoURI(t)
	db := uniqueDB(t)
	p1 := startRoot(t, "--mongo-uri", uri, "--mongo-db", db)
	p2 := startRoot(t, "--mongo-uri", uri, "--mongo-db", db)
	a := &acked{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}
	stop := make(chan struct{})
	w1 := burst(context.Background(), p1.url, 4, "one", stop, a, nil)
	w2 := burst(context.Background(), p2.url, 4, "two", stop, a, nil)
	time.Sleep(2 * time.Second)
	close(stop)
	w1.Wait()
	w2.Wait()
	if len(a.services) < 10 {
		t.Fatalf("only %d services created", len(a.services))
	}
	verify(t, p1, a)
}
