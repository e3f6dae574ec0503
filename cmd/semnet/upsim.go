package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"

	"github.com/semnet/semnet/node/simnode"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/geo"
)

// demoService is the service `semnet up` deploys so there is something to look at.
var demoService = api.ServiceRequest{App: "demo", AppNS: "app", Service: "web", ServiceNS: "default"}

// simPlaces are where up's simulated nodes say they are, in order.
var simPlaces = []struct {
	name string
	loc  geo.Point
}{
	{"Munich", geo.Point{Lat: 48.14, Lon: 11.58}},
	{"Berlin", geo.Point{Lat: 52.52, Lon: 13.40}},
	{"Vienna", geo.Point{Lat: 48.21, Lon: 16.37}},
	{"Zurich", geo.Point{Lat: 47.37, Lon: 8.54}},
	{"Paris", geo.Point{Lat: 48.86, Lon: 2.35}},
}

// simPlatform is up's simulated nodes and the demo service on them.
type simPlatform struct {
	nodes []*simnode.Node
	svc   api.Service
}

// startSimulated starts count simulated nodes on the cluster's broker and, when demo is
// set, deploys the demo service with one instance on each. A demo service left by an
// earlier run in the same data directory is taken over.
func startSimulated(ctx context.Context, rc *client.Client, clusterID, broker string, count int, demo bool, log *slog.Logger) (*simPlatform, error) {
	if count > len(simPlaces) {
		return nil, fmt.Errorf("at most %d simulated nodes", len(simPlaces))
	}
	sp := &simPlatform{}
	for i := range count {
		n, err := simnode.Start(ctx, simnode.Config{ID: fmt.Sprintf("sim-%d", i+1), Broker: broker,
			HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103 + i, Location: &simPlaces[i].loc,
			Logger: log.With("node", fmt.Sprintf("sim-%d", i+1))})
		if err != nil {
			sp.Close()
			return nil, err
		}
		sp.nodes = append(sp.nodes, n)
	}
	if !demo || count == 0 {
		return sp, nil
	}
	svc, err := ensureService(ctx, rc, demoService)
	if err != nil {
		sp.Close()
		return nil, err
	}
	sp.svc = svc
	for num, n := range sp.nodes {
		if err := ensureInstance(ctx, rc, svc.JobName, num, clusterID); err != nil {
			sp.Close()
			return nil, err
		}
		if _, _, err := n.Deploy(ctx, svc.JobName, num); err != nil {
			sp.Close()
			return nil, err
		}
	}
	return sp, nil
}

// ensureService creates req's service, or returns it when it exists already (an
// earlier run's, in the same store).
func ensureService(ctx context.Context, rc *client.Client, req api.ServiceRequest) (api.Service, error) {
	svc, err := rc.CreateService(ctx, req)
	if errors.Is(err, client.ErrConflict) {
		e, rerr := rc.Resolve(ctx, req.JobName(), "")
		if rerr != nil {
			return api.Service{}, fmt.Errorf("service %s exists but cannot be read: %w", req.JobName(), rerr)
		}
		return e.Service, nil
	}
	if err != nil {
		return api.Service{}, fmt.Errorf("service %s: %w", req.JobName(), err)
	}
	return svc, nil
}

// ensureInstance creates instance num of job in cluster at root, unless it exists.
func ensureInstance(ctx context.Context, rc *client.Client, job string, num int, cluster string) error {
	_, err := rc.CreateInstance(ctx, job, api.InstanceRequest{Number: &num, ClusterID: cluster})
	if err != nil && !errors.Is(err, client.ErrConflict) {
		return fmt.Errorf("instance %d of %s: %w", num, job, err)
	}
	return nil
}

// describe prints what runs.
func (sp *simPlatform) describe(w io.Writer) {
	if len(sp.nodes) == 0 {
		return
	}
	fmt.Fprintf(w, "  nodes:        %d simulated (control plane only, no datapath):", len(sp.nodes))
	for i := range sp.nodes {
		fmt.Fprintf(w, " sim-%d (%s)", i+1, simPlaces[i].name)
	}
	fmt.Fprintln(w)
	if s := sp.svc; s.JobName != "" {
		fmt.Fprintf(w, "  demo service: %s  RR %s %s  Closest %s %s\n", s.JobName, s.RRIP, s.RRIPv6, s.ClosestIP, s.ClosestIPv6)
	}
}

// try prints what to try with the demo on the simulated nodes.
func (sp *simPlatform) try(w io.Writer, rootAddr, mqtt string) {
	s := sp.svc
	if s.JobName == "" {
		return
	}
	fmt.Fprintf(w, "  # where the demo runs, nearest to Berlin first (the Closest order):\n")
	fmt.Fprintf(w, "  curl -s -H \"Authorization: Bearer $SEMNET_TOKEN\" 'http://%s/api/v1/resolve/%s?lat=52.4&lon=13.1'\n", rootAddr, s.ClosestIP)
	fmt.Fprintf(w, "  # what a worker node asks its cluster (apt install mosquitto-clients):\n")
	host, port, _ := net.SplitHostPort(mqtt)
	fmt.Fprintf(w, "  mosquitto_rr -h %s -p %s -V mqttv311 -q 1 -i sim-9 -t nodes/sim-9/net/tablequery/request \\\n", host, port)
	fmt.Fprintf(w, "    -e nodes/sim-9/net/tablequery/result -m '{\"sname\":\"\",\"sip\":\"%s\"}'\n", s.RRIP)
}

// Close disconnects the simulated nodes; the cluster sees them gone.
func (sp *simPlatform) Close() {
	for _, n := range sp.nodes {
		n.Close()
	}
}
