// Package localapi serves the node agent's local API on a unix socket
// (proto/nodeapi): the platform's node engine attaches instances to the overlay and
// detaches them, exactly as it drives the reference node. Errors are problem+json: 400
// for a malformed request, 404 for an instance the node does not run, 409 for one it
// already runs, 507 when the node's subnet is full.
package localapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/nodeapi"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/shared/httpapi"
)

// Errors the Instances implementation wraps so the API answers with the right status.
var (
	ErrNotFound = errors.New("no such instance on this node")
	ErrExists   = errors.New("instance already runs on this node")
	ErrFull     = errors.New("the node's subnet is full")
)

// Instances is what the API drives: the node agent.
type Instances interface {
	Deploy(ctx context.Context, req nodeapi.DeployRequest) (nodeapi.DeployResponse, error)
	Undeploy(ctx context.Context, job string, instance int) error
}

// Config configures the handler.
type Config struct {
	// NodeID and ClusterAddress are what /register must agree with.
	NodeID, ClusterAddress string
	Ready                  func(ctx context.Context) error
	Gatherer               prometheus.Gatherer
	Logger                 *slog.Logger
}

// Handler builds the local API.
func Handler(inst Instances, cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := httpapi.NewRouter(httpapi.RouterConfig{Logger: cfg.Logger, Gatherer: cfg.Gatherer, Ready: cfg.Ready,
		Hint: "the node API has POST /register, /container/deploy and /container/undeploy"})
	r.Post(nodeapi.PathRegister, func(w http.ResponseWriter, r *http.Request) {
		var req nodeapi.RegisterRequest
		if err := httpapi.DecodeJSON(w, r, &req); err != nil {
			httpapi.WriteProblem(w, r, err, nil)
			return
		}
		if req.ClientID != "" && req.ClientID != cfg.NodeID {
			httpapi.WriteProblem(w, r, httpapi.Errorf(http.StatusConflict,
				"this node runs as worker %q, not %q: restart it with --id %s", cfg.NodeID, req.ClientID, req.ClientID), nil)
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, nodeapi.RegisterRequest{ClientID: cfg.NodeID, ClusterAddress: cfg.ClusterAddress})
	})
	r.Post(nodeapi.PathDeploy, func(w http.ResponseWriter, r *http.Request) {
		var req nodeapi.DeployRequest
		if err := httpapi.DecodeJSON(w, r, &req); err != nil {
			httpapi.WriteProblem(w, r, err, nil)
			return
		}
		if err := validDeploy(req); err != nil {
			httpapi.WriteProblem(w, r, err, nil)
			return
		}
		resp, err := inst.Deploy(r.Context(), req)
		if err != nil {
			cfg.Logger.Warn("deploy failed", "job", req.ServiceName, "instance", req.InstanceNumber, "err", err)
			httpapi.WriteProblem(w, r, err, classify)
			return
		}
		httpapi.WriteJSON(w, http.StatusOK, resp)
	})
	r.Post(nodeapi.PathUndeploy, func(w http.ResponseWriter, r *http.Request) {
		var req nodeapi.UndeployRequest
		if err := httpapi.DecodeJSON(w, r, &req); err != nil {
			httpapi.WriteProblem(w, r, err, nil)
			return
		}
		n, ok := req.Number()
		if err := validJob(req.ServiceName); err != nil || !ok || n < 0 {
			if err == nil {
				err = httpapi.Errorf(http.StatusBadRequest, "instance (or instanceNumber) must be a number >= 0")
			}
			httpapi.WriteProblem(w, r, err, nil)
			return
		}
		if err := inst.Undeploy(r.Context(), req.ServiceName, n); err != nil {
			httpapi.WriteProblem(w, r, err, classify)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	return r
}

func classify(err error) *httpapi.Problem {
	switch {
	case errors.Is(err, ErrNotFound):
		return httpapi.Errorf(http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrExists):
		return httpapi.Errorf(http.StatusConflict, "%v", err)
	case errors.Is(err, ErrFull):
		return httpapi.Errorf(http.StatusInsufficientStorage, "%v", err)
	}
	return nil
}

func validJob(name string) error {
	if err := refapi.CheckJobName(name); err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "serviceName %v", err)
	}
	return nil
}

func validDeploy(req nodeapi.DeployRequest) error {
	if err := validJob(req.ServiceName); err != nil {
		return err
	}
	if req.InstanceNumber < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "instanceNumber %d must not be negative", req.InstanceNumber)
	}
	if (req.Pid > 0) == (req.NetNS != "") {
		return httpapi.Errorf(http.StatusBadRequest, "give exactly one of pid (a process in the instance's network namespace) and netns (a namespace path)")
	}
	if req.Pid < 0 {
		return httpapi.Errorf(http.StatusBadRequest, "pid %d must be positive", req.Pid)
	}
	return nil
}

// NamespacePath returns the network namespace path a deploy request names.
func NamespacePath(req nodeapi.DeployRequest) string {
	if req.NetNS != "" {
		return req.NetNS
	}
	return fmt.Sprintf("/proc/%d/ns/net", req.Pid)
}

// Listen opens the unix socket at path, replacing a stale socket file a previous run
// left behind, readable and writable by its owner only.
func Listen(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("localapi: %s is in use by another running node", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("localapi: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("localapi: restrict %s: %w", path, err)
	}
	return ln, nil
}
