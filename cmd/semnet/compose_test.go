package main

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/semnet/semnet/cluster/broker"
	"github.com/semnet/semnet/shared/netnstest"
)

// There is no Docker engine where the tests run, so docker-compose.yml is validated
// without one: docker-compose and yamllint accept it, and every semnet command line in
// it is accepted by the real command tree, wired consistently (ports, environment,
// sockets, credentials, addresses). composeProblems does the latter; each problem is a
// sentence naming the service and the fix.

const (
	repoRoot    = "../.."
	composePath = repoRoot + "/docker-compose.yml"
	// composeToken stands in for ${SEMNET_TOKEN} when the file is read here.
	composeToken = "compose-test-token-0123456789abcdef"
)

func TestComposeConfigAndLint(t *testing.T) {
	netnstest.RequireTool(t, "docker-compose", "docker-compose")
	netnstest.RequireTool(t, "yamllint", "yamllint")
	cmd := exec.Command("docker-compose", "-f", composePath, "config", "-q")
	cmd.Env = append(os.Environ(), "SEMNET_TOKEN="+composeToken)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("docker-compose config: %v\n%s", err, out)
	}
	yamls, _ := filepath.Glob(repoRoot + "/docker/*.yaml")
	out, err := exec.Command("yamllint", append([]string{"-s", "-c", repoRoot + "/.yamllint.yml", composePath}, yamls...)...).CombinedOutput()
	if err != nil {
		t.Errorf("yamllint: %v\n%s", err, out)
	}
}

// TestComposeFile checks docker-compose.yml against the semnet binary's command tree.
func TestComposeFile(t *testing.T) {
	clearSemnetEnv(t)
	b, err := os.ReadFile(composePath)
	if err != nil {
		t.Fatal(err)
	}
	problems, semnetServices := composeProblems(b, repoRoot)
	for _, p := range problems {
		t.Error(p)
	}
	for _, role := range []string{"root", "cluster", "node", "demo"} {
		if !slices.Contains(semnetServices, role) {
			t.Errorf("docker-compose.yml runs no semnet %s", role)
		}
	}
}

// TestComposeProblemsFound: each check fails on a compose file with that mistake.
func TestComposeProblemsFound(t *testing.T) {
	clearSemnetEnv(t)
	const broken = `
services:
  root:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["root", "--listen", ":10099"]
    environment: {SEMNET_TOKEN: "${SEMNET_TOKEN}", SEMNET_DATA_DIRECTORY: /data}
    ports: ["127.0.0.1:10098:10098"]
    healthcheck: {test: ["CMD", "/usr/local/bin/semnet", "probe", "http://127.0.0.1:10110/readyz"]}
    depends_on: {mongodb: {condition: service_healthy}}
  cluster:
    build: {context: ., dockerfile: docker/Dockerfile.missing}
    image: semnet:dev
    command: ["cluster", "--id", "c1", "--root", "http://root:10099", "--mqtt-auth", "/etc/semnet/workers.yaml"]
    volumes: ["./docker/workers.yaml:/etc/semnet/workers.yaml:ro", "./no/such/file:/x"]
  node-a:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["node", "--id", "worker1", "--cluster-mqtt", "cluster:10003", "--host-ip", "10.1.2.3"]
    environment: {SEMNET_PASSWORD: wrong-password}
    networks: {default: {ipv4_address: 10.1.2.3}}
    healthcheck: {test: ["CMD", "/usr/local/bin/semnet", "probe", "--unix", "/run/other.sock", "http://node/readyz"]}
  node-b:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["node", "--id", "worker2", "--cluster-mqtt", "cluster:10003", "--host-ip", "172.28.0.11"]
    environment: {SEMNET_PASSWORD: worker2-demo-password}
    networks: {default: {ipv4_address: 172.28.0.12}}
  node-c:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["node", "--id", "worker3", "--cluster-mqtt", "cluster:10003", "--host-ip", "172.28.0.13", "--gateway", "--public-ip", "172.28.0.13"]
    environment: {SEMNET_PASSWORD: worker3-demo-password}
    networks: {default: {ipv4_address: 172.28.0.13}}
    ports: ["8081:8081"]
  typo:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["cluster", "--colour"]
  node-d:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["node", "--cluster-mqtt", "cluster:10003", "--host-ip", "172.28.0.14"]
  demo:
    build: {context: ., dockerfile: docker/Dockerfile}
    image: semnet:dev
    command: ["demo", "--root", "http://root:10099", "--service", "a.b.c.d", "--cluster", "c2", "--expose", "tcp:8080"]
    pid: "service:node-z"
networks:
  default:
    ipam: {config: [{subnet: 172.28.0.0/24}]}
`
	problems, _ := composeProblems([]byte(broken), repoRoot)
	all := strings.Join(problems, "\n")
	for _, want := range []string{
		`typo: command [cluster --colour]: unknown flag: --colour`,
		`root: environment SEMNET_DATA_DIRECTORY names no flag of semnet root`,
		`root: publishes container port 10098, but semnet root listens on none of [10099]`,
		`root: healthcheck probes port 10110, but semnet root listens on none of [10099]`,
		`root: depends_on names service "mongodb", which does not exist`,
		`cluster: build: docker/Dockerfile.missing does not exist`,
		`cluster: volume ./no/such/file: no such file or directory in the repository`,
		`node-a: healthcheck probes the unix socket /run/other.sock, but the node serves its API on --socket /run/semnet/node.sock`,
		`node-a: --password of worker "worker1" does not match its entry in ./docker/workers.yaml (mounted by cluster)`,
		`node-a: --host-ip 10.1.2.3 is outside the network's subnet 172.28.0.0/24`,
		`node-b: --host-ip 172.28.0.11 is not the service's ipv4_address 172.28.0.12`,
		`node-d: command [node --cluster-mqtt cluster:10003 --host-ip 172.28.0.14]: required flag(s) "id" not set`,
		`node-c: publishes container port 8081, but no demo exposes it (--expose PROTOCOL:8081:PORT)`,
		`demo: command [demo --root http://root:10099 --service a.b.c.d --cluster c2 --expose tcp:8080]: --expose "tcp:8080": not three colon-separated parts`,
		`demo: pid names service "node-z", which does not exist`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no problem %q reported; got:\n%s", want, all)
		}
	}
}

