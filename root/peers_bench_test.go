package root_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/testservers"
)

// BenchmarkPeerWake measures how long a change written through one root process takes
// to reach a change poll waiting at another on the same MongoDB: found by the other's
// store watch (every 50 ms), or told by the writer (--peer). Each iteration writes 60
// changes, one at a time. Run (MongoDB or FerretDB at SEMNET_TEST_MONGO_URI):
//
//	.ci/with-servers go test -run '^$' -bench PeerWake -benchtime 1x ./root/
func BenchmarkPeerWake(b *testing.B) {
	for _, peered := range []bool{false, true} {
		b.Run(map[bool]string{false: "watch", true: "peer"}[peered], func(b *testing.B) {
			const token = "peer-bench-token-0123456789"
			cfg := root.Config{Listen: "127.0.0.1:0", MongoURI: testservers.MongoURI(b), MongoDB: fmt.Sprintf("semnet_peer_bench_%d", time.Now().UnixNano()),
				Tokens: []string{token}, Plan: addrplan.Default()}
			follower, err := root.Start(b.Context(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer follower.Close()
			if peered {
				cfg.Peers = []string{"http://" + follower.Addr.String()}
			}
			writer, err := root.Start(b.Context(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer writer.Close()
			ctx := b.Context()
			w, _ := client.New("http://"+writer.Addr.String(), token, nil)
			f, _ := client.New("http://"+follower.Addr.String(), token, nil)
			if _, err := w.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Name: "c1", Address: "127.0.0.1", Port: 10110}); err != nil {
				b.Fatal(err)
			}
			s, err := w.CreateService(ctx, api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.AddInterest(ctx, "c1", s.ID); err != nil {
				b.Fatal(err)
			}
			rev, err := f.CurrentRevision(ctx, "c1")
			if err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			for b.Loop() {
				for range 60 {
					polled := make(chan error, 1)
					go func() {
						for {
							batch, err := f.Changes(ctx, "c1", rev, 10*time.Second)
							if err != nil || len(batch.Changes) > 0 {
								rev = batch.Revision
								polled <- err
								return
							}
							rev = batch.Revision
						}
					}()
					time.Sleep(20 * time.Millisecond) // the poll waits
					if _, err := w.CreateInstance(ctx, s.ID, api.InstanceRequest{ClusterID: "c1"}); err != nil {
						b.Fatal(err)
					}
					written := time.Now()
					if err := <-polled; err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(written))
				}
			}
			slices.Sort(lat)
			p50, p90 := lat[len(lat)/2], lat[len(lat)*9/10]
			b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(p90.Microseconds())/1000, "p90-ms")
			b.Logf("change written through one root -> poll at the other returned (%s): p50 %v, p90 %v, max %v (n=%d)", b.Name(), p50, p90, lat[len(lat)-1], len(lat))
		})
	}
}
