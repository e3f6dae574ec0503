package root_test

import (
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
)

// TestChangeRetention runs a root keeping changes for 2 s: a cluster that asks for
// the changes since a revision still kept gets them; once that revision is older than
// the retention, it is told to resync (and the log no longer holds it), while a reader
// that keeps up still gets the newer changes.
func TestChangeRetention(t *testing.T) {
	const retention = 2 * time.Second // long enough that the first read comes before it ends
	ctx := t.Context()
	srv, err := root.Start(ctx, root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, Plan: addrplan.Default(),
		ChangeRetention: retention})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, err := client.New("http://"+srv.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.RegisterCluster(ctx, api.ClusterRequest{ID: "c1", Address: "127.0.0.1", Port: 10110}); err != nil {
		t.Fatal(err)
	}
	svc, err := rc.CreateService(ctx, api.ServiceRequest{App: "keep", AppNS: "a", Service: "web", ServiceNS: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Resolve(ctx, svc.JobName, "c1"); err != nil { // c1's interest: its changes reach c1
		t.Fatal(err)
	}
	write := func() {
		t.Helper()
		if _, err := rc.CreateInstance(ctx, svc.JobName, api.InstanceRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	start, err := rc.CurrentRevision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	write()
	b, err := rc.Changes(ctx, "c1", start, 0)
	if err != nil || b.Resync || len(b.Changes) == 0 {
		t.Fatalf("changes since %d right after a write: %+v, %v; want the write", start, b, err)
	}
	for deadline := time.Now().Add(10 * retention); ; {
		b, err = rc.Changes(ctx, "c1", start, 0)
		if err != nil {
			t.Fatal(err)
		}
		if b.Resync {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("changes since %d still kept %v after the write (retention %v): %+v", start, 10*retention, retention, b)
		}
		time.Sleep(retention / 5)
	}
	now, err := rc.CurrentRevision(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	write()
	if b, err := rc.Changes(ctx, "c1", now, 0); err != nil || b.Resync || len(b.Changes) == 0 {
		t.Fatalf("changes since %d (current) after another write: %+v, %v; want the write", now, b, err)
	}
}
