// Package netnstest builds throw-away network namespaces for tests: each test host (a node,
// an instance, an underlay) is a namespace the test creates, so TUN devices, bridges, veth
// pairs, addresses and routes never touch the machine's own namespace (TESTING.md,
// Datapath). Namespaces get unique names so parallel runs don't clash, and are deleted by
// t.Cleanup even when the test fails.
//
// The helpers need root and the `ip` tool (iproute2). Without them a test is skipped with
// a message saying so, except when the environment variable CI is set: CI runs as root, so
// there a missing requirement fails the test instead of hiding it behind a skip.
//
// Code runs inside a namespace in three ways: a command through `ip netns exec` (Run, Cmd),
// a Go function on an OS thread switched into the namespace (Do), and sockets created
// inside it (Dial, Listen, ListenPacket), which stay in the namespace for their whole life.
// Handle gives a netlink handle bound to the namespace for configuring it from any thread.
package netnstest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/shared/nsthread"
	"golang.org/x/sys/unix"
)

// runTimeout bounds every command Run starts, so a hung tool fails the test instead of
// stalling the whole run until the test binary's own timeout.
const runTimeout = time.Minute

// Require skips the test unless it runs as root with the `ip` tool on PATH; when the
// environment variable CI is non-empty it fails the test instead, because CI runs as root
// and a skip there would hide the datapath tests. New calls it; call it directly before
// any other datapath setup.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unmet(t, "network namespace tests need root (running as uid %d)", os.Geteuid())
	}
	RequireTool(t, "ip", "iproute2")
}

// RequireTool is Require for one more command a test runs (such as ping or iperf3):
// skipped with a message naming the Debian package when the command is missing, failed
// instead when CI is set.
func RequireTool(t testing.TB, command, debianPackage string) {
	t.Helper()
	if _, err := exec.LookPath(command); err != nil {
		unmet(t, "%s not found on PATH: apt-get install %s", command, debianPackage)
	}
}

func unmet(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := "netnstest: " + fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, so this fails instead of skipping)")
	}
	t.Skip(msg)
}

// NS is a network namespace owned by one test. Its zero value is not usable: create one
// with New.
type NS struct {
	// Name is the namespace's name as `ip netns` knows it ("sn-<prefix>-<random>").
	Name string
	// Path is the namespace's bind mount, /var/run/netns/<Name>: what setns(2), `ip netns`
	// and netsetup.Host.Attach take.
	Path string

	nl *netlink.Handle // netlink sockets created inside the namespace

	// fd is open for the namespace's life in the test. The cleanup closes it, or the
	// last Do still running then does: a dial an http.Transport started for a request
	// the test has given up on can outlive the test.
	mu      sync.Mutex
	fd      netns.NsHandle
	users   int  // Do calls using fd now
	closing bool // cleanup has run: no new Do, and the last user closes fd
}

// New creates a uniquely named network namespace with lo up, and registers a cleanup that
// deletes it. prefix (lower-case letters, digits and '-', at most 20 characters) says what
// the namespace plays in the test, such as "node" or "inst1".
//
// Only the namespace's name is removed by the cleanup: a namespace lives on in the kernel
// while a process or socket still holds it, so a test stops what it started inside.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	Require(t)
	if err := checkPrefix(prefix); err != nil {
		t.Fatal(err)
	}
	var name string
	for attempt := 0; ; attempt++ {
		name = "sn-" + prefix + "-" + randomHex(4)
		out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
		if err == nil {
			break
		}
		// A clash on the random suffix is the only failure worth another try.
		if attempt < 3 && bytes.Contains(out, []byte("File exists")) {
			continue
		}
		t.Fatalf("netnstest: ip netns add %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	n := &NS{Name: name, Path: "/var/run/netns/" + name, fd: netns.None()}
	t.Cleanup(func() {
		if err := n.close(); err != nil {
			t.Error(err)
		}
	})

	fd, err := netns.GetFromPath(n.Path)
	if err != nil {
		t.Fatalf("netnstest: open namespace %s: %v", n.Path, err)
	}
	n.fd = fd
	// The handle's sockets are created on a thread inside the namespace and keep it, so
	// the handle works from any goroutine afterwards.
	if err := n.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		n.nl = h
		return err
	}); err != nil {
		t.Fatalf("netnstest: netlink handle in namespace %s: %v", n.Name, err)
	}
	lo, err := n.nl.LinkByName("lo")
	if err == nil {
		err = n.nl.LinkSetUp(lo)
	}
	if err != nil {
		t.Fatalf("netnstest: set lo up in namespace %s: %v", n.Name, err)
	}
	return n
}

