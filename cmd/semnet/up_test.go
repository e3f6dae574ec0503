package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/netnstest"
	"github.com/semnet/semnet/shared/syncbuf"
)

func loopbackPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startUp runs `semnet up` with args (and its cluster on free loopback ports) until ctx
// ends, and waits at most wait for its summary. done receives what the command returns.
func startUp(t *testing.T, ctx context.Context, wait time.Duration, args ...string) (out *syncbuf.Buffer, done chan error) {
	t.Helper()
	cmd := newRootCommand()
	out = &syncbuf.Buffer{}
	cmd.SetOut(out)
	cmd.SetErr(out)
	cmd.SetArgs(append(append([]string{"up"}, args...), "--cluster-listen", loopbackPort(t), "--mqtt-listen", loopbackPort(t), "--log-level", "warn"))
	done = make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.Now().Add(wait)
	for !strings.Contains(out.String(), "Stop with Ctrl-C") {
		select {
		case err := <-done:
			t.Fatalf("up ended: %v\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("up printed no summary:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return out, done
}

// TestUpRunsAPlatformWithADemo runs `semnet up` in-process twice on one data directory:
// root, a cluster, two simulated nodes, and the demo service with an instance on each,
// running where the nodes said; the second run takes the demo over instead of failing.
func TestUpRunsAPlatformWithADemo(t *testing.T) {
	dir := t.TempDir()
	rootAddr := loopbackPort(t)
	for run := range 2 {
		ctx, cancel := context.WithCancel(t.Context())
		out, done := startUp(t, ctx, 30*time.Second, "--token", "up-test-token-0123456789", "--data-dir", dir, "--listen", rootAddr)
		deadline := time.Now().Add(30 * time.Second)
		for _, want := range []string{"sim-1 (Munich) sim-2 (Berlin)", "demo service: demo.app.web.default", "mosquitto_rr", "/ui/#token="} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("run %d: output lacks %q:\n%s", run, want, out)
			}
		}
		rc, err := client.New("http://"+rootAddr, "up-test-token-0123456789", nil)
		if err != nil {
			t.Fatal(err)
		}
		for {
			e, err := rc.Resolve(ctx, "demo.app.web.default", "")
			if err == nil && len(e.Instances) == 2 && e.Instances[0].HostPort != e.Instances[1].HostPort {
				if !strings.Contains(out.String(), e.Service.RRIP.String()) {
					t.Errorf("run %d: the summary does not show the RR IP %s:\n%s", run, e.Service.RRIP, out)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %d: demo at root: %+v, %v; want 2 instances on two nodes", run, e.Instances, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// The status page's token reads but does not write.
		if m := regexp.MustCompile(`/ui/#token=([0-9a-f]+)`).FindStringSubmatch(out.String()); m == nil || m[1] == "up-test-token-0123456789" {
			t.Errorf("run %d: the status page link has no token of its own:\n%s", run, out)
		} else {
			ro, _ := client.New("http://"+rootAddr, m[1], nil)
			if _, err := ro.Resolve(ctx, "demo.app.web.default", ""); err != nil {
				t.Errorf("run %d: the read-only token cannot read: %v", run, err)
			}
			if _, err := ro.CreateService(ctx, api.ServiceRequest{App: "x", AppNS: "y", Service: "z", ServiceNS: "w"}); err == nil || !strings.Contains(err.Error(), "403") {
				t.Errorf("run %d: a write with the read-only token: %v, want 403", run, err)
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("run %d: up ended with %v", run, err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("run %d: up did not stop", run)
		}
	}
}

// TestUpDatapath runs `semnet up --datapath`: two real nodes in namespaces of their own
// with a demo instance each, reached through the RR Service IP from inside an instance
// with the printed probe line; when up ends, the nodes, instances and namespaces are gone.
func TestUpDatapath(t *testing.T) {
	netnstest.Require(t)
	bin := filepath.Join(t.TempDir(), "semnet")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out, done := startUp(t, ctx, 90*time.Second, "--datapath", "--nodes", "0", "--semnet-binary", bin, "--token", "up-test-token-0123456789",
		"--data-dir", t.TempDir(), "--listen", loopbackPort(t))
	summary := out.String()
	probe := regexp.MustCompile(`probe --print --netns (/proc/\d+/ns/net) (http://\S+/)`).FindStringSubmatch(summary)
	pids := regexp.MustCompile(`pid (\d+)\)`).FindAllStringSubmatch(summary, -1)
	if probe == nil || len(pids) != 2 {
		t.Fatalf("no probe line or not two node pids in:\n%s", summary)
	}
	seen := map[string]int{}
	for range 30 {
		got, err := executeContext(ctx, "probe", "--print", "--timeout", "5s", "--netns", probe[1], probe[2])
		if err == nil {
			seen[strings.TrimSpace(got)]++
		}
	}
	if seen["hello from demo.app.web.default instance 0"] == 0 || seen["hello from demo.app.web.default instance 1"] == 0 {
		t.Errorf("RR through %s from %s: %v, want both demo instances\n%s", probe[2], probe[1], seen, summary)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("up ended with %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("up did not stop")
	}
	for _, gone := range []string{probe[1], "/proc/" + pids[0][1], "/proc/" + pids[1][1]} {
		if _, err := os.Stat(gone); err == nil {
			t.Errorf("%s still exists after up ended", gone)
		}
	}
}
