package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/store"
)

// tunnelPort is the worker tunnel's UDP port (CONTRACT.md, reference default).
const tunnelPort = 50103

// exposureTarget checks the policy of req and returns it (the default filled in), the
// instance number it targets (-1 for none) and the address pair it picks in s.
func (r *Registry) exposureTarget(ctx context.Context, s store.Service, req api.ExposureRequest) (string, int, store.AddrPair, error) {
	policy := req.Policy
	if policy == "" {
		policy = api.PolicyRoundRobin
	}
	if req.InstanceNumber != nil && policy != api.PolicyInstance {
		return "", 0, store.AddrPair{}, invalidf("instance_number is only for policy %q (policy is %q)", api.PolicyInstance, policy)
	}
	switch policy {
	case api.PolicyRoundRobin:
		return policy, -1, s.RR, nil
	case api.PolicyClosest:
		return policy, -1, s.Closest, nil
	case api.PolicyInstance:
		if req.InstanceNumber == nil {
			return "", 0, store.AddrPair{}, invalidf("policy %q needs instance_number: the instance to send the traffic to", api.PolicyInstance)
		}
		in, err := r.store.GetInstance(ctx, s.ID, *req.InstanceNumber)
		if errors.Is(err, store.ErrNotFound) {
			return "", 0, store.AddrPair{}, errorf(store.ErrNotFound, "instance_number %d: service %s has no such instance", *req.InstanceNumber, s.JobName())
		}
		if err != nil {
			return "", 0, store.AddrPair{}, fmt.Errorf("instance %d of %s: %w", *req.InstanceNumber, s.JobName(), err)
		}
		return policy, in.Number, in.IP, nil
	}
	return "", 0, store.AddrPair{}, invalidf("policy %q must be %q (the default), %q or %q", policy, api.PolicyRoundRobin, api.PolicyClosest, api.PolicyInstance)
}

// CreateExposure exposes a port of the service named by key (ID, job name or one of its
// IPs) on the gateways' public addresses. The public port is free platform-wide per
// protocol, or the exposure is refused with a conflict naming the service holding it.
func (r *Registry) CreateExposure(ctx context.Context, key string, req api.ExposureRequest) (store.Exposure, error) {
	s, err := r.Service(ctx, key)
	if err != nil {
		return store.Exposure{}, err
	}
	if isGatewayService(s) {
		return store.Exposure{}, invalidf("service %s is the gateways themselves and cannot be exposed", s.JobName())
	}
	if req.Protocol != api.ProtocolTCP && req.Protocol != api.ProtocolUDP {
		return store.Exposure{}, invalidf("protocol %q must be %q or %q", req.Protocol, api.ProtocolTCP, api.ProtocolUDP)
	}
	for _, p := range []struct {
		name string
		v    int
	}{{"public_port", req.PublicPort}, {"service_port", req.ServicePort}} {
		if p.v < 1 || p.v > 65535 {
			return store.Exposure{}, invalidf("%s %d must be between 1 and 65535", p.name, p.v)
		}
	}
	if req.Protocol == api.ProtocolUDP && req.PublicPort == tunnelPort {
		// CONTRACT.md: services may not expose it. A gateway whose public address is also
		// its host address would hand the nodes' tunnel traffic to a service.
		return store.Exposure{}, invalidf("udp port %d is the nodes' tunnel port and cannot be exposed", tunnelPort)
	}
	policy, number, target, err := r.exposureTarget(ctx, s, req)
	if err != nil {
		return store.Exposure{}, err
	}
	if req.Gateway != "" {
		if err := validID("gateway", req.Gateway); err != nil {
			return store.Exposure{}, err
		}
		if _, err := r.registeredGateway(ctx, req.Gateway); err != nil {
			return store.Exposure{}, err
		}
	}
	e := store.Exposure{ID: store.ExposureID(req.Protocol, req.PublicPort), ServiceID: s.ID, Protocol: req.Protocol,
		PublicPort: req.PublicPort, ServicePort: req.ServicePort, Policy: policy, InstanceNumber: number,
		Gateway: req.Gateway, Target: target, CreatedAt: r.now().UTC()}
	out, err := r.store.CreateExposure(ctx, e)
	switch {
	case errors.Is(err, store.ErrAlreadyExists):
		holder := "another service"
		if h, herr := r.store.GetExposure(ctx, e.ID); herr == nil {
			holder = "service " + h.JobName
		}
		return store.Exposure{}, errorf(store.ErrAlreadyExists, "%s port %d is already exposed by %s (exposure %s): a public port is exposed once per protocol across the platform",
			req.Protocol, req.PublicPort, holder, e.ID)
	case err != nil:
		return store.Exposure{}, fmt.Errorf("expose %s port %d of %s: %w", req.Protocol, req.PublicPort, s.JobName(), err)
	}
	r.log.Info("exposure created", "exposure", out.ID, "service", out.JobName, "service_port", out.ServicePort,
		"policy", out.Policy, "gateway", out.Gateway, "target_ip", out.Target.V4)
	r.notify(exposureChange(out, store.OpPut))
	return out, nil
}

