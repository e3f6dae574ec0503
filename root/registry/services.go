package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
)

// newID returns a fresh 24-hex-digit ID, the shape of the platform's job IDs
// (MongoDB ObjectIDs), so IDs look alike whoever chose them.
func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return hex.EncodeToString(b[:])
}

// idRE bounds caller-chosen IDs: they end up in URLs, topics and logs.
func validID(field, id string) error {
	if len(id) == 0 || len(id) > 64 {
		return invalidf("%s %q must be 1 to 64 characters", field, id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return invalidf("%s %q may hold only letters, digits, '-' and '_'", field, id)
		}
	}
	return nil
}

// CreateService validates the descriptor, allocates the service's Round Robin and
// Closest Service IPs in both families (honouring requested ones) and stores it. The
// app namespace of the gateway service (semnet.system) is root's own.
func (r *Registry) CreateService(ctx context.Context, req api.ServiceRequest) (store.Service, error) {
	if reservedNamespace(req.App, req.AppNS) {
		return store.Service{}, invalidf("app %q with app_ns %q is reserved: the app namespace %s holds semnet's own services (the gateways); choose another app or app_ns",
			req.App, req.AppNS, systemNamespace())
	}
	return r.createService(ctx, req)
}

func (r *Registry) createService(ctx context.Context, req api.ServiceRequest) (store.Service, error) {
	for _, f := range []struct{ name, v string }{{"app", req.App}, {"app_ns", req.AppNS}, {"service", req.Service}, {"service_ns", req.ServiceNS}} {
		if !nameRE.MatchString(f.v) {
			return store.Service{}, invalidf("%s %q must match ^[a-zA-Z0-9]{1,30}$", f.name, f.v)
		}
	}
	if req.ID == "" {
		req.ID = newID()
	} else if err := validID("id", req.ID); err != nil {
		return store.Service{}, err
	}
	want := map[string]netip.Addr{}
	for _, f := range []struct{ name, v string }{{"rr_ip", req.RRIP}, {"rr_ip_v6", req.RRIPv6}, {"closest_ip", req.ClosestIP}, {"closest_ip_v6", req.ClosestIPv6}} {
		a, err := r.plan.ParseRequested(f.name, f.v)
		if err != nil {
			return store.Service{}, invalidf("%v", err)
		}
		want[f.name] = a
	}
	if a, b := want["rr_ip"], want["closest_ip"]; a.IsValid() && a == b {
		return store.Service{}, invalidf("rr_ip and closest_ip are both %s: each policy needs its own Service IP", a)
	}
	cs := []*claim{
		{pool: r.service4, want: want["rr_ip"], field: "rr_ip"},
		{pool: r.rr6, want: want["rr_ip_v6"], field: "rr_ip_v6"},
		{pool: r.service4, want: want["closest_ip"], field: "closest_ip"},
		{pool: r.closest6, want: want["closest_ip_v6"], field: "closest_ip_v6"},
	}
	var out store.Service
	err := r.withClaims(ctx, cs, func() error {
		s := store.Service{
			ID: req.ID, App: req.App, AppNS: req.AppNS, Name: req.Service, NS: req.ServiceNS,
			RR:        store.AddrPair{V4: cs[0].got, V6: cs[1].got},
			Closest:   store.AddrPair{V4: cs[2].got, V6: cs[3].got},
			CreatedAt: r.now().UTC(),
		}
		var err error
		out, err = r.store.CreateService(ctx, s)
		return err
	})
	if err != nil {
		if errors.Is(err, store.ErrAlreadyExists) {
			return store.Service{}, errorf(store.ErrAlreadyExists, "service %s already exists (or its id %s is taken)", req.App+"."+req.AppNS+"."+req.Service+"."+req.ServiceNS, req.ID)
		}
		return store.Service{}, wrap(err, "create service %s", req.ID)
	}
	r.log.Info("service created", "service", out.JobName(), "id", out.ID, "rr_ip", out.RR.V4, "closest_ip", out.Closest.V4)
	r.notify(store.Change{Revision: out.Revision, Kind: store.KindService, Op: store.OpPut, ServiceID: out.ID, JobName: out.JobName(), Instance: -1})
	return out, nil
}

// Service finds a service by ID, job name, or any of its addresses (Service IPs or an
// Instance IP), whichever key is given.
func (r *Registry) Service(ctx context.Context, key string) (store.Service, error) {
	s, _, err := r.lookup(ctx, key)
	return s, err
}

