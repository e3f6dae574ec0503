// Package refapi serves the reference platform's root network API (Oakestra's /api/net,
// CONTRACT.md "Root REST (reference)") over root's core, so the platform's orchestrator
// and its clusters work against semnet unchanged. JSON bodies are in proto/refapi.
//
// It maps each call onto the Registry and fixes the reference's known flaws:
//   - "not found" is a 404 problem+json, never `{}` with 200;
//   - a cluster's interest is keyed by an explicit cluster ID, never by the caller's
//     remote address (which breaks behind NAT and proxies): see callerCluster;
//   - addresses are freed (into quarantine) on undeploy.
//
// Where the reference answered 200 with a bare string, semnet answers 200 with JSON (the
// job document after the change, for the calls that change a job): the reference's
// callers check only the status code. Errors are problem+json with the status the
// reference used where it had a meaningful one (400 for deleting a service that still has
// instances) and semnet's usual statuses otherwise (see root/rest.Classify).
//
// Decisions where the contract is silent:
//   - Reference clusters register without a location, so they are stored at geo.Point{}
//     (0, 0) and their instances carry no location unless net_deploy_status sends lat/lon.
//   - GET /api/net/subnet has no cluster or node in the reference; the subnet is recorded
//     for cluster "reference" (or the caller's explicit cluster ID) and node ?node_id=
//     (or "unknown").
//   - The available-IP look-ahead lists Round Robin Service IPs (IPv4 from the shared
//     /16, IPv6 from the Round Robin prefix), which is what a deployer may request as
//     RR_ip / RR_ip_v6.
package refapi

import (
	"log/slog"
	"net/http"
	"net/url"

	"github.com/go-chi/chi/v5"

	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/rest"
	"github.com/semnet/semnet/shared/httpapi"
)

// ReferenceClusterID is the cluster a worker subnet is recorded for when the reference's
// GET /api/net/subnet names none.
const ReferenceClusterID = "reference"

// ClusterIDHeader carries the calling cluster's ID (as does the query parameter
// cluster_id, which wins).
const ClusterIDHeader = "X-Cluster-Id"

// Options configure the reference API.
type Options struct {
	Logger *slog.Logger
}

type server struct {
	reg *registry.Registry
	log *slog.Logger
}

// Mount adds the reference API to r, which is root's authenticated /api router.
func Mount(r chi.Router, reg *registry.Registry, opt Options) {
	s := &server{reg: reg, log: opt.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	r.Post("/net/cluster", s.handle(s.registerCluster))
	r.Post("/net/service/deploy", s.handle(s.deployService))
	r.Delete("/net/service/{id}", s.handle(s.deleteService))
	r.Post("/net/instance/deploy", s.handle(s.deployInstance))
	r.Delete("/net/{id}/{instance_number}", s.handle(s.deleteInstance))
	r.Post("/net/service/net_deploy_status", s.handle(s.deployStatus))
	r.Get("/net/service/{job_name}/instances", s.handle(s.jobByName))
	r.Get("/net/service/ip/{ip}/instances", s.handle(s.jobByIP))
	r.Delete("/net/interest/{job_name}", s.handle(s.removeInterest))
	r.Get("/net/subnet", s.handle(s.subnet))
	r.Get("/pubnet/service/netinfo/available-ip", s.handle(s.availableIPs))
	r.Get("/pubnet/service/netinfo/available-ip/", s.handle(s.availableIPs))
	r.Get("/pubnet/service/netinfo/available-ip/{n}", s.handle(s.availableIPs))
}

// handle adapts a handler that returns an error, writing the error as problem+json (the
// same mapping as /api/v1) and logging server-side failures.
func (s *server) handle(h func(w http.ResponseWriter, r *http.Request) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			rest.LogFailure(s.log, r, err)
			httpapi.WriteProblem(w, r, err, rest.Classify)
		}
	}
}

// param returns a path parameter, unescaped (careful clients escape IPv6 colons).
func param(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}
