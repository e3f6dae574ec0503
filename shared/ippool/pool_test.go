package ippool

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a settable clock for quarantine tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	mp     = netip.MustParsePrefix
	ma     = netip.MustParseAddr
	rsvGW  = mp("10.30.255.0/24")
	rsvNet = mp("10.30.0.0/32")
)

func mustNew(t testing.TB, prefix string, opt Options) *Pool {
	t.Helper()
	p, err := New("test", mp(prefix), opt)
	if err != nil {
		t.Fatalf("New(%s): %v", prefix, err)
	}
	return p
}

func mustAlloc(t testing.TB, p *Pool) netip.Addr {
	t.Helper()
	a, err := p.Allocate()
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	return a
}

// wantErr checks err wraps kind and has exactly the text msg (msg "" skips the text).
func wantErr(t *testing.T, what string, err, kind error, msg string) {
	t.Helper()
	if kind == nil {
		if err != nil {
			t.Errorf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, kind) {
		t.Errorf("%s: error %v, want one wrapping %v", what, err, kind)
		return
	}
	if msg != "" && err.Error() != msg {
		t.Errorf("%s: error text\n  %q\nwant\n  %q", what, err.Error(), msg)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	for _, tc := range []struct {
		prefix netip.Prefix
		opt    Options
		want   string
	}{
		{netip.Prefix{}, Options{}, "prefix is not set"},
		{mp("10.30.0.1/16"), Options{}, "10.30.0.1/16 has host bits set (did you mean 10.30.0.0/16?)"},
		{mp("10.30.0.7/32"), Options{}, "holds a single address"},
		{mp("10.18.0.0/15"), Options{BlockBits: 15}, "block size /15 does not fit in 10.18.0.0/15 (need /16../32)"},
		{mp("10.18.0.0/15"), Options{BlockBits: 33}, "block size /33 does not fit"},
		{mp("fc00::/8"), Options{BlockBits: 129}, "need /9../128"},
		{mp("10.30.0.0/16"), Options{Window: -1}, "window -1 must be between 1 and"},
		{mp("10.30.0.0/16"), Options{Window: maxWindow + 1}, "must be between 1 and"},
		{mp("10.30.0.0/16"), Options{Quarantine: -time.Second}, "quarantine -1s is negative"},
		{mp("10.30.0.0/16"), Options{Reserved: []netip.Prefix{mp("10.31.0.0/24")}}, "reserved 10.31.0.0/24 is not inside 10.30.0.0/16"},
		{mp("10.30.0.0/16"), Options{Reserved: []netip.Prefix{mp("fdff::/64")}}, "reserved fdff::/64 is not inside"},
		{mp("10.30.0.0/16"), Options{Reserved: []netip.Prefix{{}}}, "is not inside"},
	} {
		_, err := New("x", tc.prefix, tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%s, %+v) = %v, want an error containing %q", tc.prefix, tc.opt, err, tc.want)
		}
	}
}

func TestAccessors(t *testing.T) {
	p, err := New("service_v4", mp("10.30.0.0/16"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "service_v4" || p.Prefix() != mp("10.30.0.0/16") {
		t.Errorf("Name, Prefix = %q, %s", p.Name(), p.Prefix())
	}
	for a, want := range map[string]bool{"10.30.0.0": true, "10.30.255.255": true, "10.31.0.0": false, "::ffff:10.30.0.1": false, "fdff::1": false} {
		if got := p.Contains(ma(a)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", a, got, want)
		}
	}
}

func TestAllocateLowestFirstUntilExhausted(t *testing.T) {
	p := mustNew(t, "10.30.0.0/29", Options{Reserved: []netip.Prefix{mp("10.30.0.0/32"), mp("10.30.0.4/31")}})
	if s := p.Stats(); s != (Stats{Size: 5}) {
		t.Errorf("Stats = %+v, want Size 5", s)
	}
	for _, want := range []string{"10.30.0.1", "10.30.0.2", "10.30.0.3", "10.30.0.6", "10.30.0.7"} {
		if got := mustAlloc(t, p); got != ma(want) {
			t.Fatalf("Allocate = %s, want %s", got, want)
		}
	}
	a, err := p.Allocate()
	wantErr(t, "Allocate on a full pool", err, ErrExhausted, "pool 10.30.0.0/29 exhausted")
	if a.IsValid() {
		t.Errorf("Allocate on a full pool returned %s", a)
	}
	_, err = p.AllocatePrefix()
	wantErr(t, "AllocatePrefix on a full pool", err, ErrExhausted, "pool 10.30.0.0/29 exhausted")
	if s := p.Stats(); s != (Stats{Size: 5, Used: 5}) {
		t.Errorf("Stats = %+v", s)
	}
}

func TestExhaustedMessageNamesThePrefix(t *testing.T) {
	p := mustNew(t, "10.30.0.0/16", Options{Reserved: []netip.Prefix{rsvNet, rsvGW}})
	for range p.Stats().Size {
		mustAlloc(t, p)
	}
	_, err := p.Allocate()
	wantErr(t, "Allocate", err, ErrExhausted, "pool 10.30.0.0/16 exhausted")
}

func TestAllocateNeverWrapsOntoQuarantine(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/30", Options{Quarantine: time.Minute, Now: clk.Now})
	a0, a1 := mustAlloc(t, p), mustAlloc(t, p)
	if err := p.Release(a0); err != nil {
		t.Fatal(err)
	}
	// The released address is the lowest, but quarantined: the next fresh one comes first.
	if got := mustAlloc(t, p); got != ma("10.30.0.2") {
		t.Fatalf("Allocate = %s, want 10.30.0.2", got)
	}
	mustAlloc(t, p)
	_, err := p.Allocate()
	wantErr(t, "Allocate with only a quarantined address left", err, ErrExhausted, "pool 10.30.0.0/30 exhausted")
	if s := p.Stats(); s != (Stats{Size: 4, Used: 3, Quarantined: 1}) {
		t.Errorf("Stats = %+v", s)
	}
	clk.Add(time.Minute - time.Nanosecond)
	_, err = p.Allocate()
	wantErr(t, "Allocate a nanosecond before the quarantine ends", err, ErrExhausted, "")
	clk.Add(time.Nanosecond)
	if got := mustAlloc(t, p); got != a0 {
		t.Errorf("Allocate after the quarantine = %s, want %s", got, a0)
	}
	if err := p.Release(a1); err != nil {
		t.Fatal(err)
	}
}

func TestBlockPool(t *testing.T) {
	p := mustNew(t, "10.18.0.0/15", Options{BlockBits: 26, Reserved: []netip.Prefix{mp("10.19.1.192/26"), mp("10.18.0.70/32")}})
	if got := p.Stats().Size; got != 2048-2 {
		t.Errorf("Size = %d, want 2046", got)
	}
	for _, want := range []string{"10.18.0.0/26", "10.18.0.128/26", "10.18.0.192/26"} {
		got, err := p.AllocatePrefix()
		if err != nil || got != mp(want) {
			t.Fatalf("AllocatePrefix = %s, %v; want %s (10.18.0.64/26 holds a reserved address)", got, err, want)
		}
	}
	wantErr(t, "Claim inside a block", p.Claim(ma("10.18.1.1")), ErrOutOfRange,
		"address 10.18.1.1 is not the first address of a /26 block in pool 10.18.0.0/15")
	wantErr(t, "Claim a reserved block", p.Claim(ma("10.19.1.192")), ErrReserved,
		"address 10.19.1.192 is reserved in pool 10.18.0.0/15")
	wantErr(t, "Claim a block overlapping a reserved /32", p.Claim(ma("10.18.0.64")), ErrReserved, "")
	wantErr(t, "Claim a free block", p.Claim(ma("10.19.255.192")), nil, "")
	wantErr(t, "Claim it again", p.Claim(ma("10.19.255.192")), ErrInUse,
		"address 10.19.255.192 is already in use in pool 10.18.0.0/15")
	wantErr(t, "Release inside a block", p.Release(ma("10.18.0.1")), ErrOutOfRange, "")
	// Restoring a lease by any address of a block marks the whole block.
	p.MarkUsed(ma("10.18.1.7"))
	if got, _ := p.AllocatePrefix(); got != mp("10.18.1.64/26") {
		t.Errorf("AllocatePrefix after MarkUsed(10.18.1.7) = %s, want 10.18.1.64/26", got)
	}
}

func TestBlockPoolIPv6(t *testing.T) {
	p := mustNew(t, "fc00::/8", Options{BlockBits: 120})
	for _, want := range []string{"fc00::/120", "fc00::100/120", "fc00::200/120"} {
		if got, err := p.AllocatePrefix(); err != nil || got != mp(want) {
			t.Fatalf("AllocatePrefix = %s, %v; want %s", got, err, want)
		}
	}
	if s := p.Stats(); s.Size != DefaultWindow || s.Used != 3 {
		t.Errorf("Stats = %+v, want the default window and 3 used", s)
	}
	// Beyond the window: granted on request, never allocated.
	far := ma("fcff:ffff:ffff:ffff:ffff:ffff:ffff:ff00")
	wantErr(t, "Claim beyond the window", p.Claim(far), nil, "")
	wantErr(t, "Claim it again", p.Claim(far), ErrInUse, "")
	wantErr(t, "Claim inside a /120", p.Claim(ma("fc00::1:1")), ErrOutOfRange, "")
}

// TestWideBlocks covers slot arithmetic across the 64-bit halves of an IPv6 address.
func TestWideBlocks(t *testing.T) {
	for _, tc := range []struct {
		bits        int
		first, next string
		claim, bad  string
	}{
		{48, "fc00::/48", "fc00:0:1::/48", "fcff:ffff:ffff::", "fc00:0:2::1"},
		{64, "fc00::/64", "fc00:0:0:1::/64", "fcff:ffff:ffff:ffff::", "fc00:0:0:2::1"},
		{65, "fc00::/65", "fc00::8000:0:0:0/65", "fcff:ffff:ffff:ffff:8000::", "fc00::4000:0:0:0"},
		{12, "fc00::/12", "fc10::/12", "fcf0::", "fc20::1"},
	} {
		p := mustNew(t, "fc00::/8", Options{BlockBits: tc.bits, Reserved: []netip.Prefix{mp("fc00::/128")}})
		if got, err := p.AllocatePrefix(); err != nil || got != mp(tc.next) {
			t.Errorf("/%d: AllocatePrefix = %s, %v; want %s (%s is reserved)", tc.bits, got, err, tc.next, tc.first)
		}
		wantErr(t, fmt.Sprintf("/%d: Claim %s", tc.bits, tc.claim), p.Claim(ma(tc.claim)), nil, "")
		wantErr(t, fmt.Sprintf("/%d: Claim %s again", tc.bits, tc.claim), p.Claim(ma(tc.claim)), ErrInUse, "")
		wantErr(t, fmt.Sprintf("/%d: Claim %s", tc.bits, tc.bad), p.Claim(ma(tc.bad)), ErrOutOfRange, "")
		wantErr(t, fmt.Sprintf("/%d: Claim %s", tc.bits, tc.first), p.Claim(ma(strings.TrimSuffix(tc.first, fmt.Sprintf("/%d", tc.bits)))), ErrReserved, "")
	}
}

func TestReservedPrefixes(t *testing.T) {
	// Host bits in a reserved prefix are ignored; a reserved prefix may cover the pool.
	p := mustNew(t, "10.30.0.0/29", Options{Reserved: []netip.Prefix{mp("10.30.0.1/31"), mp("10.30.0.0/32")}})
	if got := mustAlloc(t, p); got != ma("10.30.0.2") {
		t.Errorf("Allocate = %s, want 10.30.0.2", got)
	}
	wantErr(t, "Claim 10.30.0.1", p.Claim(ma("10.30.0.1")), ErrReserved, "")
	if s := p.Stats(); s != (Stats{Size: 6, Used: 1}) {
		t.Errorf("Stats = %+v", s)
	}
	p = mustNew(t, "10.30.0.0/29", Options{Reserved: []netip.Prefix{mp("10.0.0.0/8")}})
	if s := p.Stats(); s.Size != 0 {
		t.Errorf("Size = %d, want 0", s.Size)
	}
	_, err := p.Allocate()
	wantErr(t, "Allocate from an all-reserved pool", err, ErrExhausted, "pool 10.30.0.0/29 exhausted")
}

func TestClaimErrors(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/16", Options{Reserved: []netip.Prefix{rsvNet, rsvGW}, Quarantine: time.Hour, Now: clk.Now})
	for _, a := range []string{"10.30.0.7", "10.30.0.8"} {
		if err := p.Claim(ma(a)); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Release(ma("10.30.0.8")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		kind error
		msg  string
	}{
		{"10.31.0.1", ErrOutOfRange, "address 10.31.0.1 is outside pool 10.30.0.0/16"},
		{"::ffff:10.30.0.1", ErrOutOfRange, "address ::ffff:10.30.0.1 is outside pool 10.30.0.0/16"},
		{"fdff::1", ErrOutOfRange, "address fdff::1 is outside pool 10.30.0.0/16"},
		{"10.30.0.0", ErrReserved, "address 10.30.0.0 is reserved in pool 10.30.0.0/16"},
		{"10.30.255.253", ErrReserved, "address 10.30.255.253 is reserved in pool 10.30.0.0/16"},
		{"10.30.0.7", ErrInUse, "address 10.30.0.7 is already in use in pool 10.30.0.0/16"},
		{"10.30.0.8", ErrQuarantined, "address 10.30.0.8 is in quarantine in pool 10.30.0.0/16 until 2025-01-02T04:04:05Z"},
	} {
		wantErr(t, "Claim("+tc.addr+")", p.Claim(ma(tc.addr)), tc.kind, tc.msg)
	}
	wantErr(t, "Claim(zero)", p.Claim(netip.Addr{}), ErrOutOfRange, "")
	clk.Add(time.Hour)
	wantErr(t, "Claim after the quarantine", p.Claim(ma("10.30.0.8")), nil, "")
	if s := p.Stats(); s.Used != 2 || s.Quarantined != 0 || s.Size != 65536-257 {
		t.Errorf("Stats = %+v", s)
	}
	// A claimed address is skipped by Allocate.
	if err := p.Claim(ma("10.30.0.1")); err != nil {
		t.Fatal(err)
	}
	if got := mustAlloc(t, p); got != ma("10.30.0.2") {
		t.Errorf("Allocate = %s, want 10.30.0.2", got)
	}
}

func TestRelease(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/16", Options{Reserved: []netip.Prefix{rsvNet, rsvGW}, Quarantine: 10 * time.Minute, Now: clk.Now})
	a := mustAlloc(t, p)
	wantErr(t, "Release a free address", p.Release(ma("10.30.9.9")), ErrNotInUse, "address 10.30.9.9 is not in use in pool 10.30.0.0/16")
	wantErr(t, "Release a reserved address", p.Release(ma("10.30.255.253")), ErrReserved, "")
	wantErr(t, "Release outside", p.Release(ma("10.29.0.1")), ErrOutOfRange, "address 10.29.0.1 is outside pool 10.30.0.0/16")
	wantErr(t, "Release", p.Release(a), nil, "")
	wantErr(t, "Release twice", p.Release(a), ErrNotInUse,
		"address 10.30.0.1 in pool 10.30.0.0/16 was already released (in quarantine until 2025-01-02T03:14:05Z)")
	if s := p.Stats(); s.Used != 0 || s.Quarantined != 1 {
		t.Errorf("Stats = %+v", s)
	}
	clk.Add(10 * time.Minute)
	wantErr(t, "Release after the quarantine", p.Release(a), ErrNotInUse, "address 10.30.0.1 is not in use in pool 10.30.0.0/16")
	if s := p.Stats(); s.Used != 0 || s.Quarantined != 0 {
		t.Errorf("Stats = %+v", s)
	}
}

func TestReleaseWithoutQuarantine(t *testing.T) {
	p := mustNew(t, "10.30.0.0/24", Options{})
	a := mustAlloc(t, p)
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.Used != 0 || s.Quarantined != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if got := mustAlloc(t, p); got != a {
		t.Errorf("Allocate = %s, want %s back at once", got, a)
	}
}

func TestUnreserve(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/24", Options{Reserved: []netip.Prefix{mp("10.30.0.0/32")}, Quarantine: time.Hour, Now: clk.Now})
	a := mustAlloc(t, p)
	p.Unreserve(a)
	if got := mustAlloc(t, p); got != a {
		t.Errorf("Allocate after Unreserve = %s, want %s again (no quarantine)", got, a)
	}
	if err := p.Claim(ma("10.30.0.9")); err != nil {
		t.Fatal(err)
	}
	p.Unreserve(ma("10.30.0.9"))
	if err := p.Claim(ma("10.30.0.9")); err != nil {
		t.Errorf("Claim after Unreserve: %v", err)
	}
	// Not used: nothing happens.
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	for _, x := range []string{"10.30.0.1", "10.30.0.200", "10.30.0.0", "10.31.0.0"} {
		p.Unreserve(ma(x))
	}
	p.Unreserve(netip.Addr{})
	if s := p.Stats(); s != (Stats{Size: 255, Used: 1, Quarantined: 1}) {
		t.Errorf("Stats = %+v", s)
	}
	wantErr(t, "Claim the quarantined address", p.Claim(a), ErrQuarantined, "")
}

func TestMarkUsed(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/24", Options{Reserved: []netip.Prefix{mp("10.30.0.0/32")}, Quarantine: time.Hour, Now: clk.Now})
	for range 2 { // idempotent
		p.MarkUsed(ma("10.30.0.1"))
		p.MarkUsed(ma("10.30.0.3"))
		p.MarkUsed(ma("10.31.0.3"))        // outside: ignored
		p.MarkUsed(ma("10.30.0.0"))        // reserved: ignored
		p.MarkUsed(ma("fdff::1"))          // other family: ignored
		p.MarkUsed(netip.Addr{})           // zero: ignored
		p.MarkUsed(ma("::ffff:10.30.0.5")) // mapped: outside
	}
	if s := p.Stats(); s != (Stats{Size: 255, Used: 2}) {
		t.Errorf("Stats = %+v", s)
	}
	if got := mustAlloc(t, p); got != ma("10.30.0.2") {
		t.Errorf("Allocate = %s, want 10.30.0.2", got)
	}
	wantErr(t, "Claim a restored address", p.Claim(ma("10.30.0.3")), ErrInUse, "")
	// MarkUsed ends a quarantine: the store says the address is leased again.
	if err := p.Release(ma("10.30.0.3")); err != nil {
		t.Fatal(err)
	}
	p.MarkUsed(ma("10.30.0.3"))
	if s := p.Stats(); s != (Stats{Size: 255, Used: 3}) {
		t.Errorf("Stats = %+v", s)
	}
	wantErr(t, "Release a restored address", p.Release(ma("10.30.0.3")), nil, "")
}

func TestMarkQuarantined(t *testing.T) {
	clk := newClock()
	now := clk.Now()
	p := mustNew(t, "10.30.0.0/24", Options{Reserved: []netip.Prefix{mp("10.30.0.0/32")}, Quarantine: time.Hour, Now: clk.Now})
	p.MarkQuarantined(ma("10.30.0.1"), now.Add(-30*time.Minute)) // until now+30m
	p.MarkQuarantined(ma("10.30.0.2"), now.Add(-time.Hour))      // over: free
	p.MarkQuarantined(ma("10.30.0.3"), time.Time{})              // long over: free
	p.MarkQuarantined(ma("10.30.1.3"), now)                      // outside: ignored
	p.MarkQuarantined(ma("10.30.0.0"), now)                      // reserved: ignored
	p.MarkUsed(ma("10.30.0.4"))
	p.MarkQuarantined(ma("10.30.0.4"), now) // used stays used
	p.MarkQuarantined(ma("10.30.0.5"), now.Add(-10*time.Minute))
	p.MarkQuarantined(ma("10.30.0.5"), now.Add(-50*time.Minute)) // shorter: ignored
	p.MarkQuarantined(ma("10.30.0.6"), now.Add(-50*time.Minute))
	p.MarkQuarantined(ma("10.30.0.6"), now.Add(-10*time.Minute)) // longer: kept
	if s := p.Stats(); s != (Stats{Size: 255, Used: 1, Quarantined: 3}) {
		t.Errorf("Stats = %+v", s)
	}
	wantErr(t, "Claim", p.Claim(ma("10.30.0.1")), ErrQuarantined,
		"address 10.30.0.1 is in quarantine in pool 10.30.0.0/24 until 2025-01-02T03:34:05Z")
	wantErr(t, "Claim", p.Claim(ma("10.30.0.4")), ErrInUse, "")
	for _, want := range []string{"10.30.0.2", "10.30.0.3", "10.30.0.7"} {
		if got := mustAlloc(t, p); got != ma(want) {
			t.Errorf("Allocate = %s, want %s", got, want)
		}
	}
	clk.Add(30 * time.Minute)
	if got := mustAlloc(t, p); got != ma("10.30.0.1") {
		t.Errorf("Allocate = %s, want 10.30.0.1 after its quarantine", got)
	}
	wantErr(t, "Claim the shorter-marked one", p.Claim(ma("10.30.0.5")), ErrQuarantined, "")
	wantErr(t, "Claim the longer-marked one", p.Claim(ma("10.30.0.6")), ErrQuarantined, "")
	clk.Add(20 * time.Minute)
	wantErr(t, "Claim after 50m", p.Claim(ma("10.30.0.5")), nil, "")
	wantErr(t, "Claim after 50m", p.Claim(ma("10.30.0.6")), nil, "")
}

func TestWindow(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "fdff:2000::/21", Options{Window: 3, Quarantine: time.Minute, Now: clk.Now})
	if s := p.Stats(); s.Size != 3 {
		t.Errorf("Size = %d, want 3", s.Size)
	}
	for _, want := range []string{"fdff:2000::", "fdff:2000::1", "fdff:2000::2"} {
		if got := mustAlloc(t, p); got != ma(want) {
			t.Fatalf("Allocate = %s, want %s", got, want)
		}
	}
	_, err := p.Allocate()
	wantErr(t, "Allocate", err, ErrExhausted, "pool fdff:2000::/21 exhausted")
	for _, a := range []string{"fdff:2000::3", "fdff:27ff:ffff:ffff:ffff:ffff:ffff:ffff", "fdff:2000::1:0:0:0"} {
		wantErr(t, "Claim "+a, p.Claim(ma(a)), nil, "")
		wantErr(t, "Claim again "+a, p.Claim(ma(a)), ErrInUse, "")
	}
	if s := p.Stats(); s != (Stats{Size: 3, Used: 6}) {
		t.Errorf("Stats = %+v", s)
	}
	far := ma("fdff:27ff:ffff:ffff:ffff:ffff:ffff:ffff")
	wantErr(t, "Release beyond the window", p.Release(far), nil, "")
	wantErr(t, "Claim in quarantine", p.Claim(far), ErrQuarantined, "")
	p.Unreserve(far) // quarantined: no effect
	wantErr(t, "Claim in quarantine", p.Claim(far), ErrQuarantined, "")
	p.MarkUsed(far)
	if s := p.Stats(); s != (Stats{Size: 3, Used: 6}) {
		t.Errorf("Stats after MarkUsed = %+v", s)
	}
	wantErr(t, "Release", p.Release(far), nil, "")
	clk.Add(time.Minute)
	wantErr(t, "Claim after quarantine", p.Claim(far), nil, "")
	p.Unreserve(far)
	wantErr(t, "Release after Unreserve", p.Release(far), ErrNotInUse, "")
	p.MarkQuarantined(far, clk.Now())
	if s := p.Stats(); s != (Stats{Size: 3, Used: 5, Quarantined: 1}) {
		t.Errorf("Stats = %+v", s)
	}
}

// TestFillAndRefill checks the bitmap at level boundaries: fill the window in order,
// exhaust it, free a scattered set and get exactly that set back in ascending order.
func TestFillAndRefill(t *testing.T) {
	for _, n := range []int{1, 2, 63, 64, 65, 4095, 4096, 4097, 64*4096 + 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			p := mustNew(t, "fd00::/64", Options{Window: n})
			base := fromAddr(ma("fd00::"))
			for i := range n {
				if got, want := mustAlloc(t, p), base.or(u128{lo: uint64(i)}).addr(false); got != want {
					t.Fatalf("Allocate #%d = %s, want %s", i, got, want)
				}
			}
			if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) {
				t.Fatalf("Allocate on a full window: %v", err)
			}
			var freed []netip.Addr
			for i := n - 1; i >= 0; i -= 1 + i%97 { // descending, so the pool must sort
				a := base.or(u128{lo: uint64(i)}).addr(false)
				p.Unreserve(a)
				freed = append(freed, a)
			}
			for j := len(freed) - 1; j >= 0; j-- {
				if got := mustAlloc(t, p); got != freed[j] {
					t.Fatalf("refill: Allocate = %s, want %s", got, freed[j])
				}
			}
			if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) {
				t.Fatalf("Allocate on a refilled window: %v", err)
			}
			if s := p.Stats(); s.Used != uint64(n) || s.Size != uint64(n) {
				t.Errorf("Stats = %+v", s)
			}
		})
	}
}

