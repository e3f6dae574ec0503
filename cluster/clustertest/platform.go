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
	srv, err := root.Start(t.Context(), root.Config{Listen: listen, DataDir: dir, Insecure: true, Plan: addrplan.Default()})
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
	p := &Platform{RootDir: t.TempDir()}
	p.Root = StartRoot(t, "127.0.0.1:0", p.RootDir)
	t.Cleanup(func() { p.Root.Close() })
	var err error
	p.RC, err = client.New("http://"+p.Root.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := cluster.Config{
		ID: "c1", Name: "c1", RootURL: "http://" + p.Root.Addr.String(),
		Listen: "127.0.0.1:0", MQTTListen: "127.0.0.1:0", Insecure: true,
		Location: geo.Point{Lat: 48.14, Lon: 11.58}, Spares: 1, NodeGrace: cluster.DefaultNodeGrace,
	}
	edit(&cfg)
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