// TestDemoFlags: semnet demo's command line is checked before anything starts.
func TestDemoFlags(t *testing.T) {
	clearSemnetEnv(t)
	base := []string{"demo", "--root", "http://127.0.0.1:1", "--service", "demo.app.web.default", "--cluster", "c1"}
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{[]string{"--expose", "tcp:8080"}, `--expose "tcp:8080": not three colon-separated parts; want PROTOCOL:PUBLIC_PORT:SERVICE_PORT, e.g. tcp:8080:80`},
		{[]string{"--expose", "sctp:8080:80"}, `--expose "sctp:8080:80": the protocol must be tcp or udp`},
		{[]string{"--expose", "tcp:8080:http"}, `--expose "tcp:8080:http": "http" is not a port (1-65535)`},
		{[]string{"--expose", "udp:0:53"}, `"0" is not a port`},
		{[]string{"--instances", "0"}, "--instances 0: run at least one"},
		{[]string{"--service", "web"}, `--service "web" must have four dot-separated parts`},
	} {
		_, err := execute(t, append(slices.Clone(base), tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%v: %v, want an error containing %q", tc.args, err, tc.err)
		}
	}
	if _, err := execute(t, "demo", "--service", "demo.app.web.default"); err == nil || !strings.Contains(err.Error(), `required flag(s) "cluster", "root" not set`) {
		t.Errorf("missing --root and --cluster: %v", err)
	}
	var f demoFlags
	cmd := &cobra.Command{}
	f.register(cmd.Flags())
	if err := cmd.ParseFlags([]string{"--service", "demo.app.web.default", "--expose", "tcp:8080:80,udp:5353:53"}); err != nil {
		t.Fatal(err)
	}
	c, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if c.service.App != "demo" || c.service.ServiceNS != "default" || len(c.exposures) != 2 ||
		c.exposures[1].Protocol != "udp" || c.exposures[1].PublicPort != 5353 || c.exposures[1].ServicePort != 53 {
		t.Errorf("config %+v", c)
	}
}

// TestComposeWorkerCredentialsLoad: the credentials file the compose clusters mount is
// one the broker accepts.
func TestComposeWorkerCredentialsLoad(t *testing.T) {
	b, err := broker.New(broker.Config{Listen: "127.0.0.1:0", CredentialsFile: repoRoot + "/docker/workers.yaml"}, nil, nil)
	if err != nil {
		t.Fatalf("docker/workers.yaml: %v", err)
	}
	b.Close()
}

