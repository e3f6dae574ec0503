package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/shared/geo"
)

// The ctl commands for root's records, one group per noun. Tables show the fields an
// operator scans for; -o json shows everything root returns.

// view is how objects of one kind show as a table.
type view[T any] struct {
	header []string
	row    func(T) []string
}

func (v view[T]) show(s *ctlSession, jsonValue any, items ...T) error {
	rows := make([][]string, len(items))
	for i, it := range items {
		rows[i] = v.row(it)
	}
	return s.show(jsonValue, v.header, rows)
}

// showOne makes the RunE of a verb that gets, creates or changes one object and shows it.
func showOne[T any](f *ctlFlags, v view[T], get func(ctx context.Context, c *client.Client, args []string) (T, error)) func(*cobra.Command, []string) error {
	return f.run(func(ctx context.Context, s *ctlSession, args []string) error {
		it, err := get(ctx, s.api, args)
		if err != nil {
			return err
		}
		return v.show(s, it, it)
	})
}

// showAll makes the RunE of a list verb; -o json prints the objects as one JSON array.
func showAll[T any](f *ctlFlags, v view[T], list func(ctx context.Context, c *client.Client, args []string) ([]T, error)) func(*cobra.Command, []string) error {
	return f.run(func(ctx context.Context, s *ctlSession, args []string) error {
		items, err := list(ctx, s.api, args)
		if err != nil {
			return err
		}
		if items == nil {
			items = []T{}
		}
		return v.show(s, items, items...)
	})
}

// deleted makes the RunE of a delete verb: del says what it deleted, which is printed.
func deleted(f *ctlFlags, del func(ctx context.Context, c *client.Client, args []string) (string, error)) func(*cobra.Command, []string) error {
	return f.run(func(ctx context.Context, s *ctlSession, args []string) error {
		what, err := del(ctx, s.api, args)
		if err != nil {
			return err
		}
		fmt.Fprintln(s.out, what, "deleted")
		return nil
	})
}

// ctlGroup is a noun: it only holds its verbs.
func ctlGroup(use, short, long string, verbs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: short, Long: long, Args: cobra.NoArgs}
	cmd.AddCommand(verbs...)
	return cmd
}

// Cell formatting: an absent value is an empty cell, shown as "-".

