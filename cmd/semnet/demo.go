package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/semnet/semnet/node/demo"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/refapi"
)

// demoFlags are the flags of `semnet demo`.
type demoFlags struct {
	rootURL, token, socket, service, cluster string
	instances                                int
	expose                                   []string
	log                                      logFlags
}

func (f *demoFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.rootURL, "root", "", "root's URL, e.g. http://root:10099 (required)")
	fs.StringVar(&f.token, "token", "", "bearer token for root's API")
	fs.StringVar(&f.socket, "node-socket", "/run/semnet/node.sock", "the local API socket of the node the instances run on (semnet node --socket)")
	fs.StringVar(&f.service, "service", "", "job name of the demo service, app.app_ns.service.service_ns (required)")
	fs.StringVar(&f.cluster, "cluster", "", "id of the cluster the node belongs to (required)")
	fs.IntVar(&f.instances, "instances", 1, "how many instances to run on the node")
	fs.StringSliceVar(&f.expose, "expose", nil, "expose the service through the platform's gateways: PROTOCOL:PUBLIC_PORT:SERVICE_PORT, e.g. tcp:8080:80 (repeat or comma-separate)")
	f.log.register(fs)
}

// demoConfig is what the flags say, checked.
type demoConfig struct {
	service   api.ServiceRequest
	job       string
	exposures []api.ExposureRequest
	log       *slog.Logger
}

func (f *demoFlags) config() (demoConfig, error) {
	var c demoConfig
	if err := refapi.CheckJobName(f.service); err != nil {
		return c, fmt.Errorf("--service %w", err)
	}
	p := strings.Split(f.service, ".")
	c.job, c.service = f.service, api.ServiceRequest{App: p[0], AppNS: p[1], Service: p[2], ServiceNS: p[3]}
	if f.instances < 1 {
		return c, fmt.Errorf("--instances %d: run at least one", f.instances)
	}
	for _, spec := range f.expose {
		e, err := parseExposure(spec)
		if err != nil {
			return c, err
		}
		c.exposures = append(c.exposures, e)
	}
	var err error
	c.log, err = f.log.logger(os.Stderr)
	return c, err
}

// parseExposure reads PROTOCOL:PUBLIC_PORT:SERVICE_PORT.
func parseExposure(spec string) (api.ExposureRequest, error) {
	bad := func(why string) (api.ExposureRequest, error) {
		return api.ExposureRequest{}, fmt.Errorf("--expose %q: %s; want PROTOCOL:PUBLIC_PORT:SERVICE_PORT, e.g. tcp:8080:80", spec, why)
	}
	parts := strings.Split(spec, ":")
	if len(parts) != 3 {
		return bad("not three colon-separated parts")
	}
	if parts[0] != "tcp" && parts[0] != "udp" {
		return bad("the protocol must be tcp or udp")
	}
	var ports [2]int
	for i, s := range parts[1:] {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return bad(fmt.Sprintf("%q is not a port (1-65535)", s))
		}
		ports[i] = n
	}
	return api.ExposureRequest{Protocol: parts[0], PublicPort: ports[0], ServicePort: ports[1]}, nil
}

func newDemoCommand() *cobra.Command {
	var (
		f demoFlags
		c demoConfig
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a demo service's instances on a node: real network namespaces answering HTTP on port 80",
		Long: `demo creates the service --service at root (unless it exists) and --instances instances of
it in --cluster, runs each as a process in a network namespace of its own answering
"hello from <job> instance <n>" on HTTP port 80 and echoing UDP on port 7, and attaches
it through the local API of the node on --node-socket (by pid, as the platform's node
engine attaches a container). It must share the node's pid namespace, and needs
CAP_SYS_ADMIN to create network namespaces. --expose makes the service reachable
through the platform's gateways.

It prints the Service IPs and what to try, runs until SIGTERM or Ctrl-C, then detaches
its instances and deletes them at root (the service and its exposures stay). Root and
the node socket are retried until they answer.`,
		Args:    cobra.NoArgs,
		PreRunE: checkConfig(&c, f.config),
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), f, c)
		},
	}
	f.register(cmd.Flags())
	for _, name := range []string{"root", "service", "cluster"} {
		_ = cmd.MarkFlagRequired(name)
	}
	bindEnv(cmd)
	cmd.AddCommand(newServeInstanceCommand())
	return cmd
}

