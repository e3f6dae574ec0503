package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
)

// ErrConflict marks a request the current state refuses (a gateway still named by
// exposures); the message says what is in the way.
var ErrConflict = errors.New("conflict")

// gatewayNames splits api.GatewayJobName into its app, app_ns, service and service_ns.
func gatewayNames() []string { return strings.Split(api.GatewayJobName, ".") }

// systemNamespace is the app namespace (app.app_ns) of the gateway service: root's own,
// closed to users.
func systemNamespace() string { return strings.Join(gatewayNames()[:2], ".") }

// reservedNamespace reports whether app.appNS is the system namespace, in any case, so
// no user service can pass for a system one.
func reservedNamespace(app, appNS string) bool {
	return strings.EqualFold(app+"."+appNS, systemNamespace())
}

func isGatewayService(s store.Service) bool { return s.JobName() == api.GatewayJobName }

// orphanGrace: an instance of the gateway service that no gateway names was left by a
// registration that died between creating the instance and storing the gateway, or
// belongs to a registration still in progress (in this process for another gateway,
// or in another root process). Only one older than this is taken for the former.
const orphanGrace = time.Minute

// Gateway is a registered gateway with its instance of the gateway service, which holds
// its Instance IPs and placement.
type Gateway struct {
	store.Gateway
	Instance store.Instance // zero when missing (see Gateways)
}

// validateGateway checks a registration; the placement part is checked like an
// instance's.
func (r *Registry) validateGateway(id string, req api.GatewayRequest) error {
	if err := validID("gateway id", id); err != nil {
		return err
	}
	if err := validID("cluster_id", req.ClusterID); err != nil {
		return err
	}
	if !req.PublicIP.IsValid() && !req.PublicIPv6.IsValid() {
		return invalidf("a gateway needs a public address: set public_ip, public_ip_v6 or both")
	}
	if a := req.PublicIP; a.IsValid() && (!a.Is4() || a.IsUnspecified() || a.IsMulticast()) {
		return invalidf("public_ip %s must be a unicast IPv4 address", a)
	}
	if a := req.PublicIPv6; a.IsValid() && (!a.Is6() || a.Is4In6() || a.IsUnspecified() || a.IsMulticast()) {
		return invalidf("public_ip_v6 %s must be a unicast IPv6 address", a)
	}
	if !req.NamespaceIP.IsValid() {
		return invalidf("namespace_ip is required: the gateway's overlay source address, from its worker subnet %s", r.plan.SubnetV4)
	}
	if !req.HostIP.IsValid() {
		return invalidf("host_ip is required: the address instances tunnel replies to")
	}
	return r.validatePlacement(gatewayPlacement(req))
}

func gatewayPlacement(req api.GatewayRequest) api.Placement {
	return api.Placement{Status: store.StatusRunning, NamespaceIP: req.NamespaceIP, NamespaceIPv6: req.NamespaceIPv6,
		HostIP: req.HostIP, HostPort: req.HostPort, Location: req.Location}
}

// gatewayService returns the system service whose instances are the gateways, creating
// it on first use.
func (r *Registry) gatewayService(ctx context.Context) (store.Service, error) {
	s, err := r.store.GetServiceByJobName(ctx, api.GatewayJobName)
	if errors.Is(err, store.ErrNotFound) {
		parts := gatewayNames()
		s, err = r.createService(ctx, api.ServiceRequest{App: parts[0], AppNS: parts[1], Service: parts[2], ServiceNS: parts[3]})
		if errors.Is(err, store.ErrAlreadyExists) {
			// Another registration created it meanwhile, maybe in another root process.
			s, err = r.store.GetServiceByJobName(ctx, api.GatewayJobName)
		}
	}
	if err != nil {
		return store.Service{}, wrap(err, "gateway service %s", api.GatewayJobName)
	}
	return s, nil
}

