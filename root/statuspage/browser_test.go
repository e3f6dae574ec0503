package statuspage_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/geo"
)

const testToken = "statuspage-test-token-0123456789"

// platform is a real root, in-process with the embedded store, and what the test
// created in it.
type platform struct {
	url     string // http://127.0.0.1:port
	svc     api.Service
	job     string
	subnets map[string]api.Subnet // by node id
}

// Cities, and nodes a few kilometres from their cluster's centre so that a node's dot
// never covers the centre of its cluster's marker.
var (
	munich = geo.Point{Lat: 48.137, Lon: 11.575}
	paris  = geo.Point{Lat: 48.857, Lon: 2.352}
)

func startRoot(t *testing.T) *platform {
	t.Helper()
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(),
		Tokens: []string{testToken}, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return &platform{url: "http://" + srv.Addr.String(), subnets: map[string]api.Subnet{}}
}

// populate creates two clusters, four worker nodes (one a gateway, one with no
// instances and so no location), and a service with three instances: running, failed
// and not placed yet.
func (p *platform) populate(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	rc, err := client.New(p.url, testToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []api.ClusterRequest{
		{ID: "munich", Name: "Munich edge", Address: "127.0.0.1", Port: 10110, Location: munich, RadiusKM: 40},
		{ID: "paris", Name: "Paris edge", Address: "127.0.0.1", Port: 10111, Location: paris, RadiusKM: 30},
	} {
		if _, err := rc.RegisterCluster(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range [][2]string{{"munich", "worker-a"}, {"paris", "worker-b"}, {"munich", "worker-c"}, {"paris", "worker-g"}} {
		sn, err := rc.AllocateSubnet(ctx, n[0], n[1])
		if err != nil {
			t.Fatal(err)
		}
		p.subnets[n[1]] = sn
	}
	p.svc, err = rc.CreateService(ctx, api.ServiceRequest{App: "shop", AppNS: "prod", Service: "web", ServiceNS: "eu"})
	if err != nil {
		t.Fatal(err)
	}
	p.job = p.svc.JobName
	for _, cluster := range []string{"munich", "paris", "paris"} {
		if _, err := rc.CreateInstance(ctx, p.job, api.InstanceRequest{ClusterID: cluster}); err != nil {
			t.Fatal(err)
		}
	}
	nsIP := func(node string) netip.Addr { return p.subnets[node].SubnetV4.Addr().Next().Next() }
	for n, pl := range []api.Placement{
		{Status: "running", NamespaceIP: nsIP("worker-a"), HostIP: netip.MustParseAddr("127.0.0.2"), HostPort: 50103,
			Location: &geo.Point{Lat: munich.Lat + 0.3, Lon: munich.Lon + 0.4}},
		{Status: "failed", NamespaceIP: nsIP("worker-b"), HostIP: netip.MustParseAddr("127.0.0.3"), HostPort: 50103,
			Location: &geo.Point{Lat: paris.Lat - 0.3, Lon: paris.Lon + 0.4}},
	} {
		if _, err := rc.PlaceInstance(ctx, p.job, n, pl); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rc.RegisterGateway(ctx, "worker-g", api.GatewayRequest{ClusterID: "paris",
		PublicIP: netip.MustParseAddr("192.0.2.10"), NamespaceIP: nsIP("worker-g"),
		HostIP: netip.MustParseAddr("127.0.0.4"), HostPort: 50103, Location: &geo.Point{Lat: paris.Lat + 0.35, Lon: paris.Lon - 0.5}}); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.CreateExposure(ctx, p.job, api.ExposureRequest{Protocol: "tcp", PublicPort: 8080, ServicePort: 80}); err != nil {
		t.Fatal(err)
	}
}

// pools reads GET /api/v1/pools as root reports it.
func (p *platform) pools(t *testing.T) []api.PoolUsage {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, p.url+"/api/v1/pools", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []api.PoolUsage
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// expect returns nil when got == want, an error saying what differs otherwise.
func expect(what, got, want string) error {
	if got != want {
		return fmt.Errorf("%s shows %q, want %q", what, got, want)
	}
	return nil
}

// TestStatusPageShowsTheRegistry opens the page in headless Chromium against a real
// root and checks that tables and map show what root holds, then checks the rendered
// pixels: cluster markers are drawn where the DOM says, in their colour, east to the right.
// Set SEMNET_SCREENSHOT=path.png to keep the screenshot.
func TestStatusPageShowsTheRegistry(t *testing.T) {
	b := startBrowser(t)
	p := startRoot(t)
	p.populate(t)

	b.open(p.url + "/ui/#token=" + testToken)
	row := fmt.Sprintf("#services tr[data-job=%q]", p.job)
	b.wait("the services table to show "+p.job, func() error {
		got, err := b.text(row + " td:first-child")
		if err != nil {
			return err
		}
		return expect("the job name cell", got, p.job)
	})
	if u := b.currentURL(); strings.Contains(u, "token") {
		t.Errorf("the page left its token in the address bar: %s", u)
	}
	b.wait("the RR IPv4 of "+p.job, func() error {
		got, err := b.text(row + ` td[data-field="rr_ip"]`)
		if err != nil {
			return err
		}
		return expect("the RR IPv4 cell", got, p.svc.RRIP.String())
	})

	for n, want := range []string{"running", "failed", "scheduled"} {
		b.wait(fmt.Sprintf("instance %d to show %s", n, want), func() error {
			got, err := b.text(fmt.Sprintf("#instances tr[data-job=%q][data-instance=\"%d\"] .status", p.job, n))
			if err != nil {
				return err
			}
			return expect(fmt.Sprintf("instance %d's status", n), got, want)
		})
	}

	b.wait("the exposure of "+p.job, func() error {
		got, err := b.text(row + ` td[data-field="exposed"]`)
		if err != nil {
			return err
		}
		return expect("the exposed cell", got, "tcp 8080 → 80 (round_robin)")
	})

	pools := p.pools(t)
	subnetUsed := false
	for _, pool := range pools {
		subnetUsed = subnetUsed || (pool.Used == 4 && strings.Contains(pool.Name, "subnet"))
		b.wait("pool "+pool.Name+" to show its used count", func() error {
			got, err := b.text(fmt.Sprintf("#pools tr[data-pool=%q] .used", pool.Name))
			if err != nil {
				return err
			}
			return expect("pool "+pool.Name+"'s used count", got, strconv.FormatUint(pool.Used, 10))
		})
	}
	if !subnetUsed {
		t.Errorf("root reports pools %+v: none is a subnet pool with the 4 subnets allocated", pools)
	}

	clusters := map[string]string{} // id -> marker element
	for _, id := range []string{"munich", "paris"} {
		el, err := b.element(fmt.Sprintf("#map circle.cluster[data-cluster=%q]", id))
		if err != nil {
			t.Fatalf("map marker of cluster %s: %v", id, err)
		}
		clusters[id] = el
	}
	nodes, err := b.elements("#map [data-node]")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, el := range nodes {
		name, err := b.attribute(el, "data-node")
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	if want := []string{"worker-a", "worker-b", "worker-c", "worker-g"}; !slices.Equal(names, want) {
		t.Errorf("map node markers %v, want %v", names, want)
	}
	if _, err := b.element(`#map [data-gateway="worker-g"]`); err != nil {
		t.Errorf("map gateway marker: %v", err)
	}

	// Everything the page loaded came from root.
	var loaded []string
	b.script(`return performance.getEntriesByType("resource").map((e) => e.name)`, &loaded)
	for _, u := range loaded {
		if !strings.HasPrefix(u, p.url+"/") {
			t.Errorf("the page loaded %s, which is not on root (%s)", u, p.url)
		}
	}
	if len(loaded) < 3 {
		t.Errorf("the page loaded %v: want at least its script, stylesheet and API calls", loaded)
	}

	checkScreenshot(t, b, clusters)
}

// checkScreenshot decodes a screenshot of the page and checks its pixels.
func checkScreenshot(t *testing.T, b *browser, clusters map[string]string) {
	t.Helper()
	raw := b.screenshot()
	path := filepath.Join(t.TempDir(), "status-page.png")
	if keep := os.Getenv("SEMNET_SCREENSHOT"); keep != "" {
		path = keep
	}
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	bounds := img.Bounds()
	if bounds.Dx() != 1280 {
		t.Errorf("screenshot is %v, want 1280 pixels wide", bounds.Size())
	}
	colours := map[color.RGBA]bool{}
	for y := bounds.Min.Y; y < bounds.Max.Y; y += 3 {
		for x := bounds.Min.X; x < bounds.Max.X; x += 3 {
			colours[rgba(img, x, y)] = true
		}
	}
	if len(colours) < 50 {
		t.Errorf("screenshot has %d distinct colours: blank or unstyled", len(colours))
	}

	centreX := map[string]int{}
	for id, el := range clusters {
		r := b.rect(el)
		x, y := int(r.X+r.Width/2), int(r.Y+r.Height/2)
		centreX[id] = x
		fill, err := b.attribute(el, "fill")
		if err != nil {
			t.Fatal(err)
		}
		want, err := parseHex(fill)
		if err != nil {
			t.Fatal(err)
		}
		if !(image.Point{x, y}).In(bounds) {
			t.Errorf("cluster %s's marker centre (%d,%d) is outside the screenshot %v", id, x, y, bounds)
			continue
		}
		if got := rgba(img, x, y); !near(got, want, 12) {
			t.Errorf("pixel at cluster %s's marker centre (%d,%d) is %v, want its fill %s", id, x, y, got, fill)
		}
	}
	if centreX["paris"] >= centreX["munich"] {
		t.Errorf("Paris (%v°E) is drawn at x=%d, not left of Munich (%v°E) at x=%d", paris.Lon, centreX["paris"], munich.Lon, centreX["munich"])
	}
}

func rgba(img image.Image, x, y int) color.RGBA {
	r, g, b, a := img.At(x, y).RGBA()
	return color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}
}

func parseHex(s string) (color.RGBA, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "#"), 16, 32)
	if err != nil || len(s) != 7 {
		return color.RGBA{}, fmt.Errorf("colour %q is not #rrggbb", s)
	}
	return color.RGBA{uint8(v >> 16), uint8(v >> 8), uint8(v), 0xff}, nil
}

func near(a, b color.RGBA, tol int) bool {
	d := func(x, y uint8) bool { return max(int(x)-int(y), int(y)-int(x)) <= tol }
	return d(a.R, b.R) && d(a.G, b.G) && d(a.B, b.B)
}

// TestStatusPageAsksForATokenOn401: a wrong token gets a clear 401 message and the token
// form; the right token entered in the form shows the data.
func TestStatusPageAsksForATokenOn401(t *testing.T) {
	b := startBrowser(t)
	p := startRoot(t)
	p.populate(t)

	b.open(p.url + "/ui/#token=not-the-token-0000000000")
	b.wait("the 401 message", func() error {
		if ok, err := b.displayed("#auth"); err != nil || !ok {
			return fmt.Errorf("token prompt not displayed (%v)", err)
		}
		msg, err := b.text("#auth-message")
		if err != nil {
			return err
		}
		if !strings.Contains(msg, "401") || !strings.Contains(msg, "refused") {
			return fmt.Errorf("message %q does not say the token was refused with 401", msg)
		}
		return nil
	})
	if ok, err := b.displayed("main"); err != nil || ok {
		t.Errorf("the data panels are displayed after a 401 (%v)", err)
	}

	b.typeInto("#token-input", testToken)
	b.click(`#token-form button[type="submit"]`)
	b.wait("the services table after entering the token", func() error {
		_, err := b.element(fmt.Sprintf("#services tr[data-job=%q]", p.job))
		return err
	})
	if ok, err := b.displayed("#auth"); err != nil || ok {
		t.Errorf("the token prompt is still displayed with the right token (%v)", err)
	}
	if u := b.currentURL(); strings.Contains(u, testToken) {
		t.Errorf("the token ended up in the URL: %s", u)
	}
}