func TestAllocateDoesNotAllocate(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "fdff:2000::/21", Options{Quarantine: time.Second, Now: clk.Now})
	for range 1000 {
		mustAlloc(t, p)
	}
	a := mustAlloc(t, p)
	if n := testing.AllocsPerRun(1000, func() {
		p.Unreserve(a)
		a, _ = p.Allocate()
	}); n != 0 {
		t.Errorf("Allocate+Unreserve allocates %v times", n)
	}
}

// TestStaleQuarantineEntriesAreBounded: quarantines cut short by MarkUsed leave heap
// entries behind; the heap must not grow without bound.
func TestStaleQuarantineEntriesAreBounded(t *testing.T) {
	clk := newClock()
	p := mustNew(t, "10.30.0.0/24", Options{Quarantine: time.Hour, Now: clk.Now})
	a := mustAlloc(t, p)
	for range 10000 {
		if err := p.Release(a); err != nil {
			t.Fatal(err)
		}
		p.MarkUsed(a)
	}
	if len(p.heap) > 130 {
		t.Errorf("heap holds %d entries for %d quarantines", len(p.heap), len(p.quar))
	}
}

// TestWindowMemory: a full default window of single addresses must cost well under 1 MiB.
func TestWindowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a million slots")
	}
	var before, empty, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := mustNew(t, "fdff:2000::/21", Options{})
	runtime.GC()
	runtime.ReadMemStats(&empty)
	for range DefaultWindow {
		if _, err := p.Allocate(); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(p)
	emptyKiB := (int64(empty.HeapAlloc) - int64(before.HeapAlloc)) / 1024
	fullKiB := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / 1024
	t.Logf("window of %d slots: %d KiB empty, %d KiB full", DefaultWindow, emptyKiB, fullKiB)
	if emptyKiB > 16 || fullKiB > 256 {
		t.Errorf("window of %d slots costs %d KiB empty, %d KiB full; want ≤ 16 and ≤ 256", DefaultWindow, emptyKiB, fullKiB)
	}
	if _, err := p.Allocate(); !errors.Is(err, ErrExhausted) {
		t.Errorf("Allocate on a full window: %v", err)
	}
}