func addrCell(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func hostCell(a netip.Addr, port int) string {
	if !a.IsValid() {
		return ""
	}
	return netip.AddrPortFrom(a, uint16(port)).String()
}

func locationCell(p *geo.Point) string {
	if p == nil {
		return ""
	}
	return strconv.FormatFloat(p.Lat, 'f', -1, 64) + "," + strconv.FormatFloat(p.Lon, 'f', -1, 64)
}

func timeCell(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// instanceNumber parses the N argument of the instance commands.
func instanceNumber(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("instance number %q: want a non-negative integer", s)
	}
	return n, nil
}

// --- services ---

var serviceView = view[api.Service]{
	header: []string{"JOB NAME", "ID", "RR IP", "RR IPV6", "CLOSEST IP", "CLOSEST IPV6"},
	row: func(s api.Service) []string {
		return []string{s.JobName, s.ID, addrCell(s.RRIP), addrCell(s.RRIPv6), addrCell(s.ClosestIP), addrCell(s.ClosestIPv6)}
	},
}

func newCtlServicesCommand(f *ctlFlags) *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List every service with its Service IPs",
		Long: `list shows every service root records, in service ID order, with its Round Robin and
Closest Service IPs (IPv4 and IPv6). It reads every page of root's list.`,
		Example: `  semnet ctl services list
  semnet ctl services list -o json | jq -r '.[].job_name'`,
		Args: cobra.NoArgs,
		RunE: showAll(f, serviceView, func(ctx context.Context, c *client.Client, _ []string) ([]api.Service, error) {
			return c.Services(ctx)
		}),
	}
	get := &cobra.Command{
		Use:   "get SERVICE",
		Short: "Show one service",
		Long: `get shows the service named by SERVICE: a job name, a service ID or any of its
Service IPs or Instance IPs.`,
		Example: `  semnet ctl services get shop.prod.web.eu
  semnet ctl services get 10.30.0.1 -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, serviceView, func(ctx context.Context, c *client.Client, args []string) (api.Service, error) {
			return c.Service(ctx, args[0])
		}),
	}
	var req api.ServiceRequest
	create := &cobra.Command{
		Use:   "create JOB",
		Short: "Deploy a service: root allocates its Service IPs",
		Long: `create deploys the service JOB (app.app_ns.service.service_ns, each part 1 to 30
letters or digits). Root allocates a Round Robin and a Closest Service IP in IPv4 and
IPv6, or takes the ones given with the flags if they are free, and prints the service.`,
		Example: `  semnet ctl services create shop.prod.web.eu
  semnet ctl services create shop.prod.api.eu --rr-ip 10.30.0.10`,
		Args: cobra.ExactArgs(1),
		RunE: showOne(f, serviceView, func(ctx context.Context, c *client.Client, args []string) (api.Service, error) {
			parts := strings.Split(args[0], ".")
			if len(parts) != 4 {
				return api.Service{}, fmt.Errorf("job name %q: want app.app_ns.service.service_ns", args[0])
			}
			req.App, req.AppNS, req.Service, req.ServiceNS = parts[0], parts[1], parts[2], parts[3]
			return c.CreateService(ctx, req)
		}),
	}
	create.Flags().StringVar(&req.ID, "id", "", "service ID (root chooses one when empty)")
	create.Flags().StringVar(&req.RRIP, "rr-ip", "", "Round Robin Service IP to take instead of the next free one")
	create.Flags().StringVar(&req.RRIPv6, "rr-ip-v6", "", "Round Robin IPv6 Service IP to take")
	create.Flags().StringVar(&req.ClosestIP, "closest-ip", "", "Closest Service IP to take")
	create.Flags().StringVar(&req.ClosestIPv6, "closest-ip-v6", "", "Closest IPv6 Service IP to take")
	var force bool
	del := &cobra.Command{
		Use:   "delete SERVICE",
		Short: "Undeploy a service and release its Service IPs",
		Long: `delete undeploys SERVICE. Root refuses (409 Conflict) while the service has
instances, unless --force, which undeploys them too. Its addresses wait out root's
quarantine before reuse, and the exposures targeting it are deleted.`,
		Example: `  semnet ctl services delete shop.prod.web.eu
  semnet ctl services delete shop.prod.web.eu --force`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
		RunE: deleted(f, func(ctx context.Context, c *client.Client, args []string) (string, error) {
			return "service " + args[0], c.DeleteService(ctx, args[0], force)
		}),
	}
	del.Flags().BoolVar(&force, "force", false, "also undeploy the service's instances")
	return ctlGroup("services", "List, show, create and delete services",
		`services manages the services root records: each has a job name
(app.app_ns.service.service_ns), an ID, and a Service IP pair (IPv4, IPv6) per balancing
policy, Round Robin and Closest.`,
		list, get, create, del)
}

// --- instances ---

var instanceHeader = []string{"N", "STATUS", "CLUSTER", "INSTANCE IP", "INSTANCE IPV6", "NAMESPACE IP", "NAMESPACE IPV6", "HOST", "LOCATION"}

func instanceRow(in api.Instance) []string {
	return []string{strconv.Itoa(in.Number), in.Status, in.ClusterID, addrCell(in.InstanceIP), addrCell(in.InstanceIPv6),
		addrCell(in.NamespaceIP), addrCell(in.NamespaceIPv6), hostCell(in.HostIP, in.HostPort), locationCell(in.Location)}
}

var instanceView = view[api.Instance]{header: instanceHeader, row: instanceRow}

func newCtlInstancesCommand(f *ctlFlags) *cobra.Command {
	list := &cobra.Command{
		Use:   "list SERVICE",
		Short: "List a service's instances, whatever their status",
		Long: `list shows every instance of SERVICE with its status, cluster, Instance IPs and, once
placed, its Namespace IPs, the node's tunnel endpoint (HOST) and location.`,
		Example:           `  semnet ctl instances list shop.prod.web.eu`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
		RunE: showAll(f, instanceView, func(ctx context.Context, c *client.Client, args []string) ([]api.Instance, error) {
			return c.Instances(ctx, args[0])
		}),
	}
	get := &cobra.Command{
		Use:               "get SERVICE N",
		Short:             "Show instance N of a service",
		Long:              `get shows instance number N of SERVICE.`,
		Example:           `  semnet ctl instances get shop.prod.web.eu 0 -o json`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, instanceView, func(ctx context.Context, c *client.Client, args []string) (api.Instance, error) {
			n, err := instanceNumber(args[1])
			if err != nil {
				return api.Instance{}, err
			}
			return c.Instance(ctx, args[0], n)
		}),
	}
	var cluster string
	number := -1
	create := &cobra.Command{
		Use:   "create SERVICE --cluster ID",
		Short: "Create an instance: root allocates its Instance IPs",
		Long: `create adds an instance of SERVICE scheduled on cluster ID and prints it with its
Instance IP pair. Its number is the lowest unused one unless --number is given. The
instance is not running until its placement is reported (by the cluster, when a node
deploys it).`,
		Example: `  semnet ctl instances create shop.prod.web.eu --cluster munich
  semnet ctl instances create shop.prod.web.eu --cluster munich --number 3`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, instanceView, func(ctx context.Context, c *client.Client, args []string) (api.Instance, error) {
			req := api.InstanceRequest{ClusterID: cluster}
			if number >= 0 {
				req.Number = &number
			}
			return c.CreateInstance(ctx, args[0], req)
		}),
	}
	create.Flags().StringVar(&cluster, "cluster", "", "ID of the cluster the instance is scheduled on")
	create.Flags().IntVar(&number, "number", -1, "instance number (default: the lowest unused)")
	_ = create.MarkFlagRequired("cluster")
	del := &cobra.Command{
		Use:   "delete SERVICE N",
		Short: "Undeploy instance N of a service and release its Instance IPs",
		Long: `delete undeploys instance number N of SERVICE. Its Instance IPs wait out root's
quarantine before reuse, and the exposures targeting it are deleted.`,
		Example:           `  semnet ctl instances delete shop.prod.web.eu 1`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: f.completeServices(),
		RunE: deleted(f, func(ctx context.Context, c *client.Client, args []string) (string, error) {
			n, err := instanceNumber(args[1])
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("instance %d of %s", n, args[0]), c.DeleteInstance(ctx, args[0], n)
		}),
	}
	var pl api.Placement
	var plLoc geo.Point
	var nsIP, nsIPv6, hostIP string
	var place *cobra.Command
	place = &cobra.Command{
		Use:   "place SERVICE N --status running --namespace-ip IP --host-ip IP",
		Short: "Report where instance N runs and its status (as its cluster does)",
		Long: `place records the placement of instance N of SERVICE the way its cluster reports it
when a node deploys, moves or loses it: its Namespace IPs, the node's tunnel endpoint
(--host-ip, --host-port), the node's location and the status (running, failed,
stopped). Only running instances with a Namespace IP and host are in the table entry.
It is for trying the platform without nodes and for testing failover by hand.`,
		Example: `  semnet ctl instances place shop.prod.web.eu 0 --status running --namespace-ip 10.18.0.2 --host-ip 127.0.0.1 --lat 48.14 --lon 11.58
  semnet ctl instances place shop.prod.web.eu 0 --status stopped`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, instanceView, func(ctx context.Context, c *client.Client, args []string) (api.Instance, error) {
			n, err := instanceNumber(args[1])
			if err != nil {
				return api.Instance{}, err
			}
			for _, a := range []struct {
				flag, v string
				dst     *netip.Addr
			}{{"namespace-ip", nsIP, &pl.NamespaceIP}, {"namespace-ip-v6", nsIPv6, &pl.NamespaceIPv6}, {"host-ip", hostIP, &pl.HostIP}} {
				if a.v == "" {
					continue
				}
				if *a.dst, err = netip.ParseAddr(a.v); err != nil {
					return api.Instance{}, fmt.Errorf("--%s: %w", a.flag, err)
				}
			}
			if place.Flags().Changed("lat") {
				pl.Location = &plLoc
			}
			return c.PlaceInstance(ctx, args[0], n, pl)
		}),
	}
	fs := place.Flags()
	fs.StringVar(&pl.Status, "status", "running", "running, failed or stopped")
	fs.StringVar(&nsIP, "namespace-ip", "", "the instance's IPv4 Namespace IP")
	fs.StringVar(&nsIPv6, "namespace-ip-v6", "", "the instance's IPv6 Namespace IP")
	fs.StringVar(&hostIP, "host-ip", "", "address of the node running it (its tunnel endpoint)")
	fs.IntVar(&pl.HostPort, "host-port", 50103, "tunnel port of that node")
	fs.Float64Var(&plLoc.Lat, "lat", 0, "latitude of the node, decimal degrees")
	fs.Float64Var(&plLoc.Lon, "lon", 0, "longitude of the node, decimal degrees")
	place.MarkFlagsRequiredTogether("lat", "lon")
	return ctlGroup("instances", "List, show, create and delete a service's instances",
		`instances manages the replicas of a service. Each has a number, an Instance IP pair
that stays with it across migrations, and, once a node runs it, a placement: Namespace
IPs, the node's tunnel endpoint, its location and status.`,
		list, get, create, place, del)
}

