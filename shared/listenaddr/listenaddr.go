// Package listenaddr answers questions about listen addresses (host:port) that several
// tiers ask before serving without authentication.
package listenaddr

import "net"

// IsLoopback reports whether listen (host:port) binds only loopback: "localhost" or a
// loopback IP. An empty host (all interfaces) is not loopback.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Port returns ":port" of listen, or fallback when listen has none.
func Port(listen, fallback string) string {
	if _, p, err := net.SplitHostPort(listen); err == nil {
		return ":" + p
	}
	return fallback
}