// exposureChange is the change an exposure's put or delete logged.
func exposureChange(e store.Exposure, op string) store.Change {
	c := store.Change{Kind: store.KindExposure, Op: op, ServiceID: e.ServiceID, JobName: e.JobName, Instance: -1, Object: e.ID}
	if op == store.OpPut {
		c.Revision = e.Revision
	}
	return c
}

// ListExposures returns the exposures of the service named by key, or with key "" of
// every service, by ID, and the revision read before them.
func (r *Registry) ListExposures(ctx context.Context, key string) ([]store.Exposure, uint64, error) {
	rev, err := r.store.Revision(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("revision: %w", err)
	}
	id := ""
	if key != "" {
		s, err := r.Service(ctx, key)
		if err != nil {
			return nil, 0, err
		}
		id = s.ID
	}
	exs, err := r.store.ListExposures(ctx, id)
	if err != nil {
		return nil, 0, fmt.Errorf("list exposures: %w", err)
	}
	return exs, rev, nil
}

// ExposuresForGateway returns what gateway id serves: the exposures naming it and those
// for every gateway, by ID, and the revision read before them.
func (r *Registry) ExposuresForGateway(ctx context.Context, id string) ([]store.Exposure, uint64, error) {
	rev, err := r.store.Revision(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("revision: %w", err)
	}
	if _, err := r.registeredGateway(ctx, id); err != nil {
		return nil, 0, err
	}
	all, err := r.store.ListExposures(ctx, "")
	if err != nil {
		return nil, 0, fmt.Errorf("list exposures: %w", err)
	}
	out := all[:0]
	for _, e := range all {
		if e.Gateway == "" || e.Gateway == id {
			out = append(out, e)
		}
	}
	return out, rev, nil
}

// Exposure returns exposure id of the service named by key; ErrNotFound if the service
// has no such exposure (also when another service holds that port).
func (r *Registry) Exposure(ctx context.Context, key, id string) (store.Exposure, error) {
	s, err := r.Service(ctx, key)
	if err != nil {
		return store.Exposure{}, err
	}
	e, err := r.store.GetExposure(ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Exposure{}, fmt.Errorf("exposure %s: %w", id, err)
	}
	if err != nil || e.ServiceID != s.ID {
		return store.Exposure{}, errorf(store.ErrNotFound, "service %s has no exposure %s", s.JobName(), id)
	}
	return e, nil
}

// DeleteExposure withdraws exposure id of the service named by key.
func (r *Registry) DeleteExposure(ctx context.Context, key, id string) error {
	e, err := r.Exposure(ctx, key, id)
	if err != nil {
		return err
	}
	return r.deleteExposure(ctx, e)
}

func (r *Registry) deleteExposure(ctx context.Context, e store.Exposure) error {
	if err := r.store.DeleteExposure(ctx, e.ID); err != nil {
		return fmt.Errorf("delete exposure %s of %s: %w", e.ID, e.JobName, err)
	}
	r.log.Info("exposure deleted", "exposure", e.ID, "service", e.JobName)
	r.notify(exposureChange(e, store.OpDelete))
	return nil
}
