package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestNodeGatewayFlags(t *testing.T) {
	base := []string{"--id", "gw1", "--cluster-mqtt", "127.0.0.1:10003", "--host-ip", "127.0.0.1"}
	for _, tc := range []struct {
		args         []string
		err          string
		public4, in6 string
	}{
		{args: nil},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1"}, public4: "198.51.100.1"},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1,2001:db8::1", "--gateway-internal-ip", "fdff:ffff::fffd"},
			public4: "198.51.100.1", in6: "fdff:ffff::fffd"},
		{args: []string{"--gateway"}, err: "--gateway needs --public-ip"},
		{args: []string{"--public-ip", "198.51.100.1"}, err: "need --gateway"},
		{args: []string{"--gateway", "--public-ip", "198.51.100.1", "--public-ip", "198.51.100.2"}, err: "of one family"},
		{args: []string{"--gateway", "--public-ip", "gateway.example"}, err: "--public-ip"},
	} {
		var f nodeFlags
		fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
		f.register(fs)
		if err := fs.Parse(append(append([]string(nil), base...), tc.args...)); err != nil {
			t.Fatal(err)
		}
		c, err := f.config()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if tc.public4 == "" {
			if c.Gateway != nil {
				t.Errorf("%v: a gateway config without --gateway", tc.args)
			}
			continue
		}
		if c.Gateway == nil || c.Gateway.PublicV4 != netip.MustParseAddr(tc.public4) {
			t.Errorf("%v: gateway config %+v, want public %s", tc.args, c.Gateway, tc.public4)
		}
		if tc.in6 != "" && c.Gateway.InternalV6 != netip.MustParseAddr(tc.in6) {
			t.Errorf("%v: internal v6 %v, want %s", tc.args, c.Gateway.InternalV6, tc.in6)
		}
	}
}
