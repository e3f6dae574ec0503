package refapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/refapi"
	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/geo"
	"github.com/semnet/semnet/shared/httpapi"
)

// registerCluster answers POST /api/net/cluster. The cluster is marked as a reference
// cluster, so it gets the reference's job update pushes (package notify). The reference
// sends no location: a new cluster is stored at geo.Point{} (0, 0); one that semnet
// already knows keeps its name, location and radius.
func (s *server) registerCluster(w http.ResponseWriter, r *http.Request) error {
	var req refapi.ClusterRegistration
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.ClusterID == "" {
		return httpapi.Errorf(http.StatusBadRequest, "cluster_id is required")
	}
	cr := api.ClusterRequest{ID: req.ClusterID, Address: req.ClusterAddress, Port: int(req.ClusterPort)}
	if old, err := s.reg.Cluster(r.Context(), req.ClusterID); err == nil {
		cr.Name, cr.Location, cr.RadiusKM = old.Name, old.Location, old.RadiusKM
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	c, err := s.reg.RegisterCluster(r.Context(), cr, true)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, refapi.ClusterRegistration{ClusterID: c.ID, ClusterAddress: c.Address, ClusterPort: refapi.FlexInt(c.Port)})
	return nil
}

// deployService answers POST /api/net/service/deploy: allocates the service's Round Robin
// and Closest Service IPs (v4 and v6, honouring requested ones) and answers the job
// document. A retry of a deploy that succeeded (same _id, same job name) answers the
// existing job; the same _id for another job name is a 409.
func (s *server) deployService(w http.ResponseWriter, r *http.Request) error {
	var req refapi.ServiceDeploy
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	id := req.JobID()
	if id == "" {
		return httpapi.Errorf(http.StatusBadRequest, "_id is required: the orchestrator's job ID")
	}
	app, appNS, svc, svcNS := req.Descriptor.Names()
	rr, rr6, closest, closest6 := req.Descriptor.Requested()
	sv, err := s.reg.CreateService(r.Context(), api.ServiceRequest{
		ID: id, App: app, AppNS: appNS, Service: svc, ServiceNS: svcNS,
		RRIP: rr, RRIPv6: rr6, ClosestIP: closest, ClosestIPv6: closest6,
	})
	if errors.Is(err, store.ErrAlreadyExists) {
		old, gerr := s.reg.Service(r.Context(), id)
		if gerr != nil || old.ID != id || old.JobName() != strings.Join([]string{app, appNS, svc, svcNS}, ".") {
			return err
		}
		sv, err = old, nil
	}
	if err != nil {
		return err
	}
	return s.writeJob(w, r, sv)
}

// deleteService answers DELETE /api/net/service/{id}. Like the reference it refuses with
// 400 while the service still has instances (undeploy them first, e.g. with
// DELETE /api/net/{id}/-1); it answers the job document as it was.
func (s *server) deleteService(w http.ResponseWriter, r *http.Request) error {
	sv, err := s.reg.Service(r.Context(), param(r, "id"))
	if err != nil {
		return err
	}
	if err := s.reg.DeleteService(r.Context(), sv.ID, false); err != nil {
		if errors.Is(err, store.ErrHasInstances) {
			return httpapi.Errorf(http.StatusBadRequest, "service %s (job %s) still has instances: undeploy them first (DELETE /api/net/%s/-1)", sv.JobName(), sv.ID, sv.ID)
		}
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toJob(sv, nil))
	return nil
}

// deployInstance answers POST /api/net/instance/deploy: allocates the instance's Instance
// IP pair. Without instance_number the lowest unused number is taken. A retry (same
// number, same cluster) answers the existing instance; the same number on another
// cluster is a 409.
func (s *server) deployInstance(w http.ResponseWriter, r *http.Request) error {
	var req refapi.InstanceDeploy
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	id := req.JobID()
	if id == "" {
		return httpapi.Errorf(http.StatusBadRequest, "_id is required: the orchestrator's job ID")
	}
	if req.ClusterID == "" {
		return httpapi.Errorf(http.StatusBadRequest, "cluster_id is required: the cluster the instance is scheduled on")
	}
	ir := api.InstanceRequest{ClusterID: req.ClusterID}
	if req.InstanceNumber != nil {
		n := int(*req.InstanceNumber)
		ir.Number = &n
	}
	_, sv, err := s.reg.CreateInstance(r.Context(), id, ir)
	if errors.Is(err, store.ErrAlreadyExists) && ir.Number != nil {
		old, _, gerr := s.reg.Instance(r.Context(), sv.ID, *ir.Number)
		if gerr == nil && old.ClusterID == req.ClusterID {
			err = nil
		}
	}
	if err != nil {
		return err
	}
	return s.writeJob(w, r, sv)
}

