// Package integration holds end-to-end tests that run the real semnet binary as separate
// processes against real servers (the embedded store on disk, FerretDB for MongoDB), and
// the load tools under integration/cmd.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/testservers"
)

const token = "integration-token-0123456789"

var (
	buildOnce, benchOnce  sync.Once
	binPath, benchBinPath string
	buildErr, benchErr    error
)

// semnetBinary builds the binary with the race detector, once per test run.
func semnetBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { binPath, buildErr = buildSemnet("-race") })
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// benchBinary builds the binary as released (no race detector), for measurements.
func benchBinary(t testing.TB) string {
	t.Helper()
	benchOnce.Do(func() { benchBinPath, benchErr = buildSemnet("-trimpath") })
	if benchErr != nil {
		t.Fatal(benchErr)
	}
	return benchBinPath
}

func buildSemnet(flag string) (string, error) {
	dir, err := os.MkdirTemp("", "semnet-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "semnet")
	out, err := exec.Command("go", "build", flag, "-o", bin, "../cmd/semnet").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
}

// rootProc is a running `semnet root` process.
type rootProc struct {
	t    *testing.T
	addr string
	args []string
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

func startRoot(t *testing.T, args ...string) *rootProc {
	t.Helper()
	p := &rootProc{t: t, addr: testservers.FreeAddr(t), args: args}
	p.start()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *rootProc) start() {
	p.t.Helper()
	p.log = &bytes.Buffer{}
	// No rate limit: these tests push root as hard as it goes from one client.
	p.cmd = exec.Command(semnetBinary(p.t), append([]string{"root", "--listen", p.addr, "--log-level", "warn", "--rate-limit", "0"}, p.args...)...)
	p.cmd.Env = append(os.Environ(), "SEMNET_TOKEN="+token)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + p.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.kill()
	p.t.Fatalf("root did not become ready; log:\n%s", p.log)
}

// kill stops the process with SIGKILL: no chance to flush or close anything.
func (p *rootProc) kill() {
	if p.cmd != nil && p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

func (p *rootProc) url(path string) string { return "http://" + p.addr + "/api/v1" + path }

// call sends a JSON request; it returns the status (0 when the connection failed) and
// decodes a 2xx body into out.
func call(ctx context.Context, method, url, body string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode/100 == 2 && out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("decode %s: %w", b, err)
		}
	} else if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, nil
}

func mongoURI(t *testing.T) string {
	t.Helper()
	uri := testservers.MongoURI(t)
	return uri
}

func uniqueDB(t *testing.T) string {
	return fmt.Sprintf("semnet_it_%d", time.Now().UnixNano())
}
