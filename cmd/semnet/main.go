// Command semnet is the one binary of semnet: the tiers (`semnet root`, `semnet cluster`,
// `semnet node`), a local platform (`semnet up`), demo instances (`semnet demo`), the
// operator's client (`semnet ctl`) and a probe for healthchecks. Every flag can also be
// set from an environment variable SEMNET_<FLAG> (upper case, '-' as '_'); a flag on the
// command line wins over the environment.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "semnet:", err)
		os.Exit(1)
	}
}