// clearSemnetEnv removes SEMNET_* variables for the test, so the developer's shell
// does not fill flags the compose file should set.
func clearSemnetEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix) {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// The parts of the compose format the checks read.
type (
	composeFile struct {
		Services map[string]composeService `yaml:"services"`
		Networks map[string]struct {
			IPAM struct {
				Config []struct {
					Subnet  string `yaml:"subnet"`
					IPRange string `yaml:"ip_range"`
				} `yaml:"config"`
			} `yaml:"ipam"`
		} `yaml:"networks"`
		Volumes map[string]any `yaml:"volumes"`
	}
	composeService struct {
		Image string `yaml:"image"`
		Build struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Ports       []string          `yaml:"ports"`
		Healthcheck struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
		DependsOn map[string]any `yaml:"depends_on"`
		Volumes   []string       `yaml:"volumes"`
		Networks  map[string]struct {
			IPv4Address string `yaml:"ipv4_address"`
		} `yaml:"networks"`
		Pid         string `yaml:"pid"`
		NetworkMode string `yaml:"network_mode"`
	}
)

// parsedService is a semnet service's command, parsed by the real command tree.
type parsedService struct {
	name, role string
	svc        composeService
	cmd        *cobra.Command
}

func (p parsedService) flag(name string) string {
	if f := p.cmd.Flags().Lookup(name); f != nil {
		return f.Value.String()
	}
	return ""
}

var composeVar = regexp.MustCompile(`\$\{([A-Z_]+)[^}]*\}`)

// composeProblems checks a compose file (root: the repository, where relative paths
// start) and returns its problems and the roles of the semnet services it found.
func composeProblems(file []byte, root string) (problems, roles []string) {
	report := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	file = composeVar.ReplaceAllFunc(file, func(m []byte) []byte {
		if v := composeVar.FindSubmatch(m)[1]; string(v) == "SEMNET_TOKEN" {
			return []byte(composeToken)
		}
		report("variable %s: only ${SEMNET_TOKEN} is expected from the user", m)
		return m
	})
	var doc composeFile
	if err := yaml.Unmarshal(file, &doc); err != nil {
		return []string{fmt.Sprintf("docker-compose.yml: %v", err)}, nil
	}

	var semnet []parsedService
	for _, name := range sortedKeys(doc.Services) {
		svc := doc.Services[name]
		for dep := range svc.DependsOn {
			if _, ok := doc.Services[dep]; !ok {
				report("%s: depends_on names service %q, which does not exist", name, dep)
			}
		}
		for field, v := range map[string]string{"pid": svc.Pid, "network_mode": svc.NetworkMode} {
			if target, ok := strings.CutPrefix(v, "service:"); ok {
				if _, ok := doc.Services[target]; !ok {
					report("%s: %s names service %q, which does not exist", name, field, target)
				}
			}
		}
		for _, v := range svc.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				if _, err := os.Stat(filepath.Join(root, src)); err != nil {
					report("%s: volume %s: no such file or directory in the repository", name, src)
				}
			} else if _, ok := doc.Volumes[src]; !ok {
				report("%s: volume %q is not declared under the top-level volumes", name, src)
			}
		}
		if !strings.HasPrefix(svc.Image, "semnet") {
			continue
		}
		if p, ok := parseService(name, svc, report); ok {
			semnet = append(semnet, p)
			roles = append(roles, p.role)
		}
		checkBuild(name, svc, root, report)
	}
	checkListening(semnet, report)
	checkNodes(doc, semnet, root, report)
	checkDemos(semnet, report)
	return problems, roles
}

// parseService runs a semnet service's command line (and its healthcheck's) through
// the real command tree without running it: flags, arguments, environment, the
// command's own checks (PreRunE builds its configuration, starting nothing), and
// required flags.
func parseService(name string, svc composeService, report func(string, ...any)) (parsedService, bool) {
	p := parsedService{name: name, svc: svc}
	lines := [][]string{svc.Command}
	if t := svc.Healthcheck.Test; len(t) > 2 && t[0] == "CMD" && strings.HasSuffix(t[1], "/semnet") {
		lines = append(lines, t[2:])
	}
	for i, args := range lines {
		cmd, rest, err := newRootCommand().Find(args)
		if err == nil {
			err = cmd.ParseFlags(rest)
		}
		if err == nil {
			err = cmd.ValidateArgs(cmd.Flags().Args())
		}
		if err == nil && i == 0 {
			for env := range svc.Environment {
				flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(env, envPrefix), "_", "-"))
				if strings.HasPrefix(env, envPrefix) && cmd.Flags().Lookup(flag) == nil {
					report("%s: environment %s names no flag of semnet %s", name, env, cmd.Name())
				}
			}
			err = fillFromEnv(cmd.Flags(), func(k string) (string, bool) { v, ok := svc.Environment[k]; return v, ok })
		}
		if err == nil && cmd.PreRunE != nil {
			err = cmd.PreRunE(cmd, cmd.Flags().Args())
		}
		if err == nil {
			err = cmd.ValidateRequiredFlags()
		}
		if err != nil {
			report("%s: command %v: %v", name, args, err)
			if i == 0 {
				return p, false
			}
			continue
		}
		if i == 0 {
			p.cmd, p.role = cmd, cmd.Name()
		}
	}
	return p, true
}