// TestConcurrentAllocate: goroutines allocating and releasing from one pool never get the
// same address (run with -race).
func TestConcurrentAllocate(t *testing.T) {
	const workers, each = 8, 1500
	p := mustNew(t, "10.30.0.0/16", Options{Reserved: []netip.Prefix{rsvNet, rsvGW}, Quarantine: time.Hour})
	got := make([][]netip.Addr, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				a, err := p.Allocate()
				if err != nil {
					t.Error(err)
					return
				}
				got[w] = append(got[w], a)
				if i%3 == 0 {
					if err := p.Release(a); err != nil {
						t.Error(err)
					}
				}
				if i%100 == 0 {
					p.Stats()
				}
			}
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, as := range got {
		for _, a := range as {
			if seen[a] {
				t.Fatalf("%s handed out twice", a)
			}
			seen[a] = true
		}
	}
	released := uint64(workers * ((each + 2) / 3))
	if s := p.Stats(); s.Used+s.Quarantined != workers*each || s.Quarantined != released {
		t.Errorf("Stats = %+v, want %d used and %d quarantined", s, workers*each-released, released)
	}
}

func TestPeekDoesNotTake(t *testing.T) {
	p, err := New("t", netip.MustParsePrefix("10.30.0.0/29"), Options{Reserved: []netip.Prefix{netip.MustParsePrefix("10.30.0.0/32")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Claim(netip.MustParseAddr("10.30.0.2")); err != nil {
		t.Fatal(err)
	}
	got := p.Peek(3)
	want := []string{"10.30.0.1", "10.30.0.3", "10.30.0.4"}
	if len(got) != 3 || got[0].String() != want[0] || got[1].String() != want[1] || got[2].String() != want[2] {
		t.Fatalf("Peek(3) = %v, want %v", got, want)
	}
	if st := p.Stats(); st.Used != 1 {
		t.Fatalf("Peek changed Used to %d", st.Used)
	}
	if a, _ := p.Allocate(); a.String() != "10.30.0.1" {
		t.Fatalf("Allocate after Peek = %s, want 10.30.0.1", a)
	}
	if got := p.Peek(100); len(got) != 5 {
		t.Fatalf("Peek beyond the free count returned %d addresses, want the 5 free", len(got))
	}
}
