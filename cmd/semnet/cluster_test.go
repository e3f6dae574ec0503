package main

import (
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/semnet/semnet/cluster"
)

// TestClusterNodeGraceFlag: --node-grace reaches the configuration as given: the default,
// zero (report at once) and negative (never) all mean what the help says.
func TestClusterNodeGraceFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want time.Duration
	}{
		{nil, cluster.DefaultNodeGrace},
		{[]string{"--node-grace", "0"}, 0},
		{[]string{"--node-grace", "-1s"}, -time.Second},
		{[]string{"--node-grace", "45s"}, 45 * time.Second},
	} {
		var f clusterFlags
		fs := pflag.NewFlagSet("cluster", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(append([]string{"--id", "c1", "--root", "http://127.0.0.1:10099"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		c, err := f.config()
		if err != nil {
			t.Fatal(err)
		}
		if c.NodeGrace != tc.want {
			t.Errorf("%v: node grace %v, want %v", tc.args, c.NodeGrace, tc.want)
		}
	}
}
