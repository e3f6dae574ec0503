package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/semnet/semnet/root"
)

func newUpCommand() *cobra.Command {
	var f rootFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run every tier on this machine with embedded defaults (a local platform to try)",
		Long: `up runs semnet on one machine with no external services: today the root service with
its embedded store in --data-dir. It generates an API token unless --token (SEMNET_TOKEN)
is given, and prints it with commands to try.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.token == "" && !f.insecure {
				var b [24]byte
				_, _ = rand.Read(b[:])
				f.token = hex.EncodeToString(b[:])
			}
			c, err := f.config()
			if err != nil {
				return err
			}
			srv, err := root.Start(cmd.Context(), c)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "semnet is up.\n  root API: http://%s  (store: %s)\n", srv.Addr, f.dataDir)
			if f.token != "" {
				fmt.Fprintf(out, "  token:    %s\n\nTry:\n  export SEMNET_TOKEN=%s\n", f.token, f.token)
			}
			fmt.Fprintf(out, "  curl -s -H \"Authorization: Bearer $SEMNET_TOKEN\" http://%s/api/v1/pools\n\nStop with Ctrl-C.\n", srv.Addr)
			<-cmd.Context().Done()
			return srv.Close()
		},
	}
	f.register(cmd.Flags(), "127.0.0.1:10099")
	bindEnv(cmd)
	return cmd
}
