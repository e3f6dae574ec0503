package registry

import "net/netip"

// PeekServiceIPs returns up to n Service IPs the next deploys would get, without taking
// them (the reference API's look-ahead): family 4 from the shared IPv4 pool, 6 from the
// Round Robin IPv6 pool.
func (r *Registry) PeekServiceIPs(family, n int) []netip.Addr {
	if family == 6 {
		return r.rr6.Peek(n)
	}
	return r.service4.Peek(n)
}
