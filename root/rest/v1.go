package rest

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/httpapi"
)

func (s *server) routesV1(r chi.Router) {
	r.Route("/clusters", func(r chi.Router) {
		r.Post("/", s.handle(s.registerCluster))
		r.Get("/", s.handle(s.listClusters))
		r.Get("/{id}", s.handle(s.getCluster))
		r.Delete("/{id}", s.handle(s.deleteCluster))
		r.Put("/{id}/heartbeat", s.handle(s.heartbeat))
		r.Get("/{id}/changes", s.handle(s.changes))
		r.Get("/{id}/interests", s.handle(s.listInterests))
		r.Post("/{id}/interests", s.handle(s.addInterest))
		r.Delete("/{id}/interests/{service}", s.handle(s.removeInterest))
	})
	r.Route("/services", func(r chi.Router) {
		r.Post("/", s.handle(s.createService))
		r.Get("/", s.handle(s.listServices))
		r.Get("/{service}", s.handle(s.getService))
		r.Delete("/{service}", s.handle(s.deleteService))
		r.Post("/{service}/instances", s.handle(s.createInstance))
		r.Get("/{service}/instances", s.handle(s.listInstances))
		r.Get("/{service}/instances/{n}", s.handle(s.getInstance))
		r.Put("/{service}/instances/{n}/placement", s.handle(s.placeInstance))
		r.Delete("/{service}/instances/{n}", s.handle(s.deleteInstance))
		r.Post("/{service}/exposures", s.handle(s.createExposure))
		r.Get("/{service}/exposures", s.handle(s.listServiceExposures))
		r.Get("/{service}/exposures/{id}", s.handle(s.getExposure))
		r.Delete("/{service}/exposures/{id}", s.handle(s.deleteExposure))
	})
	r.Route("/gateways", func(r chi.Router) {
		r.Get("/", s.handle(s.listGateways))
		r.Put("/{id}", s.handle(s.registerGateway))
		r.Get("/{id}", s.handle(s.getGateway))
		r.Delete("/{id}", s.handle(s.deleteGateway))
	})
	r.Get("/exposures", s.handle(s.listExposures))
	r.Get("/resolve/{key}", s.handle(s.resolve))
	r.Route("/subnets", func(r chi.Router) {
		r.Post("/", s.handle(s.allocateSubnet))
		r.Get("/", s.handle(s.listSubnets))
		r.Delete("/{addr}", s.handle(s.releaseSubnet))
	})
	r.Get("/pools", s.handle(s.pools))
	r.Post("/peer/changes", s.handle(s.peerChanged))
}

// peerChanged hears from another root process on the same store that it logged a change
// (its --peer names this one): the long polls waiting here re-read the store at once.
func (s *server) peerChanged(w http.ResponseWriter, r *http.Request) error {
	var pc api.PeerChange
	if err := httpapi.DecodeJSON(w, r, &pc); err != nil {
		return err
	}
	if pc.Revision == 0 {
		return httpapi.Errorf(http.StatusBadRequest, "field revision is required: the revision of the change the peer logged")
	}
	s.reg.PeerChanged(pc.Revision)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// param returns a path parameter, unescaped (job names and IPv6 addresses arrive escaped
// from careful clients).
func param(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

func intParam(r *http.Request, name string) (int, error) {
	v := param(r, name)
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, httpapi.Errorf(http.StatusBadRequest, "%s %q is not an integer", name, v)
	}
	return n, nil
}

// queryInt reads an optional integer query parameter.
func queryInt(r *http.Request, name string, def, min, max int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		return 0, httpapi.Errorf(http.StatusBadRequest, "query parameter %s=%q must be an integer between %d and %d", name, v, min, max)
	}
	return n, nil
}

func (s *server) registerCluster(w http.ResponseWriter, r *http.Request) error {
	var req api.ClusterRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	c, err := s.reg.RegisterCluster(r.Context(), req, false)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/clusters/"+c.ID)
	httpapi.WriteJSON(w, http.StatusCreated, toCluster(c))
	return nil
}