// deleteInstance answers DELETE /api/net/{id}/{instance_number}; -1 undeploys every
// instance (the service stays). Interested clusters are notified by package notify.
func (s *server) deleteInstance(w http.ResponseWriter, r *http.Request) error {
	v := param(r, "instance_number")
	n, err := strconv.Atoi(v)
	if err != nil || n < -1 {
		return httpapi.Errorf(http.StatusBadRequest, "instance number %q must be an instance number or -1 for every instance", v)
	}
	sv, err := s.reg.Service(r.Context(), param(r, "id"))
	if err != nil {
		return err
	}
	if n >= 0 {
		if _, err := s.reg.DeleteInstance(r.Context(), sv.ID, n); err != nil {
			return err
		}
		return s.writeJob(w, r, sv)
	}
	ins, err := s.reg.Instances(r.Context(), sv.ID)
	if err != nil {
		return err
	}
	for _, in := range ins {
		// Another request may have deleted it meanwhile: that is the outcome asked for.
		if _, err := s.reg.DeleteInstance(r.Context(), sv.ID, in.Number); err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
	}
	return s.writeJob(w, r, sv)
}

// deployStatus answers POST /api/net/service/net_deploy_status: every listed instance is
// placed (status running). The whole report is checked before anything is recorded, so a
// report naming an unknown instance (404) or a malformed address (400) changes nothing.
func (s *server) deployStatus(w http.ResponseWriter, r *http.Request) error {
	var req refapi.DeployStatus
	if err := httpapi.DecodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.JobID == "" {
		return httpapi.Errorf(http.StatusBadRequest, "job_id is required: the orchestrator's job ID")
	}
	sv, err := s.reg.Service(r.Context(), req.JobID)
	if err != nil {
		return err
	}
	ins, err := s.reg.Instances(r.Context(), sv.ID)
	if err != nil {
		return err
	}
	known := make(map[int]bool, len(ins))
	for _, in := range ins {
		known[in.Number] = true
	}
	type placement struct {
		n int
		p api.Placement
	}
	ps := make([]placement, 0, len(req.Instances))
	for i, d := range req.Instances {
		if d.InstanceNumber == nil {
			return httpapi.Errorf(http.StatusBadRequest, "instances[%d].instance_number is required", i)
		}
		n := int(*d.InstanceNumber)
		if !known[n] {
			return httpapi.Errorf(http.StatusNotFound, "instance %d of service %s (job %s) does not exist: deploy it with POST /api/net/instance/deploy first", n, sv.JobName(), sv.ID)
		}
		p, err := toPlacement(i, d)
		if err != nil {
			return err
		}
		ps = append(ps, placement{n, p})
	}
	for _, p := range ps {
		if _, _, err := s.reg.Place(r.Context(), sv.ID, p.n, p.p); err != nil {
			return err
		}
	}
	return s.writeJob(w, r, sv)
}

// toPlacement checks one reported instance; errors name the field by its index.
func toPlacement(i int, d refapi.DeployedInstance) (api.Placement, error) {
	p := api.Placement{Status: store.StatusRunning, HostPort: int(d.HostPort)}
	for _, f := range []struct {
		name     string
		v        string
		dst      *netip.Addr
		optional bool
	}{
		{"namespace_ip", d.NamespaceIP, &p.NamespaceIP, false},
		{"namespace_ip_v6", d.NamespaceIPv6, &p.NamespaceIPv6, true},
		{"host_ip", d.HostIP, &p.HostIP, false},
	} {
		if f.v == "" {
			if f.optional {
				continue
			}
			return api.Placement{}, httpapi.Errorf(http.StatusBadRequest, "instances[%d].%s is required", i, f.name)
		}
		a, err := netip.ParseAddr(f.v)
		if err != nil {
			return api.Placement{}, httpapi.Errorf(http.StatusBadRequest, "instances[%d].%s %q is not an IP address", i, f.name, f.v)
		}
		*f.dst = a.Unmap()
	}
	if (d.Lat == nil) != (d.Lon == nil) {
		return api.Placement{}, httpapi.Errorf(http.StatusBadRequest, "instances[%d]: give both lat and lon, or neither", i)
	}
	if d.Lat != nil {
		p.Location = &geo.Point{Lat: *d.Lat, Lon: *d.Lon}
	}
	return p, nil
}

