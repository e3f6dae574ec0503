package integration

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/testservers"
)

// outcome is one request of a load loop: when it started, how long it took, its status
// (0: no HTTP answer).
type outcome struct {
	at     time.Time
	took   time.Duration
	status int
}

// TestMongoRestartUnderLoad stops root's MongoDB-wire server (SIGKILL) in the middle of a
// stream of creates and starts it again: while it is down root answers 503 — never 500,
// never a hang — its /readyz says not ready, and once the server is back root serves
// again by itself; every acknowledged create survived, no address was handed out twice.
func TestMongoRestartUnderLoad(t *testing.T) {
	db := testservers.StartFerretDB(t)
	p := startRoot(t, "--mongo-uri", db.URI(), "--mongo-db", "faults")
	a := &acked{services: map[string]api.Service{}, instances: map[string][]api.Instance{}}

	var (
		mu       sync.Mutex
		outcomes []outcome
		seq      atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	client := &http.Client{Timeout: time.Minute} // a hang shows as a long request, not a client error
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"app":"flt","app_ns":"m","service":"s%d","service_ns":"x"}`, seq.Add(1))
				start := time.Now()
				var s api.Service
				status, err := callWith(context.Background(), client, "POST", p.url("/services"), body, &s)
				mu.Lock()
				outcomes = append(outcomes, outcome{at: start, took: time.Since(start), status: status})
				mu.Unlock()
				if err == nil {
					a.mu.Lock()
					a.services[s.ID] = s
					a.mu.Unlock()
				} else if status == 0 || status >= 500 {
					time.Sleep(50 * time.Millisecond) // a client backs off on errors
				}
			}
		}()
	}
	time.Sleep(time.Second)
	down := time.Now()
	db.Kill()
	waitUntil(t, 30*time.Second, "/readyz to say not ready", func() bool { return readyz(p.addr) == http.StatusServiceUnavailable })
	time.Sleep(3 * time.Second)
	up := time.Now()
	db.Start()
	waitUntil(t, 60*time.Second, "/readyz to recover", func() bool { return readyz(p.addr) == http.StatusOK })
	var recovered time.Time
	waitUntil(t, 60*time.Second, "creates to succeed again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range outcomes {
			if o.at.After(up) && o.status == http.StatusCreated {
				recovered = o.at
				return true
			}
		}
		return false
	})
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()

	var during, other []outcome
	var slowest time.Duration
	counts := map[int]int{}
	for _, o := range outcomes {
		counts[o.status]++
		slowest = max(slowest, o.took)
		// A request that started after the kill and ended before the restart saw only
		// a dead server.
		if o.at.After(down) && o.at.Add(o.took).Before(up) {
			during = append(during, o)
		} else if o.status != http.StatusCreated {
			other = append(other, o)
		}
	}
	keys := make([]int, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %d×%d", counts[k], k)
	}
	t.Logf("statuses:%s; %d requests entirely during the %v outage; slowest request %v; creates succeeded again %v after the restart",
		summary, len(during), up.Sub(down).Round(time.Millisecond), slowest.Round(time.Millisecond), recovered.Sub(up).Round(time.Millisecond))
	if len(during) == 0 {
		t.Fatal("no request ran entirely during the outage")
	}
	for _, o := range during {
		if o.status != http.StatusServiceUnavailable {
			t.Errorf("during the outage: status %d after %v, want 503", o.status, o.took)
		}
	}
	// Around the kill and the restart, a request may also fail in flight: still an
	// answer, never a 500.
	for _, o := range other {
		if o.status != http.StatusServiceUnavailable {
			t.Errorf("status %d (request at %v after the kill, took %v), want 201 or 503", o.status, o.at.Sub(down), o.took)
		}
	}
	verify(t, p, a)
}

// readyz returns root's /readyz status (0: no answer).
func readyz(addr string) int {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
	}
}
