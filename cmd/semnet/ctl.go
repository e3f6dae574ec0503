package main

import (
	"cmp"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
)

// ctlFlags are the flags every `semnet ctl` command shares.
type ctlFlags struct {
	root, token, output string
	tls                 tlsClientFlags
}

// ctlSession is one ctl command's connection to root and its output.
type ctlSession struct {
	api  *client.Client
	out  io.Writer
	json bool
}

func newCtlCommand() *cobra.Command {
	f := &ctlFlags{}
	cmd := &cobra.Command{
		Use:   "ctl",
		Short: "Operate a running platform through root's REST API",
		Long: `ctl lists, shows, creates and deletes what root records (services, instances,
clusters, exposures, gateways, worker subnets), shows address pool usage, and shows
what a worker node would pick for a Service IP or Instance IP (resolve).

Commands read NOUN VERB [ARGS]: "semnet ctl services list". A SERVICE argument is a job
name (app.app_ns.service.service_ns), a service ID, or any of the service's IPs (v4 or
v6); shell completion offers the job names root knows.

Output is a table (-o table, the default: one header line, columns separated by
spaces in a fixed order, "-" for an empty cell) or JSON (-o json: the objects exactly as
root returns them, indented; list commands print one array of them). Errors root answers are printed with their status and root's explanation,
e.g. "semnet: 404 Not Found: service a.b.c.d not found", and the exit status is 1.

For an https --root, --ca names the CA that signed root's certificate (default: the
system's CAs), and --cert and --key the client certificate of a root requiring one.

--root, --token, --output, --ca, --cert and --key can also be set from SEMNET_ROOT,
SEMNET_TOKEN, SEMNET_OUTPUT, SEMNET_CA, SEMNET_CERT and SEMNET_KEY; the flags of the
individual commands cannot, since they describe one request.`,
		Args: cobra.NoArgs,
		PersistentPreRunE: func(c *cobra.Command, _ []string) error {
			return f.fill(c)
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.root, "root", "http://127.0.0.1:10099", "root's URL")
	pf.StringVar(&f.token, "token", "", "bearer token of root's API")
	pf.StringVarP(&f.output, "output", "o", "table", "output format: table or json")
	f.tls.register(pf, "", "root")
	annotateEnv(pf)
	cmd.AddCommand(newCtlServicesCommand(f), newCtlInstancesCommand(f), newCtlClustersCommand(f),
		newCtlExposuresCommand(f), newCtlGatewaysCommand(f), newCtlSubnetsCommand(f),
		newCtlPoolsCommand(f), newCtlResolveCommand(f))
	return cmd
}

// fill takes the shared flags not given on the command line from the environment. It
// runs before every ctl command and in shell completion, which runs no hooks.
func (f *ctlFlags) fill(c *cobra.Command) error {
	for p := c; p != nil; p = p.Parent() {
		if p.Name() == "ctl" {
			return fillFromEnv(p.PersistentFlags(), os.LookupEnv)
		}
	}
	return nil
}

// session checks the shared flags and connects to root.
func (f *ctlFlags) session(c *cobra.Command) (*ctlSession, error) {
	if f.output != "table" && f.output != "json" {
		return nil, fmt.Errorf("--output %q: want table or json", f.output)
	}
	tc, err := f.tls.config(f.root)
	if err != nil {
		return nil, err
	}
	api, err := client.New(f.root, f.token, client.HTTPClient(tc))
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	return &ctlSession{api: api, out: c.OutOrStdout(), json: f.output == "json"}, nil
}

// run makes a RunE that calls do with a session, and states root's failures the way an
// operator reads them.
func (f *ctlFlags) run(do func(ctx context.Context, s *ctlSession, args []string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		s, err := f.session(c)
		if err != nil {
			return err
		}
		return explain(do(c.Context(), s, args))
	}
}

// explain turns a problem root answered into "404 Not Found: <root's detail>", with a
// hint where the fix is on this side.
func explain(err error) error {
	var (
		e       *client.Error
		unknown x509.UnknownAuthorityError
	)
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (give the CA that signed root's certificate with --ca)", err)
	case clientCertRefused(err):
		return fmt.Errorf("%w (root requires a client certificate it trusts: --cert and --key)", err)
	case !errors.As(err, &e):
		return err
	}
	msg := fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Detail)
	switch e.Status {
	case http.StatusUnauthorized:
		msg += " (give root's token with --token or SEMNET_TOKEN)"
	case http.StatusTooManyRequests:
		msg += " (root limits each client's request rate: --rate-limit)"
	}
	return errors.New(msg)
}

// clientCertRefused reports whether root ended the TLS handshake with an alert about
// the client's certificate ("certificate required", "bad certificate"): it requires
// one it trusts. crypto/tls reports a peer's alert as a *net.OpError "remote error".
func clientCertRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "certificate")
}

// show prints v as JSON, or as a table of header and rows.
func (s *ctlSession) show(v any, header []string, rows [][]string) error {
	if s.json {
		enc := json.NewEncoder(s.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	return writeTable(s.out, header, rows)
}

// writeTable aligns columns with spaces; an empty cell is shown as "-" so every line has
// the same number of fields for awk and friends.
func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = cmp.Or(c, "-")
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// completeNames makes a ValidArgsFunction offering the names of the objects list returns
// as the first argument. Completion stays silent when root is unreachable or refuses: a
// shell prompt is no place for errors.
func completeNames[T any](f *ctlFlags, list func(c *client.Client, ctx context.Context) ([]T, error), name func(T) string) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
		if len(args) != 0 || f.fill(c) != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		s, err := f.session(c)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmp.Or(c.Context(), context.Background()), 3*time.Second)
		defer cancel()
		items, err := list(s.api, ctx)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		names := make([]string, len(items))
		for i, it := range items {
			names[i] = name(it)
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeServices offers the job names of root's services.
func (f *ctlFlags) completeServices() cobra.CompletionFunc {
	return completeNames(f, (*client.Client).Services, func(s api.Service) string { return s.JobName })
}

// completeClusters offers the IDs of root's clusters.
func (f *ctlFlags) completeClusters() cobra.CompletionFunc {
	return completeNames(f, (*client.Client).Clusters, func(c api.Cluster) string { return c.ID })
}