// --- clusters ---

var clusterView = view[api.Cluster]{
	header: []string{"ID", "NAME", "ADDRESS", "LOCATION", "RADIUS KM", "STATUS", "LAST SEEN"},
	row: func(c api.Cluster) []string {
		return []string{c.ID, c.Name, c.Address + ":" + strconv.Itoa(c.Port), locationCell(&c.Location),
			strconv.FormatFloat(c.RadiusKM, 'f', -1, 64), c.Status, timeCell(c.LastSeen)}
	},
}

func newCtlClustersCommand(f *ctlFlags) *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List the registered clusters",
		Long: `list shows every cluster registered with root: where its service listens, its
location and radius (for the Closest policy), the status of its last heartbeat and when
root last heard from it.`,
		Example: `  semnet ctl clusters list`,
		Args:    cobra.NoArgs,
		RunE: showAll(f, clusterView, func(ctx context.Context, c *client.Client, _ []string) ([]api.Cluster, error) {
			return c.Clusters(ctx)
		}),
	}
	get := &cobra.Command{
		Use:               "get ID",
		Short:             "Show one cluster",
		Long:              `get shows the cluster registered as ID.`,
		Example:           `  semnet ctl clusters get munich -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeClusters(),
		RunE: showOne(f, clusterView, func(ctx context.Context, c *client.Client, args []string) (api.Cluster, error) {
			return c.Cluster(ctx, args[0])
		}),
	}
	var req api.ClusterRequest
	create := &cobra.Command{
		Use:   "create ID --address HOST --port PORT",
		Short: "Register a cluster (a cluster service does this itself at start)",
		Long: `create registers the cluster ID, or updates its registration: the address and port
its cluster service listens on, its location and the radius it covers. A running
"semnet cluster" registers itself; create is for planning ahead and for tests.`,
		Example: `  semnet ctl clusters create munich --address 127.0.0.1 --port 10110 --lat 48.14 --lon 11.58 --radius-km 50`,
		Args:    cobra.ExactArgs(1),
		RunE: showOne(f, clusterView, func(ctx context.Context, c *client.Client, args []string) (api.Cluster, error) {
			req.ID = args[0]
			return c.RegisterCluster(ctx, req)
		}),
	}
	fs := create.Flags()
	fs.StringVar(&req.Name, "name", "", "display name")
	fs.StringVar(&req.Address, "address", "", "address the cluster service listens on")
	fs.IntVar(&req.Port, "port", 0, "port of the cluster service")
	fs.Float64Var(&req.Location.Lat, "lat", 0, "latitude of the cluster, decimal degrees")
	fs.Float64Var(&req.Location.Lon, "lon", 0, "longitude of the cluster, decimal degrees")
	fs.Float64Var(&req.RadiusKM, "radius-km", 0, "radius the cluster covers, km")
	del := &cobra.Command{
		Use:               "delete ID",
		Short:             "Remove a cluster's registration",
		Long:              `delete removes the registration of cluster ID; root refuses while it has instances.`,
		Example:           `  semnet ctl clusters delete munich`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeClusters(),
		RunE: deleted(f, func(ctx context.Context, c *client.Client, args []string) (string, error) {
			return "cluster " + args[0], c.DeleteCluster(ctx, args[0])
		}),
	}
	return ctlGroup("clusters", "List, show, register and remove clusters",
		`clusters manages the clusters registered with root. A cluster service registers its
cluster at start and heartbeats every 10 seconds.`,
		list, get, create, del)
}

// --- exposures and gateways ---

var exposureView = view[api.Exposure]{
	header: []string{"SERVICE", "ID", "POLICY", "GATEWAY", "PUBLIC PORT", "SERVICE PORT", "TARGET IP", "TARGET IPV6"},
	row: func(x api.Exposure) []string {
		policy := cmp.Or(x.Policy, api.PolicyRoundRobin)
		if x.InstanceNumber != nil {
			policy += ":" + strconv.Itoa(*x.InstanceNumber)
		}
		return []string{x.JobName, x.ID, policy, cmp.Or(x.Gateway, "all"), strconv.Itoa(x.PublicPort), strconv.Itoa(x.ServicePort),
			addrCell(x.TargetIP), addrCell(x.TargetIPv6)}
	},
}

func newCtlExposuresCommand(f *ctlFlags) *cobra.Command {
	var gateway, service string
	list := &cobra.Command{
		Use:   "list [--gateway ID | --service SERVICE]",
		Short: "List exposed ports",
		Long: `list shows every exposure: which service port each public port leads to, by which
policy, and on which gateways. With --gateway, only what that gateway serves (its own
exposures and those for every gateway); with --service, only that service's.`,
		Example: `  semnet ctl exposures list
  semnet ctl exposures list --gateway gw1
  semnet ctl exposures list --service shop.prod.web.eu -o json`,
		Args: cobra.NoArgs,
		RunE: showAll(f, exposureView, func(ctx context.Context, c *client.Client, _ []string) ([]api.Exposure, error) {
			var l api.ExposureList
			var err error
			switch {
			case gateway != "" && service != "":
				return nil, fmt.Errorf("give --gateway or --service, not both")
			case service != "":
				l, err = c.ServiceExposures(ctx, service)
			default:
				l, err = c.Exposures(ctx, gateway)
			}
			return l.Items, err
		}),
	}
	list.Flags().StringVar(&gateway, "gateway", "", "only what gateway ID serves")
	list.Flags().StringVar(&service, "service", "", "only the exposures of SERVICE")
	get := &cobra.Command{
		Use:               "get SERVICE ID",
		Short:             "Show one exposure",
		Long:              `get shows exposure ID (protocol-public_port, e.g. tcp-8080) of SERVICE.`,
		Example:           `  semnet ctl exposures get shop.prod.web.eu tcp-8080`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, exposureView, func(ctx context.Context, c *client.Client, args []string) (api.Exposure, error) {
			return c.Exposure(ctx, args[0], args[1])
		}),
	}
	var req api.ExposureRequest
	instance := -1
	create := &cobra.Command{
		Use:   "create SERVICE --protocol tcp|udp --public-port P --service-port S",
		Short: "Expose a service's port on the gateways' public addresses",
		Long: `create makes public port P (per protocol, once across the platform) of every gateway,
or of --gateway only, lead to port S of SERVICE. --policy picks the target: round_robin
(the default) or closest (nearest to the gateway) Service IP, or instance with
--instance N, that instance's Instance IP.`,
		Example: `  semnet ctl exposures create shop.prod.web.eu --protocol tcp --public-port 8080 --service-port 80
  semnet ctl exposures create shop.prod.web.eu --protocol udp --public-port 5353 --service-port 53 --policy closest`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
		RunE: showOne(f, exposureView, func(ctx context.Context, c *client.Client, args []string) (api.Exposure, error) {
			if instance >= 0 {
				req.InstanceNumber = &instance
			}
			return c.CreateExposure(ctx, args[0], req)
		}),
	}
	fs := create.Flags()
	fs.StringVar(&req.Protocol, "protocol", "", "tcp or udp")
	fs.IntVar(&req.PublicPort, "public-port", 0, "port on the gateways' public addresses")
	fs.IntVar(&req.ServicePort, "service-port", 0, "port of the service")
	fs.StringVar(&req.Policy, "policy", "", "round_robin (default), closest or instance")
	fs.IntVar(&instance, "instance", -1, "instance number, with --policy instance")
	fs.StringVar(&req.Gateway, "gateway", "", "expose on this gateway only (default: every gateway)")
	for _, name := range []string{"protocol", "public-port", "service-port"} {
		_ = create.MarkFlagRequired(name)
	}
	del := &cobra.Command{
		Use:   "delete SERVICE ID",
		Short: "Withdraw an exposure",
		Long: `delete withdraws exposure ID (e.g. tcp-8080) of SERVICE: gateways refuse new
connections to the port at once and let established ones finish.`,
		Example:           `  semnet ctl exposures delete shop.prod.web.eu tcp-8080`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: f.completeServices(),
		RunE: deleted(f, func(ctx context.Context, c *client.Client, args []string) (string, error) {
			return "exposure " + args[1] + " of " + args[0], c.DeleteExposure(ctx, args[0], args[1])
		}),
	}
	return ctlGroup("exposures", "List, show, create and delete ports exposed on gateways",
		`exposures manages what clients outside the platform reach: a public port of the
gateways leading to a port of a service, by a balancing policy.`,
		list, get, create, del)
}

