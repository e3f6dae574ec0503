// Package client is a Go client for root's REST API /api/v1 (proto/openapi.yaml), used by
// cluster services and by tests and tools. Every call takes a context; failures the server
// answered carry its problem detail as an *Error, which errors.Is matches against
// ErrNotFound, ErrConflict and ErrUnavailable so callers need not know status codes.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/geo"
)

// Sentinels an *Error matches with errors.Is.
var (
	ErrNotFound    = errors.New("not found")              // 404
	ErrConflict    = errors.New("conflict")               // 409
	ErrUnavailable = errors.New("root unavailable")       // 502, 503, 504 or no answer at all
	ErrRejected    = errors.New("request rejected")       // any other 4xx: retrying won't help
	ErrExhausted   = errors.New("address pool exhausted") // 507
	ErrRateLimited = errors.New("rate limited")           // 429: retry after Error.RetryAfter
)

// Error is a failure root answered with a problem detail.
type Error struct {
	Method, Path string
	Status       int
	Detail       string
	// RetryAfter is how long root asked the client to wait (its Retry-After header in
	// seconds), zero when it did not say.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	return fmt.Sprintf("root %s %s: %d %s", e.Method, e.Path, e.Status, e.Detail)
}

// Is maps the status onto the package's sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrConflict:
		return e.Status == http.StatusConflict
	case ErrExhausted:
		return e.Status == http.StatusInsufficientStorage
	case ErrUnavailable:
		return e.Status == http.StatusBadGateway || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout
	case ErrRateLimited:
		return e.Status == http.StatusTooManyRequests
	case ErrRejected:
		return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusNotFound && e.Status != http.StatusConflict &&
			e.Status != http.StatusTooManyRequests
	}
	return false
}

// Temporary reports whether err is worth retrying later: root did not answer, answered
// that it is unavailable, or that this client is over its request rate.
func Temporary(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, ErrRateLimited)
}

// RetryAfter returns how long root asked to wait before the next request (a 429's
// Retry-After), zero when err carries no such answer.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// Client talks to one root.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the root at baseURL (e.g. http://127.0.0.1:10099) sending
// token as a bearer token (none when empty). hc may be nil for HTTPClient(nil).
func New(baseURL, token string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("root URL %q must look like http://host:port or https://host:port", baseURL)
	}
	if hc == nil {
		hc = HTTPClient(nil)
	}
	return &Client{base: u.Scheme + "://" + u.Host + u.Path, token: token, http: hc}, nil
}

// HTTPClient returns the HTTP client New uses by default, speaking TLS with tc when it
// is not nil (nil: the system's roots verify an https root). It has no overall timeout:
// set deadlines per call through the context (long polls last long).
func HTTPClient(tc *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil, // root is reached directly; never through an environment proxy
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}}
}

