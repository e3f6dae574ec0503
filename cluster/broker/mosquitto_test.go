package broker

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/testpki"
)

// mosquittoClients returns the paths of mosquitto_pub and mosquitto_sub (apt package
// mosquitto-clients). Without them the test is skipped, unless CI is set: CI installs
// them, so their absence there is a failure.
func mosquittoClients(t *testing.T) (pub, sub string) {
	t.Helper()
	pub, err1 := exec.LookPath("mosquitto_pub")
	sub, err2 := exec.LookPath("mosquitto_sub")
	if err1 != nil || err2 != nil {
		const msg = "mosquitto_pub/mosquitto_sub not found: install apt package mosquitto-clients to run the interoperability tests"
		if os.Getenv("CI") != "" {
			t.Fatal(msg + " (CI is set, so they must be there)")
		}
		t.Skip(msg)
	}
	return pub, sub
}

// mosquitto runs a mosquitto client against b and returns its output and error.
func mosquitto(t *testing.T, b *Broker, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	_, port, _ := net.SplitHostPort(b.Addr().String())
	args = append([]string{"-h", "127.0.0.1", "-p", port, "-V", "mqttv311"}, args...)
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// keepPublishing publishes topic from the cluster every 50 ms until stop is closed, so a
// subscriber gets a message however long it takes to subscribe.
func keepPublishing(t *testing.T, b *Broker, topic, payload string) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		for {
			if err := b.Publish(topic, []byte(payload)); err != nil {
				t.Error(err)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() { close(done); <-exited }
}

func TestMosquittoPassword(t *testing.T) {
	pub, sub := mosquittoClients(t)
	file := credentialsFile(t, t.TempDir(), "worker-1", "pw-1", "worker-2", "pw-2")
	b := startBroker(t, Config{CredentialsFile: file})
	cluster := collect(t, b)

	// A node publishes a request: the cluster gets it with the node's identity.
	out, err := mosquitto(t, b, pub, "-i", "worker-2", "-u", "worker-2", "-P", "pw-2", "-q", "1",
		"-t", mqttapi.NodeTopic("worker-2", mqttapi.SuffixSubnet), "-m", `{"METHOD":"GET"}`)
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	if m := receive(t, cluster, "mosquitto_pub's message"); m.client != "worker-2" || m.payload != `{"METHOD":"GET"}` {
		t.Errorf("cluster got %+v", m)
	}

	// A node receives the cluster's answer.
	topic := mqttapi.NodeTopic("worker-1", mqttapi.SuffixSubnetResult)
	stop := keepPublishing(t, b, topic, `{"address":"10.18.0.0"}`)
	out, err = mosquitto(t, b, sub, "-i", "worker-1", "-u", "worker-1", "-P", "pw-1", "-q", "1",
		"-t", topic, "-C", "1", "-W", "15")
	stop()
	if err != nil || strings.TrimSpace(out) != `{"address":"10.18.0.0"}` {
		t.Errorf("mosquitto_sub: %v: %q", err, out)
	}

	// Refusals, as a third-party client reports them.
	out, err = mosquitto(t, b, pub, "-i", "worker-1", "-u", "worker-1", "-P", "wrong", "-t", topic, "-m", "x")
	if err == nil || !strings.Contains(out, "bad user name or password") {
		t.Errorf("wrong password: %v: %s", err, out)
	}
	out, err = mosquitto(t, b, pub, "-i", "worker-1", "-t", topic, "-m", "x")
	if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
		t.Errorf("no credentials: %v: %s", err, out)
	}
	// The ACL: another node's topics are refused.
	out, err = mosquitto(t, b, sub, "-i", "worker-1", "-u", "worker-1", "-P", "pw-1",
		"-t", "nodes/+/net/#", "-C", "1", "-W", "5")
	if !strings.Contains(out, "denied") {
		t.Errorf("mosquitto_sub to nodes/+/net/#: %v: %q, want the subscription denied", err, out)
	}
	if got := counter(b.m.aclDenied.WithLabelValues("subscribe")); got != 1 {
		t.Errorf("acl denied subscribe = %v, want 1", got)
	}
}

func TestMosquittoMutualTLS(t *testing.T) {
	pub, sub := mosquittoClients(t)
	ca := testpki.NewCA(t, "semnet-test-ca")
	srv := ca.Server(t, "broker")
	b := startBroker(t, Config{CertFile: srv.CertFile, KeyFile: srv.KeyFile, ClientCAFile: ca.File})
	cluster := collect(t, b)
	w3 := ca.Client(t, "worker-3")
	cert, key := w3.CertFile, w3.KeyFile
	tlsArgs := []string{"--cafile", ca.File, "--cert", cert, "--key", key, "-i", "worker-3", "-q", "1"}

	// As the reference worker node does: MQTT 3.1.1, client certificate, no username.
	out, err := mosquitto(t, b, pub, append(tlsArgs, "-t", mqttapi.NodeTopic("worker-3", mqttapi.SuffixDeployed), "-m", `{"appname":"a.b.c.d"}`)...)
	if err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
	if m := receive(t, cluster, "mosquitto_pub's message"); m.client != "worker-3" {
		t.Errorf("cluster got %+v", m)
	}
	topic := mqttapi.UpdatesTopic("a.b.c.d")
	stop := keepPublishing(t, b, topic, `{"type":"DEPLOYMENT"}`)
	out, err = mosquitto(t, b, sub, append(tlsArgs, "-t", topic, "-C", "1", "-W", "15")...)
	stop()
	if err != nil || strings.TrimSpace(out) != `{"type":"DEPLOYMENT"}` {
		t.Errorf("mosquitto_sub: %v: %q", err, out)
	}

	// The certificate names worker-3, not worker-4.
	out, err = mosquitto(t, b, pub, "--cafile", ca.File, "--cert", cert, "--key", key, "-i", "worker-4",
		"-t", mqttapi.NodeTopic("worker-4", mqttapi.SuffixDeployed), "-m", "x")
	if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
		t.Errorf("certificate of another node: %v: %s", err, out)
	}
}
