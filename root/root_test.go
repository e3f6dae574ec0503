package root_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/testservers"
)

// TestMetricsReportPools: /metrics shows allocations and pool fill levels as they change.
func TestMetricsReportPools(t *testing.T) {
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Insecure: true, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, _ := client.New("http://"+srv.Addr.String(), "", nil)
	if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"}); err != nil {
		t.Fatal(err)
	}
	// The RR and Closest IPv4 Service IPs share one pool: two used.
	wantMetrics(t, srv,
		`semnet_root_pool_used{pool="service_v4",prefix="10.30.0.0/16"} 2`,
		`semnet_root_allocations_total{pool="service_v4"} 2`,
		`semnet_root_changes_total{kind="service",op="put"} 1`)
}

// wantMetrics fails t unless root's /metrics holds every line given.
func wantMetrics(t *testing.T, srv *root.Server, lines ...string) {
	t.Helper()
	b := metricsOf(t, srv)
	for _, want := range lines {
		if !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestTokenScopesValidated: read-only tokens need an admin token beside them, are as long
// as any token, and are not admin tokens too.
func TestTokenScopesValidated(t *testing.T) {
	const admin, reader = "admin-token-0123456789", "read-token-0123456789"
	base := root.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Plan: addrplan.Default()}
	for _, c := range []struct {
		tokens, read []string
		insecure     bool
		want         string
	}{
		{nil, []string{reader}, true, "needs an admin token"},
		{[]string{admin}, []string{"short"}, false, "shorter than 16"},
		{[]string{admin}, []string{admin}, false, "both an admin token"},
		{[]string{admin}, []string{reader}, false, ""},
	} {
		cfg := base
		cfg.Tokens, cfg.ReadTokens, cfg.Insecure = c.tokens, c.read, c.insecure
		err := cfg.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("tokens %v, read %v: %v, want %q", c.tokens, c.read, err, c.want)
		}
	}
}

// TestMetricsTimeStoreCommands: on MongoDB, /metrics shows the store's commands by
// command and collection, so an operator can see what the database spends its time on.
func TestMetricsTimeStoreCommands(t *testing.T) {
	uri := testservers.MongoURI(t)
	db := fmt.Sprintf("semnet_root_metrics_%d", time.Now().UnixNano())
	srv, err := root.Start(t.Context(), root.Config{Listen: "127.0.0.1:0", MongoURI: uri, MongoDB: db, Insecure: true, Plan: addrplan.Default()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	rc, _ := client.New("http://"+srv.Addr.String(), "", nil)
	for _, svc := range []string{"c", "e"} {
		if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "a", AppNS: "b", Service: svc, ServiceNS: "d"}); err != nil {
			t.Fatal(err)
		}
	}
	wantMetrics(t, srv,
		`semnet_root_store_command_seconds_count{collection="services",command="insert"} 2`,
		`semnet_root_store_command_seconds_count{collection="leases",command="insert"} 2`,
		`semnet_root_store_command_seconds_bucket{collection="services",command="insert",le="+Inf"} 2`)
}