// do sends a JSON request to /api/v1+path and decodes a JSON answer into out (if not
// nil). A transport failure is wrapped so that errors.Is(err, ErrUnavailable) holds.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("root %s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/api/v1"+path, body)
	if err != nil {
		return fmt.Errorf("root %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("root %s %s: %w", method, path, ctx.Err())
		}
		return fmt.Errorf("root %s %s: %w: %w", method, path, ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var p struct {
			Title  string `json:"title"`
			Detail string `json:"detail"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &p) != nil || (p.Detail == "" && p.Title == "") {
			p.Detail = http.StatusText(resp.StatusCode)
		} else if p.Detail == "" {
			p.Detail = p.Title
		}
		e := &Error{Method: method, Path: path, Status: resp.StatusCode, Detail: p.Detail}
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
		return e
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body) // keep the connection reusable
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("root %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// RegisterCluster registers (or re-registers) a cluster.
func (c *Client) RegisterCluster(ctx context.Context, req api.ClusterRequest) (api.Cluster, error) {
	var out api.Cluster
	return out, c.do(ctx, http.MethodPost, "/clusters", req, &out)
}

// Heartbeat reports a cluster alive with a status ("ok", "degraded").
func (c *Client) Heartbeat(ctx context.Context, clusterID, status string) (api.Cluster, error) {
	var out api.Cluster
	return out, c.do(ctx, http.MethodPut, "/clusters/"+esc(clusterID)+"/heartbeat", api.Heartbeat{Status: status}, &out)
}

// Changes reads the cluster's change stream after revision since, long-polling up to
// wait when there is nothing yet. The batch carries the entries of the services it
// touches (api.ChangeBatch.Entries; a root from before them sends none).
func (c *Client) Changes(ctx context.Context, clusterID string, since uint64, wait time.Duration) (api.ChangeBatch, error) {
	var out api.ChangeBatch
	q := url.Values{"since": {strconv.FormatUint(since, 10)}, "entries": {"true"}}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	return out, c.do(ctx, http.MethodGet, "/clusters/"+esc(clusterID)+"/changes?"+q.Encode(), nil, &out)
}

// PeerChanged tells a root process that another one on the same MongoDB logged a change
// at revision rev (root's --peer): its waiting change polls re-read the store at once.
func (c *Client) PeerChanged(ctx context.Context, rev uint64) error {
	return c.do(ctx, http.MethodPost, "/peer/changes", api.PeerChange{Revision: rev}, nil)
}

// Interests lists the service IDs the cluster is interested in.
func (c *Client) Interests(ctx context.Context, clusterID string) ([]string, error) {
	var out []string
	return out, c.do(ctx, http.MethodGet, "/clusters/"+esc(clusterID)+"/interests", nil, &out)
}

// AddInterest registers the cluster's interest in a service (job name, ID or IP).
func (c *Client) AddInterest(ctx context.Context, clusterID, service string) (api.Service, error) {
	var out api.Service
	return out, c.do(ctx, http.MethodPost, "/clusters/"+esc(clusterID)+"/interests", api.Interest{Service: service}, &out)
}

// RemoveInterest drops the cluster's interest in a service.
func (c *Client) RemoveInterest(ctx context.Context, clusterID, service string) error {
	return c.do(ctx, http.MethodDelete, "/clusters/"+esc(clusterID)+"/interests/"+esc(service), nil, nil)
}

// Resolve returns the table entry for a job name, service ID, Service IP or Instance IP.
// A non-empty clusterID registers that cluster's interest in the same call.
func (c *Client) Resolve(ctx context.Context, key, clusterID string) (api.TableEntry, error) {
	var out api.TableEntry
	path := "/resolve/" + esc(key)
	if clusterID != "" {
		path += "?cluster_id=" + url.QueryEscape(clusterID)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// CreateService deploys a service.
func (c *Client) CreateService(ctx context.Context, req api.ServiceRequest) (api.Service, error) {
	var out api.Service
	return out, c.do(ctx, http.MethodPost, "/services", req, &out)
}

// DeleteService undeploys a service; force also undeploys its instances.
func (c *Client) DeleteService(ctx context.Context, service string, force bool) error {
	path := "/services/" + esc(service)
	if force {
		path += "?force=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// CreateInstance creates an instance of a service (job name, ID or IP).
func (c *Client) CreateInstance(ctx context.Context, service string, req api.InstanceRequest) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, http.MethodPost, "/services/"+esc(service)+"/instances", req, &out)
}

// PlaceInstance reports where instance n of a service runs and its status.
func (c *Client) PlaceInstance(ctx context.Context, service string, n int, p api.Placement) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, http.MethodPut, "/services/"+esc(service)+"/instances/"+strconv.Itoa(n)+"/placement", p, &out)
}

// DeleteInstance undeploys instance n of a service.
func (c *Client) DeleteInstance(ctx context.Context, service string, n int) error {
	return c.do(ctx, http.MethodDelete, "/services/"+esc(service)+"/instances/"+strconv.Itoa(n), nil, nil)
}

// AllocateSubnet allocates a worker subnet pair for a node of a cluster.
func (c *Client) AllocateSubnet(ctx context.Context, clusterID, nodeID string) (api.Subnet, error) {
	var out api.Subnet
	return out, c.do(ctx, http.MethodPost, "/subnets", api.SubnetRequest{ClusterID: clusterID, NodeID: nodeID}, &out)
}

// CurrentRevision returns the change stream's current revision: where a cluster with
// nothing cached starts following.
func (c *Client) CurrentRevision(ctx context.Context, clusterID string) (uint64, error) {
	var out api.ChangeBatch
	err := c.do(ctx, http.MethodGet, "/clusters/"+esc(clusterID)+"/changes?since=now", nil, &out)
	return out.Revision, err
}

// ReleaseSubnet releases a worker subnet pair (named by its IPv4 prefix) into quarantine.
func (c *Client) ReleaseSubnet(ctx context.Context, subnetV4 netip.Prefix) error {
	return c.do(ctx, http.MethodDelete, "/subnets/"+subnetV4.Addr().String(), nil, nil)
}

// RegisterGateway registers (or re-registers) the gateway with worker id id. Root keeps
// its Instance IPs across re-registrations.
func (c *Client) RegisterGateway(ctx context.Context, id string, req api.GatewayRequest) (api.Gateway, error) {
	var out api.Gateway
	return out, c.do(ctx, http.MethodPut, "/gateways/"+esc(id), req, &out)
}

// DeleteGateway removes a gateway and releases its Instance IPs. Root refuses (a
// conflict) while exposures name this gateway, unless force, which deletes them too.
func (c *Client) DeleteGateway(ctx context.Context, id string, force bool) error {
	path := "/gateways/" + esc(id)
	if force {
		path += "?force=true"
	}
	return c.do(ctx, http.MethodDelete, path, nil, nil)
}

// Gateways lists the registered gateways.
func (c *Client) Gateways(ctx context.Context) ([]api.Gateway, error) {
	var out []api.Gateway
	return out, c.do(ctx, http.MethodGet, "/gateways", nil, &out)
}

// CreateExposure exposes a port of a service (job name, ID or IP) on the gateways.
func (c *Client) CreateExposure(ctx context.Context, service string, req api.ExposureRequest) (api.Exposure, error) {
	var out api.Exposure
	return out, c.do(ctx, http.MethodPost, "/services/"+esc(service)+"/exposures", req, &out)
}

// DeleteExposure withdraws exposure id ("tcp-8080") of a service.
func (c *Client) DeleteExposure(ctx context.Context, service, id string) error {
	return c.do(ctx, http.MethodDelete, "/services/"+esc(service)+"/exposures/"+esc(id), nil, nil)
}

// Exposures lists every exposure or, with a gateway id, those that gateway serves (its
// own and those for every gateway).
func (c *Client) Exposures(ctx context.Context, gateway string) (api.ExposureList, error) {
	var out api.ExposureList
	path := "/exposures"
	if gateway != "" {
		path += "?gateway=" + url.QueryEscape(gateway)
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// ServiceExposures lists the exposures of a service.
func (c *Client) ServiceExposures(ctx context.Context, service string) (api.ExposureList, error) {
	var out api.ExposureList
	return out, c.do(ctx, http.MethodGet, "/services/"+esc(service)+"/exposures", nil, &out)
}

// ResolveFrom is Resolve as seen from a caller at from: instances nearest first, each
// with its distance.
func (c *Client) ResolveFrom(ctx context.Context, key string, from geo.Point) (api.TableEntry, error) {
	var out api.TableEntry
	q := url.Values{
		"lat": {strconv.FormatFloat(from.Lat, 'f', -1, 64)},
		"lon": {strconv.FormatFloat(from.Lon, 'f', -1, 64)},
	}
	return out, c.do(ctx, http.MethodGet, "/resolve/"+esc(key)+"?"+q.Encode(), nil, &out)
}

// Clusters lists the registered clusters.
func (c *Client) Clusters(ctx context.Context) ([]api.Cluster, error) {
	var out []api.Cluster
	return out, c.do(ctx, http.MethodGet, "/clusters", nil, &out)
}

// Cluster returns one registered cluster.
func (c *Client) Cluster(ctx context.Context, id string) (api.Cluster, error) {
	var out api.Cluster
	return out, c.do(ctx, http.MethodGet, "/clusters/"+esc(id), nil, &out)
}

// DeleteCluster removes a cluster's registration.
func (c *Client) DeleteCluster(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/clusters/"+esc(id), nil, nil)
}

// ServicePage lists up to limit services (root's default when 0) after the service ID
// after; pass the answer's Next as after for the next page.
func (c *Client) ServicePage(ctx context.Context, after string, limit int) (api.ServiceList, error) {
	var out api.ServiceList
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	path := "/services"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	return out, c.do(ctx, http.MethodGet, path, nil, &out)
}

// Services lists every service, reading page after page.
func (c *Client) Services(ctx context.Context) ([]api.Service, error) {
	out := []api.Service{}
	after := ""
	for {
		p, err := c.ServicePage(ctx, after, 1000)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Items...)
		if p.Next == "" {
			return out, nil
		}
		after = p.Next
	}
}

// Service returns a service by job name, ID or any of its IPs.
func (c *Client) Service(ctx context.Context, service string) (api.Service, error) {
	var out api.Service
	return out, c.do(ctx, http.MethodGet, "/services/"+esc(service), nil, &out)
}

// Instances lists every instance of a service, whatever its status.
func (c *Client) Instances(ctx context.Context, service string) ([]api.Instance, error) {
	var out []api.Instance
	return out, c.do(ctx, http.MethodGet, "/services/"+esc(service)+"/instances", nil, &out)
}

// Instance returns instance n of a service.
func (c *Client) Instance(ctx context.Context, service string, n int) (api.Instance, error) {
	var out api.Instance
	return out, c.do(ctx, http.MethodGet, "/services/"+esc(service)+"/instances/"+strconv.Itoa(n), nil, &out)
}

// Exposure returns exposure id ("tcp-8080") of a service.
func (c *Client) Exposure(ctx context.Context, service, id string) (api.Exposure, error) {
	var out api.Exposure
	return out, c.do(ctx, http.MethodGet, "/services/"+esc(service)+"/exposures/"+esc(id), nil, &out)
}

// Gateway returns one registered gateway.
func (c *Client) Gateway(ctx context.Context, id string) (api.Gateway, error) {
	var out api.Gateway
	return out, c.do(ctx, http.MethodGet, "/gateways/"+esc(id), nil, &out)
}

// Subnets lists the allocated worker subnet pairs.
func (c *Client) Subnets(ctx context.Context) ([]api.Subnet, error) {
	var out []api.Subnet
	return out, c.do(ctx, http.MethodGet, "/subnets", nil, &out)
}

// Pools returns the fill level of every address pool.
func (c *Client) Pools(ctx context.Context) ([]api.PoolUsage, error) {
	var out []api.PoolUsage
	return out, c.do(ctx, http.MethodGet, "/pools", nil, &out)
}
