package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/node/demo"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/shared/syncbuf"
)

// TestDemo runs demo instances (node/demo, and the `semnet demo` command) on the
// datapath platform: real processes in network namespaces of their own, attached through
// the nodes' local API, reached through the service's Service IPs from another instance.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("datapath suite: -short")
	}
	bin := semnetBinary(t)
	p := startDatapathPlatform(t, bin, 2)
	_, clients := p.deploy(t, "client", 0)

	t.Run("Instances", func(t *testing.T) {
		ctx := t.Context()
		svc, err := p.rc.CreateService(ctx, api.ServiceRequest{App: "demo", AppNS: "app", Service: "web", ServiceNS: "pkg"})
		if err != nil {
			t.Fatal(err)
		}
		var insts []*demo.Instance
		for i := range 2 {
			inst, err := p.rc.CreateInstance(ctx, svc.JobName, api.InstanceRequest{ClusterID: "c1"})
			if err != nil {
				t.Fatal(err)
			}
			in, err := demo.Start(ctx, demo.Config{NodeSocket: p.nodes[i].socket, Service: svc.JobName, Number: inst.Number,
				Command: []string{bin, "demo", "serve-instance"}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { in.Close(context.Background()) })
			if !in.NamespaceIP.Is4() || !in.NamespaceIPv6.Is6() {
				t.Fatalf("instance %d: Namespace IPs %v, %v", inst.Number, in.NamespaceIP, in.NamespaceIPv6)
			}
			insts = append(insts, in)
		}
		want := []string{demo.Answer(svc.JobName, insts[0].Number()), demo.Answer(svc.JobName, insts[1].Number())}
		for _, ip := range []netip.Addr{svc.RRIP, svc.RRIPv6} {
			eventually(t, clients[0], ip, func(s string) bool { return slices.Contains(want, s) })
			seen := spread(t, clients[0], netip.AddrPortFrom(ip, 80))
			if seen[want[0]] == 0 || seen[want[1]] == 0 {
				t.Errorf("RR %s spread %v, want both demo instances", ip, seen)
			}
		}
		if got := udpEcho(t, clients[0], netip.AddrPortFrom(svc.RRIP, 7)); got != "ping" {
			t.Errorf("UDP echo through %s: %q, want ping", svc.RRIP, got)
		}

		// Close detaches the instance (the node no longer has it, root hears it stopped)
		// and ends its process.
		in := insts[0]
		if err := in.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", in.Pid)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("instance process %d still exists after Close: %v", in.Pid, err)
		}
		n := in.Number()
		if code := p.nodes[0].post(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: svc.JobName, Instance: &n}); code != 404 {
			t.Errorf("undeploying the closed instance again: %d, want 404 (the node no longer has it)", code)
		}
		waitStatus(t, p, svc.JobName, n, func(status string) bool { return status != "running" })
		eventually(t, clients[0], svc.RRIP, func(s string) bool { return s == want[1] })
		for range 5 {
			if got, err := get(ctx, clients[0], svc.RRIP, "/"); err != nil || got != want[1] {
				t.Errorf("after Close, RR %s answered %q, %v; want only %q", svc.RRIP, got, err, want[1])
			}
		}
	})

	t.Run("Command", func(t *testing.T) {
		// semnet demo runs in node 1's namespace (where it reaches root over the underlay)
		// and attaches two instances to node 1.
		job := "demo.app.web.cmd"
		log := &syncbuf.Buffer{}
		cmd := p.nodes[0].ns.Cmd(context.Background(), bin, "demo", "--root", "http://"+netip.AddrPortFrom(ctrlIP, 10099).String(),
			"--node-socket", p.nodes[0].socket, "--service", job, "--cluster", "c1", "--instances", "2", "--expose", "tcp:8080:80")
		cmd.Env = append(os.Environ(), "SEMNET_TOKEN="+token)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			if t.Failed() {
				t.Logf("--- semnet demo output:\n%s", log)
			}
		})
		try := regexp.MustCompile(`semnet probe --print --netns /proc/(\d+)/ns/net (http://\S+/)`)
		var m []string
		for deadline := time.Now().Add(60 * time.Second); m == nil; m = try.FindStringSubmatch(log.String()) {
			if time.Now().After(deadline) {
				t.Fatal("semnet demo printed no command to try")
			}
			time.Sleep(100 * time.Millisecond)
		}
		// The printed command works: a GET of the RR Service IP from inside instance 0.
		var got []byte
		var err error
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got, err = exec.Command(bin, "probe", "--print", "--netns", "/proc/"+m[1]+"/ns/net", m[2]).CombinedOutput()
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if want := regexp.MustCompile(`^hello from ` + regexp.QuoteMeta(job) + ` instance [01]\n$`); err != nil || !want.Match(got) {
			t.Fatalf("semnet probe %s from instance pid %s: %q, %v", m[2], m[1], got, err)
		}
		ex, err := p.rc.ServiceExposures(t.Context(), job)
		if err != nil || len(ex.Items) != 1 || ex.Items[0].ID != "tcp-8080" || ex.Items[0].ServicePort != 80 {
			t.Errorf("exposures of %s: %+v, %v; want tcp-8080 -> 80", job, ex.Items, err)
		}
		entry, err := p.rc.Resolve(t.Context(), job, "")
		if err != nil || len(entry.Instances) != 2 {
			t.Fatalf("resolve %s: %+v, %v; want 2 instances", job, entry, err)
		}

		// SIGTERM: the instances are detached, deleted at root, and their processes end.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("semnet demo exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("semnet demo did not exit on SIGTERM")
		}
		if entry, err := p.rc.Resolve(t.Context(), job, ""); err != nil || len(entry.Instances) != 0 {
			t.Errorf("after SIGTERM, resolve %s: %+v, %v; want no instances", job, entry.Instances, err)
		}
		if _, err := os.Stat("/proc/" + m[1]); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("instance process %s still exists after semnet demo ended: %v", m[1], err)
		}
		for _, n := range []int{0, 1} {
			if code := p.nodes[0].post(t, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: job, Instance: &n}); code != 404 {
				t.Errorf("node still has %s instance %d after semnet demo ended (undeploy: %d)", job, n, code)
			}
		}
	})
}

// waitStatus waits until root's record of instance n of job has a status ok accepts.
func waitStatus(t *testing.T, p *dpPlatform, job string, n int, ok func(string) bool) {
	t.Helper()
	var last []api.Instance
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		entry, err := p.rc.Resolve(t.Context(), job, "")
		if err != nil {
			t.Fatal(err)
		}
		last = entry.Instances
		for _, in := range entry.Instances {
			if in.Number == n && ok(in.Status) {
				return
			}
		}
		if !slices.ContainsFunc(entry.Instances, func(in api.Instance) bool { return in.Number == n }) {
			return // no longer listed: not running either
		}
	}
	t.Fatalf("instance %d of %s: status never as wanted; instances %+v", n, job, last)
}

// post sends a request to the node's local API and returns the status code.
func (n *dpNode) post(t *testing.T, path string, body any) int {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := n.api.Post("http://node"+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
