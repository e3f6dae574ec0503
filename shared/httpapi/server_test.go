package httpapi_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/semnet/semnet/shared/httpapi"
)

// TestShutdownSkipsUnusedConnections: Shutdown waits for a request in flight, but not
// for a connection that never sent one (http.Server alone waits until it is 5 s old, so
// the 2 s bound below would expire).
func TestShutdownSkipsUnusedConnections(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(entered)
		<-release
		io.WriteString(w, "done")
	})
	srv := httpapi.NewServer(h, nil, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- httpapi.Serve(srv, ln) }()

	idle, err := net.Dial("tcp", ln.Addr().String()) // sends nothing
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	answer := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			answer <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		answer <- string(b)
	}()
	<-entered

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	// The unused connection is closed: reading from it ends.
	_ = idle.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := idle.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("read on the unused connection: %v, want EOF (closed by the shutdown)", err)
	}
	// The request in flight still finishes, and then so does the shutdown.
	select {
	case err := <-shut:
		t.Fatalf("shutdown returned (%v) while a request was in flight", err)
	default:
	}
	close(release)
	if got := <-answer; got != "done" {
		t.Errorf("request in flight: %q, want its answer", got)
	}
	if err := <-shut; err != nil {
		t.Errorf("shutdown: %v, want it done within the bound", err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
}
