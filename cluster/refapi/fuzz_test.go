package refapi_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/clustertest"
	"github.com/semnet/semnet/cluster/refapi"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/httpapi/httpapitest"
)

// bodyRoutes are the cluster's routes that read a request body, picked by the input's
// first byte modulo their number.
var bodyRoutes = []string{"/api/net/deployment", "/api/net/job/update"}

// FuzzRefBodies sends arbitrary bodies to the cluster's body-taking routes, served by
// the cluster's table over a memory cache and a real root holding one job, and checks:
// no 5xx (root is up, so nothing a client sends is the server's fault), every 4xx
// problem+json with a detail, and the job still prefetches afterwards with the
// instance root has.
func FuzzRefBodies(f *testing.F) {
	j := clustertest.StartJob(f, "c1")
	tb := table.New(j.RC, cache.NewMemory(cache.Options{}), table.Options{ClusterID: "c1"})
	h := refapi.Handler(tb, refapi.Config{})
	good := []byte(`{"job_name":"` + j.Service.JobName + `"}`)
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		path := bodyRoutes[int(route)%len(bodyRoutes)]
		a := httpapitest.Serve(h, http.MethodPost, path, "", body)
		if err := httpapitest.CheckClientError(a); err != nil {
			t.Fatalf("POST %s %q: %v", path, body, err)
		}
		a = httpapitest.Serve(h, http.MethodPost, bodyRoutes[0], "", good)
		var e api.TableEntry
		if a.Code != http.StatusOK || json.Unmarshal(a.Body, &e) != nil {
			t.Fatalf("prefetch of %s after POST %s %q: %d %s", j.Service.JobName, path, body, a.Code, a.Body)
		}
		if e.Service.ID != j.Service.ID || len(e.Instances) != 1 || e.Instances[0].InstanceIP != j.Instance.InstanceIP {
			t.Fatalf("prefetch of %s after POST %s %q: %+v, want instance %v", j.Service.JobName, path, body, e, j.Instance.InstanceIP)
		}
	})
}
