package root_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/addrplan"
	"github.com/semnet/semnet/shared/testpki"
	"github.com/semnet/semnet/shared/testservers"
	"github.com/semnet/semnet/shared/tlsfiles"
)

// TestPeersNotified: a root started with --peer tells the other root on its MongoDB of
// each change it logs, authenticated with its token, and the other one accepts it; a
// malformed notification is refused.
func TestPeersNotified(t *testing.T) {
	const token = "peer-test-token-0123456789"
	uri := testservers.MongoURI(t)
	db := fmt.Sprintf("semnet_root_peers_%d", time.Now().UnixNano())
	// The store watch would find the changes too: slowed down, so what B learns it
	// learns from A.
	cfg := root.Config{Listen: "127.0.0.1:0", MongoURI: uri, MongoDB: db, Tokens: []string{token}, Plan: addrplan.Default(), StoreWatch: time.Hour}
	b, err := root.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cfg.Peers = []string{"http://" + b.Addr.String()}
	a, err := root.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rc, _ := client.New("http://"+a.Addr.String(), token, nil)
	if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "a", AppNS: "b", Service: "c", ServiceNS: "d"}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, a, fmt.Sprintf(`semnet_root_peer_notifications_total{peer=%q,result="ok"}`, cfg.Peers[0]))
	for _, c := range []struct {
		body, auth string
		status     int
	}{
		{`{"revision":0}`, token, http.StatusBadRequest},
		{`{"revision":"x"}`, token, http.StatusBadRequest},
		{`{"revision":7}`, "", http.StatusUnauthorized},
		{`{"revision":7}`, token, http.StatusNoContent},
	} {
		req, _ := http.NewRequest(http.MethodPost, cfg.Peers[0]+"/api/v1/peer/changes", strings.NewReader(c.body))
		req.Header.Set("Content-Type", "application/json")
		if c.auth != "" {
			req.Header.Set("Authorization", "Bearer "+c.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("POST %s (token %v): %s, want %d", c.body, c.auth != "", resp.Status, c.status)
		}
	}
	// --peer needs a shared store and a URL.
	for _, c := range []struct {
		mongo, peer, want string
	}{
		{"", "http://127.0.0.1:10099", "needs --mongo-uri"},
		{uri, "127.0.0.1:10099", "must be an http:// or https:// URL"},
	} {
		bad := cfg
		bad.MongoURI, bad.Peers = c.mongo, []string{c.peer}
		if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("peer %q with mongo %q: %v, want %q", c.peer, c.mongo, err, c.want)
		}
	}
}

// waitMetric waits up to 10 s for root's /metrics to show series (name and labels),
// failing t if it does not.
func waitMetric(t *testing.T, srv *root.Server, series string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(metricsOf(t, srv), series) {
		if time.Now().After(deadline) {
			t.Fatalf("/metrics lacks %s:\n%s", series, metricsOf(t, srv))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func metricsOf(t *testing.T, srv *root.Server) string {
	t.Helper()
	resp, err := http.Get("http://" + srv.Addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestPeersOverMutualTLS: a peer serving HTTPS and requiring client certificates takes
// the notifications of a root given the peer's CA and a client certificate
// (--peer-ca, --peer-cert, --peer-key), and refuses those of a root without them.
func TestPeersOverMutualTLS(t *testing.T) {
	const token = "peer-test-token-0123456789"
	ca := testpki.NewCA(t, "peers-ca")
	cert, good := ca.Server(t, "root-b.example"), ca.Client(t, "root-a")
	base := root.Config{Listen: "127.0.0.1:0", MongoURI: testservers.MongoURI(t), MongoDB: fmt.Sprintf("semnet_root_peers_tls_%d", time.Now().UnixNano()),
		Tokens: []string{token}, Plan: addrplan.Default(), StoreWatch: time.Hour}
	cfg := base
	cfg.TLS = tlsfiles.Server{CertFile: cert.CertFile, KeyFile: cert.KeyFile, ClientCAFile: ca.File}
	b, err := root.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peer := "https://" + b.Addr.String()
	for _, c := range []struct {
		name   string
		tls    tlsfiles.Client
		result string
	}{
		{"with a client certificate", tlsfiles.Client{CAFile: ca.File, CertFile: good.CertFile, KeyFile: good.KeyFile}, "ok"},
		{"without", tlsfiles.Client{CAFile: ca.File}, "error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base
			cfg.Peers, cfg.PeerTLS = []string{peer}, c.tls
			a, err := root.Start(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			rc, _ := client.New("http://"+a.Addr.String(), token, nil)
			if _, err := rc.CreateService(t.Context(), api.ServiceRequest{App: "a", AppNS: "b", Service: strings.ReplaceAll(c.name, " ", ""), ServiceNS: "d"}); err != nil {
				t.Fatal(err)
			}
			waitMetric(t, a, fmt.Sprintf(`semnet_root_peer_notifications_total{peer=%q,result=%q}`, peer, c.result))
		})
	}
	bad := base
	bad.PeerTLS = tlsfiles.Client{CAFile: ca.File}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "--peer") {
		t.Errorf("--peer-ca without --peer: %v, want an error naming --peer", err)
	}
}