// lookup resolves key to a service, and to an instance number when key is an Instance IP
// (-1 otherwise).
func (r *Registry) lookup(ctx context.Context, key string) (store.Service, int, error) {
	if a, err := netip.ParseAddr(key); err == nil {
		l, err := r.store.GetLease(ctx, a.Unmap())
		if err != nil {
			return store.Service{}, -1, fmt.Errorf("address %s: %w", a, err)
		}
		if !l.ReleasedAt.IsZero() || l.Role == store.RoleSubnet {
			return store.Service{}, -1, fmt.Errorf("address %s belongs to no service: %w", a, store.ErrNotFound)
		}
		s, err := r.store.GetService(ctx, l.Owner)
		if err != nil {
			return store.Service{}, -1, fmt.Errorf("service %s of address %s: %w", l.Owner, a, err)
		}
		if l.Role == store.RoleInstance {
			return s, l.Instance, nil
		}
		return s, -1, nil
	}
	// A job name has four dot-separated parts; a key with fewer dots can only be an ID.
	// Skipping the job name lookup for it matters on FerretDB v1, which serves a filter
	// on anything but _id by decoding every service (instance creates look their service
	// up by ID, so this was most of their cost).
	if strings.Count(key, ".") < 3 {
		s, err := r.store.GetService(ctx, key)
		if err != nil {
			return store.Service{}, -1, fmt.Errorf("service %q: %w", key, err)
		}
		return s, -1, nil
	}
	s, err := r.store.GetServiceByJobName(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		s, err = r.store.GetService(ctx, key)
	}
	if err != nil {
		return store.Service{}, -1, fmt.Errorf("service %q: %w", key, err)
	}
	return s, -1, nil
}

// ListServices returns one page of services ordered by ID, and the cursor of the next.
func (r *Registry) ListServices(ctx context.Context, after string, limit int) ([]store.Service, string, error) {
	if limit <= 0 || limit > 1000 {
		return nil, "", invalidf("limit %d must be between 1 and 1000", limit)
	}
	ss, err := r.store.ListServices(ctx, after, limit+1)
	if err != nil {
		return nil, "", fmt.Errorf("list services: %w", err)
	}
	next := ""
	if len(ss) > limit {
		ss = ss[:limit]
		next = ss[limit-1].ID
	}
	return ss, next, nil
}

// DeleteService removes a service and frees its addresses into quarantine. It refuses
// while instances exist unless force, which undeploys them first. Its exposures go with
// it either way: they mean nothing without it.
func (r *Registry) DeleteService(ctx context.Context, key string, force bool) error {
	s, err := r.Service(ctx, key)
	if err != nil {
		return err
	}
	if isGatewayService(s) {
		return invalidf("service %s holds the gateways: delete the gateways instead (DELETE /api/v1/gateways/{id})", s.JobName())
	}
	del, err := r.store.DeleteService(ctx, s.ID, force)
	if err != nil {
		if errors.Is(err, store.ErrHasInstances) {
			if ins, lerr := r.store.ListInstances(ctx, s.ID); lerr == nil {
				return errorf(store.ErrHasInstances, "service %s still has %d instance(s); delete them first or pass force=true", s.JobName(), len(ins))
			}
			return errorf(store.ErrHasInstances, "service %s still has instances; delete them first or pass force=true", s.JobName())
		}
		return fmt.Errorf("delete service %s: %w", s.JobName(), err)
	}
	// What the store deleted, not a listing before it: an instance created meanwhile
	// went too, and its addresses are released here as well.
	s, ins, exs := del.Service, del.Instances, del.Exposures
	addrs := []netip.Addr{s.RR.V4, s.RR.V6, s.Closest.V4, s.Closest.V6}
	var cs []store.Change
	for _, e := range exs {
		cs = append(cs, exposureChange(e, store.OpDelete))
	}
	for _, in := range ins {
		addrs = append(addrs, in.IP.V4, in.IP.V6)
		cs = append(cs, store.Change{Kind: store.KindInstance, Op: store.OpDelete, ServiceID: s.ID, JobName: s.JobName(), Instance: in.Number})
	}
	r.release(addrs...)
	r.log.Info("service deleted", "service", s.JobName(), "id", s.ID, "instances", len(ins), "exposures", len(exs))
	r.notify(append(cs, store.Change{Kind: store.KindService, Op: store.OpDelete, ServiceID: s.ID, JobName: s.JobName(), Instance: -1})...)
	return nil
}