var gatewayView = view[api.Gateway]{
	header: []string{"ID", "STATUS", "CLUSTER", "PUBLIC IP", "PUBLIC IPV6", "INSTANCE IP", "INSTANCE IPV6", "HOST", "LOCATION"},
	row: func(g api.Gateway) []string {
		return []string{g.ID, g.Status, g.ClusterID, addrCell(g.PublicIP), addrCell(g.PublicIPv6), addrCell(g.InstanceIP),
			addrCell(g.InstanceIPv6), hostCell(g.HostIP, g.HostPort), locationCell(g.Location)}
	},
}

func newCtlGatewaysCommand(f *ctlFlags) *cobra.Command {
	list := &cobra.Command{
		Use:   "list",
		Short: "List the registered gateways",
		Long: `list shows every gateway node registered with root: its status (running, or failed
once its cluster saw its node stay away past the grace, until it registers again), its
public addresses, its Instance IP pair (as an instance of ` + api.GatewayJobName + `),
tunnel endpoint and location.`,
		Example: `  semnet ctl gateways list`,
		Args:    cobra.NoArgs,
		RunE: showAll(f, gatewayView, func(ctx context.Context, c *client.Client, _ []string) ([]api.Gateway, error) {
			return c.Gateways(ctx)
		}),
	}
	return ctlGroup("gateways", "List the gateway nodes",
		`gateways shows the worker nodes started with --gateway, which register themselves
through their cluster.`,
		list)
}

