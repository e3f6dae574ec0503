package localapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/semnet/semnet/node/localapi"
	"github.com/semnet/semnet/proto/nodeapi"
)

// instances is a node that attaches nothing: the API's own job is validation, status
// codes and passing requests through, which this checks over a real unix socket. The
// whole path with real namespaces is in integration/datapath_test.go.
type instances struct {
	mu   sync.Mutex
	runs map[string]nodeapi.DeployRequest
	full bool
}

func (in *instances) Deploy(_ context.Context, req nodeapi.DeployRequest) (nodeapi.DeployResponse, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	k := fmt.Sprintf("%s/%d", req.ServiceName, req.InstanceNumber)
	if _, ok := in.runs[k]; ok {
		return nodeapi.DeployResponse{}, fmt.Errorf("%s: %w", k, localapi.ErrExists)
	}
	if in.full {
		return nodeapi.DeployResponse{}, fmt.Errorf("10.18.0.0/26 has 61: %w", localapi.ErrFull)
	}
	in.runs[k] = req
	return nodeapi.DeployResponse{ServiceName: req.ServiceName, NsAddress: "10.18.0.2", NsAddressV6: "fc00::2"}, nil
}

func (in *instances) Undeploy(_ context.Context, job string, n int) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	k := fmt.Sprintf("%s/%d", job, n)
	if _, ok := in.runs[k]; !ok {
		return fmt.Errorf("%s: %w", k, localapi.ErrNotFound)
	}
	delete(in.runs, k)
	return nil
}

func serveSocket(t *testing.T, in *instances) *http.Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "node.sock")
	ln, err := localapi.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: localapi.Handler(in, localapi.Config{NodeID: "w1", ClusterAddress: "10.0.0.1:10003"})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	if _, err := localapi.Listen(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Listen on a live socket: %v", err)
	}
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
}

func TestRequests(t *testing.T) {
	in := &instances{runs: map[string]nodeapi.DeployRequest{}}
	hc := serveSocket(t, in)
	post := func(path, body string) (int, string) {
		resp, err := hc.Post("http://node"+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK && resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: error answered as %q", path, body, resp.Header.Get("Content-Type"))
		}
		return resp.StatusCode, string(b)
	}
	for _, c := range []struct {
		path, body string
		status     int
		want       string
	}{
		{nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a.b.c.d", "instanceNumber": 0, "portMappings": "80:80"}`, 200, `"nsAddress":"10.18.0.2"`},
		{nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a.b.c.d", "instanceNumber": 0}`, 409, "already runs"},
		{nodeapi.PathDeploy, `{"netns": "/var/run/netns/x", "serviceName": "a.b.c.d", "instanceNumber": 1}`, 200, `"nsAddressv6":"fc00::2"`},
		{nodeapi.PathDeploy, `{"pid": 42, "netns": "/x", "serviceName": "a.b.c.d", "instanceNumber": 2}`, 400, "exactly one of pid"},
		{nodeapi.PathDeploy, `{"serviceName": "a.b.c.d", "instanceNumber": 2}`, 400, "exactly one of pid"},
		{nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a.b.c", "instanceNumber": 2}`, 400, "four dot-separated parts"},
		{nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a..c.d", "instanceNumber": 2}`, 400, "empty part"},
		{nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a.b.c.d", "instanceNumber": -1}`, 400, "negative"},
		{nodeapi.PathDeploy, `{"pid": "42"`, 400, ""},
		{nodeapi.PathDeploy, `{"pid": "42", "serviceName": "a.b.c.d"}`, 400, "pid"},
		{nodeapi.PathUndeploy, `{"serviceName": "a.b.c.d", "instance": 0}`, 200, ""},
		{nodeapi.PathUndeploy, `{"serviceName": "a.b.c.d", "instanceNumber": 1}`, 200, ""},
		{nodeapi.PathUndeploy, `{"serviceName": "a.b.c.d", "instance": 0}`, 404, "no such instance"},
		{nodeapi.PathUndeploy, `{"serviceName": "a.b.c.d"}`, 400, "instance"},
		{nodeapi.PathRegister, `{"client_id": "w1", "cluster_address": "10.0.0.1:10003"}`, 200, `"client_id":"w1"`},
		{nodeapi.PathRegister, `{"client_id": "w2"}`, 409, "--id w2"},
		{"/container/nothing", `{}`, 404, "/container/deploy"},
	} {
		status, body := post(c.path, c.body)
		if status != c.status || !strings.Contains(body, c.want) {
			t.Errorf("POST %s %s = %d %s; want %d containing %q", c.path, c.body, status, body, c.status, c.want)
		}
	}
	if len(in.runs) != 0 {
		t.Errorf("instances left: %v", in.runs)
	}
	in.full = true
	if status, body := post(nodeapi.PathDeploy, `{"pid": 42, "serviceName": "a.b.c.d", "instanceNumber": 5}`); status != http.StatusInsufficientStorage {
		t.Errorf("deploy on a full node = %d %s", status, body)
	}
	var problem struct{ Status int }
	_, body := post(nodeapi.PathDeploy, `nonsense`)
	if err := json.Unmarshal([]byte(body), &problem); err != nil || problem.Status != 400 {
		t.Errorf("malformed body answered %s", body)
	}
}
