// Package demo runs demo instances on a node: each is a child process in a network
// namespace of its own, serving a one-line HTTP answer on port 80 (IPv4 and IPv6) and a
// UDP echo on port 7, attached to the overlay through the node's local API
// (proto/nodeapi) by its pid, exactly as the platform's node engine attaches a container.
//
// The instance's namespace lives exactly as long as its process: nothing is mounted or
// named, so a crash leaks nothing. The parent holds the child's stdin open; the child
// exits when it reads EOF, which is also what happens when the parent dies (a parent
// death signal would fire when the forking OS thread ends, which Go does not control).
//
// Start is the parent side, ServeInstance the child's program; `semnet demo` wires them
// to the command line (`semnet demo serve-instance` is the child).
package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/semnet/semnet/proto/nodeapi"
)

// ErrNodeUnavailable wraps failures to reach the node's local API at all (no socket
// yet, or nobody listening): worth retrying while the node starts.
var ErrNodeUnavailable = errors.New("node local API unavailable")

// readyLine is what the child writes on stdout once it serves.
const readyLine = "ready"

// stopGrace is how long Close waits for the child to exit after closing its stdin.
const stopGrace = 5 * time.Second

// Config says which instance to run and where to attach it.
type Config struct {
	// NodeSocket is the node's local API socket (semnet node --socket).
	NodeSocket string
	// Service is the job name (app.app_ns.service.service_ns) and Number the instance
	// number, as created at root.
	Service string
	Number  int
	// Command is the argv of the instance's program, which must run ServeInstance; Start
	// appends --service and --instance. Default: this executable with
	// `demo serve-instance`, which is how the semnet binary provides it.
	Command []string
	// Output receives the child's stderr (default os.Stderr).
	Output io.Writer
	// Logger is for the parent's own messages (default: discard).
	Logger *slog.Logger
}

// Instance is a running, attached demo instance.
type Instance struct {
	// Pid is the child's process id: /proc/<Pid>/ns/net is the instance's namespace.
	Pid int
	// NamespaceIP and NamespaceIPv6 are what the node gave the instance.
	NamespaceIP, NamespaceIPv6 netip.Addr

	cfg   Config
	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed when the child has exited
	api   *http.Client
}

// Start runs the instance's process in a new network namespace, waits until it serves,
// and attaches it through the node's local API. On failure nothing is left running.
func Start(ctx context.Context, cfg Config) (*Instance, error) {
	if cfg.NodeSocket == "" || cfg.Service == "" || cfg.Number < 0 {
		return nil, fmt.Errorf("demo: need a node socket, a service and an instance number >= 0 (got %q, %q, %d)", cfg.NodeSocket, cfg.Service, cfg.Number)
	}
	if cfg.Output == nil {
		cfg.Output = os.Stderr
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Command) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("demo: find this executable to run the instance: %w", err)
		}
		cfg.Command = []string{exe, "demo", "serve-instance"}
	}
	in := &Instance{cfg: cfg, done: make(chan struct{}), api: unixClient(cfg.NodeSocket)}
	if err := in.spawn(ctx); err != nil {
		return nil, err
	}
	var resp nodeapi.DeployResponse
	err := in.post(ctx, nodeapi.PathDeploy, nodeapi.DeployRequest{Pid: in.Pid, ServiceName: cfg.Service, InstanceNumber: cfg.Number}, &resp)
	if err == nil {
		in.NamespaceIP, err = netip.ParseAddr(resp.NsAddress)
		if err == nil {
			in.NamespaceIPv6, err = netip.ParseAddr(resp.NsAddressV6)
		}
		if err != nil {
			err = fmt.Errorf("demo: the node answered the deploy of %s instance %d with %+v: %w", cfg.Service, cfg.Number, resp, err)
		}
	}
	if err != nil {
		in.stop()
		return nil, err
	}
	cfg.Logger.Info("demo instance attached", "job", cfg.Service, "instance", cfg.Number, "pid", in.Pid,
		"nsip", in.NamespaceIP, "nsipv6", in.NamespaceIPv6)
	return in, nil
}

// spawn starts the child in a new network namespace and waits for its ready line.
func (in *Instance) spawn(ctx context.Context) error {
	c := in.cfg
	args := append(c.Command[1:len(c.Command):len(c.Command)], "--service", c.Service, "--instance", strconv.Itoa(c.Number))
	cmd := exec.Command(c.Command[0], args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	cmd.Stderr = c.Output
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("demo: start %s in a new network namespace (needs CAP_SYS_ADMIN): %w", c.Command[0], err)
	}
	in.cmd, in.stdin, in.Pid = cmd, stdin, cmd.Process.Pid

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if strings.TrimSpace(line) != readyLine {
			ready <- fmt.Errorf("demo: instance process %d ended before serving (%q, %v)", in.Pid, line, err)
		} else {
			ready <- nil
		}
		_, _ = io.Copy(io.Discard, stdout) // the child says nothing more; drain until it exits
		_ = cmd.Wait()
		close(in.done)
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = fmt.Errorf("demo: waiting for instance process %d to serve: %w", in.Pid, ctx.Err())
	}
	if err != nil {
		in.stop()
	}
	return err
}

// Number returns the instance number.
func (in *Instance) Number() int { return in.cfg.Number }

// NetNS returns the path of the instance's network namespace (valid while it runs).
func (in *Instance) NetNS() string { return fmt.Sprintf("/proc/%d/ns/net", in.Pid) }

// Close detaches the instance from the node and stops its process. A node that no
// longer knows the instance is not an error; the process is stopped in any case.
func (in *Instance) Close(ctx context.Context) error {
	n := in.cfg.Number
	err := in.post(ctx, nodeapi.PathUndeploy, nodeapi.UndeployRequest{ServiceName: in.cfg.Service, Instance: &n}, nil)
	var pe *problemError
	if errors.As(err, &pe) && pe.status == http.StatusNotFound {
		err = nil
	}
	in.stop()
	return err
}

// stop closes the child's stdin, which ends it, and kills it if it lingers.
func (in *Instance) stop() {
	_ = in.stdin.Close()
	select {
	case <-in.done:
	case <-time.After(stopGrace):
		_ = in.cmd.Process.Kill()
		<-in.done
	}
}

// problemError is an answer of the node's API other than 200.
type problemError struct {
	path   string
	status int
	body   string
}

func (e *problemError) Error() string {
	return fmt.Sprintf("demo: node API %s: %d %s", e.path, e.status, e.body)
}

func (in *Instance) post(ctx context.Context, path string, body, out any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("demo: encode %s: %w", path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://node"+path, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := in.api.Do(req)
	if err != nil {
		return fmt.Errorf("demo: node API %s on %s: %w: %w", path, in.cfg.NodeSocket, ErrNodeUnavailable, err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return &problemError{path: path, status: resp.StatusCode, body: strings.TrimSpace(string(rb))}
	}
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			return fmt.Errorf("demo: node API %s answered %q: %w", path, rb, err)
		}
	}
	return nil
}

// unixClient is an HTTP client whose every connection goes to the unix socket at path.
func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}