// RegisterGateway registers gateway id or, when it is registered, updates it. A new
// gateway gets an instance of the gateway service, which allocates its Instance IP
// pair; a registered one keeps its instance and Instance IPs. Either way the instance is
// placed where req says (running) and the record stores the public addresses. created
// tells a new gateway from an update.
//
// Registrations of one gateway are serialised in this process, so concurrent ones
// never create two instances. The instance is created before the record that names it
// (and placed after): a registration that dies in between leaves an instance no gateway
// names, never a gateway without its instance. Registrations that create an instance
// first delete such orphans once they are older than orphanGrace; the same covers two
// root processes registering one new gateway at the same instant, where the record
// written last wins and the other instance is an orphan.
func (r *Registry) RegisterGateway(ctx context.Context, id string, req api.GatewayRequest) (gw Gateway, created bool, err error) {
	if err := r.validateGateway(id, req); err != nil {
		return Gateway{}, false, err
	}
	if _, err := r.store.GetCluster(ctx, req.ClusterID); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return Gateway{}, false, errorf(store.ErrNotFound, "cluster %s is not registered: a gateway registers through its cluster", req.ClusterID)
		}
		return Gateway{}, false, fmt.Errorf("cluster %s: %w", req.ClusterID, err)
	}
	svc, err := r.gatewayService(ctx)
	if err != nil {
		return Gateway{}, false, err
	}
	mu := &r.gatewayLocks[stripe(id)]
	mu.Lock()
	defer mu.Unlock()

	now := r.now().UTC()
	g := store.Gateway{ID: id, ClusterID: req.ClusterID, PublicV4: req.PublicIP, PublicV6: req.PublicIPv6,
		InstanceNumber: -1, CreatedAt: now, UpdatedAt: now}
	old, err := r.store.GetGateway(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		created = true
	case err != nil:
		return Gateway{}, false, fmt.Errorf("gateway %s: %w", id, err)
	default:
		g.CreatedAt = old.CreatedAt
		if _, err := r.store.GetInstance(ctx, svc.ID, old.InstanceNumber); err == nil {
			g.InstanceNumber = old.InstanceNumber
		} else if !errors.Is(err, store.ErrNotFound) {
			return Gateway{}, false, fmt.Errorf("instance %d of gateway %s: %w", old.InstanceNumber, id, err)
		}
	}
	if g.InstanceNumber < 0 {
		r.deleteOrphans(ctx, svc)
		in, err := r.newInstance(ctx, svc, api.InstanceRequest{ClusterID: req.ClusterID})
		if err != nil {
			return Gateway{}, false, wrap(err, "register gateway %s", id)
		}
		g.InstanceNumber = in.Number
	}
	if g, err = r.store.PutGateway(ctx, g); err != nil {
		return Gateway{}, false, fmt.Errorf("register gateway %s: %w", id, err)
	}
	r.notify(store.Change{Revision: g.Revision, Kind: store.KindGateway, Op: store.OpPut, Instance: -1, Object: id})
	in, err := r.place(ctx, svc, g.InstanceNumber, gatewayPlacement(req), req.ClusterID)
	if err != nil {
		return Gateway{}, false, fmt.Errorf("register gateway %s: %w", id, err)
	}
	r.log.Info("gateway registered", "gateway", id, "new", created, "cluster", g.ClusterID, "public_ip", g.PublicV4,
		"public_ip_v6", g.PublicV6, "instance", in.Number, "instance_ip", in.IP.V4)
	return Gateway{Gateway: g, Instance: in}, created, nil
}

// deleteOrphans deletes the gateway service's instances that no gateway names and that
// are older than orphanGrace (see RegisterGateway). It is best effort: what it can't
// delete now, a later registration will.
func (r *Registry) deleteOrphans(ctx context.Context, svc store.Service) {
	gws, err := r.store.ListGateways(ctx)
	if err != nil {
		r.log.Warn("gateway orphan sweep: list gateways", "err", err)
		return
	}
	ins, err := r.store.ListInstances(ctx, svc.ID)
	if err != nil {
		r.log.Warn("gateway orphan sweep: list instances", "err", err)
		return
	}
	named := make(map[int]bool, len(gws))
	for _, g := range gws {
		named[g.InstanceNumber] = true
	}
	cutoff := r.now().Add(-orphanGrace)
	for _, in := range ins {
		if named[in.Number] || !in.UpdatedAt.Before(cutoff) {
			continue
		}
		r.log.Warn("deleting a gateway instance no gateway names (left by an interrupted registration)", "instance", in.Number, "instance_ip", in.IP.V4)
		if err := r.deleteInstance(ctx, svc, in); err != nil && !errors.Is(err, store.ErrNotFound) {
			r.log.Warn("gateway orphan sweep: delete instance", "instance", in.Number, "err", err)
		}
	}
}

