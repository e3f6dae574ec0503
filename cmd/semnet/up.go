package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/semnet/semnet/cluster"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/root"
	"github.com/semnet/semnet/shared/geo"
)

func newUpCommand() *cobra.Command {
	var (
		f                              rootFlags
		clusterListen, mqttListen, cid string
		lat, lon                       float64
		nodes                          int
		demo, datapath                 bool
		bin                            string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run every tier on this machine with embedded defaults (a local platform to try)",
		Long: `up runs semnet on one machine with no external services: the root service with its
embedded store in --data-dir, one cluster service (in-memory cache, MQTT broker on
loopback admitting workers by client id), and --nodes simulated worker nodes: MQTT
clients that take a subnet and report instances like a real node, without a datapath,
carrying the demo service (--demo). It generates an API token unless --token
(SEMNET_TOKEN) is given, and a read-only one for the status page link unless
--read-token is, and prints them with commands to try.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.token == "" && !f.insecure {
				f.token = randomToken()
			}
			if f.token != "" && len(f.readTokens) == 0 {
				// The status page link carries a token: one that can only read.
				f.readTokens = []string{randomToken()}
			}
			c, err := f.config()
			if err != nil {
				return err
			}
			srv, err := root.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			cl, err := cluster.Start(cmd.Context(), cluster.Config{
				ID: cid, Name: cid, RootURL: "http://" + srv.Addr.String(), RootToken: f.token,
				Listen: clusterListen, MQTTListen: mqttListen, Insecure: true,
				RateLimit: 0, // no REST rate limit, as for up's root: one local user, on loopback
				Location:  geo.Point{Lat: lat, Lon: lon}, StaleAfter: 30 * time.Second, Spares: 2,
				NodeGrace: cluster.DefaultNodeGrace, Logger: c.Logger.With("tier", "cluster"),
			})
			if err != nil {
				return errors.Join(err, srv.Close())
			}
			select {
			case <-cl.Registered():
			case <-time.After(10 * time.Second):
				fmt.Fprintln(os.Stderr, "warning: the cluster has not registered with root yet (see the log)")
			case <-cmd.Context().Done():
			}
			rc, err := client.New("http://"+srv.Addr.String(), f.token, nil)
			if err != nil {
				return errors.Join(err, cl.Close(), srv.Close())
			}
			// With real nodes the demo runs there: a simulated node's instances answer nothing.
			sp, err := startSimulated(cmd.Context(), rc, cid, cl.MQTTAddr.String(), nodes, demo && !datapath, c.Logger.With("tier", "simnode"))
			if err != nil {
				return errors.Join(fmt.Errorf("simulated nodes: %w", err), cl.Close(), srv.Close())
			}
			var lab *datapathLab
			if datapath {
				if bin == "" {
					if bin, err = os.Executable(); err != nil {
						err = fmt.Errorf("find this executable to run the nodes: %w", err)
					}
				}
				if err == nil {
					lab, err = startDatapath(cmd.Context(), rc, cid, cl.MQTTAddr.String(), bin, filepath.Join(f.dataDir, "run"), demo, c.Logger.With("tier", "lab"))
				}
				if err != nil {
					sp.Close()
					return errors.Join(fmt.Errorf("--datapath: %w", err), cl.Close(), srv.Close())
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "semnet is up.\n  root API:     http://%s  (store: %s)\n", srv.Addr, f.dataDir)
			fmt.Fprintf(out, "  cluster %q:  REST http://%s, MQTT for worker nodes at %s (client id = worker id)\n", cid, cl.Addr, cl.MQTTAddr)
			if f.token != "" {
				fmt.Fprintf(out, "  token:        %s\n", f.token)
				fmt.Fprintf(out, "  status page:  http://%s/ui/#token=%s  (a read-only token)\n", srv.Addr, f.readTokens[0])
			}
			sp.describe(out)
			if lab != nil {
				lab.describe(out)
			}
			fmt.Fprintf(out, "\nTry:\n")
			if f.token != "" {
				fmt.Fprintf(out, "  export SEMNET_TOKEN=%s\n", f.token)
			}
			fmt.Fprintf(out, "  curl -s -H \"Authorization: Bearer $SEMNET_TOKEN\" http://%s/api/v1/pools\n", srv.Addr)
			sp.try(out, srv.Addr.String(), cl.MQTTAddr.String())
			if lab != nil {
				lab.try(out)
			}
			fmt.Fprintf(out, "\nStop with Ctrl-C.\n")
			<-cmd.Context().Done()
			if lab != nil {
				lab.Close()
			}
			sp.Close()
			// Stopping is what was asked: a slow shutdown is worth a line, not a failure.
			if err := errors.Join(cl.Close(), srv.Close()); err != nil {
				c.Logger.Warn("shutdown incomplete", "err", err)
			}
			return nil
		},
	}
	// No rate limit by default: up's clients are the operator's own, on loopback.
	f.register(cmd.Flags(), "127.0.0.1:10099", 0)
	cmd.Flags().StringVar(&cid, "cluster-id", "local", "id of the cluster up runs")
	cmd.Flags().StringVar(&clusterListen, "cluster-listen", "127.0.0.1:10110", "address the cluster's REST API listens on")
	cmd.Flags().StringVar(&mqttListen, "mqtt-listen", "127.0.0.1:10003", "address the cluster's MQTT broker listens on (loopback: workers are admitted by client id)")
	cmd.Flags().IntVar(&nodes, "nodes", 2, "simulated worker nodes to run (MQTT clients reporting instances, no datapath)")
	cmd.Flags().BoolVar(&demo, "demo", true, "deploy the demo service "+demoService.JobName()+" with an instance on each simulated node")
	cmd.Flags().BoolVar(&datapath, "datapath", false, "also run two real worker nodes (semnet node, needs root) in network namespaces up creates and removes on exit, with the demo on them")
	cmd.Flags().StringVar(&bin, "semnet-binary", "", "the semnet binary --datapath runs the nodes with (default: this one)")
	_ = cmd.Flags().MarkHidden("semnet-binary")
	cmd.Flags().Float64Var(&lat, "lat", 48.14, "the cluster's latitude")
	cmd.Flags().Float64Var(&lon, "lon", 11.58, "the cluster's longitude")
	bindEnv(cmd)
	return cmd
}

// randomToken returns a fresh 192-bit API token in hex.
func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}
