package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/testservers"
)

// execute runs the CLI in-process with args and returns its output and error. The
// commands tested this way fail before serving; one that serves would run until ctx ends.
func execute(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return executeContext(context.Background(), args...)
}

func executeContext(ctx context.Context, args ...string) (string, error) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func TestRootHelpListsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	out, err := execute(t, "root", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"--listen", "--data-dir", "--mongo-uri", "--token", "--insecure", "--quarantine", "--address-plan", "--no-migrate"} {
		if !strings.Contains(out, f) {
			t.Errorf("--help lacks %s", f)
		}
		if env := envName(strings.TrimPrefix(f, "--")); !strings.Contains(out, env) {
			t.Errorf("--help lacks %s for %s", env, f)
		}
	}
	if !strings.Contains(out, `(default ":10099")`) {
		t.Errorf("--help does not show the default listen address :10099")
	}
}

func TestRootRefusesToStartWithoutToken(t *testing.T) {
	t.Setenv("SEMNET_TOKEN", "")
	os.Unsetenv("SEMNET_TOKEN")
	_, err := execute(t, "root", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "--token") {
		t.Fatalf("err = %v, want a refusal naming --token", err)
	}
	_, err = execute(t, "root", "--insecure", "--listen", ":10099", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("insecure on all interfaces: %v, want refusal naming loopback", err)
	}
	_, err = execute(t, "root", "--token", "short", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "16 characters") {
		t.Fatalf("short token: %v", err)
	}
}

func TestEnvironmentFillsFlagsAndCommandLineWins(t *testing.T) {
	// The environment's listen address shows up in the refusal: it was read.
	t.Setenv("SEMNET_INSECURE", "true")
	t.Setenv("SEMNET_LISTEN", "0.0.0.0:12345")
	_, err := execute(t, "root", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0:12345") {
		t.Fatalf("err = %v, want the listen address from SEMNET_LISTEN", err)
	}
	// A flag given on the command line beats the environment.
	_, err = execute(t, "root", "--listen", "0.0.0.0:23456", "--data-dir", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "0.0.0.0:23456") {
		t.Fatalf("err = %v, want the listen address from the command line", err)
	}
	t.Setenv("SEMNET_QUARANTINE", "soon")
	_, err = execute(t, "root")
	if err == nil || !strings.Contains(err.Error(), "SEMNET_QUARANTINE") {
		t.Fatalf("bad env value: %v, want an error naming SEMNET_QUARANTINE", err)
	}
}

func TestRootStartsWithInsecureOnLoopback(t *testing.T) {
	// Passes validation, opens the store, serves /readyz, and stops when the context ends.
	addr := loopbackPort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := executeContext(ctx, "root", "--insecure", "--listen", addr, "--data-dir", t.TempDir(), "--log-level", "warn")
		done <- err
	}()
	ready := false
	for i := 0; i < 200 && !ready; i++ {
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			ready = resp.StatusCode == http.StatusOK
		}
		if !ready {
			time.Sleep(25 * time.Millisecond)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !ready {
		t.Fatal("root never answered /readyz with 200")
	}
}

// TestMigrateAppliesSchema runs `semnet root migrate` against a real MongoDB-wire server
// twice: the second run finds the schema current.
func TestMigrateAppliesSchema(t *testing.T) {
	uri := testservers.MongoURI(t)
	db := fmt.Sprintf("semnet_migrate_%d", time.Now().UnixNano())
	for range 2 {
		out, err := execute(t, "root", "migrate", "--mongo-uri", uri, "--mongo-db", db)
		if err != nil || !strings.HasPrefix(out, "schema at version ") {
			t.Fatalf("migrate: %q, %v", out, err)
		}
	}
	if _, err := execute(t, "root", "migrate"); err == nil || !strings.Contains(err.Error(), "--mongo-uri is required") {
		t.Errorf("migrate without a URI: %v", err)
	}
}
