// Package gateways relays a cluster's gateway nodes to root and back (issue 5; FLOWS.md,
// "External client to service"): a gateway node's registration goes up to root, which
// makes it an instance of the system gateway service (so it gets Instance IPs), and the
// exposures it serves come down to it on nodes/<id>/net/gateway/config, again after every
// change root's change stream reports.
//
// Every message to a node is its whole configuration, so one that is lost is repaired
// by the next, and a node that reconnects registers again and gets it afresh. All work
// runs on one goroutine (Run): registrations and refreshes reach root in the order they
// happened, and a burst of changes costs one refresh.
package gateways

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

// Root is what the relay needs from root's API (a *client.Client).
type Root interface {
	RegisterGateway(ctx context.Context, id string, req api.GatewayRequest) (api.Gateway, error)
	Exposures(ctx context.Context, gateway string) (api.ExposureList, error)
}

// Publisher publishes to the nodes (the broker's inline client).
type Publisher interface {
	Publish(topic string, payload []byte) error
}

// Relay serves the cluster's gateway nodes.
type Relay struct {
	root      Root
	pub       Publisher
	clusterID string
	location  *geo.Point // for a gateway that reports none
	log       *slog.Logger
	// registered is told each gateway root registered, so the cluster watches its node
	// like one running an instance (the gateway's) and reports it failed when the node
	// stays away.
	registered func(nodeID string, gw api.Gateway)

	mu       sync.Mutex
	gateways map[string]api.Gateway // registered gateway nodes, by node id
	pending  []registration         // registrations not yet sent to root
	refresh  bool                   // every gateway's exposures must be re-read
	wake     chan struct{}
}

type registration struct {
	node string
	req  mqttapi.GatewayRegister
}

// New returns a relay; Run serves it. registered, when not nil, is called with each
// gateway root registered (on Run's goroutine).
func New(root Root, pub Publisher, clusterID string, location *geo.Point, registered func(nodeID string, gw api.Gateway), log *slog.Logger) *Relay {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{root: root, pub: pub, clusterID: clusterID, location: location, registered: registered, log: log,
		gateways: map[string]api.Gateway{}, wake: make(chan struct{}, 1)}
}

// Register queues a gateway node's registration; the answer goes to the node.
func (r *Relay) Register(nodeID string, req mqttapi.GatewayRegister) {
	r.mu.Lock()
	r.pending = append(r.pending, registration{nodeID, req})
	r.mu.Unlock()
	r.poke()
}

// Changed says root reported a change to gateways or exposures: every gateway node's
// configuration is re-read and sent again.
func (r *Relay) Changed() {
	r.mu.Lock()
	r.refresh = len(r.gateways) > 0
	r.mu.Unlock()
	r.poke()
}

// NodeGone stops serving a node that disconnected; it registers again when it is back.
// Root keeps the gateway (and its exposures) meanwhile; should the node stay away past
// the grace, the cluster reports the gateway failed like any instance of the node.
func (r *Relay) NodeGone(nodeID string) {
	r.mu.Lock()
	delete(r.gateways, nodeID)
	r.mu.Unlock()
}

func (r *Relay) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run serves registrations and refreshes until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		r.mu.Lock()
		regs, refresh := r.pending, r.refresh
		r.pending, r.refresh = nil, false
		r.mu.Unlock()
		done := map[string]bool{}
		for _, reg := range regs {
			r.register(ctx, reg)
			done[reg.node] = true
		}
		if refresh {
			r.mu.Lock()
			gws := make([]api.Gateway, 0, len(r.gateways))
			for id, gw := range r.gateways {
				if !done[id] {
					gws = append(gws, gw)
				}
			}
			r.mu.Unlock()
			for _, gw := range gws {
				r.push(ctx, gw)
			}
		}
	}
}

func (r *Relay) register(ctx context.Context, reg registration) {
	req := api.GatewayRequest{ClusterID: r.clusterID, PublicIP: reg.req.PublicIP, PublicIPv6: reg.req.PublicIPv6,
		NamespaceIP: reg.req.NamespaceIP, NamespaceIPv6: reg.req.NamespaceIPv6, HostIP: reg.req.HostIP, HostPort: reg.req.HostPort,
		Location: r.location}
	if reg.req.Lat != nil && reg.req.Lon != nil {
		req.Location = &geo.Point{Lat: *reg.req.Lat, Lon: *reg.req.Lon}
	}
	gw, err := r.root.RegisterGateway(ctx, reg.node, req)
	if err != nil {
		r.log.Warn("gateway registration failed", "node", reg.node, "err", err)
		r.send(reg.node, mqttapi.GatewayConfig{Error: "registration at root failed: " + err.Error()})
		return
	}
	r.mu.Lock()
	r.gateways[reg.node] = gw
	r.mu.Unlock()
	r.log.Info("gateway registered", "node", reg.node, "instance", gw.InstanceNumber, "instance_ip", gw.InstanceIP, "public_ip", gw.PublicIP, "public_ip_v6", gw.PublicIPv6)
	if r.registered != nil {
		r.registered(reg.node, gw)
	}
	r.push(ctx, gw)
}

// push sends a gateway its configuration with the exposures root has for it now.
func (r *Relay) push(ctx context.Context, gw api.Gateway) {
	list, err := r.root.Exposures(ctx, gw.ID)
	if err != nil {
		// The node keeps its last configuration; the next change or its next
		// registration tries again.
		r.log.Warn("reading a gateway's exposures failed", "node", gw.ID, "err", err)
		return
	}
	c := mqttapi.GatewayConfig{JobName: api.GatewayJobName, InstanceNumber: gw.InstanceNumber,
		InstanceIP: gw.InstanceIP, InstanceIPv6: gw.InstanceIPv6, Revision: list.Revision,
		Exposures: make([]mqttapi.GatewayExposure, 0, len(list.Items))}
	for _, e := range list.Items {
		c.Exposures = append(c.Exposures, mqttapi.GatewayExposure{ID: e.ID, JobName: e.JobName, Protocol: e.Protocol,
			PublicPort: e.PublicPort, ServicePort: e.ServicePort, TargetIP: e.TargetIP, TargetIPv6: e.TargetIPv6})
	}
	r.send(gw.ID, c)
}

func (r *Relay) send(node string, c mqttapi.GatewayConfig) {
	b, err := json.Marshal(c)
	if err == nil {
		err = r.pub.Publish(mqttapi.NodeTopic(node, mqttapi.SuffixGatewayConfig), b)
	}
	if err != nil {
		r.log.Error("publishing a gateway configuration failed", "node", node, "err", err)
	}
}
