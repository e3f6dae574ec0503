package nsthread_test

import (
	"net"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/shared/netnstest"
	"github.com/semnet/semnet/shared/nsthread"
)

// TestNew creates an unnamed namespace: it differs from the caller's, whose thread stays
// home, has lo up, and a listener made inside it is not reachable from outside.
func TestNew(t *testing.T) {
	netnstest.Require(t)
	home, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer home.Close()
	ns, err := nsthread.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if ns.Equal(home) {
		t.Fatal("New returned the caller's namespace")
	}
	var ln net.Listener
	err = nsthread.Do(ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			t.Error("lo is down in the new namespace")
		}
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Errorf("dialled %s, which listens in the new namespace, from the caller's", ln.Addr())
	}
	for range 20 { // any thread of this process is still at home
		cur, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		if !cur.Equal(home) {
			t.Fatal("a thread was left in the new namespace")
		}
		cur.Close()
	}
}
