package ippool

import (
	"encoding/binary"
	"net/netip"
)

// u128 is an address, an offset into a pool or a slot number as a 128-bit integer: the
// arithmetic an IPv6 pool needs without math/big's allocations.
type u128 struct{ hi, lo uint64 }

// fromAddr returns a's value; IPv4 addresses use the low 32 bits.
func fromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// addr returns u as an IPv4 address (low 32 bits) or an IPv6 address.
func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

// sub returns u-v; callers only subtract a pool's base from an address inside it.
func (u u128) sub(v u128) u128 {
	lo := u.lo - v.lo
	borrow := uint64(0)
	if lo > u.lo {
		borrow = 1
	}
	return u128{hi: u.hi - v.hi - borrow, lo: lo}
}

func (u u128) or(v u128) u128 { return u128{hi: u.hi | v.hi, lo: u.lo | v.lo} }

// shl shifts left by n < 128 bits. Go defines shifts by 64 or more as 0, which the
// formulas rely on.
func (u u128) shl(n uint) u128 {
	if n >= 64 {
		return u128{hi: u.lo << (n - 64)}
	}
	return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
}

// shr shifts right by n < 128 bits.
func (u u128) shr(n uint) u128 {
	if n >= 64 {
		return u128{lo: u.hi >> (n - 64)}
	}
	return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
}

// lowMask returns a value with the low n bits set (n ≤ 128).
func lowMask(n uint) u128 {
	switch {
	case n == 0:
		return u128{}
	case n >= 128:
		return u128{hi: ^uint64(0), lo: ^uint64(0)}
	case n >= 64:
		return u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	}
	return u128{lo: 1<<n - 1}
}

// and returns u&v.
func (u u128) and(v u128) u128 { return u128{hi: u.hi & v.hi, lo: u.lo & v.lo} }

// isZero reports whether u is 0.
func (u u128) isZero() bool { return u.hi == 0 && u.lo == 0 }
