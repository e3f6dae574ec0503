package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

const ctlToken = "ctl-test-token-0123456789"

// ctlRoot starts a real root (embedded store in a temp dir) with ctlToken and returns its
// URL and a client for setting up what ctl cannot (placements, subnets).
func ctlRoot(t *testing.T) (string, *client.Client) {
	t.Helper()
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Tokens: []string{ctlToken},
		Plan: addrplan.Default(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	url := "http://" + srv.Addr.String()
	c, err := client.New(url, ctlToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	return url, c
}

// unsetCtlEnv keeps the caller's environment out of ctl's flags.
func unsetCtlEnv(t *testing.T) {
	for _, k := range []string{"SEMNET_ROOT", "SEMNET_TOKEN", "SEMNET_OUTPUT", "SEMNET_CA", "SEMNET_CERT", "SEMNET_KEY"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

// ctlRun runs `semnet ctl --root url --token ctlToken args...`.
func ctlRun(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	return execute(t, append([]string{"ctl", "--root", url, "--token", ctlToken}, args...)...)
}

// ctlOK runs ctl and fails the test on an error.
func ctlOK(t *testing.T, url string, args ...string) string {
	t.Helper()
	out, err := ctlRun(t, url, args...)
	if err != nil {
		t.Fatalf("semnet ctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// ctlJSON runs ctl with -o json and decodes its output into a T.
func ctlJSON[T any](t *testing.T, url string, args ...string) T {
	t.Helper()
	out := ctlOK(t, url, append(args, "-o", "json")...)
	var v T
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("semnet ctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
	return v
}

// tableRow returns the fields of the first line of a table output whose first field is
// first, nil if none.
func tableRow(out, first string) []string {
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && f[0] == first {
			return f
		}
	}
	return nil
}

func poolUsed(ps []api.PoolUsage, name string) uint64 {
	for _, p := range ps {
		if p.Name == name {
			return p.Used
		}
	}
	return 0
}

var (
	munichPt = geo.Point{Lat: 48.14, Lon: 11.58}
	berlinPt = geo.Point{Lat: 52.52, Lon: 13.40}
)

// TestCtl drives every ctl noun against a real root, in table and JSON output.
func TestCtl(t *testing.T) {
	unsetCtlEnv(t)
	url, c := ctlRoot(t)
	ctx := context.Background()
	const job = "shop.prod.web.eu"

	out := ctlOK(t, url, "clusters", "create", "munich", "--address", "127.0.0.1", "--port", "10110", "--lat", "48.14", "--lon", "11.58", "--radius-km", "50")
	if row := tableRow(out, "munich"); len(row) != 7 || row[2] != "127.0.0.1:10110" || row[3] != "48.14,11.58" {
		t.Errorf("clusters create: row %q in\n%s", row, out)
	}
	if cs := ctlJSON[[]api.Cluster](t, url, "clusters", "list"); len(cs) != 1 || cs[0].ID != "munich" || cs[0].Location != munichPt {
		t.Errorf("clusters list -o json = %+v", cs)
	}

	before := ctlJSON[[]api.PoolUsage](t, url, "pools")
	svc := ctlJSON[api.Service](t, url, "services", "create", job)
	if svc.JobName != job || !svc.RRIP.IsValid() || !svc.ClosestIPv6.Is6() {
		t.Fatalf("services create = %+v", svc)
	}
	for n := range 2 {
		in := ctlJSON[api.Instance](t, url, "instances", "create", job, "--cluster", "munich")
		if in.Number != n || !in.InstanceIP.IsValid() || in.Status == "running" {
			t.Fatalf("instances create #%d = %+v", n, in)
		}
	}
	// Instance 0 runs in Munich, 1 in Berlin (both families); one placed as a cluster
	// reports it, the other with ctl.
	if _, err := c.PlaceInstance(ctx, job, 0, api.Placement{NamespaceIP: netip.MustParseAddr("10.18.0.2"), NamespaceIPv6: netip.MustParseAddr("fc00::2"),
		HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 50103, Location: &munichPt, Status: "running"}); err != nil {
		t.Fatal(err)
	}
	placed := ctlJSON[api.Instance](t, url, "instances", "place", job, "1", "--namespace-ip", "10.18.0.66", "--namespace-ip-v6", "fc00::102",
		"--host-ip", "127.0.0.2", "--lat", "52.52", "--lon", "13.40")
	if placed.Status != "running" || placed.HostPort != 50103 || placed.NamespaceIP != netip.MustParseAddr("10.18.0.66") {
		t.Errorf("instances place = %+v", placed)
	}
	if _, err := ctlRun(t, url, "instances", "place", job, "1", "--host-ip", "nowhere"); err == nil || !strings.Contains(err.Error(), "--host-ip") {
		t.Errorf("place with a bad address: %v", err)
	}

	// pools: two Service IPs and two Instance IPs per family more than before.
	after := ctlJSON[[]api.PoolUsage](t, url, "pools")
	for name, more := range map[string]uint64{"service_v4": 4, "round_robin_v6": 1, "closest_v6": 1, "instance_v6": 2} {
		if got := poolUsed(after, name) - poolUsed(before, name); got != more {
			t.Errorf("pool %s: used grew by %d, want %d", name, got, more)
		}
	}
	out = ctlOK(t, url, "pools")
	if row := tableRow(out, "service_v4"); len(row) != 6 || row[1] != "10.30.0.0/16" || row[2] != "4" || !strings.HasSuffix(row[4], "%") {
		t.Errorf("pools: service_v4 row %q in\n%s", row, out)
	}

	// services: list and get, by job name and by an IP, in both formats.
	out = ctlOK(t, url, "services", "list")
	if !strings.HasPrefix(out, "JOB NAME ") {
		t.Errorf("services list has no header:\n%s", out)
	}
	if row := tableRow(out, job); len(row) != 6 || row[1] != svc.ID || row[2] != svc.RRIP.String() || row[5] != svc.ClosestIPv6.String() {
		t.Errorf("services list: row %q, want %+v", row, svc)
	}
	if l := ctlJSON[[]api.Service](t, url, "services", "list"); len(l) != 1 || l[0].ID != svc.ID || l[0].RRIPv6 != svc.RRIPv6 {
		t.Errorf("services list -o json = %+v", l)
	}
	if got := ctlJSON[api.Service](t, url, "services", "get", svc.ClosestIP.String()); got.JobName != job || got.ID != svc.ID {
		t.Errorf("services get by Closest IP = %+v", got)
	}

	// instances: list and get.
	out = ctlOK(t, url, "instances", "list", job)
	if row := tableRow(out, "1"); len(row) != 9 || row[1] != "running" || row[5] != "10.18.0.66" || row[7] != "127.0.0.2:50103" || row[8] != "52.52,13.4" {
		t.Errorf("instances list: row %q in\n%s", row, out)
	}
	in1 := ctlJSON[api.Instance](t, url, "instances", "get", job, "1")
	if in1.Number != 1 || in1.NamespaceIPv6 != netip.MustParseAddr("fc00::102") || in1.Location == nil || *in1.Location != berlinPt {
		t.Errorf("instances get 1 = %+v", in1)
	}

	// resolve: Closest picks the nearest running instance first, RR takes both in turn.
	near := func(r resolution, policy string, a netip.Addr) []int {
		for _, p := range r.Picks {
			if p.Policy == policy && p.Address == a {
				return p.Candidates
			}
		}
		t.Errorf("resolve: no pick for %s %s in %+v", policy, a, r.Picks)
		return nil
	}
	r := ctlJSON[resolution](t, url, "resolve", job, "--lat", "52.4", "--lon", "13.1") // Potsdam, near Berlin
	if got := near(r, api.PolicyClosest, svc.ClosestIP); !slices.Equal(got, []int{1, 0}) {
		t.Errorf("resolve from Potsdam: closest v4 = %v, want [1 0]", got)
	}
	if got := near(r, api.PolicyClosest, svc.ClosestIPv6); !slices.Equal(got, []int{1, 0}) {
		t.Errorf("resolve from Potsdam: closest v6 = %v, want [1 0]", got)
	}
	if got := near(r, api.PolicyRoundRobin, svc.RRIP); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("resolve: round robin = %v, want [0 1]", got)
	}
	if r.Entry.Service.ID != svc.ID || len(r.Entry.Instances) != 2 || r.Entry.Instances[0].DistanceKM == nil || r.From == nil {
		t.Errorf("resolve entry = %+v", r.Entry)
	}
	r = ctlJSON[resolution](t, url, "resolve", svc.RRIPv6.String(), "--lat", "48.0", "--lon", "11.0") // south of Munich
	if got := near(r, api.PolicyClosest, svc.ClosestIP); !slices.Equal(got, []int{0, 1}) {
		t.Errorf("resolve from Bavaria: closest = %v, want [0 1]", got)
	}
	// By Instance IP: that instance is a policy of its own.
	r = ctlJSON[resolution](t, url, "resolve", in1.InstanceIPv6.String())
	if r.Entry.MatchedInstance == nil || *r.Entry.MatchedInstance != 1 {
		t.Errorf("resolve by Instance IP: matched %v, want 1", r.Entry.MatchedInstance)
	}
	if got := near(r, api.PolicyInstance, in1.InstanceIPv6); !slices.Equal(got, []int{1}) {
		t.Errorf("resolve by Instance IP: instance pick = %v, want [1]", got)
	}
	out = ctlOK(t, url, "resolve", job, "--lat", "52.4", "--lon", "13.1")
	if row := tableRow(out, "closest"); len(row) != 3 || row[1] != svc.ClosestIP.String() || row[2] != "1,0" {
		t.Errorf("resolve table: closest row %q in\n%s", row, out)
	}
	if row := tableRow(out, "1"); len(row) != 10 || row[5] != "10.18.0.66" || row[9] != "24.3" {
		t.Errorf("resolve table: instance 1 row %q (want its distance from Potsdam, 24.3 km) in\n%s", row, out)
	}
	// Berlin stops: Closest falls to Munich, and the stopped instance is nobody's pick.
	ctlOK(t, url, "instances", "place", job, "1", "--status", "stopped", "--namespace-ip", "10.18.0.66", "--host-ip", "127.0.0.2", "--lat", "52.52", "--lon", "13.40")
	r = ctlJSON[resolution](t, url, "resolve", job, "--lat", "52.4", "--lon", "13.1")
	if got := near(r, api.PolicyClosest, svc.ClosestIP); !slices.Equal(got, []int{0}) {
		t.Errorf("Berlin stopped: closest = %v, want [0]", got)
	}
	r = ctlJSON[resolution](t, url, "resolve", in1.InstanceIP.String())
	if got := near(r, api.PolicyInstance, in1.InstanceIP); len(got) != 0 {
		t.Errorf("stopped instance's own IP: candidates %v, want none", got)
	}
	if _, err := ctlRun(t, url, "resolve", job, "--lat", "52.4"); err == nil || !strings.Contains(err.Error(), "lon") {
		t.Errorf("resolve with --lat only: %v, want an error naming --lon", err)
	}

	// exposures, gateways, subnets.
	x := ctlJSON[api.Exposure](t, url, "exposures", "create", job, "--protocol", "tcp", "--public-port", "8080", "--service-port", "80")
	if x.ID != "tcp-8080" || x.TargetIP != svc.RRIP {
		t.Errorf("exposures create = %+v", x)
	}
	out = ctlOK(t, url, "exposures", "list")
	if row := tableRow(out, job); len(row) != 8 || row[1] != "tcp-8080" || row[2] != "round_robin" || row[3] != "all" || row[6] != svc.RRIP.String() {
		t.Errorf("exposures list: row %q in\n%s", row, out)
	}
	if l := ctlJSON[[]api.Exposure](t, url, "exposures", "list", "--service", job); len(l) != 1 || l[0].ServicePort != 80 {
		t.Errorf("exposures list --service = %+v", l)
	}
	ctlOK(t, url, "exposures", "delete", job, "tcp-8080")
	if l := ctlJSON[[]api.Exposure](t, url, "exposures", "list"); len(l) != 0 {
		t.Errorf("exposure still listed after delete: %+v", l)
	}
	if out := ctlOK(t, url, "gateways", "list"); !strings.HasPrefix(out, "ID ") || strings.Count(out, "\n") != 1 {
		t.Errorf("gateways list with none: %q", out)
	}
	sn, err := c.AllocateSubnet(ctx, "munich", "worker1")
	if err != nil {
		t.Fatal(err)
	}
	if row := tableRow(ctlOK(t, url, "subnets", "list"), sn.SubnetV4.String()); len(row) != 5 || row[3] != "worker1" {
		t.Errorf("subnets list: row %q", row)
	}

	// Errors: root's problem detail with its status, and a non-nil error (exit 1).
	_, err = ctlRun(t, url, "services", "get", "x.y.z.w")
	if err == nil || !strings.HasPrefix(err.Error(), "404 Not Found: ") || !strings.Contains(err.Error(), "x.y.z.w") {
		t.Errorf("unknown service: %v", err)
	}
	_, err = ctlRun(t, url, "services", "delete", job)
	if err == nil || !strings.HasPrefix(err.Error(), "409 Conflict: ") {
		t.Errorf("delete with instances: %v, want 409", err)
	}
	if _, err := execute(t, "ctl", "--root", url, "pools"); err == nil || !strings.Contains(err.Error(), "401 Unauthorized: missing bearer token") ||
		!strings.Contains(err.Error(), "--token") {
		t.Errorf("no token: %v", err)
	}
	if _, err := ctlRun(t, url, "pools", "-o", "yaml"); err == nil || !strings.Contains(err.Error(), "table or json") {
		t.Errorf("-o yaml: %v", err)
	}

	// Deletes.
	if out := ctlOK(t, url, "instances", "delete", job, "1"); !strings.Contains(out, "deleted") {
		t.Errorf("instances delete: %q", out)
	}
	if ins := ctlJSON[[]api.Instance](t, url, "instances", "list", job); len(ins) != 1 || ins[0].Number != 0 {
		t.Errorf("after deleting instance 1: %+v", ins)
	}
	ctlOK(t, url, "services", "delete", job, "--force")
	if l := ctlJSON[[]api.Service](t, url, "services", "list"); len(l) != 0 {
		t.Errorf("services after delete: %+v", l)
	}
	if err := c.ReleaseSubnet(ctx, sn.SubnetV4); err != nil {
		t.Fatal(err)
	}
	ctlOK(t, url, "clusters", "delete", "munich")
	if _, err := ctlRun(t, url, "clusters", "get", "munich"); err == nil || !strings.HasPrefix(err.Error(), "404 Not Found") {
		t.Errorf("deleted cluster: %v", err)
	}
}

// TestCtlEnvironmentAndCompletion: SEMNET_ROOT and SEMNET_TOKEN reach both the commands
// and shell completion, which offers the job names root knows and stays silent when root
// is unreachable.
func TestCtlEnvironmentAndCompletion(t *testing.T) {
	unsetCtlEnv(t)
	url, c := ctlRoot(t)
	for _, j := range []string{"shop.prod.web.eu", "shop.prod.api.eu"} {
		parts := strings.Split(j, ".")
		if _, err := c.CreateService(context.Background(), api.ServiceRequest{App: parts[0], AppNS: parts[1], Service: parts[2], ServiceNS: parts[3]}); err != nil {
			t.Fatal(err)
		}
	}
	complete := func(args ...string) []string {
		t.Helper()
		out, err := execute(t, append([]string{"__complete"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		var words []string
		for line := range strings.Lines(out) {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, ":") && !strings.HasPrefix(l, "Completion ended") {
				words = append(words, l)
			}
		}
		slices.Sort(words)
		return words
	}
	want := []string{"shop.prod.api.eu", "shop.prod.web.eu"}
	if got := complete("ctl", "--root", url, "--token", ctlToken, "services", "get", ""); !slices.Equal(got, want) {
		t.Errorf("completion with flags = %q, want %q", got, want)
	}
	if got := complete("ctl", "--root", url, "--token", ctlToken, "services", "get", "shop.prod.web.eu", ""); len(got) != 0 {
		t.Errorf("completion of a second argument = %q, want none", got)
	}
	if got := complete("ctl", "--root", "http://127.0.0.1:1", "services", "get", ""); len(got) != 0 {
		t.Errorf("completion with root unreachable = %q, want none", got)
	}

	t.Setenv("SEMNET_ROOT", url)
	t.Setenv("SEMNET_TOKEN", ctlToken)
	if got := complete("ctl", "resolve", ""); !slices.Equal(got, want) {
		t.Errorf("completion from the environment = %q, want %q", got, want)
	}
	t.Setenv("SEMNET_OUTPUT", "json")
	out, err := execute(t, "ctl", "services", "get", "shop.prod.api.eu")
	var sv api.Service
	if err != nil || json.Unmarshal([]byte(out), &sv) != nil || sv.JobName != "shop.prod.api.eu" {
		t.Errorf("services get from the environment: %v\n%s", err, out)
	}
	// The command line wins over the environment.
	if out, err := execute(t, "ctl", "services", "list", "-o", "table"); err != nil || !strings.HasPrefix(out, "JOB NAME") {
		t.Errorf("-o table over SEMNET_OUTPUT=json: %v\n%s", err, out)
	}
}

// TestShellCompletionScripts: cobra's completion command is enabled for every shell.
func TestShellCompletionScripts(t *testing.T) {
	for shell, marker := range map[string]string{"bash": "__start_semnet", "zsh": "#compdef semnet", "fish": "complete -c semnet", "powershell": "Register-ArgumentCompleter"} {
		out, err := execute(t, "completion", shell)
		if err != nil || !strings.Contains(out, marker) {
			t.Errorf("semnet completion %s: %v, output lacks %q", shell, err, marker)
		}
	}
}
