package report_test

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
)

// held is a real root client whose calls for one instance wait until released: a
// request that root is slow to answer.
type held struct {
	*client.Client
	instance int
	release  chan struct{}

	mu    sync.Mutex
	order []sent
}

type sent struct {
	instance int
	status   string
	port     int
}

func (h *held) PlaceInstance(ctx context.Context, service string, n int, p api.Placement) (api.Instance, error) {
	h.mu.Lock()
	h.order = append(h.order, sent{n, p.Status, p.HostPort})
	h.mu.Unlock()
	if n == h.instance {
		select {
		case <-h.release:
		case <-ctx.Done():
			return api.Instance{}, ctx.Err()
		}
	}
	return h.Client.PlaceInstance(ctx, service, n, p)
}

// TestOrderPerInstance: reports for one instance reach root in the order they were
// queued, while a report root is slow to answer holds back only its own instance's.
func TestOrderPerInstance(t *testing.T) {
	ctx := t.Context()
	rs, err := root.Start(ctx, root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	rc, err := client.New("http://"+rs.Addr.String(), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := rc.CreateService(ctx, api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := rc.CreateInstance(ctx, svc.JobName, api.InstanceRequest{ClusterID: "c1"}); err != nil {
			t.Fatal(err)
		}
	}
	h := &held{Client: rc, instance: 0, release: make(chan struct{})}
	r := report.New(h, nil, nil)
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	go r.Run(runCtx)

	running := func(n, port int) api.Placement {
		return api.Placement{Status: "running", NamespaceIP: netip.AddrFrom4([4]byte{10, 18, 0, byte(2 + n)}),
			HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: port}
	}
	stopped := func(port int) api.Placement {
		return api.Placement{Status: "stopped", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: port}
	}
	delivered := make(chan int, 16)
	enqueue := func(n int, p api.Placement) {
		r.Enqueue(report.Report{Job: svc.JobName, Instance: n, Placement: p, Done: func(_ api.Instance, err error) {
			if err != nil {
				t.Errorf("instance %d: %v", n, err)
			}
			delivered <- n
		}})
	}
	// Instance 0's first report is held at root; its next two must wait for it.
	enqueue(0, running(0, 1000))
	enqueue(0, stopped(1000))
	enqueue(0, running(0, 2000))
	for k := range 3 {
		enqueue(1, running(1, 1000+k))
		enqueue(2, running(2, 1000+k))
	}
	for range 6 {
		select {
		case n := <-delivered:
			if n == 0 {
				t.Fatal("a report of the held instance was delivered before the held one")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the other instances' reports waited behind the held one")
		}
	}
	// Done runs just before a delivery is finished: the count may lag a moment.
	for deadline := time.Now().Add(5 * time.Second); r.Pending() != 3 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if p := r.Pending(); p != 3 {
		t.Errorf("pending %d, want instance 0's 3", p)
	}
	close(h.release)
	for range 3 {
		if n := <-delivered; n != 0 {
			t.Fatalf("unexpected delivery for instance %d", n)
		}
	}
	ins, err := rc.Instances(ctx, svc.JobName)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]int{0: 2000, 1: 1002, 2: 1002}
	for _, in := range ins {
		if in.Status != "running" || in.HostPort != want[in.Number] {
			t.Errorf("instance %d: %s at port %d, want running at %d (its last report)", in.Number, in.Status, in.HostPort, want[in.Number])
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var zero []sent
	for _, o := range h.order {
		if o.instance == 0 {
			zero = append(zero, o)
		}
	}
	if want := []sent{{0, "running", 1000}, {0, "stopped", 1000}, {0, "running", 2000}}; !slices.Equal(zero, want) {
		t.Errorf("instance 0's reports sent as %v, want %v", zero, want)
	}
}