// checkBuild: the image is built from a Dockerfile that exists and builds ./cmd/semnet.
func checkBuild(name string, svc composeService, root string, report func(string, ...any)) {
	if svc.Build.Dockerfile == "" {
		report("%s: no build section: give build: {context: ., dockerfile: docker/Dockerfile} so %s is never pulled", name, svc.Image)
		return
	}
	b, err := os.ReadFile(filepath.Join(root, svc.Build.Context, svc.Build.Dockerfile))
	if err != nil {
		report("%s: build: %s does not exist", name, svc.Build.Dockerfile)
		return
	}
	if !regexp.MustCompile(`(?m)^RUN .*go build .*\./cmd/semnet\b`).Match(b) {
		report("%s: build: %s has no `go build ... ./cmd/semnet` step", name, svc.Build.Dockerfile)
	}
}

// listenPorts returns the TCP ports a semnet service listens on, by its flags.
func listenPorts(p parsedService) []int {
	var ports []int
	for _, f := range []string{"listen", "mqtt-listen"} {
		if v := p.flag(f); v != "" && p.role != "node" {
			if _, port, err := net.SplitHostPort(v); err == nil {
				n, _ := strconv.Atoi(port)
				ports = append(ports, n)
			}
		}
	}
	return ports
}

// checkListening: every published port and every healthcheck reaches something the
// service serves: a --listen or --mqtt-listen port, a node's --socket, or (on a gateway)
// a port a demo exposes.
func checkListening(services []parsedService, report func(string, ...any)) {
	exposed := map[int]bool{}
	for _, p := range services {
		if p.role == "demo" {
			f, _ := p.cmd.Flags().GetStringSlice("expose")
			for _, spec := range f {
				if e, err := parseExposure(spec); err == nil {
					exposed[e.PublicPort] = true
				}
			}
		}
	}
	for _, p := range services {
		listens := listenPorts(p)
		for _, spec := range p.svc.Ports {
			parts := strings.Split(strings.TrimSuffix(strings.TrimSuffix(spec, "/tcp"), "/udp"), ":")
			port, err := strconv.Atoi(parts[len(parts)-1])
			switch {
			case err != nil:
				report("%s: ports entry %q: the container port is not a number", p.name, spec)
			case p.role == "node" && p.flag("gateway") == "true":
				if !exposed[port] {
					report("%s: publishes container port %d, but no demo exposes it (--expose PROTOCOL:%d:PORT)", p.name, port, port)
				}
			case !slices.Contains(listens, port):
				report("%s: publishes container port %d, but semnet %s listens on none of %v", p.name, port, p.role, listens)
			}
		}
		t := p.svc.Healthcheck.Test
		if len(t) < 3 || t[2] != "probe" {
			if p.role != "demo" {
				report("%s: no healthcheck running `semnet probe`", p.name)
			}
			continue
		}
		probe, _, _ := newRootCommand().Find(t[2:])
		if probe.ParseFlags(t[3:]) != nil || len(probe.Flags().Args()) != 1 {
			continue // reported by parseService
		}
		target, err := url.Parse(probe.Flags().Arg(0))
		if err != nil {
			continue
		}
		if sock := probe.Flags().Lookup("unix").Value.String(); sock != "" {
			if p.role != "node" || sock != p.flag("socket") || target.Path != "/readyz" {
				report("%s: healthcheck probes the unix socket %s, but the node serves its API on --socket %s", p.name, sock, p.flag("socket"))
			}
			continue
		}
		port, _ := strconv.Atoi(target.Port())
		if !slices.Contains(listens, port) || target.Path != "/readyz" {
			report("%s: healthcheck probes port %d, but semnet %s listens on none of %v", p.name, port, p.role, listens)
		}
	}
}

