package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"

	"github.com/semnet/semnet/shared/nsthread"
)

// probeFlags are the flags of `semnet probe`.
type probeFlags struct {
	unix, netns string
	print       bool
	timeout     time.Duration
	tls         tlsClientFlags
}

// dialer returns how the probe connects: over a unix socket, from inside a network
// namespace, or plainly (nil).
func (f *probeFlags) dialer(target *url.URL) (func(ctx context.Context, network, addr string) (net.Conn, error), error) {
	switch {
	case f.unix != "" && f.netns != "":
		return nil, errors.New("give --unix or --netns, not both")
	case f.unix != "":
		return func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", f.unix)
		}, nil
	case f.netns != "":
		// Name resolution would run on other threads, outside the namespace.
		if _, err := netip.ParseAddr(target.Hostname()); err != nil {
			return nil, fmt.Errorf("with --netns the URL's host must be an IP address, not %q", target.Hostname())
		}
		return func(ctx context.Context, network, addr string) (net.Conn, error) {
			ns, err := netns.GetFromPath(f.netns)
			if err != nil {
				return nil, fmt.Errorf("--netns %s: %w", f.netns, err)
			}
			defer ns.Close()
			var c net.Conn
			err = nsthread.Do(ns, func() error {
				d := net.Dialer{FallbackDelay: -1} // no Happy Eyeballs: it dials from other goroutines
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}, nil
	}
	return nil, nil
}

// newProbeCommand is the container healthcheck (minimal images have no curl), and the
// way to try a Service IP from inside an instance's namespace.
func newProbeCommand() *cobra.Command {
	var f probeFlags
	cmd := &cobra.Command{
		Use:   "probe URL",
		Short: "Exit 0 if URL answers 200 in time (for container healthchecks)",
		Long: `probe GETs URL and exits 0 if it answers 200 within --timeout.

--unix sends the request over a unix socket instead (a node's local API:
semnet probe --unix /run/semnet/node.sock http://node/readyz). --netns sends it from
inside a network namespace, such as an instance's /proc/<pid>/ns/net (needs
CAP_SYS_ADMIN; the URL's host must be an IP address). --print writes the answer's body
to stdout.

An https URL is verified with --ca (default: the system's CAs); a server requiring
client certificates (--tls-client-ca) gets --cert and --key. A container healthcheck
probing its own server at 127.0.0.1, whose certificate names another host, may pass
--insecure-skip-verify instead of --ca: the probe sends no token and reads only the
status, so an impostor could at worst fake a healthy answer.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			target, err := url.Parse(args[0])
			if err != nil {
				return err
			}
			dial, err := f.dialer(target)
			if err != nil {
				return err
			}
			if f.tls.files.InsecureSkipVerify && target.Scheme != "https" {
				return fmt.Errorf("--insecure-skip-verify is for an https URL, not %q", args[0])
			}
			tc, err := f.tls.config(args[0])
			if err != nil {
				return err
			}
			hc := http.DefaultClient
			if dial != nil || tc != nil {
				hc = &http.Client{Transport: &http.Transport{DialContext: dial, TLSClientConfig: tc, DisableKeepAlives: true}}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if f.print {
				if _, err := io.Copy(cmd.OutOrStdout(), resp.Body); err != nil {
					return fmt.Errorf("%s: read the answer: %w", args[0], err)
				}
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s answered %s", args[0], resp.Status)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&f.unix, "unix", "", "connect over this unix socket (the URL's host is then only a name)")
	cmd.Flags().StringVar(&f.netns, "netns", "", "connect from inside this network namespace, e.g. /proc/<pid>/ns/net")
	cmd.Flags().BoolVar(&f.print, "print", false, "write the answer's body to stdout")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 3*time.Second, "give up after this long")
	f.tls.register(cmd.Flags(), "", "the server")
	cmd.Flags().BoolVar(&f.tls.files.InsecureSkipVerify, "insecure-skip-verify", false, "accept any certificate of an https URL (a healthcheck of a local server whose certificate names another host)")
	return cmd
}