// newServeInstanceCommand is the demo instance's own program, which demo.Start runs in a
// new network namespace; not for people to type.
func newServeInstanceCommand() *cobra.Command {
	var (
		service string
		number  int
	)
	cmd := &cobra.Command{
		Use:   "serve-instance",
		Short: "Serve one demo instance in this network namespace (run by semnet demo)",
		Long: `serve-instance is the program of a demo instance, started by semnet demo (and
semnet up --datapath) in a new network namespace: it brings lo up, answers HTTP on port 80
and echoes UDP on port 7, writes "ready" on stdout, and exits when its stdin closes.`,
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo.ServeInstance(cmd.Context(), service, number, os.Stdin, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&service, "service", "", "job name")
	cmd.Flags().IntVar(&number, "instance", 0, "instance number")
	return cmd
}

// demoRun is one run of `semnet demo`: what it created, for the clean-up.
type demoRun struct {
	rc        *client.Client
	c         demoConfig
	f         demoFlags
	instances []*demo.Instance
	numbers   []int // instances created at root, attached or not
}

func runDemo(ctx context.Context, out io.Writer, f demoFlags, c demoConfig) error {
	rc, err := client.New(f.rootURL, f.token, nil)
	if err != nil {
		return fmt.Errorf("--root: %w", err)
	}
	r := &demoRun{rc: rc, c: c, f: f}
	svc, err := r.setUp(ctx)
	if err == nil {
		r.print(out, svc)
		<-ctx.Done()
	}
	// The clean-up gets a context of its own: ctx is over when the run ends by a signal.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return errors.Join(err, r.tearDown(cctx))
}

// setUp creates the service, the instances and the exposures, retrying while root or the
// node is not ready yet.
func (r *demoRun) setUp(ctx context.Context) (api.Service, error) {
	var svc api.Service
	err := r.retry(ctx, "create service "+r.c.job, func(ctx context.Context) error {
		var err error
		svc, err = ensureService(ctx, r.rc, r.c.service)
		return err
	})
	if err != nil {
		return svc, err
	}
	for range r.f.instances {
		var inst api.Instance
		err := r.retry(ctx, "create an instance in cluster "+r.f.cluster, func(ctx context.Context) error {
			var err error
			inst, err = r.rc.CreateInstance(ctx, r.c.job, api.InstanceRequest{ClusterID: r.f.cluster})
			return err
		})
		if err != nil {
			return svc, err
		}
		r.numbers = append(r.numbers, inst.Number)
		var in *demo.Instance
		err = r.retry(ctx, fmt.Sprintf("attach instance %d on %s", inst.Number, r.f.socket), func(ctx context.Context) error {
			var err error
			in, err = demo.Start(ctx, demo.Config{NodeSocket: r.f.socket, Service: r.c.job, Number: inst.Number, Logger: r.c.log})
			return err
		})
		if err != nil {
			return svc, err
		}
		r.instances = append(r.instances, in)
	}
	for _, e := range r.c.exposures {
		err := r.retry(ctx, fmt.Sprintf("expose %s %d", e.Protocol, e.PublicPort), func(ctx context.Context) error {
			_, err := r.rc.CreateExposure(ctx, r.c.job, e)
			if errors.Is(err, client.ErrConflict) {
				r.c.log.Info("exposure exists", "job", r.c.job, "protocol", e.Protocol, "public_port", e.PublicPort, "detail", err)
				return nil
			}
			return err
		})
		if err != nil {
			return svc, err
		}
	}
	return svc, nil
}

// retry runs op with exponential backoff for up to five minutes while the failure may
// pass: root or the node unreachable, or root not knowing the cluster yet (it registers
// once it runs).
func (r *demoRun) retry(ctx context.Context, what string, op func(context.Context) error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 200*time.Millisecond, 5*time.Second, 5*time.Minute
	err := backoff.Retry(func() error {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		err := op(cctx)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return backoff.Permanent(ctx.Err())
		case client.Temporary(err), errors.Is(err, client.ErrNotFound), errors.Is(err, demo.ErrNodeUnavailable):
			r.c.log.Warn("will retry", "what", what, "err", err)
			return err
		}
		return backoff.Permanent(err)
	}, backoff.WithContext(bo, ctx))
	if err != nil {
		return fmt.Errorf("demo: %s: %w", what, err)
	}
	return nil
}

// tearDown detaches the instances and deletes them at root.
func (r *demoRun) tearDown(ctx context.Context) error {
	var errs []error
	for _, in := range r.instances {
		errs = append(errs, in.Close(ctx))
	}
	for _, n := range r.numbers {
		if err := r.rc.DeleteInstance(ctx, r.c.job, n); err != nil && !errors.Is(err, client.ErrNotFound) {
			errs = append(errs, fmt.Errorf("demo: delete %s instance %d at root: %w", r.c.job, n, err))
		}
	}
	return errors.Join(errs...)
}

// print says where the service is and what to try.
func (r *demoRun) print(out io.Writer, svc api.Service) {
	fmt.Fprintf(out, "demo service %s runs %d instance(s) on this node:\n", svc.JobName, len(r.instances))
	fmt.Fprintf(out, "  Round Robin Service IPs: %s  %s\n  Closest Service IPs:     %s  %s\n", svc.RRIP, svc.RRIPv6, svc.ClosestIP, svc.ClosestIPv6)
	for _, in := range r.instances {
		fmt.Fprintf(out, "  instance %d: pid %d, Namespace IPs %s  %s\n", in.Number(), in.Pid, in.NamespaceIP, in.NamespaceIPv6)
	}
	if len(r.instances) > 0 {
		// A Service IP answers packets from instances: the node's own address is no sender
		// the overlay knows, so the GET runs inside an instance's namespace.
		fmt.Fprintf(out, "Try, from inside instance %d (where this runs, or in the node's container):\n  semnet probe --print --netns %s http://%s/\n",
			r.instances[0].Number(), r.instances[0].NetNS(), svc.RRIP)
	}
	for _, e := range r.c.exposures {
		fmt.Fprintf(out, "Exposed: %s port %d on every gateway's public address -> port %d of the service\n", e.Protocol, e.PublicPort, e.ServicePort)
	}
}