// checkNodes: every node is admitted by its cluster's credentials file and has a unique
// --host-ip that is its address on the compose network.
func checkNodes(doc composeFile, services []parsedService, root string, report func(string, ...any)) {
	var subnet, dynamic netip.Prefix
	if n, ok := doc.Networks["default"]; ok && len(n.IPAM.Config) > 0 {
		subnet, _ = netip.ParsePrefix(n.IPAM.Config[0].Subnet)
		dynamic, _ = netip.ParsePrefix(n.IPAM.Config[0].IPRange)
	}
	seen := map[netip.Addr]string{}
	for _, p := range services {
		if p.role != "node" {
			continue
		}
		id := p.flag("id")
		host, _, _ := net.SplitHostPort(p.flag("cluster-mqtt"))
		if creds, file, err := clusterCredentials(services, host, root); err != nil {
			report("%s: %v", p.name, err)
		} else if pw, ok := creds[id]; !ok {
			report("%s: worker %q is not in %s (mounted by %s)", p.name, id, file, host)
		} else if pw != p.flag("password") {
			report("%s: --password of worker %q does not match its entry in %s (mounted by %s)", p.name, id, file, host)
		}

		ip, err := netip.ParseAddr(p.flag("host-ip"))
		if err != nil {
			continue // reported by parseService
		}
		switch {
		case !subnet.IsValid():
			report("%s: the default network has no ipam subnet: a node's --host-ip must be a fixed address on it", p.name)
		case !subnet.Contains(ip):
			report("%s: --host-ip %s is outside the network's subnet %s", p.name, ip, subnet)
		case dynamic.IsValid() && dynamic.Contains(ip):
			report("%s: --host-ip %s is inside ip_range %s, where Docker hands out addresses to other containers", p.name, ip, dynamic)
		case p.svc.Networks["default"].IPv4Address != ip.String():
			report("%s: --host-ip %s is not the service's ipv4_address %s", p.name, ip, p.svc.Networks["default"].IPv4Address)
		}
		if other, dup := seen[ip]; dup {
			report("%s: --host-ip %s is also %s's", p.name, ip, other)
		}
		seen[ip] = p.name
		if pub, _ := p.cmd.Flags().GetStringSlice("public-ip"); len(pub) > 0 && !slices.Contains(pub, ip.String()) {
			report("%s: --public-ip %v is not its address %s on the compose network, where its published ports arrive", p.name, pub, ip)
		}
	}
	if subnet.IsValid() && subnet.Overlaps(netip.MustParsePrefix("10.0.0.0/8")) {
		report("the default network's subnet %s overlaps 10.0.0.0/8, the overlay's addresses", subnet)
	}
}

// clusterCredentials reads the worker credentials the cluster service `name` mounts as
// its --mqtt-auth file: username -> password.
func clusterCredentials(services []parsedService, name, root string) (map[string]string, string, error) {
	i := slices.IndexFunc(services, func(p parsedService) bool { return p.name == name && p.role == "cluster" })
	if i < 0 {
		return nil, "", fmt.Errorf("--cluster-mqtt names %q, which is no semnet cluster service", name)
	}
	c := services[i]
	auth := c.flag("mqtt-auth")
	for _, v := range c.svc.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || parts[1] != auth {
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, parts[0]))
		if err != nil {
			return nil, "", fmt.Errorf("cluster %s's --mqtt-auth file: %w", name, err)
		}
		var f struct {
			Auth []struct{ Username, Password string } `yaml:"auth"`
		}
		if err := yaml.Unmarshal(b, &f); err != nil {
			return nil, "", fmt.Errorf("%s: %w", parts[0], err)
		}
		creds := map[string]string{}
		for _, a := range f.Auth {
			creds[a.Username] = a.Password
		}
		return creds, parts[0], nil
	}
	return nil, "", fmt.Errorf("cluster %s mounts no file at its --mqtt-auth %q", name, auth)
}

// checkDemos: a demo shares the pid namespace of a node and the volume holding that
// node's socket, and names a cluster that runs.
func checkDemos(services []parsedService, report func(string, ...any)) {
	byName := map[string]parsedService{}
	clusters := map[string]bool{}
	for _, p := range services {
		byName[p.name] = p
		if p.role == "cluster" {
			clusters[p.flag("id")] = true
		}
	}
	for _, p := range services {
		if p.role != "demo" {
			continue
		}
		if !clusters[p.flag("cluster")] {
			report("%s: --cluster %s is no cluster's --id", p.name, p.flag("cluster"))
		}
		target, _ := strings.CutPrefix(p.svc.Pid, "service:")
		node, ok := byName[target]
		if !ok || node.role != "node" {
			report("%s: pid must be \"service:<a worker node>\": the node attaches instances by pid", p.name)
			continue
		}
		if node.flag("socket") != p.flag("node-socket") {
			report("%s: --node-socket %s is not %s's --socket %s", p.name, p.flag("node-socket"), target, node.flag("socket"))
		}
		dir := filepath.Dir(p.flag("node-socket"))
		mount := func(s parsedService) string {
			for _, v := range s.svc.Volumes {
				if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == dir {
					return parts[0]
				}
			}
			return ""
		}
		if m := mount(p); m == "" || m != mount(node) {
			report("%s: %s must be a volume shared with %s, where its socket is", p.name, dir, target)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