var subnetView = view[api.Subnet]{
	header: []string{"SUBNET", "SUBNET V6", "CLUSTER", "NODE", "CREATED"},
	row: func(sn api.Subnet) []string {
		return []string{sn.SubnetV4.String(), sn.SubnetV6.String(), sn.ClusterID, sn.NodeID, timeCell(sn.CreatedAt)}
	},
}

func newCtlSubnetsCommand(f *ctlFlags) *cobra.Command {
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the allocated worker subnets",
		Long:    `list shows every worker subnet pair root allocated, with the node and cluster holding it.`,
		Example: `  semnet ctl subnets list`,
		Args:    cobra.NoArgs,
		RunE: showAll(f, subnetView, func(ctx context.Context, c *client.Client, _ []string) ([]api.Subnet, error) {
			return c.Subnets(ctx)
		}),
	}
	return ctlGroup("subnets", "List worker subnets",
		`subnets shows the worker subnet pairs (an IPv4 /26 and an IPv6 /120 by default) root
gave to nodes; each node's instances take their Namespace IPs from its pair.`,
		list)
}

var poolView = view[api.PoolUsage]{
	header: []string{"POOL", "PREFIX", "USED", "SIZE", "USE", "QUARANTINED"},
	row: func(p api.PoolUsage) []string {
		return []string{p.Name, p.Prefix.String(), strconv.FormatUint(p.Used, 10), strconv.FormatUint(p.Size, 10),
			usePercent(p.Used, p.Size), strconv.FormatUint(p.Quarantined, 10)}
	},
}

func newCtlPoolsCommand(f *ctlFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "pools",
		Short: "Show how full each address pool is",
		Long: `pools shows each of root's address pools (Service IPs per policy, Instance IPs,
worker subnets; IPv4 and IPv6): its prefix, how many addresses (or subnets) are in use
out of its size, as a percentage, and how many wait out the quarantine after release.`,
		Example: `  semnet ctl pools`,
		Args:    cobra.NoArgs,
		RunE: showAll(f, poolView, func(ctx context.Context, c *client.Client, _ []string) ([]api.PoolUsage, error) {
			return c.Pools(ctx)
		}),
	}
}

// usePercent is used/size as a percentage with two decimals: huge IPv6 pools show 0.00%.
func usePercent(used, size uint64) string {
	if size == 0 {
		return ""
	}
	return strconv.FormatFloat(100*float64(used)/float64(size), 'f', 2, 64) + "%"
}