// gatewayInstance returns the gateway service and the instance of gateway g, zero
// where missing: the service exists from the first registration on, but a crash in the
// middle of a registration or deletion can leave a gateway without its instance. Unlike
// gatewayService it never creates the service: reads and deletes have no business to.
func (r *Registry) gatewayInstance(ctx context.Context, g store.Gateway) (store.Service, store.Instance, error) {
	svc, err := r.store.GetServiceByJobName(ctx, api.GatewayJobName)
	var in store.Instance
	if err == nil {
		in, err = r.store.GetInstance(ctx, svc.ID, g.InstanceNumber)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return svc, in, fmt.Errorf("instance %d of gateway %s: %w", g.InstanceNumber, g.ID, err)
	}
	return svc, in, nil
}

// withInstance pairs a gateway with its instance (zero when missing).
func (r *Registry) withInstance(ctx context.Context, g store.Gateway) (Gateway, error) {
	_, in, err := r.gatewayInstance(ctx, g)
	return Gateway{Gateway: g, Instance: in}, err
}

// registeredGateway returns gateway id, or an ErrNotFound that says so.
func (r *Registry) registeredGateway(ctx context.Context, id string) (store.Gateway, error) {
	g, err := r.store.GetGateway(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return store.Gateway{}, errorf(store.ErrNotFound, "unknown gateway %s: it is not registered (PUT /api/v1/gateways/%s)", id, id)
	}
	if err != nil {
		return store.Gateway{}, fmt.Errorf("gateway %s: %w", id, err)
	}
	return g, nil
}

// GatewayByID returns a registered gateway.
func (r *Registry) GatewayByID(ctx context.Context, id string) (Gateway, error) {
	g, err := r.registeredGateway(ctx, id)
	if err != nil {
		return Gateway{}, err
	}
	return r.withInstance(ctx, g)
}

// Gateways lists the registered gateways by ID.
func (r *Registry) Gateways(ctx context.Context) ([]Gateway, error) {
	gws, err := r.store.ListGateways(ctx)
	if err != nil {
		return nil, fmt.Errorf("list gateways: %w", err)
	}
	out := make([]Gateway, len(gws))
	for i, g := range gws {
		if out[i], err = r.withInstance(ctx, g); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DeleteGateway removes a gateway and its instance, whose Instance IPs go into
// quarantine. While exposures name this gateway (not those for every gateway) it
// refuses with ErrConflict, unless force, which deletes them first.
func (r *Registry) DeleteGateway(ctx context.Context, id string, force bool) error {
	mu := &r.gatewayLocks[stripe(id)]
	mu.Lock()
	defer mu.Unlock()
	g, err := r.registeredGateway(ctx, id)
	if err != nil {
		return err
	}
	all, err := r.store.ListExposures(ctx, "")
	if err != nil {
		return fmt.Errorf("list exposures: %w", err)
	}
	var own []string
	for _, e := range all {
		if e.Gateway == id {
			own = append(own, e.ID)
		}
	}
	if len(own) > 0 && !force {
		return errorf(ErrConflict, "gateway %s still serves exposure(s) %s that name it; delete them first or pass force=true",
			id, strings.Join(own, ", "))
	}
	for _, e := range all {
		if e.Gateway == id {
			if err := r.deleteExposure(ctx, e); err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
		}
	}
	// The record goes first: a crash after it leaves an orphan instance, which the next
	// registration deletes, rather than a gateway whose instance is gone.
	if err := r.store.DeleteGateway(ctx, id); err != nil {
		return fmt.Errorf("delete gateway %s: %w", id, err)
	}
	r.notify(store.Change{Kind: store.KindGateway, Op: store.OpDelete, Instance: -1, Object: id})
	svc, in, err := r.gatewayInstance(ctx, g)
	if err == nil && in.ServiceID != "" { // the instance exists
		err = r.deleteInstance(ctx, svc, in)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("delete gateway %s: %w", id, err)
	}
	r.log.Info("gateway deleted", "gateway", id, "exposures", len(own))
	return nil
}
