// Command rootload drives root's REST API with service and instance creation at full
// speed from many concurrent clients and prints throughput and latency percentiles. It
// starts its own root in-process (embedded store in a temp dir, or MongoDB with
// -mongo-uri) on a loopback port, or drives an existing one with -root.
//
//	go run ./integration/cmd/rootload -n 20000 -c 64
//	go run ./integration/cmd/rootload -n 5000 -c 32 -mongo-uri mongodb://127.0.0.1:27017/
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
)

func main() {
	var (
		n        = flag.Int("n", 10000, "services to create (each is one REST request)")
		conc     = flag.Int("c", 64, "concurrent clients")
		inst     = flag.Int("instances", 1, "instances to create per service (one request each)")
		rootURL  = flag.String("root", "", "drive this root (http://host:port) instead of starting one; start it with --rate-limit 0 (or above the load), as its per-client limit would refuse most of it")
		token    = flag.String("token", os.Getenv("SEMNET_TOKEN"), "bearer token for -root")
		mongoURI = flag.String("mongo-uri", "", "start root on this MongoDB instead of the embedded store")
		rate     = flag.Float64("rate", 0, "open loop: start services at this many per second (latency then includes no queueing in the client); 0 = closed loop, as fast as -c clients go")
		cpuProf  = flag.String("cpuprofile", "", "write a CPU profile of the whole run (client and in-process root) to this file")
	)
	flag.Parse()
	if *cpuProf != "" {
		f, err := os.Create(*cpuProf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "rootload:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "rootload:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*n, *conc, *inst, *rate, *rootURL, *token, *mongoURI); err != nil {
		fmt.Fprintln(os.Stderr, "rootload:", err)
		os.Exit(1)
	}
}

func run(n, conc, inst int, rate float64, rootURL, token, mongoURI string) error {
	ctx := context.Background()
	storeName := "remote"
	if rootURL == "" {
		dir, err := os.MkdirTemp("", "rootload")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		token = "rootload-token-0123456789"
		cfg := root.Config{Listen: "127.0.0.1:0", DataDir: dir, Tokens: []string{token}, Plan: addrplan.Default(),
			MongoURI: mongoURI, MongoDB: fmt.Sprintf("rootload_%d", time.Now().UnixNano())}
		srv, err := root.Start(ctx, cfg)
		if err != nil {
			return err
		}
		defer srv.Close()
		rootURL = "http://" + srv.Addr.String()
		storeName = "embedded (bbolt)"
		if mongoURI != "" {
			storeName = "mongodb"
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}
	post := func(path, body string, out any) (time.Duration, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", rootURL+"/api/v1"+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if resp.StatusCode != http.StatusCreated {
			return d, fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return d, json.Unmarshal(b, out)
	}
	runID := time.Now().UnixNano() % 1e9
	var (
		next     atomic.Int64
		failures atomic.Int64
		mu       sync.Mutex
		svcLat   []time.Duration
		instLat  []time.Duration
		wg       sync.WaitGroup
		firstErr error
		errOnce  sync.Once
	)
	// In open-loop mode a pacer hands out start times at the offered rate; a worker
	// measures from the scheduled start, so time spent waiting for a free worker counts
	// (no coordinated omission).
	var tickets chan time.Time
	if rate > 0 {
		tickets = make(chan time.Time, conc)
		go func() {
			defer close(tickets)
			t0 := time.Now()
			for i := 0; i < n; i++ {
				due := t0.Add(time.Duration(float64(i) / rate * float64(time.Second)))
				time.Sleep(time.Until(due))
				tickets <- due
			}
		}()
		conc = max(conc, int(rate/100)) // enough workers that the pacer is not starved
	}
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ls, li []time.Duration
			for {
				i := next.Add(1)
				if i > int64(n) {
					break
				}
				var due time.Time
				if tickets != nil {
					var ok bool
					if due, ok = <-tickets; !ok {
						break
					}
				}
				var s api.Service
				d, err := post("/services", fmt.Sprintf(`{"app":"load%d","app_ns":"ns","service":"s%d","service_ns":"x"}`, runID, i), &s)
				if err != nil {
					failures.Add(1)
					errOnce.Do(func() { firstErr = err })
					continue
				}
				if !due.IsZero() {
					d = time.Since(due)
				}
				ls = append(ls, d)
				for range inst {
					var in api.Instance
					d, err := post("/services/"+s.ID+"/instances", `{"cluster_id":"load"}`, &in)
					if err != nil {
						failures.Add(1)
						errOnce.Do(func() { firstErr = err })
						continue
					}
					li = append(li, d)
				}
			}
			mu.Lock()
			svcLat, instLat = append(svcLat, ls...), append(instLat, li...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	mode := "closed loop"
	if rate > 0 {
		mode = fmt.Sprintf("open loop at %.0f services/s", rate)
	}
	fmt.Printf("rootload: store=%s %s services=%d instances/service=%d clients=%d elapsed=%s failures=%d\n",
		storeName, mode, n, inst, conc, elapsed.Round(time.Millisecond), failures.Load())
	fmt.Printf("  all requests     %7d ok %8.0f/s\n", len(svcLat)+len(instLat), float64(len(svcLat)+len(instLat))/elapsed.Seconds())
	report("service create", svcLat, elapsed)
	report("instance create", instLat, elapsed)
	if firstErr != nil {
		fmt.Println("first error:", firstErr)
	}
	return nil
}

func report(what string, lat []time.Duration, elapsed time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Printf("  %-16s %7d ok %8.0f/s  p50 %-9s p99 %-9s max %s\n", what, len(lat),
		float64(len(lat))/elapsed.Seconds(), pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
}
