package demo

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/semnet/semnet/shared/netnstest"
	"github.com/semnet/semnet/shared/syncbuf"
)

// childArg makes the test binary the instance's program: Start runs it with this first
// argument (plus --service and --instance), and TestMain serves instead of testing.
const childArg = "demo-test-instance"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childArg {
		fs := pflag.NewFlagSet(childArg, pflag.ExitOnError)
		service := fs.String("service", "", "")
		number := fs.Int("instance", 0, "")
		_ = fs.Parse(os.Args[2:])
		if err := ServeInstance(context.Background(), *service, *number, os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestStartWithoutNodeLeavesNothing: with no node behind the socket, Start fails with
// ErrNodeUnavailable (so callers retry) and the instance's process is gone.
func TestStartWithoutNodeLeavesNothing(t *testing.T) {
	netnstest.Require(t) // a new network namespace needs root
	var out syncbuf.Buffer
	in, err := Start(t.Context(), Config{
		NodeSocket: filepath.Join(t.TempDir(), "no-node.sock"), Service: "demo.app.web.default", Number: 3,
		Command: []string{os.Args[0], childArg}, Output: &out,
	})
	if err == nil {
		in.Close(t.Context())
		t.Fatal("Start succeeded without a node")
	}
	if !errors.Is(err, ErrNodeUnavailable) {
		t.Fatalf("err = %v, want ErrNodeUnavailable", err)
	}
	if out.String() != "" {
		t.Errorf("the instance process wrote %q", out.String())
	}
	if pids := instanceChildren(t); len(pids) > 0 {
		t.Errorf("instance processes %v still run after Start failed", pids)
	}
}

// TestStartReportsAChildThatCannotServe: a program that exits before its ready line is
// reported, not waited for.
func TestStartReportsAChildThatCannotServe(t *testing.T) {
	netnstest.Require(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err := Start(ctx, Config{NodeSocket: "/nonexistent.sock", Service: "demo.app.web.default", Number: 0,
		Command: []string{"/bin/false"}})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("err = %v (context: %v), want the early exit reported", err, ctx.Err())
	}
}

func TestStartChecksItsConfig(t *testing.T) {
	for _, c := range []Config{{Service: "a.b.c.d"}, {NodeSocket: "/x.sock"}, {NodeSocket: "/x.sock", Service: "a.b.c.d", Number: -1}} {
		if _, err := Start(t.Context(), c); err == nil {
			t.Errorf("Start(%+v) succeeded", c)
		}
	}
}

// instanceChildren returns the pids of this process's children that run the instance's
// program (a zombie not yet reaped counts).
func instanceChildren(t *testing.T) []int {
	t.Helper()
	lists, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, l := range lists {
		b, err := os.ReadFile(l)
		if err != nil {
			continue // the thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			cmdline, _ := os.ReadFile("/proc/" + f + "/cmdline")
			if strings.Contains(string(cmdline), childArg) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
