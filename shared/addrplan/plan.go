// Package addrplan describes semnet's address plan (ADDRESSING.md): which prefixes hold
// Service IPs, Instance IPs and worker subnets in IPv4 and IPv6, with the platform's values
// as defaults, and validation that refuses a plan whose pools overlap.
//
// The plan is pure data; allocation over it lives in package ippool.
package addrplan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
)

// Plan is the address plan. Every field is configuration; Default returns the platform's.
type Plan struct {
	// ServiceV4 holds every IPv4 Service IP (all policies) and Instance IP. IPv4 has no
	// per-policy split, so the allocator tags each lease with its role instead.
	ServiceV4 netip.Prefix `json:"service_v4"`
	// ReservedV4 are never handed out automatically nor granted on request: the network
	// address and the infrastructure /24 that holds the gateway's internal address.
	ReservedV4 []netip.Prefix `json:"reserved_v4"`
	// GatewayV4 is the gateway's internal address (FLOWS.md); it must lie in a reserved prefix.
	GatewayV4 netip.Addr `json:"gateway_v4"`

	// GatewayV6 is the gateway's internal IPv6 address. It lies in fdff::/16 (so nodes
	// route it into their TUN) outside every IPv6 pool.
	GatewayV6 netip.Addr `json:"gateway_v6"`

	// InstanceV6, ClosestV6, RoundRobinV6 are the per-role IPv6 prefixes inside fdff::/16.
	InstanceV6   netip.Prefix `json:"instance_v6"`
	ClosestV6    netip.Prefix `json:"closest_v6"`
	RoundRobinV6 netip.Prefix `json:"round_robin_v6"`

	// SubnetV4 and SubnetV6 are carved into worker subnets of SubnetV4Bits / SubnetV6Bits.
	// Subnet number i is the pair (i-th /26, i-th /120): the two families move in lockstep.
	SubnetV4      netip.Prefix   `json:"subnet_v4"`
	SubnetV4Bits  int            `json:"subnet_v4_bits"`
	SubnetV6      netip.Prefix   `json:"subnet_v6"`
	SubnetV6Bits  int            `json:"subnet_v6_bits"`
	ReservedSubV4 []netip.Prefix `json:"reserved_subnet_v4"`

	// Quarantine is how long a released address waits before it is handed out again; it must
	// outlast every cache TTL so a stale cache never reaches a different service.
	Quarantine time.Duration `json:"quarantine"`
}

// Default returns the platform's plan (ADDRESSING.md) with semnet's decisions:
//   - 10.30.255.0/24 is infrastructure (it holds the gateway's 10.30.255.253), never allocated;
//   - worker subnets come from 10.18.0.0/15 (2,047 nodes per platform), skipping the /26
//     that holds the reference datapath's TUN address 10.19.1.254;
//   - IPv6 worker subnets come from fc00::/8, one /120 each.
func Default() Plan {
	return Plan{
		ServiceV4:     netip.MustParsePrefix("10.30.0.0/16"),
		ReservedV4:    []netip.Prefix{netip.MustParsePrefix("10.30.0.0/32"), netip.MustParsePrefix("10.30.255.0/24")},
		GatewayV4:     netip.MustParseAddr("10.30.255.253"),
		GatewayV6:     netip.MustParseAddr("fdff:ffff:ffff:ffff:ffff:ffff:ffff:fffd"),
		InstanceV6:    netip.MustParsePrefix("fdff::/21"),
		ClosestV6:     netip.MustParsePrefix("fdff:1000::/21"),
		RoundRobinV6:  netip.MustParsePrefix("fdff:2000::/21"),
		SubnetV4:      netip.MustParsePrefix("10.18.0.0/15"),
		SubnetV4Bits:  26,
		SubnetV6:      netip.MustParsePrefix("fc00::/8"),
		SubnetV6Bits:  120,
		ReservedSubV4: []netip.Prefix{netip.MustParsePrefix("10.19.1.192/26")},
		Quarantine:    10 * time.Minute,
	}
}

// named is one prefix of the plan with the name an operator knows it by.
type named struct {
	name string
	p    netip.Prefix
}

func (pl Plan) pools() []named {
	return []named{
		{"service_v4", pl.ServiceV4},
		{"instance_v6", pl.InstanceV6},
		{"closest_v6", pl.ClosestV6},
		{"round_robin_v6", pl.RoundRobinV6},
		{"subnet_v4", pl.SubnetV4},
		{"subnet_v6", pl.SubnetV6},
	}
}

