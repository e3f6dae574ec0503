package main

import "github.com/spf13/pflag"

// rateLimitFlags are the per-client rate limit flags of a REST server (root, cluster).
type rateLimitFlags struct {
	limit float64
	burst int
}

// defaultRateLimit is --rate-limit's default for `semnet root` and `semnet cluster`: a
// fifth of what root sustains on two cores (PERFORMANCE.md: 5,000 deploys/s), so one
// runaway client leaves the rest to the others, and far above what a well-behaved client
// asks: a cluster asks root on misses, status changes and new nodes (its cache answers
// its nodes), an orchestrator asks a cluster once per deployment.
const defaultRateLimit = 1000

// register adds --rate-limit (default def; 0: off) and --rate-burst.
func (f *rateLimitFlags) register(fs *pflag.FlagSet, def float64) {
	fs.Float64Var(&f.limit, "rate-limit", def, "requests per second each client (token scope + source address) may make of /api; over it, 429 with Retry-After (0: no limit)")
	fs.IntVar(&f.burst, "rate-burst", 0, "requests a client may make at once after a quiet spell (0: twice --rate-limit)")
}
