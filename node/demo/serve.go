package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/vishvananda/netlink"
)

// Answer is what an instance answers every HTTP request with.
func Answer(service string, number int) string {
	return fmt.Sprintf("hello from %s instance %d\n", service, number)
}

// ServeInstance is the instance's program, run inside its fresh network namespace: it
// brings lo up, serves Answer over HTTP on port 80 and echoes UDP datagrams on port 7
// (both IPv4 and IPv6), writes the ready line to ready, and serves until ctx ends or
// control reaches EOF (the parent closed it, or died).
func ServeInstance(ctx context.Context, service string, number int, control io.Reader, ready io.Writer) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("demo instance: set lo up: %w", err)
	}
	ln, err := net.Listen("tcp", ":80")
	if err != nil {
		return fmt.Errorf("demo instance: %w", err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", ":7")
	if err != nil {
		return fmt.Errorf("demo instance: %w", err)
	}
	defer pc.Close()
	go echo(pc)

	answer := Answer(service, number)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, answer)
	})}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	if _, err := fmt.Fprintln(ready, readyLine); err != nil {
		srv.Close()
		return fmt.Errorf("demo instance: tell the parent it serves: %w", err)
	}

	ended := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, control)
		close(ended)
	}()
	select {
	case <-ctx.Done():
	case <-ended:
	case err := <-served:
		return fmt.Errorf("demo instance: %w", err)
	}
	if err := srv.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("demo instance: %w", err)
	}
	return nil
}

// echo answers every datagram with itself until pc is closed.
func echo(pc net.PacketConn) {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}