// jobByName answers GET /api/net/service/{job_name}/instances, the job name written with
// '_' for '.', and registers the calling cluster's interest.
func (s *server) jobByName(w http.ResponseWriter, r *http.Request) error {
	return s.tableQuery(w, r, strings.ReplaceAll(param(r, "job_name"), "_", "."))
}

// jobByIP answers GET /api/net/service/ip/{ip}/instances for any of the service's
// addresses (a Service IP or an Instance IP), IPv4 written with '_' for '.' (10_30_0_1)
// or as is, IPv6 as is.
func (s *server) jobByIP(w http.ResponseWriter, r *http.Request) error {
	v := strings.ReplaceAll(param(r, "ip"), "_", ".")
	a, err := netip.ParseAddr(v)
	if err != nil {
		return httpapi.Errorf(http.StatusBadRequest, "%q is not an IP address (write IPv4 as 10_30_0_1 or 10.30.0.1, IPv6 as is)", param(r, "ip"))
	}
	return s.tableQuery(w, r, a.Unmap().String())
}

// tableQuery answers the job document of the service named by key and records the calling
// cluster's interest in it (when the caller is known: see callerCluster).
func (s *server) tableQuery(w http.ResponseWriter, r *http.Request, key string) error {
	sv, err := s.reg.Service(r.Context(), key)
	if err != nil {
		return err
	}
	cid, err := s.callerCluster(r)
	if err != nil {
		return err
	}
	if cid != "" {
		if _, err := s.reg.AddInterest(r.Context(), cid, sv.ID); err != nil {
			return err
		}
	}
	return s.writeJob(w, r, sv)
}

// removeInterest answers DELETE /api/net/interest/{job_name}: the calling cluster (which
// must be identified, see callerCluster) no longer follows the service. job_name may be
// any key the table query accepts: reference nodes drop interests by IP too.
func (s *server) removeInterest(w http.ResponseWriter, r *http.Request) error {
	key := strings.ReplaceAll(param(r, "job_name"), "_", ".")
	cid, err := s.callerCluster(r)
	if err != nil {
		return err
	}
	if cid == "" {
		return httpapi.Errorf(http.StatusBadRequest, "cannot tell which cluster drops its interest in %s: pass ?cluster_id=<id> or the %s header", key, ClusterIDHeader)
	}
	sv, err := s.reg.Service(r.Context(), key)
	if err != nil {
		return err
	}
	if err := s.reg.RemoveInterest(r.Context(), cid, sv.ID); err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"cluster_id": cid, "job_name": sv.JobName()})
	return nil
}

// subnet answers GET /api/net/subnet with the network addresses of a fresh worker subnet
// pair. The reference names no cluster or node: the subnet is recorded for the caller's
// explicit cluster ID or ReferenceClusterID, and for node ?node_id= or "unknown".
func (s *server) subnet(w http.ResponseWriter, r *http.Request) error {
	cid := explicitCluster(r)
	if cid == "" {
		cid = ReferenceClusterID
	}
	node := r.URL.Query().Get("node_id")
	if node == "" {
		node = "unknown"
	}
	sn, err := s.reg.AllocateSubnet(r.Context(), cid, node)
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store") // a GET that allocates: never cache it
	httpapi.WriteJSON(w, http.StatusOK, refapi.Subnet{SubnetAddr: sn.V4.Addr(), SubnetAddrV6: sn.V6.Addr()})
	return nil
}

// maxLookAhead bounds GET .../available-ip/{n}.
const maxLookAhead = 1000

