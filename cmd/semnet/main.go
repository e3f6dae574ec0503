// Command semnet is the one binary of semnet: `semnet root`, `semnet up`, and (in later
// releases) `semnet cluster` and `semnet node`. Every flag can also be set from an
// environment variable SEMNET_<FLAG> (upper case, '-' as '_'); a flag on the command line
// wins over the environment.
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