// Validate refuses a plan that cannot work: wrong families, overlapping pools, reserved
// prefixes outside their pool, subnet sizes that do not fit. Errors name the fields.
func (pl Plan) Validate() error {
	var errs []error
	ps := pl.pools()
	for _, n := range ps {
		if !n.p.IsValid() {
			errs = append(errs, fmt.Errorf("%s: not set", n.name))
			continue
		}
		if n.p != n.p.Masked() {
			errs = append(errs, fmt.Errorf("%s: %s has host bits set (did you mean %s?)", n.name, n.p, n.p.Masked()))
		}
		wantV4 := n.name == "service_v4" || n.name == "subnet_v4"
		if n.p.Addr().Is4() != wantV4 {
			fam := "IPv6"
			if wantV4 {
				fam = "IPv4"
			}
			errs = append(errs, fmt.Errorf("%s: %s is not an %s prefix", n.name, n.p, fam))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for i := range ps {
		for j := i + 1; j < len(ps); j++ {
			if ps[i].p.Overlaps(ps[j].p) {
				errs = append(errs, fmt.Errorf("%s %s overlaps %s %s: every pool needs its own range", ps[i].name, ps[i].p, ps[j].name, ps[j].p))
			}
		}
	}
	for _, r := range pl.ReservedV4 {
		if !r.IsValid() || !pl.ServiceV4.Contains(r.Addr()) || r.Bits() < pl.ServiceV4.Bits() {
			errs = append(errs, fmt.Errorf("reserved_v4: %s is not inside service_v4 %s", r, pl.ServiceV4))
		}
	}
	if pl.GatewayV4.IsValid() && !inAny(pl.GatewayV4, pl.ReservedV4) {
		errs = append(errs, fmt.Errorf("gateway_v4: %s must lie in a reserved_v4 prefix, or the allocator could hand it to a service", pl.GatewayV4))
	}
	if pl.GatewayV6.IsValid() && (!pl.GatewayV6.Is6() || inAny(pl.GatewayV6, []netip.Prefix{pl.InstanceV6, pl.ClosestV6, pl.RoundRobinV6})) {
		errs = append(errs, fmt.Errorf("gateway_v6: %s must be an IPv6 address outside instance_v6, closest_v6 and round_robin_v6, or the allocator could hand it to a service", pl.GatewayV6))
	}
	if pl.SubnetV4Bits <= pl.SubnetV4.Bits() || pl.SubnetV4Bits > 30 {
		errs = append(errs, fmt.Errorf("subnet_v4_bits: /%d does not fit in subnet_v4 %s (need /%d../30)", pl.SubnetV4Bits, pl.SubnetV4, pl.SubnetV4.Bits()+1))
	}
	if pl.SubnetV6Bits <= pl.SubnetV6.Bits() || pl.SubnetV6Bits > 126 {
		errs = append(errs, fmt.Errorf("subnet_v6_bits: /%d does not fit in subnet_v6 %s", pl.SubnetV6Bits, pl.SubnetV6))
	}
	for _, r := range pl.ReservedSubV4 {
		if !r.IsValid() || !pl.SubnetV4.Contains(r.Addr()) || r.Bits() < pl.SubnetV4.Bits() {
			errs = append(errs, fmt.Errorf("reserved_subnet_v4: %s is not inside subnet_v4 %s", r, pl.SubnetV4))
		}
	}
	if pl.Quarantine < 0 {
		errs = append(errs, fmt.Errorf("quarantine: %s is negative", pl.Quarantine))
	}
	return errors.Join(errs...)
}

func inAny(a netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Load reads a JSON file of plan fields over the defaults (fields it omits keep their
// default) and validates the result. Quarantine is a duration string such as "10m".
func Load(path string) (Plan, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Plan{}, fmt.Errorf("address plan: %w", err)
	}
	pl := Default()
	aux := struct {
		*Plan
		Quarantine string `json:"quarantine"`
	}{Plan: &pl}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields() // a misspelt field would silently keep a default
	if err := dec.Decode(&aux); err != nil {
		return Plan{}, fmt.Errorf("address plan %s: %w", path, err)
	}
	if aux.Quarantine != "" {
		if pl.Quarantine, err = time.ParseDuration(aux.Quarantine); err != nil {
			return Plan{}, fmt.Errorf("address plan %s: quarantine: %w", path, err)
		}
	}
	if err := pl.Validate(); err != nil {
		return Plan{}, fmt.Errorf("address plan %s: %w", path, err)
	}
	return pl, nil
}
