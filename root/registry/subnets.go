package registry

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/semnet/semnet/root/store"
)

// AllocateSubnet hands a node a worker subnet pair: the next free IPv4 block (a /26 by
// default) and the IPv6 block (/120) with the same number, so the pair is derivable from
// either half.
func (r *Registry) AllocateSubnet(ctx context.Context, clusterID, nodeID string) (store.Subnet, error) {
	if err := validID("cluster_id", clusterID); err != nil {
		return store.Subnet{}, err
	}
	if err := validID("node_id", nodeID); err != nil {
		return store.Subnet{}, err
	}
	cs := []*claim{{pool: r.subnet4, field: "subnet_v4"}}
	var out store.Subnet
	err := r.withClaims(ctx, cs, func() error {
		v4 := netip.PrefixFrom(cs[0].got, r.plan.SubnetV4Bits)
		out = store.Subnet{V4: v4, V6: r.subnetV6(v4), ClusterID: clusterID, NodeID: nodeID, CreatedAt: r.now().UTC()}
		return r.store.CreateSubnet(ctx, out)
	})
	if err != nil {
		return store.Subnet{}, wrap(err, "allocate worker subnet for node %s", nodeID)
	}
	r.log.Info("worker subnet allocated", "cluster", clusterID, "node", nodeID, "subnet_v4", out.V4, "subnet_v6", out.V6)
	return out, nil
}

// subnetV6 maps the i-th IPv4 worker subnet to the i-th IPv6 one.
func (r *Registry) subnetV6(v4 netip.Prefix) netip.Prefix {
	base4 := r.plan.SubnetV4.Addr().As4()
	a4 := v4.Addr().As4()
	u := func(b [4]byte) uint64 { return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3]) }
	i := (u(a4) - u(base4)) >> (32 - r.plan.SubnetV4Bits)
	b := r.plan.SubnetV6.Addr().As16()
	// Add i << (128 - SubnetV6Bits) to the 128-bit base, big-endian, with carry.
	shift := 128 - r.plan.SubnetV6Bits
	lo := uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 | uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15])
	hi := uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 | uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
	var addLo, addHi uint64
	if shift < 64 {
		addLo = i << shift
		if shift > 0 {
			addHi = i >> (64 - shift)
		}
	} else {
		addHi = i << (shift - 64)
	}
	nlo := lo + addLo
	if nlo < lo {
		hi++
	}
	hi += addHi
	var out [16]byte
	for k := 0; k < 8; k++ {
		out[k] = byte(hi >> (56 - 8*k))
		out[8+k] = byte(nlo >> (56 - 8*k))
	}
	return netip.PrefixFrom(netip.AddrFrom16(out), r.plan.SubnetV6Bits)
}

// ReleaseSubnet returns a node's subnet pair into quarantine.
func (r *Registry) ReleaseSubnet(ctx context.Context, v4 netip.Prefix) error {
	if !r.subnet4.Contains(v4.Addr()) || v4.Bits() != r.plan.SubnetV4Bits || v4.Masked() != v4 {
		return invalidf("subnet %s is not a /%d worker subnet of %s", v4, r.plan.SubnetV4Bits, r.plan.SubnetV4)
	}
	if err := r.store.DeleteSubnet(ctx, v4); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("worker subnet %s is not allocated: %w", v4, err)
		}
		return fmt.Errorf("release worker subnet %s: %w", v4, err)
	}
	r.release(v4.Addr())
	r.log.Info("worker subnet released", "subnet_v4", v4)
	return nil
}

// Subnets lists allocated worker subnets.
func (r *Registry) Subnets(ctx context.Context) ([]store.Subnet, error) {
	return r.store.ListSubnets(ctx)
}