func (s *server) listClusters(w http.ResponseWriter, r *http.Request) error {
	cs, err := s.reg.Clusters(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.Cluster, len(cs))
	for i, c := range cs {
		out[i] = toCluster(c)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getCluster(w http.ResponseWriter, r *http.Request) error {
	c, err := s.reg.Cluster(r.Context(), param(r, "id"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toCluster(c))
	return nil
}

func (s *server) deleteCluster(w http.ResponseWriter, r *http.Request) error {
	if err := s.reg.DeleteCluster(r.Context(), param(r, "id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	var hb api.Heartbeat
	if r.ContentLength != 0 {
		if err := httpapi.DecodeJSON(w, r, &hb); err != nil {
			return err
		}
	}
	c, err := s.reg.Heartbeat(r.Context(), param(r, "id"), hb.Status)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toCluster(c))
	return nil
}

func (s *server) changes(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("since") == "now" {
		// A reader with nothing cached has nothing to catch up on: it only needs the
		// revision to follow from.
		rev, err := s.reg.Revision(r.Context(), param(r, "id"))
		if err != nil {
			return err
		}
		httpapi.WriteJSON(w, http.StatusOK, api.ChangeBatch{Changes: []api.Change{}, Revision: rev})
		return nil
	}
	since, err := strconv.ParseUint(q.Get("since"), 10, 64)
	if q.Get("since") == "" {
		since, err = 0, nil
	}
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "query parameter since=%q must be a revision (an unsigned integer) or now", q.Get("since"))
	}
	limit, err := queryInt(r, "limit", 1000, 1, 10000)
	if err != nil {
		return err
	}
	entries := false
	if v := q.Get("entries"); v != "" {
		if entries, err = strconv.ParseBool(v); err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "query parameter entries=%q must be true or false", v)
		}
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			return httpapi.Errorf(http.StatusBadRequest, "query parameter wait=%q must be a duration such as 30s", v)
		}
		wait = min(wait, s.cfg.MaxWait)
	}
	ctx := r.Context()
	if s.cfg.Closing != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		stop := context.AfterFunc(s.cfg.Closing, cancel)
		defer stop()
	}
	b, err := s.reg.Changes(ctx, param(r, "id"), since, limit, wait)
	if err != nil {
		return err
	}
	out := api.ChangeBatch{Changes: make([]api.Change, len(b.Changes)), Revision: b.Revision, Resync: b.Resync}
	for i, c := range b.Changes {
		out.Changes[i] = toChange(c)
	}
	if entries && !b.Resync {
		for _, e := range s.reg.ChangeEntries(ctx, b) {
			out.Entries = append(out.Entries, toEntry(e))
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) listInterests(w http.ResponseWriter, r *http.Request) error {
	id := param(r, "id")
	if _, err := s.reg.Cluster(r.Context(), id); err != nil {
		return err
	}
	ids, err := s.reg.Interests(r.Context(), id)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, ids)
	return nil
}

func (s *server) addInterest(w http.ResponseWriter, r *http.Request) error {
	var in api.Interest
	if err := httpapi.DecodeJSON(w, r, &in); err != nil {
		return err
	}
	if in.Service == "" {
		return httpapi.Errorf(http.StatusBadRequest, "field service is required: a job name, service ID or Service IP")
	}
	svc, err := s.reg.AddInterest(r.Context(), param(r, "id"), in.Service)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toService(svc))
	return nil
}

