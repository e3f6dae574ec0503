// Package clustertest starts a real root and a real cluster on loopback ports for tests
// of the tiers that talk to them (the cluster's own tests, the node's MQTT link).
package clustertest

import (
	"testing"
	"time"

	"github.com/semnet/semnet/cluster"
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
