package netnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/shared/nsthread"
)

// Documentation prefixes (RFC 5737, RFC 3849): they exist only inside the test's
// namespaces.
var (
	addrA  = netip.MustParsePrefix("192.0.2.1/24")
	addrB  = netip.MustParsePrefix("192.0.2.2/24")
	addrA6 = netip.MustParsePrefix("2001:db8::1/64")
	addrB6 = netip.MustParsePrefix("2001:db8::2/64")
)

// hostLinks lists the links of the test process's own namespace, to prove nothing leaks
// into it.
func hostLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list the host's links: %v", err)
	}
	var names []string
	for _, l := range links {
		names = append(names, fmt.Sprintf("%d:%s", l.Attrs().Index, l.Attrs().Name))
	}
	return names
}

func TestLinkDialListen(t *testing.T) {
	Require(t)
	before := hostLinks(t)
	a, b := New(t, "a"), New(t, "b")
	Link(t, a, "va", []netip.Prefix{addrA, addrA6}, b, "vb", []netip.Prefix{addrB, addrB6})

	for _, target := range []netip.Addr{addrB.Addr(), addrB6.Addr()} {
		t.Run("tcp "+target.String(), func(t *testing.T) {
			l, err := b.Listen("tcp", netip.AddrPortFrom(target, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
			c, err := a.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintln(c, "hello"); err != nil {
				t.Fatal(err)
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "hello\n" {
				t.Fatalf("echo = %q, %v", line, err)
			}
			if src := netip.MustParseAddrPort(c.LocalAddr().String()).Addr(); src != addrA.Addr() && src != addrA6.Addr() {
				t.Errorf("dialled from %s, want an address of namespace a", src)
			}
		})
		t.Run("udp "+target.String(), func(t *testing.T) {
			pc, err := b.ListenPacket("udp", netip.AddrPortFrom(target, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			c, err := a.Dial("udp", pc.LocalAddr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 16)
			n, from, err := pc.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "ping" {
				t.Fatalf("read %q from %v: %v", buf[:n], from, err)
			}
		})
	}

	t.Run("http", func(t *testing.T) {
		l, err := b.Listen("tcp", netip.AddrPortFrom(addrB.Addr(), 0).String())
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, r.RemoteAddr)
		})}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		client := &http.Client{Transport: &http.Transport{DialContext: a.DialContext}, Timeout: 5 * time.Second}
		resp, err := client.Get("http://" + l.Addr().String() + "/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(body), addrA.Addr().String()+":") {
			t.Errorf("server saw the client as %q, want %s", body, addrA.Addr())
		}
	})

	t.Run("ping", func(t *testing.T) {
		RequireTool(t, "ping", "iputils-ping")
		a.Run(t, "ping", "-c1", "-W1", addrB.Addr().String())
		a.Run(t, "ping", "-c1", "-W1", addrB6.Addr().String())
	})

	t.Run("names need literal IPs", func(t *testing.T) {
		if _, err := a.Dial("tcp", "localhost:80"); err == nil || !strings.Contains(err.Error(), "literal IP") {
			t.Errorf("Dial localhost = %v, want a literal-IP error", err)
		}
	})

	if after := hostLinks(t); !slices.Equal(before, after) {
		t.Errorf("the host's links changed:\nbefore %v\nafter  %v", before, after)
	}
}

func TestUnderlay(t *testing.T) {
	Require(t)
	RequireTool(t, "ping", "iputils-ping")
	before := hostLinks(t)
	u := NewUnderlay(t)
	var hosts []*NS
	for i := 1; i <= 3; i++ {
		h := New(t, fmt.Sprintf("h%d", i))
		u.Attach(t, h, "eth0", netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 24),
			netip.MustParsePrefix(fmt.Sprintf("2001:db8::%d/64", i)))
		hosts = append(hosts, h)
	}
	hosts[0].Run(t, "ping", "-c1", "-W1", "192.0.2.3")
	hosts[2].Run(t, "ping", "-c1", "-W1", "2001:db8::2")
	out := u.NS.Run(t, "ip", "-o", "link", "show", "master", u.Bridge)
	if got := strings.Count(out, "\n"); got != 3 {
		t.Errorf("bridge %s has %d ports, want 3:\n%s", u.Bridge, got, out)
	}
	if after := hostLinks(t); !slices.Equal(before, after) {
		t.Errorf("the host's links changed:\nbefore %v\nafter  %v", before, after)
	}
}

