package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

// resolution is what `ctl resolve -o json` prints: root's table entry as root returns it,
// and what a node at From would pick for each of the entry's addresses.
type resolution struct {
	Entry api.TableEntry `json:"entry"`
	From  *geo.Point     `json:"from,omitempty"`
	Picks []pick         `json:"picks"`
}

// pick is a node's choice for one address: the instance numbers a new flow may go to, in
// the order the address's policy takes them (Round Robin: in turn; Closest: the first,
// then the next when it stops; Instance IP: that instance). Empty: no instance is usable.
type pick struct {
	Policy     string     `json:"policy"` // round_robin, closest or instance
	Address    netip.Addr `json:"address"`
	Candidates []int      `json:"candidates"`
}

func newCtlResolveCommand(f *ctlFlags) *cobra.Command {
	var lat, lon float64
	cmd := &cobra.Command{
		Use:   "resolve KEY [--lat DEG --lon DEG]",
		Short: "Show a service's table entry and what a node would pick for each address",
		Long: `resolve looks KEY up the way a node's table query does (a job name, a service ID, or
any Service IP or Instance IP, IPv4 or IPv6) and prints root's table entry: the service
and its Service IPs, and its live instances with their Namespace IPs, node (HOST),
location and status; with --lat/--lon, nearest first with their distance.

It then shows what a worker node at --lat/--lon would pick for each address, computed by
the node's own table code: for the Round Robin Service IPs the instances it takes in turn,
for the Closest Service IPs the nearest running instance first (a new flow goes to the
first; when it stops, to the next), and, when KEY is an Instance IP, that instance. A
node without a location orders Closest by a tie-break every tier shares; so does resolve
without --lat/--lon.`,
		Example: `  semnet ctl resolve shop.prod.web.eu
  semnet ctl resolve 10.30.0.2 --lat 52.52 --lon 13.40
  semnet ctl resolve fdff::3 -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: f.completeServices(),
	}
	cmd.Flags().Float64Var(&lat, "lat", 0, "latitude of the node to pick for, decimal degrees")
	cmd.Flags().Float64Var(&lon, "lon", 0, "longitude of the node to pick for, decimal degrees")
	cmd.MarkFlagsRequiredTogether("lat", "lon")
	cmd.RunE = f.run(func(ctx context.Context, s *ctlSession, args []string) error {
		key := args[0]
		var r resolution
		var err error
		if cmd.Flags().Changed("lat") {
			p := geo.Point{Lat: lat, Lon: lon}
			if err := p.Validate(); err != nil {
				return fmt.Errorf("--lat/--lon: %w", err)
			}
			r.From = &p
			r.Entry, err = s.api.ResolveFrom(ctx, key, p)
		} else {
			r.Entry, err = s.api.Resolve(ctx, key, "")
		}
		if err != nil {
			return err
		}
		if r.Picks, err = nodePicks(r.Entry, key, r.From); err != nil {
			return err
		}
		if s.json {
			return s.show(r, nil, nil)
		}
		return s.writeResolution(r)
	})
	return cmd
}

// nodePicks feeds the entry, as a cluster would answer the query by key, to a node's
// table at from and asks it for each address's candidates.
func nodePicks(e api.TableEntry, key string, from *geo.Point) ([]pick, error) {
	tb := table.New(table.Config{Location: from})
	// A cluster fills its cache without a location, so a node gets the instances in
	// number order, the order Round Robin follows; only the Closest order is the node's.
	inst := slices.Clone(e.Instances)
	slices.SortFunc(inst, func(a, b api.Instance) int { return cmp.Compare(a.Number, b.Number) })
	res := mqttapi.ResultFromEntry(api.TableEntry{Service: e.Service, Instances: inst, Revision: e.Revision}, key)
	if _, err := tb.Apply(&res, time.Now()); err != nil {
		return nil, fmt.Errorf("root's entry for %s: %w", key, err)
	}
	sv := e.Service
	type policyAddr struct {
		policy string
		a      netip.Addr
	}
	addrs := []policyAddr{
		{api.PolicyRoundRobin, sv.RRIP}, {api.PolicyRoundRobin, sv.RRIPv6},
		{api.PolicyClosest, sv.ClosestIP}, {api.PolicyClosest, sv.ClosestIPv6},
	}
	if e.MatchedInstance != nil {
		matched := false
		for _, in := range e.Instances {
			if in.Number == *e.MatchedInstance {
				addrs = append(addrs, policyAddr{api.PolicyInstance, in.InstanceIP}, policyAddr{api.PolicyInstance, in.InstanceIPv6})
				matched = true
			}
		}
		// An instance that is not live is not in the entry: its address is the key.
		if a, err := netip.ParseAddr(key); err == nil && !matched {
			addrs = append(addrs, policyAddr{api.PolicyInstance, a.Unmap()})
		}
	}
	var out []pick
	for _, x := range addrs {
		if !x.a.IsValid() {
			continue
		}
		p := pick{Policy: x.policy, Address: x.a, Candidates: []int{}}
		for _, tg := range tb.Candidates(x.a) {
			p.Candidates = append(p.Candidates, tg.InstanceNumber)
		}
		out = append(out, p)
	}
	return out, nil
}

func (s *ctlSession) writeResolution(r resolution) error {
	sv := r.Entry.Service
	w := s.out
	fmt.Fprintf(w, "service:  %s (id %s)\n", sv.JobName, sv.ID)
	fmt.Fprintf(w, "rr:       %s %s\n", cmp.Or(addrCell(sv.RRIP), "-"), cmp.Or(addrCell(sv.RRIPv6), "-"))
	fmt.Fprintf(w, "closest:  %s %s\n", cmp.Or(addrCell(sv.ClosestIP), "-"), cmp.Or(addrCell(sv.ClosestIPv6), "-"))
	if m := r.Entry.MatchedInstance; m != nil {
		fmt.Fprintf(w, "matched:  instance %d\n", *m)
	}
	if r.From != nil {
		fmt.Fprintf(w, "from:     %s\n", locationCell(r.From))
	} else {
		fmt.Fprintln(w, "from:     no location (Closest in tie-break order)")
	}
	fmt.Fprintln(w)
	header := append(append([]string{}, instanceHeader...), "DISTANCE KM")
	rows := make([][]string, len(r.Entry.Instances))
	for i, in := range r.Entry.Instances {
		d := ""
		if in.DistanceKM != nil {
			d = strconv.FormatFloat(*in.DistanceKM, 'f', 1, 64)
		}
		rows[i] = append(instanceRow(in), d)
	}
	if err := writeTable(w, header, rows); err != nil {
		return err
	}
	fmt.Fprintln(w)
	rows = rows[:0]
	for _, p := range r.Picks {
		c := make([]string, len(p.Candidates))
		for i, n := range p.Candidates {
			c[i] = strconv.Itoa(n)
		}
		rows = append(rows, []string{p.Policy, p.Address.String(), cmp.Or(strings.Join(c, ","), "none")})
	}
	return writeTable(w, []string{"POLICY", "ADDRESS", "CANDIDATES"}, rows)
}