func (s *server) removeInterest(w http.ResponseWriter, r *http.Request) error {
	if err := s.reg.RemoveInterest(r.Context(), param(r, "id"), param(r, "service")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) createService(w http.ResponseWriter, r *http.Request) error {
	var req api.ServiceRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	svc, err := s.reg.CreateService(r.Context(), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/services/"+svc.ID)
	httpapi.WriteJSON(w, http.StatusCreated, toService(svc))
	return nil
}

func (s *server) listServices(w http.ResponseWriter, r *http.Request) error {
	limit, err := queryInt(r, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	ss, next, err := s.reg.ListServices(r.Context(), r.URL.Query().Get("after"), limit)
	if err != nil {
		return err
	}
	out := api.ServiceList{Items: make([]api.Service, len(ss)), Next: next}
	for i, sv := range ss {
		out.Items[i] = toService(sv)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getService(w http.ResponseWriter, r *http.Request) error {
	svc, err := s.reg.Service(r.Context(), param(r, "service"))
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toService(svc))
	return nil
}

// queryForce reads the optional ?force= of a delete.
func queryForce(r *http.Request) (bool, error) {
	v := r.URL.Query().Get("force")
	if v == "" {
		return false, nil
	}
	force, err := strconv.ParseBool(v)
	if err != nil {
		return false, httpapi.Errorf(http.StatusBadRequest, "query parameter force=%q must be true or false", v)
	}
	return force, nil
}

func (s *server) deleteService(w http.ResponseWriter, r *http.Request) error {
	force, err := queryForce(r)
	if err != nil {
		return err
	}
	if err := s.reg.DeleteService(r.Context(), param(r, "service"), force); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) createInstance(w http.ResponseWriter, r *http.Request) error {
	var req api.InstanceRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	in, svc, err := s.reg.CreateInstance(r.Context(), param(r, "service"), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", fmt.Sprintf("/api/v1/services/%s/instances/%d", svc.ID, in.Number))
	httpapi.WriteJSON(w, http.StatusCreated, toInstance(in))
	return nil
}

func (s *server) listInstances(w http.ResponseWriter, r *http.Request) error {
	svc, err := s.reg.Service(r.Context(), param(r, "service"))
	if err != nil {
		return err
	}
	ins, err := s.reg.Instances(r.Context(), svc.ID)
	if err != nil {
		return err
	}
	out := make([]api.Instance, len(ins))
	for i, in := range ins {
		out[i] = toInstance(in)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *server) getInstance(w http.ResponseWriter, r *http.Request) error {
	n, err := intParam(r, "n")
	if err != nil {
		return err
	}
	in, _, err := s.reg.Instance(r.Context(), param(r, "service"), n)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toInstance(in))
	return nil
}

func (s *server) placeInstance(w http.ResponseWriter, r *http.Request) error {
	n, err := intParam(r, "n")
	if err != nil {
		return err
	}
	var p api.Placement
	if err := httpapi.DecodeJSON(w, r, &p); err != nil {
		return err
	}
	in, _, err := s.reg.Place(r.Context(), param(r, "service"), n, p)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toInstance(in))
	return nil
}

func (s *server) deleteInstance(w http.ResponseWriter, r *http.Request) error {
	n, err := intParam(r, "n")
	if err != nil {
		return err
	}
	if _, err := s.reg.DeleteInstance(r.Context(), param(r, "service"), n); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// resolve answers GET /resolve/{key}?lat=&lon=&cluster_id=: the table entry, nearest
// first when the caller gives its location. With cluster_id the cluster's interest in the
// service is registered first, so a cluster filling its cache on a miss needs one round
// trip and misses no change made after the answer (the change stream carries them).
func (s *server) resolve(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	var from *geo.Point
	if q.Has("lat") || q.Has("lon") {
		lat, err1 := strconv.ParseFloat(q.Get("lat"), 64)
		lon, err2 := strconv.ParseFloat(q.Get("lon"), 64)
		p := geo.Point{Lat: lat, Lon: lon}
		if err1 != nil || err2 != nil {
			return httpapi.Errorf(http.StatusBadRequest, "query parameters lat=%q and lon=%q must both be decimal degrees", q.Get("lat"), q.Get("lon"))
		}
		if err := p.Validate(); err != nil {
			return httpapi.Errorf(http.StatusBadRequest, "caller location: %v", err)
		}
		from = &p
	}
	if cid := q.Get("cluster_id"); cid != "" {
		if _, err := s.reg.AddInterest(r.Context(), cid, param(r, "key")); err != nil {
			return err
		}
	}
	e, err := s.reg.Resolve(r.Context(), param(r, "key"), from)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toEntry(e))
	return nil
}

func (s *server) allocateSubnet(w http.ResponseWriter, r *http.Request) error {
	var req api.SubnetRequest
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	sn, err := s.reg.AllocateSubnet(r.Context(), req.ClusterID, req.NodeID)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/api/v1/subnets/"+sn.V4.Addr().String())
	httpapi.WriteJSON(w, http.StatusCreated, toSubnet(sn))
	return nil
}

func (s *server) listSubnets(w http.ResponseWriter, r *http.Request) error {
	sns, err := s.reg.Subnets(r.Context())
	if err != nil {
		return err
	}
	out := make([]api.Subnet, len(sns))
	for i, sn := range sns {
		out[i] = toSubnet(sn)
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// releaseSubnet takes the subnet's IPv4 network address (a prefix's "/" can't sit in a
// path segment); the prefix length is the plan's.
func (s *server) releaseSubnet(w http.ResponseWriter, r *http.Request) error {
	v := param(r, "addr")
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return httpapi.Errorf(http.StatusBadRequest, "subnet %q must be the IPv4 network address of a worker subnet, e.g. 10.18.0.64", v)
	}
	if err := s.reg.ReleaseSubnet(r.Context(), netip.PrefixFrom(a, s.reg.Plan().SubnetV4Bits)); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *server) pools(w http.ResponseWriter, _ *http.Request) error {
	httpapi.WriteJSON(w, http.StatusOK, s.reg.PoolUsage())
	return nil
}
