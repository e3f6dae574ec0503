package netsetup

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
)

var (
	subnet  = netip.MustParsePrefix("10.18.0.64/26")
	subnet6 = netip.MustParsePrefix("fc00::100/120")
)

func mustAddresses(t *testing.T, s4, s6 string) *Addresses {
	t.Helper()
	a, err := NewAddresses(netip.MustParsePrefix(s4), netip.MustParsePrefix(s6))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustAllocate(t *testing.T, a *Addresses) NamespaceIPs {
	t.Helper()
	p, err := a.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAddressesFill(t *testing.T) {
	a := mustAddresses(t, "10.18.0.64/26", "fc00::100/120")
	if a.Cap() != 61 {
		t.Fatalf("Cap = %d, want 61 (64 less network, bridge, broadcast)", a.Cap())
	}
	for i := range 61 {
		p := mustAllocate(t, a)
		want4 := netip.AddrFrom4([4]byte{10, 18, 0, byte(66 + i)})
		want6 := netip.AddrFrom16([16]byte{0: 0xfc, 14: 1, 15: byte(2 + i)})
		if p.V4 != want4 || p.V6 != want6 {
			t.Fatalf("allocation %d = %s %s, want %s %s", i, p.V4, p.V6, want4, want6)
		}
	}
	_, err := a.Allocate()
	if !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("Allocate on a full subnet = %v, want ErrSubnetFull", err)
	}
	if want := "netsetup: worker subnet 10.18.0.64/26 is full: 61 instances"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if a.InUse() != 61 {
		t.Errorf("InUse = %d, want 61", a.InUse())
	}
	// The only free pair is the one released, wherever the search starts.
	if err := a.Release(netip.MustParseAddr("10.18.0.100")); err != nil {
		t.Fatal(err)
	}
	if p := mustAllocate(t, a); p.V4 != netip.MustParseAddr("10.18.0.100") || p.V6 != netip.MustParseAddr("fc00::124") {
		t.Errorf("after release got %s %s, want 10.18.0.100 fc00::124", p.V4, p.V6)
	}
}

func TestAddressesReuseLate(t *testing.T) {
	a := mustAddresses(t, "10.18.0.64/26", "fc00::100/120")
	first := mustAllocate(t, a)
	mustAllocate(t, a)
	// Release by the IPv6 address: it names the same pair.
	if err := a.Release(first.V6); err != nil {
		t.Fatal(err)
	}
	if p := mustAllocate(t, a); p.V4 != netip.MustParseAddr("10.18.0.68") {
		t.Errorf("next allocation %s, want 10.18.0.68: a released pair waits until the others are used", p.V4)
	}
	// Only once every other pair is in use does the released one come back.
	for a.InUse() < a.Cap()-1 {
		if p := mustAllocate(t, a); p == first {
			t.Fatalf("%s reused while other pairs were free", p.V4)
		}
	}
	if p := mustAllocate(t, a); p != first {
		t.Errorf("last free pair = %s, want %s", p.V4, first.V4)
	}
	if err := a.Release(first.V4); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(first.V4); err == nil {
		t.Error("releasing 10.18.0.66 twice succeeded")
	}
}

func TestAddressesClaim(t *testing.T) {
	a := mustAddresses(t, "10.18.0.64/26", "fc00::100/120")
	p, err := a.Claim(netip.MustParseAddr("10.18.0.66"))
	if err != nil || p.V6 != netip.MustParseAddr("fc00::102") {
		t.Fatalf("Claim = %v %v", p, err)
	}
	if _, err := a.Claim(netip.MustParseAddr("fc00::102")); err == nil || !strings.Contains(err.Error(), "already handed out") {
		t.Errorf("claiming a pair twice = %v", err)
	}
	if p := mustAllocate(t, a); p.V4 != netip.MustParseAddr("10.18.0.67") {
		t.Errorf("Allocate after Claim = %s, want 10.18.0.67", p.V4)
	}
}

func TestAddressesRefuse(t *testing.T) {
	a := mustAddresses(t, "10.18.0.64/26", "fc00::100/120")
	for _, ip := range []string{
		"10.18.0.64", "10.18.0.65", "10.18.0.127", "10.18.0.128", "10.18.0.63",
		"fc00::100", "fc00::101", "fc00::200", "::ffff:10.18.0.65",
	} {
		if _, err := a.Claim(netip.MustParseAddr(ip)); !errors.Is(err, errNotInstance) {
			t.Errorf("Claim(%s) = %v, want a not-an-instance-address error", ip, err)
		}
		if err := a.Release(netip.MustParseAddr(ip)); !errors.Is(err, errNotInstance) {
			t.Errorf("Release(%s) = %v, want a not-an-instance-address error", ip, err)
		}
	}
	// IPv6 has room past the IPv4 broadcast offset, but no partner there.
	if _, err := a.Claim(netip.MustParseAddr("fc00::13f")); err == nil || !strings.Contains(err.Error(), "no partner") {
		t.Errorf("Claim(fc00::13f) = %v, want a no-partner error", err)
	}
	if err := a.Release(netip.MustParseAddr("10.18.0.70")); err == nil || !strings.Contains(err.Error(), "not handed out") {
		t.Errorf("Release of a free pair = %v", err)
	}
}

func TestAddressesSizes(t *testing.T) {
	for _, c := range []struct {
		s4, s6 string
		cap    int
	}{
		{"10.18.0.64/26", "fc00::100/120", 61},
		{"10.18.0.64/26", "fc00::100/122", 61}, // 64 in IPv6 too: no broadcast to skip
		{"10.18.0.64/26", "fc00::100/123", 30},
		{"10.18.0.0/24", "fc00::100/120", 253},
		{"10.18.0.0/30", "fc00::/126", 1},
		{"10.18.0.0/16", "fc00::/64", 65533},
	} {
		if got := mustAddresses(t, c.s4, c.s6).Cap(); got != c.cap {
			t.Errorf("Cap(%s, %s) = %d, want %d", c.s4, c.s6, got, c.cap)
		}
	}
	for _, c := range []struct{ s4, s6, want string }{
		{"fc00::/120", "fc00::/120", "is not IPv4"},
		{"10.18.0.64/26", "10.18.0.64/26", "is not IPv6"},
		{"10.18.0.65/26", "fc00::100/120", "canonical"},
		{"10.18.0.64/31", "fc00::100/120", "too small"},
		{"10.18.0.64/26", "fc00::100/127", "too small"},
		{"10.0.0.0/8", "fc00::/64", "more than"},
	} {
		_, err := NewAddresses(netip.MustParsePrefix(c.s4), netip.MustParsePrefix(c.s6))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewAddresses(%s, %s) = %v, want an error containing %q", c.s4, c.s6, err, c.want)
		}
	}
	if _, err := NewAddresses(netip.Prefix{}, subnet6); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("NewAddresses without an IPv4 subnet = %v", err)
	}
}

