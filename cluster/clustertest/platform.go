// Package clustertest starts a real root and a real cluster on loopback ports for tests
// of the tiers that talk to them (the cluster's own tests, the node's MQTT link).
package clustertest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

// Platform is a root (embedded store in a temporary directory, no token) and one
// cluster "c1" in Munich with an anonymous loopback broker (unless StartWith changed
// it), both closed at the end of the test.
type Platform struct {
	Root    *root.Server
	RootDir string
	Cluster *cluster.Server
	// RC is a client of root's /api/v1.
	RC *client.Client
}

// StartRoot starts root with its embedded store in dir.
func StartRoot(t testing.TB, listen, dir string) *root.Server {
	t.Helper()
	return startRoot(t, root.Config{Listen: listen, DataDir: dir, Insecure: true, Plan: addrplan.Default()})
}

func startRoot(t testing.TB, c root.Config) *root.Server {
	t.Helper()
	srv, err := root.Start(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// Start starts root and a cluster whose answers turn stale staleAfter after root was
// last heard from, and waits until the cluster registered.
func Start(t testing.TB, staleAfter time.Duration) *Platform {
	t.Helper()
	return StartWith(t, func(c *cluster.Config) { c.StaleAfter = staleAfter })
}

// StartWith is Start with the cluster's configuration changed by edit before it starts:
// a broker speaking TLS, say (set Insecure to false, or workers without a certificate
// are still admitted by client id).
func StartWith(t testing.TB, edit func(*cluster.Config)) *Platform {
	t.Helper()
	return StartWithRoot(t, func(*root.Config) {}, edit)
}

// StartWithRoot is StartWith with root's configuration changed by editRoot too. When
// root serves TLS the cluster's RootURL is https, and RC speaks TLS as the cluster
// does: with the cluster's RootTLS files, which edit sets.
func StartWithRoot(t testing.TB, editRoot func(*root.Config), edit func(*cluster.Config)) *Platform {
	t.Helper()
	p := &Platform{RootDir: t.TempDir()}
	rc := root.Config{Listen: "127.0.0.1:0", DataDir: p.RootDir, Insecure: true, Plan: addrplan.Default()}
	editRoot(&rc)
	p.Root = startRoot(t, rc)
	t.Cleanup(func() { p.Root.Close() })
	scheme := "http://"
	if rc.TLS.Enabled() {
		scheme = "https://"
	}
	cfg := cluster.Config{
		ID: "c1", Name: "c1", RootURL: scheme + p.Root.Addr.String(),
		Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", Insecure: true,
		Location: geo.Point{Lat: 48.14, Lon: 11.58}, Spares: 1, NodeGrace: cluster.DefaultNodeGrace,
	}
	edit(&cfg)
	tc, err := cfg.RootTLS.Config("root-")
	if err != nil {
		t.Fatal(err)
	}
	p.RC, err = client.New(cfg.RootURL, cfg.RootToken, client.HTTPClient(tc))
	if err != nil {
		t.Fatal(err)
	}
	p.Cluster, err = cluster.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Cluster.Close() })
	select {
	case <-p.Cluster.Registered():
	case <-time.After(10 * time.Second):
		t.Fatal("cluster did not register with root")
	}
	return p
}

// Job is a root with one service whose instance 0 runs, for tests that drive the
// cluster's parts directly (fuzz targets above all): root's embedded store in a
// temporary directory, cluster ClusterID registered, and no address quarantine (fuzz
// inputs allocate and release far more subnets than the plan holds).
type Job struct {
	Root     *root.Server
	RC       *client.Client
	Service  api.Service
	Instance api.Instance // number 0, running
}

// StartJob starts root with the service app.ns.web.ns and its instance 0 running in
// cluster clusterID.
func StartJob(tb testing.TB, clusterID string) *Job {
	tb.Helper()
	plan := addrplan.Default()
	plan.Quarantine = 0
	j := &Job{Root: startRoot(tb, root.Config{Listen: "127.0.0.1:0", DataDir: tb.TempDir(), Insecure: true, Plan: plan})}
	tb.Cleanup(func() { j.Root.Close() })
	var err error
	if j.RC, err = client.New("http://"+j.Root.Addr.String(), "", nil); err != nil {
		tb.Fatal(err)
	}
	ctx := tb.Context()
	if _, err = j.RC.RegisterCluster(ctx, api.ClusterRequest{ID: clusterID, Name: clusterID, Address: "127.0.0.1", Port: 10100,
		Location: geo.Point{Lat: 48.14, Lon: 11.58}}); err != nil {
		tb.Fatal(err)
	}
	if j.Service, err = j.RC.CreateService(ctx, api.ServiceRequest{App: "app", AppNS: "ns", Service: "web", ServiceNS: "ns"}); err != nil {
		tb.Fatal(err)
	}
	if _, err = j.RC.CreateInstance(ctx, j.Service.ID, api.InstanceRequest{ClusterID: clusterID}); err != nil {
		tb.Fatal(err)
	}
	j.Instance, err = j.RC.PlaceInstance(ctx, j.Service.ID, 0, api.Placement{Status: "running", ClusterID: clusterID,
		NamespaceIP: netip.MustParseAddr("10.18.0.2"), NamespaceIPv6: netip.MustParseAddr("fc00::2"),
		HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103})
	if err != nil {
		tb.Fatal(err)
	}
	return j
}
