package testpki_test

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"

	"github.com/semnet/semnet/shared/testpki"
)

// handshake runs a mutual-TLS handshake between a server presenting srv that requires
// client certificates from ca, and client; it returns the Common Name the server saw
// and the client's error.
func handshake(t *testing.T, ca *testpki.CA, srv testpki.Cert, client *tls.Config) (string, error) {
	t.Helper()
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	server := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{srv.Pair}, ClientCAs: ca.Pool(),
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
	seen := make(chan string, 1)
	go func() {
		if server.Handshake() != nil {
			seen <- ""
			sc.Close() // unblock the client
			return
		}
		seen <- server.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()
	err := tls.Client(cc, client).Handshake()
	if err != nil {
		cc.Close()
	}
	return <-seen, err
}

func TestCertificatesVerify(t *testing.T) {
	ca := testpki.NewCA(t, "ca")
	srv := ca.Server(t, "broker")
	w1 := ca.Client(t, "w1", "w1.alias")
	if w1.Pair.Leaf == nil || w1.Pair.Leaf.DNSNames[0] != "w1.alias" || !strings.HasSuffix(w1.CertFile, "w1.crt") {
		t.Fatalf("client certificate %+v", w1)
	}

	for _, name := range []string{"", "broker", "localhost"} {
		tc := ca.ClientTLS(&w1)
		tc.ServerName = name
		if name == "" {
			tc.ServerName = "127.0.0.1"
		}
		if cn, err := handshake(t, ca, srv, tc); err != nil || cn != "w1" {
			t.Errorf("server name %q: %v, server saw %q", tc.ServerName, err, cn)
		}
	}
	other := testpki.NewCA(t, "other")
	tc := other.ClientTLS(nil)
	tc.ServerName = "broker"
	if _, err := handshake(t, ca, srv, tc); err == nil {
		t.Error("a client trusting another CA accepted the server")
	}
}