func TestAddressesConcurrent(t *testing.T) {
	a := mustAddresses(t, "10.18.0.64/26", "fc00::100/120")
	var mu sync.Mutex
	seen := map[netip.Addr]bool{}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				p, err := a.Allocate()
				if err != nil {
					continue // full for a moment: others hold the rest
				}
				mu.Lock()
				if seen[p.V4] {
					t.Errorf("%s handed out twice", p.V4)
				}
				seen[p.V4] = true
				mu.Unlock()

				mu.Lock()
				delete(seen, p.V4)
				mu.Unlock()
				if err := a.Release(p.V4); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if a.InUse() != 0 {
		t.Errorf("InUse = %d after every pair was released", a.InUse())
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Subnet: subnet, Subnet6: subnet6}
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"long bridge", func(c *Config) { c.Bridge = "semnet-bridge-01" }, "longer than"},
		{"slash", func(c *Config) { c.TUN = "a/b" }, "'/'"},
		{"same names", func(c *Config) { c.Bridge, c.TUN = "x0", "x0" }, "both named"},
		{"mtu", func(c *Config) { c.MTU = 1200 }, "1280"},
		{"no v6", func(c *Config) { c.Subnet6 = netip.Prefix{} }, "IPv6 worker subnet is missing"},
		{"overlap", func(c *Config) { c.ServiceRanges = []netip.Prefix{netip.MustParsePrefix("10.18.0.0/16")} }, "overlaps worker subnet 10.18.0.64/26"},
		{"unmasked range", func(c *Config) { c.ServiceRanges = []netip.Prefix{netip.MustParsePrefix("10.30.0.1/16")} }, "canonical"},
	} {
		cfg := ok
		c.edit(&cfg)
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