func TestCleanupDeletesNamespace(t *testing.T) {
	Require(t)
	var name, path string
	t.Run("create", func(t *testing.T) {
		n := New(t, "gone")
		name, path = n.Name, n.Path
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("namespace %s not created: %v", name, err)
		}
		if !strings.HasPrefix(name, "sn-gone-") {
			t.Errorf("name %q lacks the prefix sn-gone-", name)
		}
	})
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("namespace %s still exists after cleanup: %v", path, err)
	}
}

func TestUniqueNames(t *testing.T) {
	Require(t)
	a, b := New(t, "same"), New(t, "same")
	if a.Name == b.Name {
		t.Fatalf("two namespaces named %s", a.Name)
	}
}

func TestDo(t *testing.T) {
	Require(t)
	n := New(t, "do")
	host, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()

	if err := n.Do(func() error {
		cur, err := netns.Get()
		if err != nil {
			return err
		}
		defer cur.Close()
		if !cur.Equal(n.fd) {
			return fmt.Errorf("Do ran in %v, want %s's namespace %v", cur, n.Name, n.fd)
		}
		// /proc/sys/net follows the calling thread's namespace: a fresh namespace has
		// forwarding off whatever the host has, and only lo.
		entries, err := os.ReadDir("/proc/sys/net/ipv4/conf")
		if err != nil {
			return err
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if want := []string{"all", "default", "lo"}; !slices.Equal(names, want) {
			return fmt.Errorf("/proc/sys/net/ipv4/conf in the namespace lists %v, want %v", names, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	t.Run("error", func(t *testing.T) {
		want := fmt.Errorf("boom")
		if err := n.Do(func() error { return want }); err != want {
			t.Errorf("Do returned %v, want f's error", err)
		}
	})
	t.Run("panic", func(t *testing.T) {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the panic raised again in the caller", v)
			}
		}()
		_ = n.Do(func() error { panic("boom") })
	})
	t.Run("goexit", func(t *testing.T) {
		if err := n.Do(func() error { runtime.Goexit(); return nil }); !errors.Is(err, nsthread.ErrGoexit) {
			t.Errorf("Do = %v, want ErrGoexit", err)
		}
	})

	// The threads Do used went back: every goroutine here still sees the host's links.
	if _, err := netlink.LinkByName("lo"); err != nil {
		t.Fatal(err)
	}
	cur, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if !cur.Equal(host) {
		t.Errorf("the test goroutine's thread is in %v, want the host's %v", cur, host)
	}
}

func TestCmd(t *testing.T) {
	Require(t)
	n := New(t, "cmd")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Cmd(ctx, "ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if got := strings.Count(string(out), "\n"); got != 1 || !strings.Contains(string(out), "lo:") || !strings.Contains(string(out), "UP") {
		t.Errorf("a new namespace should hold only lo, up:\n%s", out)
	}
}

// fakeTB records how unmet ends a test.
type fakeTB struct {
	testing.TB
	fatal, skip string
}

func (f *fakeTB) Helper()           {}
func (f *fakeTB) Fatal(args ...any) { f.fatal = fmt.Sprint(args...); panic(f) }
func (f *fakeTB) Skip(args ...any)  { f.skip = fmt.Sprint(args...); panic(f) }

func TestUnmetSkipsOrFailsUnderCI(t *testing.T) {
	run := func() *fakeTB {
		f := &fakeTB{TB: t}
		func() {
			defer func() { _ = recover() }()
			RequireTool(f, "no-such-tool-semnet", "semnet-nothing")
		}()
		return f
	}
	t.Setenv("CI", "")
	if f := run(); f.skip == "" || f.fatal != "" || !strings.Contains(f.skip, "apt-get install semnet-nothing") {
		t.Errorf("without CI: skip %q, fatal %q; want a skip naming the package", f.skip, f.fatal)
	}
	t.Setenv("CI", "true")
	if f := run(); f.fatal == "" || f.skip != "" {
		t.Errorf("under CI: skip %q, fatal %q; want a failure", f.skip, f.fatal)
	}
}