// availableIPs answers GET /api/pubnet/service/netinfo/available-ip/[{n}]?v=4|6: the
// next n free Service IPs of each asked family (both without v), IPv4 first. Nothing is
// reserved: a deploy may take them first.
func (s *server) availableIPs(w http.ResponseWriter, r *http.Request) error {
	n := 1
	if v := param(r, "n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > maxLookAhead {
			return httpapi.Errorf(http.StatusBadRequest, "count %q must be an integer between 1 and %d", v, maxLookAhead)
		}
	}
	var fams []int
	switch v := r.URL.Query().Get("v"); v {
	case "":
		fams = []int{4, 6}
	case "4":
		fams = []int{4}
	case "6":
		fams = []int{6}
	default:
		return httpapi.Errorf(http.StatusBadRequest, "query parameter v=%q must be 4 or 6 (or absent for both)", v)
	}
	out := refapi.AvailableIPs{AvailableServiceIPs: []refapi.AvailableIP{}}
	for _, f := range fams {
		for _, a := range s.reg.PeekServiceIPs(f, n) {
			if f == 4 {
				out.AvailableServiceIPs = append(out.AvailableServiceIPs, refapi.AvailableIP{Address: &a, IPType: refapi.IPTypeV4})
			} else {
				out.AvailableServiceIPs = append(out.AvailableServiceIPs, refapi.AvailableIP{AddressV6: &a, IPType: refapi.IPTypeV6})
			}
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
	return nil
}

// writeJob answers the current job document of sv.
func (s *server) writeJob(w http.ResponseWriter, r *http.Request, sv store.Service) error {
	ins, err := s.reg.Instances(r.Context(), sv.ID)
	if err != nil {
		return err
	}
	httpapi.WriteJSON(w, http.StatusOK, toJob(sv, ins))
	return nil
}

// explicitCluster returns the cluster ID the caller gives: the query parameter cluster_id,
// else the X-Cluster-Id header. The reference cluster sends `?cluster_id=None` when it
// has no cluster record of its own (Python's str(None)); that counts as none.
func explicitCluster(r *http.Request) string {
	for _, v := range []string{r.URL.Query().Get("cluster_id"), r.Header.Get(ClusterIDHeader)} {
		if v = strings.TrimSpace(v); v != "" && v != "None" && v != "null" {
			return v
		}
	}
	return ""
}

// callerCluster identifies the calling cluster: its explicit ID (explicitCluster), else
// (a compatibility fall-back for reference clusters that send none) the one registered
// cluster whose address is the request's remote IP. No match, or several clusters behind
// one address, gives "": the caller is served but its interest is not recorded. The
// remote address is taken from the connection, never from forwarding headers, which
// anyone can forge.
func (s *server) callerCluster(r *http.Request) (string, error) {
	if id := explicitCluster(r); id != "" {
		return id, nil
	}
	return s.clusterByRemote(r.Context(), r.RemoteAddr)
}

func (s *server) clusterByRemote(ctx context.Context, remote string) (string, error) {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", nil
	}
	ip = ip.Unmap()
	cs, err := s.reg.Clusters(ctx)
	if err != nil {
		return "", fmt.Errorf("find the calling cluster by address %s: %w", ip, err)
	}
	var match []string
	for _, c := range cs {
		if a, err := netip.ParseAddr(c.Address); err == nil && a.Unmap() == ip {
			match = append(match, c.ID)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		s.log.Debug("caller names no cluster and matches none; interest not recorded", "remote", ip)
	default:
		s.log.Warn("caller names no cluster and several share its address; interest not recorded (send ?cluster_id=)", "remote", ip, "clusters", match)
	}
	return "", nil
}

// toJob builds the job document. Every instance is listed, as in the reference, with its
// status so semnet-aware readers can skip those not running.
func toJob(sv store.Service, ins []store.Instance) refapi.Job {
	j := refapi.Job{
		ID: sv.ID, JobName: sv.JobName(),
		ServiceIPList: []refapi.ServiceIP{
			{IPType: refapi.IPTypeRR, Address: sv.RR.V4, AddressV6: sv.RR.V6},
			{IPType: refapi.IPTypeClosest, Address: sv.Closest.V4, AddressV6: sv.Closest.V6},
		},
		InstanceList: make([]refapi.Instance, len(ins)),
	}
	for i, in := range ins {
		out := refapi.Instance{
			InstanceNumber: in.Number, InstanceIP: in.IP.V4, InstanceIPv6: in.IP.V6, ClusterID: in.ClusterID,
			NamespaceIP: in.NamespaceIP.V4, NamespaceIPv6: in.NamespaceIP.V6, HostIP: in.HostIP, HostPort: in.HostPort,
			Status: in.Status,
		}
		if in.Location != nil {
			lat, lon := in.Location.Lat, in.Location.Lon
			out.Lat, out.Lon = &lat, &lon
		}
		j.InstanceList[i] = out
	}
	return j
}