// close releases what the NS holds in this process and deletes the namespace's name.
func (n *NS) close() error {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	n.mu.Lock()
	n.closing = true
	if n.users == 0 && n.fd.IsOpen() {
		n.fd.Close()
	}
	n.mu.Unlock()
	out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netnstest: ip netns delete %s: %v: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

func checkPrefix(prefix string) error {
	if prefix == "" || len(prefix) > 20 {
		return fmt.Errorf("netnstest: namespace prefix %q must be 1 to 20 characters", prefix)
	}
	for _, r := range prefix {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("netnstest: namespace prefix %q may hold only a-z, 0-9 and '-'", prefix)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b)
}

// Handle returns a netlink handle bound to the namespace, usable from any goroutine until
// the test's cleanup closes it. Do not close it.
func (n *NS) Handle() *netlink.Handle { return n.nl }

// String returns the namespace's name.
func (n *NS) String() string { return n.Name }

// Cmd returns a command (not started) that runs name with args inside the namespace
// through `ip netns exec`; ctx kills it as exec.CommandContext does.
func (n *NS) Cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs args[0] with args[1:] inside the namespace, waits at most a minute, and returns
// its combined output; on failure it fails the test and shows the output.
func (n *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	if len(args) == 0 {
		t.Fatal("netnstest: Run needs a command")
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	out, err := n.Cmd(ctx, args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("netnstest: in namespace %s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Do runs f on an OS thread switched into the namespace and returns f's error (see
// nsthread.Do): f must not call t.Fatal (return an error instead), and goroutines it
// starts are not in the namespace.
func (n *NS) Do(f func() error) error {
	n.mu.Lock()
	if n.closing {
		n.mu.Unlock()
		return fmt.Errorf("netnstest: namespace %s: the test's cleanup has run", n.Name)
	}
	n.users++
	fd := n.fd
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.users--
		if n.closing && n.users == 0 && fd.IsOpen() {
			fd.Close()
		}
		n.mu.Unlock()
	}()
	return nsthread.Do(fd, f)
}

// Dial connects to addr inside the namespace; see DialContext.
func (n *NS) Dial(network, addr string) (net.Conn, error) {
	return n.DialContext(context.Background(), network, addr)
}

// DialContext connects to addr from inside the namespace, with the signature of
// http.Transport.DialContext. For tcp and udp networks the host must be a literal IP:
// name resolution would run on other threads, outside the namespace.
func (n *NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if err := literalHost(network, addr, false); err != nil {
		return nil, err
	}
	var c net.Conn
	err := n.Do(func() error {
		// No Happy Eyeballs: it dials from extra goroutines, outside the namespace.
		d := net.Dialer{FallbackDelay: -1}
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: dial %s %s in namespace %s: %w", network, addr, n.Name, err)
	}
	return c, nil
}

// Listen opens a listener inside the namespace, as net.Listen does; the host must be a
// literal IP or empty (all addresses).
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	if err := literalHost(network, addr, true); err != nil {
		return nil, err
	}
	var l net.Listener
	err := n.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: listen %s %s in namespace %s: %w", network, addr, n.Name, err)
	}
	return l, nil
}

// ListenPacket opens a packet socket inside the namespace, as net.ListenPacket does; the
// host must be a literal IP or empty (all addresses).
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	if err := literalHost(network, addr, true); err != nil {
		return nil, err
	}
	var c net.PacketConn
	err := n.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netnstest: listen %s %s in namespace %s: %w", network, addr, n.Name, err)
	}
	return c, nil
}

// literalHost refuses a tcp/udp address whose host would need a resolver.
func literalHost(network, addr string, emptyOK bool) error {
	if !strings.HasPrefix(network, "tcp") && !strings.HasPrefix(network, "udp") {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("netnstest: address %q: %w", addr, err)
	}
	if host == "" && emptyOK {
		return nil
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("netnstest: address %q: the host must be a literal IP (no name resolution inside a namespace)", addr)
	}
	return nil
}
