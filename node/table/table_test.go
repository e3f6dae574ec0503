package table_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

var (
	t0 = time.Unix(1_700_000_000, 0) // tests run on their own clock
	ip = netip.MustParseAddr

	munich = geo.Point{Lat: 48.137, Lon: 11.575}
	berlin = geo.Point{Lat: 52.520, Lon: 13.405} // ~500 km from Munich
	paris  = geo.Point{Lat: 48.857, Lon: 2.352}  // ~680 km from Munich
	lyon   = geo.Point{Lat: 45.764, Lon: 4.835}  // Paris ~390 km, Munich ~590, Berlin ~980
)

const job = "app.ns.web.ns"

// The job's service addresses.
var (
	rr4, rr6 = ip("10.30.0.1"), ip("fdff:2000::1")
	cl4, cl6 = ip("10.30.0.2"), ip("fdff:1000::2")
)

// Instance n's addresses: Instance IP, namespace IP (node n's subnet), tunnel endpoint.
func inst4(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 30, 1, byte(n)}) }
func inst6(n int) netip.Addr { return ip(fmt.Sprintf("fdff::1:%d", n)) }
func ns4(n int) netip.Addr   { return netip.AddrFrom4([4]byte{10, 18, byte(n), 2}) }
func ns6(n int) netip.Addr   { return ip(fmt.Sprintf("fc00::%d:2", n)) }
func host(n int) netip.Addr  { return netip.AddrFrom4([4]byte{192, 0, 2, byte(n)}) }

// instance returns a usable instance n of job at loc (nil: no location); mods adjust it.
func instance(n int, loc *geo.Point, mods ...func(*mqttapi.TableInstance)) mqttapi.TableInstance {
	ti := mqttapi.TableInstance{
		InstanceNumber: n, InstanceIP: inst4(n), InstanceIPv6: inst6(n),
		NamespaceIP: ns4(n), NamespaceIPv6: ns6(n), HostIP: host(n), HostPort: 50103,
		Status: "running",
		ServiceIP: []mqttapi.ServiceIP{
			{IPType: mqttapi.IPTypeRR, Address: rr4, AddressV6: rr6},
			{IPType: mqttapi.IPTypeClosest, Address: cl4, AddressV6: cl6},
			{IPType: mqttapi.IPTypeInstanceIP, Address: inst4(n), AddressV6: inst6(n)},
		},
	}
	if loc != nil {
		lat, lon := loc.Lat, loc.Lon
		ti.Lat, ti.Lon = &lat, &lon
	}
	for _, m := range mods {
		m(&ti)
	}
	return ti
}

func status(s string) func(*mqttapi.TableInstance) {
	return func(ti *mqttapi.TableInstance) { ti.Status = s }
}

func result(rev uint64, insts ...mqttapi.TableInstance) *mqttapi.TableQueryResult {
	return &mqttapi.TableQueryResult{AppName: job, QueryKey: job, Revision: rev, InstanceList: insts}
}

// threeCities is the job with instance 1 in Munich, 2 in Berlin, 3 in Paris; mods apply
// to instance n = index+1.
func threeCities(rev uint64, mods ...func(*mqttapi.TableInstance)) *mqttapi.TableQueryResult {
	locs := []geo.Point{munich, berlin, paris}
	var insts []mqttapi.TableInstance
	for i := range locs {
		in := instance(i+1, &locs[i])
		if i < len(mods) && mods[i] != nil {
			mods[i](&in)
		}
		insts = append(insts, in)
	}
	return result(rev, insts...)
}

func newTable(t testing.TB, loc *geo.Point, rs ...*mqttapi.TableQueryResult) *table.Table {
	t.Helper()
	tb := table.New(table.Config{Location: loc})
	for _, r := range rs {
		if _, err := tb.Apply(r, t0); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	return tb
}

// want is the instance a lookup should find, by number and family.
func checkTarget(t *testing.T, what string, got table.Target, st table.Status, n int, v6 bool) {
	t.Helper()
	if st != table.Found {
		t.Fatalf("%s: status %v, want found", what, st)
	}
	want := table.Target{NamespaceIP: ns4(n), InstanceIP: inst4(n), Endpoint: netip.AddrPortFrom(host(n), 50103), Job: job, InstanceNumber: n}
	if v6 {
		want.NamespaceIP, want.InstanceIP = ns6(n), inst6(n)
	}
	want.Local = got.Local // checked where it matters
	if got != want {
		t.Fatalf("%s: got %+v, want %+v", what, got, want)
	}
}

func TestLookup(t *testing.T) {
	tb := newTable(t, &munich, threeCities(1, nil, nil, status("failed")))
	for _, c := range []struct {
		name string
		dst  netip.Addr
		st   table.Status
		n    int // instance expected when found
	}{
		{"RR v4 first", rr4, table.Found, 1},
		{"Closest v4", cl4, table.Found, 1},
		{"Closest v6", cl6, table.Found, 1},
		{"Instance IP v4", inst4(2), table.Found, 2},
		{"Instance IP v6", inst6(2), table.Found, 2},
		{"failed instance's Instance IP", inst4(3), table.NoInstance, 0},
		{"unknown address", ip("10.30.9.9"), table.Unknown, 0},
		{"namespace IP is no service address", ns4(1), table.Unknown, 0},
		{"IPv4-mapped address must be unmapped", netip.AddrFrom16(rr4.As16()), table.Unknown, 0},
		{"zero address", netip.Addr{}, table.Unknown, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, st := tb.Lookup(c.dst, t0)
			if c.st != table.Found {
				if st != c.st || got != (table.Target{}) {
					t.Fatalf("Lookup(%v) = %+v, %v; want %v", c.dst, got, st, c.st)
				}
				return
			}
			checkTarget(t, c.dst.String(), got, st, c.n, c.dst.Is6())
		})
	}
}

// TestOrigin: where packets from an address must come from through the tunnel.
func TestOrigin(t *testing.T) {
	tb := newTable(t, &munich, threeCities(1, nil, func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = netip.Addr{} }, status("failed")))
	// A query by instance 4's Instance IP, answered without it: the address is known to
	// lead nowhere.
	weak := threeCities(2, nil, func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = netip.Addr{} }, status("failed"))
	weak.QueryKey = inst4(4).String()
	if _, err := tb.Apply(weak, t0); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		src  netip.Addr
		st   table.Status
		at   netip.Addr // the host, when found
	}{
		{"Instance IP v4", inst4(1), table.Found, host(1)},
		{"Instance IP v6", inst6(1), table.Found, host(1)},
		{"Instance IP v4 of another instance", inst4(2), table.Found, host(2)},
		{"no namespace IP of the family", inst6(2), table.NoInstance, netip.Addr{}},
		{"failed instance", inst4(3), table.NoInstance, netip.Addr{}},
		{"address the entry no longer lists", inst4(4), table.NoInstance, netip.Addr{}},
		{"RR Service IP", rr4, table.NotInstance, netip.Addr{}},
		{"Closest Service IP v6", cl6, table.NotInstance, netip.Addr{}},
		{"unknown address", ip("10.30.9.9"), table.Unknown, netip.Addr{}},
		{"namespace IP", ns4(1), table.Unknown, netip.Addr{}},
	} {
		at, st := tb.Origin(c.src, t0)
		want := netip.AddrPort{}
		if c.at.IsValid() {
			want = netip.AddrPortFrom(c.at, 50103)
		}
		if st != c.st || at != want {
			t.Errorf("%s: Origin(%v) = %v, %v; want %v, %v", c.name, c.src, at, st, want, c.st)
		}
	}
	// A job whose instances only send to this node stays: Origin marks it used.
	tb.Origin(inst4(1), t0.Add(8*time.Second))
	if gone := tb.Expire(t0.Add(12 * time.Second)); len(gone) != 0 {
		t.Errorf("Expire after Origin marked the entry used: %+v", gone)
	}
}

func TestRoundRobinEven(t *testing.T) {
	// Four instances, one failed: RR spreads over the three usable ones exactly evenly
	// when lookups are sequential, in each family.
	tb := newTable(t, nil, result(1, instance(1, nil), instance(2, nil), instance(3, nil, status("failed")), instance(4, nil)))
	for _, dst := range []netip.Addr{rr4, rr6} {
		counts := map[netip.Addr]int{}
		for range 3000 {
			tg, st := tb.Lookup(dst, t0)
			if st != table.Found {
				t.Fatalf("Lookup(%v): %v", dst, st)
			}
			counts[tg.NamespaceIP]++
		}
		want := map[netip.Addr]int{}
		for _, n := range []int{1, 2, 4} {
			if dst.Is4() {
				want[ns4(n)] = 1000
			} else {
				want[ns6(n)] = 1000
			}
		}
		if !mapsEqual(counts, want) {
			t.Errorf("RR %v: counts %v, want %v", dst, counts, want)
		}
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// tieOrder returns the instance numbers ordered by geo.TieBreak of "<job>/<n>".
func tieOrder(ns ...int) []int {
	slices.SortFunc(ns, func(a, b int) int {
		ta, tb := geo.TieBreak(fmt.Sprintf("%s/%d", job, a)), geo.TieBreak(fmt.Sprintf("%s/%d", job, b))
		switch {
		case ta < tb:
			return -1
		case ta > tb:
			return 1
		}
		return 0
	})
	return ns
}

func TestClosest(t *testing.T) {
	noLoc := func(ti *mqttapi.TableInstance) { ti.Lat, ti.Lon = nil, nil }
	noV6 := func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = netip.Addr{} }
	for _, c := range []struct {
		name  string
		node  *geo.Point
		r     *mqttapi.TableQueryResult
		local int  // instance registered with AddLocal, 0: none
		later bool // register it after the Apply, not before
		want4 int  // 0: NoInstance
		want6 int
	}{
		{name: "node in Munich picks Munich", node: &munich, r: threeCities(1), want4: 1, want6: 1},
		{name: "Munich failed: Berlin, the next nearest", node: &munich, r: threeCities(1, status("failed")), want4: 2, want6: 2},
		{name: "Munich scheduled, Berlin stopped: Paris", node: &munich, r: threeCities(1, status("scheduled"), status("stopped")), want4: 3, want6: 3},
		{name: "all dead", node: &munich, r: threeCities(1, status("failed"), status("failed"), status("failed"))},
		{name: "node in Paris picks Paris", node: &paris, r: threeCities(1), want4: 3, want6: 3},
		{name: "no IPv6 namespace IP in Munich: v6 goes to Berlin", node: &munich, r: threeCities(1, noV6), want4: 1, want6: 2},
		{name: "an instance with no location ranks last", node: &munich, r: threeCities(1, noLoc), want4: 2, want6: 2},
		{name: "no node location: tie-break order", r: threeCities(1), want4: tieOrder(1, 2, 3)[0], want6: tieOrder(1, 2, 3)[0]},
		{name: "no node location: a local instance first", r: threeCities(1), local: tieOrder(1, 2, 3)[2], want4: tieOrder(1, 2, 3)[2], want6: tieOrder(1, 2, 3)[2]},
		{name: "no node location: a local instance registered later first", r: threeCities(1), local: tieOrder(1, 2, 3)[1], later: true, want4: tieOrder(1, 2, 3)[1], want6: tieOrder(1, 2, 3)[1]},
		{name: "node in Lyon picks Paris", node: &lyon, r: threeCities(1), want4: 3, want6: 3},
		{name: "node in Lyon: a local Berlin instance is nearest", node: &lyon, r: threeCities(1), local: 2, want4: 2, want6: 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := table.New(table.Config{Location: c.node})
			if c.local != 0 && !c.later {
				tb.AddLocal(job, c.local, ns4(c.local), ns6(c.local))
			}
			if _, err := tb.Apply(c.r, t0); err != nil {
				t.Fatal(err)
			}
			if c.local != 0 && c.later {
				tb.AddLocal(job, c.local, ns4(c.local), ns6(c.local))
			}
			for _, w := range []struct {
				dst netip.Addr
				n   int
			}{{cl4, c.want4}, {cl6, c.want6}} {
				for range 3 { // Closest is stable: no rotation
					got, st := tb.Lookup(w.dst, t0)
					if w.n == 0 {
						if st != table.NoInstance {
							t.Fatalf("Lookup(%v) = %+v, %v; want no instance", w.dst, got, st)
						}
						continue
					}
					checkTarget(t, w.dst.String(), got, st, w.n, w.dst.Is6())
					if got.Local != (w.n == c.local) {
						t.Fatalf("Lookup(%v).Local = %v", w.dst, got.Local)
					}
				}
			}
		})
	}
}

func TestClosestFollowsApply(t *testing.T) {
	tb := newTable(t, &munich, threeCities(1))
	tg, st := tb.Lookup(cl4, t0)
	checkTarget(t, "before", tg, st, 1, false)
	gone, err := tb.Apply(threeCities(2, status("failed")), t0)
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Addr{ns4(1), ns6(1)}; !slices.Equal(gone, want) {
		t.Errorf("gone = %v, want %v", gone, want)
	}
	tg, st = tb.Lookup(cl4, t0)
	checkTarget(t, "Munich failed, v4", tg, st, 2, false)
	tg, st = tb.Lookup(cl6, t0)
	checkTarget(t, "Munich failed, v6", tg, st, 2, true)
	if _, err := tb.Apply(threeCities(3), t0); err != nil {
		t.Fatal(err)
	}
	tg, st = tb.Lookup(cl6, t0)
	checkTarget(t, "Munich back", tg, st, 1, true)
}

func TestUsable(t *testing.T) {
	for _, c := range []struct {
		name   string
		mod    func(*mqttapi.TableInstance)
		v4, v6 bool
	}{
		{"running", status("running"), true, true},
		{"empty status (reference cluster)", status(""), true, true},
		{"scheduled", status("scheduled"), false, false},
		{"failed", status("failed"), false, false},
		{"stopped", status("stopped"), false, false},
		{"no namespace IP v4", func(ti *mqttapi.TableInstance) { ti.NamespaceIP = netip.Addr{} }, false, true},
		{"no namespace IP v6", func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = netip.Addr{} }, true, false},
		{"no host IP", func(ti *mqttapi.TableInstance) { ti.HostIP = netip.Addr{} }, false, false},
		{"host port 0", func(ti *mqttapi.TableInstance) { ti.HostPort = 0 }, false, false},
		{"host port 65536", func(ti *mqttapi.TableInstance) { ti.HostPort = 65536 }, false, false},
		{"host port 65535", func(ti *mqttapi.TableInstance) { ti.HostPort = 65535 }, true, true},
		{"IPv6 host", func(ti *mqttapi.TableInstance) { ti.HostIP = ip("2001:db8::7") }, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := instance(1, nil, c.mod)
			tb := newTable(t, nil, result(1, in))
			for _, w := range []struct {
				addrs []netip.Addr
				ok    bool
			}{{[]netip.Addr{rr4, cl4, inst4(1)}, c.v4}, {[]netip.Addr{rr6, cl6, inst6(1)}, c.v6}} {
				for _, dst := range w.addrs {
					got, st := tb.Lookup(dst, t0)
					if !w.ok {
						if st != table.NoInstance {
							t.Errorf("Lookup(%v) = %+v, %v; want no instance", dst, got, st)
						}
						continue
					}
					if st != table.Found || got.Endpoint != netip.AddrPortFrom(in.HostIP, uint16(in.HostPort)) {
						t.Errorf("Lookup(%v) = %+v, %v; want found at %v:%d", dst, got, st, in.HostIP, in.HostPort)
					}
				}
			}
			if _, ok := tb.ByNamespace(ns4(1)); ok != c.v4 {
				t.Errorf("ByNamespace(%v) ok = %v, want %v", ns4(1), ok, c.v4)
			}
		})
	}
}

func TestApplyGone(t *testing.T) {
	three := result(1, instance(1, nil), instance(2, nil), instance(3, nil))
	for _, c := range []struct {
		name  string
		after *mqttapi.TableQueryResult
		gone  []netip.Addr
	}{
		{"unchanged", result(2, instance(1, nil), instance(2, nil), instance(3, nil)), nil},
		{"instance removed", result(2, instance(1, nil), instance(3, nil)), []netip.Addr{ns4(2), ns6(2)}},
		{"instance failed", result(2, instance(1, nil), instance(2, nil, status("failed")), instance(3, nil)), []netip.Addr{ns4(2), ns6(2)}},
		{"instance moved to another namespace IP", result(2, instance(1, nil), instance(2, nil, func(ti *mqttapi.TableInstance) {
			ti.NamespaceIP, ti.NamespaceIPv6 = ns4(9), ns6(9)
		}), instance(3, nil)), []netip.Addr{ns4(2), ns6(2)}},
		{"only its IPv6 namespace IP lost", result(2, instance(1, nil), instance(2, nil, func(ti *mqttapi.TableInstance) {
			ti.NamespaceIPv6 = netip.Addr{}
		}), instance(3, nil)), []netip.Addr{ns6(2)}},
		{"new node address, same namespace IP: flows continue", result(2, instance(1, nil), instance(2, nil, func(ti *mqttapi.TableInstance) {
			ti.HostIP, ti.HostPort = host(99), 40000
		}), instance(3, nil)), nil},
		{"all gone", result(2), []netip.Addr{ns4(1), ns6(1), ns4(2), ns6(2), ns4(3), ns6(3)}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable(t, nil, three)
			gone, err := tb.Apply(c.after, t0)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(gone, c.gone) {
				t.Errorf("gone = %v, want %v", gone, c.gone)
			}
			for _, a := range c.gone {
				if _, ok := tb.ByNamespace(a); ok {
					t.Errorf("ByNamespace(%v) still finds a gone instance", a)
				}
			}
		})
	}
	t.Run("new host endpoint reaches established flows", func(t *testing.T) {
		tb := newTable(t, nil, three)
		if _, err := tb.Apply(result(2, instance(1, nil), instance(2, nil, func(ti *mqttapi.TableInstance) { ti.HostIP, ti.HostPort = host(99), 40000 })), t0); err != nil {
			t.Fatal(err)
		}
		tg, ok := tb.ByNamespace(ns6(2))
		if want := netip.AddrPortFrom(host(99), 40000); !ok || tg.Endpoint != want || tg.InstanceIP != inst6(2) {
			t.Errorf("ByNamespace = %+v, %v; want endpoint %v", tg, ok, want)
		}
	})
}

func TestApplyRejects(t *testing.T) {
	mod := func(f func(*mqttapi.TableInstance)) *mqttapi.TableQueryResult {
		return result(2, instance(1, nil), instance(2, nil, f))
	}
	for _, c := range []struct {
		name string
		r    *mqttapi.TableQueryResult
	}{
		{"nil", nil},
		{"error reply", &mqttapi.TableQueryResult{AppName: job, QueryKey: job, Error: `unknown service "x"`}},
		{"error reply with instances", &mqttapi.TableQueryResult{AppName: job, Error: "boom", InstanceList: []mqttapi.TableInstance{instance(1, nil)}}},
		{"no app name", &mqttapi.TableQueryResult{QueryKey: "10.30.0.1", InstanceList: []mqttapi.TableInstance{instance(1, nil)}}},
		{"IPv6 instance_ip", mod(func(ti *mqttapi.TableInstance) { ti.InstanceIP = ip("fdff::9") })},
		{"IPv4 instance_ip_v6", mod(func(ti *mqttapi.TableInstance) { ti.InstanceIPv6 = ip("10.30.1.9") })},
		{"IPv4-mapped instance_ip_v6", mod(func(ti *mqttapi.TableInstance) { ti.InstanceIPv6 = ip("::ffff:10.30.1.9") })},
		{"IPv4-mapped namespace_ip", mod(func(ti *mqttapi.TableInstance) { ti.NamespaceIP = ip("::ffff:10.18.2.2") })},
		{"IPv4 namespace_ip_v6", mod(func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = ip("10.18.2.2") })},
		{"zoned namespace_ip_v6", mod(func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = ip("fc00::2:2%eth0") })},
		{"unspecified namespace_ip_v6", mod(func(ti *mqttapi.TableInstance) { ti.NamespaceIPv6 = ip("::") })},
		{"unspecified RR Address", mod(func(ti *mqttapi.TableInstance) { ti.ServiceIP[0].Address = ip("0.0.0.0") })},
		{"IPv6 RR Address", mod(func(ti *mqttapi.TableInstance) { ti.ServiceIP[0].Address = rr6 })},
		{"IPv4 Closest Address_v6", mod(func(ti *mqttapi.TableInstance) { ti.ServiceIP[1].AddressV6 = cl4 })},
		{"RR address differs between instances", mod(func(ti *mqttapi.TableInstance) { ti.ServiceIP[0].Address = ip("10.30.0.9") })},
		{"instance_ip entry differs from instance_ip", mod(func(ti *mqttapi.TableInstance) { ti.ServiceIP[2].Address = ip("10.30.1.99") })},
		{"RR and Closest the same address", result(2, instance(1, nil, func(ti *mqttapi.TableInstance) { ti.ServiceIP[1].AddressV6 = rr6 }))},
		{"two instances with one Instance IP", mod(func(ti *mqttapi.TableInstance) {
			ti.InstanceIP, ti.ServiceIP[2].Address = inst4(1), inst4(1)
		})},
		{"Instance IP equals the RR address", mod(func(ti *mqttapi.TableInstance) {
			ti.InstanceIP, ti.ServiceIP[2].Address = rr4, rr4
		})},
		{"duplicate instance number", result(2, instance(1, nil), instance(1, nil))},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable(t, nil, result(1, instance(1, nil), instance(2, nil)))
			gone, err := tb.Apply(c.r, t0)
			if err == nil || gone != nil {
				t.Fatalf("Apply = %v, %v; want an error", gone, err)
			}
			if errors.Is(err, table.ErrOutdated) {
				t.Fatalf("Apply: %v is not ErrOutdated", err)
			}
			t.Log(err)
			// Nothing changed: both instances still serve, and no new address appeared.
			for _, dst := range []netip.Addr{inst4(1), inst4(2), inst6(2)} {
				if _, st := tb.Lookup(dst, t0); st != table.Found {
					t.Errorf("after the rejected apply, Lookup(%v) = %v", dst, st)
				}
			}
			for _, dst := range []netip.Addr{ip("10.30.0.9"), ip("fdff::9"), ip("10.30.1.9"), ip("10.30.1.99")} {
				if _, st := tb.Lookup(dst, t0); st != table.Unknown {
					t.Errorf("after the rejected apply, Lookup(%v) = %v", dst, st)
				}
			}
			if tb.Len() != 1 || !slices.Equal(tb.Keys(job), []string{job}) {
				t.Errorf("Len = %d, Keys = %v", tb.Len(), tb.Keys(job))
			}
		})
	}
}

func TestApplyIgnoresUnknownIPType(t *testing.T) {
	r := result(1, instance(1, nil, func(ti *mqttapi.TableInstance) {
		ti.ServiceIP = append(ti.ServiceIP, mqttapi.ServiceIP{IPType: "Latency", Address: ip("10.30.0.3"), AddressV6: ip("fdff:3000::3")})
	}))
	tb := newTable(t, nil, r)
	if _, st := tb.Lookup(ip("10.30.0.3"), t0); st != table.Unknown {
		t.Errorf("an unknown policy's address: %v, want unknown", st)
	}
	if _, st := tb.Lookup(rr4, t0); st != table.Found {
		t.Errorf("RR: %v", st)
	}
}

func TestRevisions(t *testing.T) {
	one := func(rev uint64, n int) *mqttapi.TableQueryResult { return result(rev, instance(n, nil)) }
	for _, c := range []struct {
		name     string
		revs     []uint64 // applied in turn; instance number = index+1
		outdated []bool
		serving  int // instance the RR address leads to at the end
	}{
		{"newer replaces", []uint64{5, 6}, []bool{false, false}, 2},
		{"older ignored", []uint64{5, 3}, []bool{false, true}, 1},
		{"equal replaces", []uint64{5, 5}, []bool{false, false}, 2},
		{"unknown revision replaces", []uint64{5, 0}, []bool{false, false}, 2},
		{"after an unknown one, older than the last known is ignored", []uint64{5, 0, 4}, []bool{false, false, true}, 2},
		{"unknown installed: anything replaces", []uint64{0, 1}, []bool{false, false}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := table.New(table.Config{})
			for i, rev := range c.revs {
				gone, err := tb.Apply(one(rev, i+1), t0)
				if got := errors.Is(err, table.ErrOutdated); got != c.outdated[i] || (err != nil && !got) {
					t.Fatalf("apply %d (revision %d): %v", i, rev, err)
				}
				if c.outdated[i] && gone != nil {
					t.Fatalf("an outdated apply returned gone %v", gone)
				}
			}
			tg, st := tb.Lookup(rr4, t0)
			checkTarget(t, "RR", tg, st, c.serving, false)
		})
	}
}

func TestAddressPassesToNewerJob(t *testing.T) {
	other := func(rev uint64) *mqttapi.TableQueryResult {
		r := result(rev, instance(7, nil))
		r.AppName, r.QueryKey = "app.ns.db.ns", "app.ns.db.ns"
		return r
	}
	tb := newTable(t, nil, result(1, instance(1, nil)), other(1)) // both list rr4
	if tg, _ := tb.Lookup(rr4, t0); tg.Job != "app.ns.db.ns" {
		t.Fatalf("rr4 leads to %q, want the newer job", tg.Job)
	}
	if tg, _ := tb.Lookup(inst4(1), t0); tg.Job != job {
		t.Fatalf("job's own Instance IP leads to %q", tg.Job)
	}
	if _, err := tb.Apply(result(2, instance(1, nil)), t0); err != nil {
		t.Fatal(err)
	}
	if tg, _ := tb.Lookup(rr4, t0); tg.Job != job {
		t.Fatalf("after re-apply rr4 leads to %q, want %q", tg.Job, job)
	}
	// Deleting the job that lost an address leaves the owner's route alone.
	tb.Delete("app.ns.db.ns")
	if tg, _ := tb.Lookup(rr4, t0); tg.Job != job {
		t.Fatalf("after deleting the other job rr4 leads to %q", tg.Job)
	}
	if _, st := tb.Lookup(inst4(7), t0); st != table.Unknown {
		t.Fatalf("deleted job's Instance IP: %v", st)
	}
}

func TestNoInstancesLeft(t *testing.T) {
	// A job with no instances left is listed without addresses (they ride on instances):
	// the entry keeps its Service IPs and answers NoInstance, not Unknown.
	tb := newTable(t, nil, result(1, instance(1, nil)))
	if _, err := tb.Apply(result(2), t0); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{rr4, rr6, cl4, cl6} {
		if _, st := tb.Lookup(dst, t0); st != table.NoInstance {
			t.Errorf("Lookup(%v) = %v, want no instance", dst, st)
		}
	}
	if _, st := tb.Lookup(inst4(1), t0); st != table.Unknown {
		t.Errorf("a removed instance's Instance IP: %v, want unknown", st)
	}
	if _, err := tb.Apply(result(3, instance(2, nil)), t0); err != nil {
		t.Fatal(err)
	}
	tg, st := tb.Lookup(rr6, t0)
	checkTarget(t, "instance back", tg, st, 2, true)
}

func TestQueryKeys(t *testing.T) {
	// Queried by an address of a job that has no instances: the answer lists no address,
	// but the key leads to the entry, so packets to it are dropped, not queried again.
	tb := table.New(table.Config{})
	r := &mqttapi.TableQueryResult{AppName: job, QueryKey: rr4.String(), Revision: 3, InstanceList: []mqttapi.TableInstance{}}
	if _, err := tb.Apply(r, t0); err != nil {
		t.Fatal(err)
	}
	if _, st := tb.Lookup(rr4, t0); st != table.NoInstance {
		t.Fatalf("Lookup(query key) = %v, want no instance", st)
	}
	// An outdated answer still records the key it was asked under.
	old := &mqttapi.TableQueryResult{AppName: job, QueryKey: cl6.String(), Revision: 2}
	if _, err := tb.Apply(old, t0); !errors.Is(err, table.ErrOutdated) {
		t.Fatalf("Apply(older) = %v", err)
	}
	if _, st := tb.Lookup(cl6, t0); st != table.NoInstance {
		t.Fatalf("Lookup(outdated query key) = %v, want no instance", st)
	}
	// A listed address replaces the key's placeholder route.
	if _, err := tb.Apply(&mqttapi.TableQueryResult{AppName: job, QueryKey: job, Revision: 4, InstanceList: []mqttapi.TableInstance{instance(1, nil)}}, t0); err != nil {
		t.Fatal(err)
	}
	tg, st := tb.Lookup(rr4, t0)
	checkTarget(t, "RR", tg, st, 1, false)
	if _, err := tb.Apply(&mqttapi.TableQueryResult{AppName: job, QueryKey: inst4(1).String(), Revision: 4, InstanceList: []mqttapi.TableInstance{instance(1, nil)}}, t0); err != nil {
		t.Fatal(err)
	}
	want := []string{job, rr4.String(), cl6.String(), inst4(1).String()}
	if got := tb.Keys(job); !slices.Equal(got, want) {
		t.Errorf("Keys = %v, want %v", got, want)
	}
	exp := tb.Expire(t0.Add(time.Minute))
	if len(exp) != 1 || !slices.Equal(exp[0].Keys, want) {
		t.Fatalf("Expire = %+v, want keys %v", exp, want)
	}
	for _, dst := range []netip.Addr{rr4, cl6, inst4(1)} {
		if _, st := tb.Lookup(dst, t0); st != table.Unknown {
			t.Errorf("after expiry Lookup(%v) = %v", dst, st)
		}
	}
}

func TestExpire(t *testing.T) {
	sec := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	type step struct {
		at     float64
		do     string // "lookup", "touch", "established", "push", "expire", "local", "unlocal"
		expire bool   // for "expire": whether the job is dropped
	}
	for _, c := range []struct {
		name  string
		steps []step
	}{
		{"unused: dropped after 10 s", []step{{9.5, "expire", false}, {10, "expire", true}}},
		{"a lookup keeps it", []step{{5, "lookup", false}, {14.5, "expire", false}, {15, "expire", true}}},
		{"a touch keeps it", []step{{8, "touch", false}, {17.5, "expire", false}, {18, "expire", true}}},
		{"a packet of an established flow keeps it", []step{{8, "established", false}, {17.5, "expire", false}, {18, "expire", true}}},
		{"a lookup within a second of the last stored use is not stored", []step{{0.5, "lookup", false}, {10, "expire", true}}},
		{"a pushed update is no use", []step{{8, "push", false}, {10, "expire", true}}},
		{"a local job never expires", []step{{0, "local", false}, {1000, "expire", false}}},
		{"after its last local instance left, it expires", []step{{0, "local", false}, {1000, "expire", false}, {1000, "unlocal", false}, {1000, "expire", true}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tb := newTable(t, nil, result(1, instance(1, nil), instance(2, nil)))
			for _, s := range c.steps {
				now := sec(s.at)
				switch s.do {
				case "lookup":
					tb.Lookup(cl4, now)
				case "touch":
					tb.Touch(inst6(2), now)
				case "established":
					want, _ := tb.ByNamespace(ns6(2))
					if got, ok := tb.Established(ns6(2), now); !ok || *got != want || got.InstanceNumber != 2 {
						t.Fatalf("Established(%v) = %+v, %v; want %+v", ns6(2), got, ok, want)
					}
					if got, ok := tb.Established(netip.MustParseAddr("fc00::dead"), now); ok {
						t.Fatalf("Established of an unknown namespace IP = %+v", got)
					}
				case "push":
					if _, err := tb.Apply(result(2, instance(1, nil), instance(2, nil)), now); err != nil {
						t.Fatal(err)
					}
				case "local":
					tb.AddLocal(job, 1, ns4(1), ns6(1))
				case "unlocal":
					tb.RemoveLocal(job, 1)
				case "expire":
					exp := tb.Expire(now)
					if !s.expire {
						if exp != nil || !tb.Known(job) {
							t.Fatalf("at %v s: Expire = %+v, want nothing", s.at, exp)
						}
						continue
					}
					want := []table.Expired{{Job: job, Keys: []string{job}, Gone: []netip.Addr{ns4(1), ns6(1), ns4(2), ns6(2)}}}
					if len(exp) != 1 || exp[0].Job != want[0].Job || !slices.Equal(exp[0].Keys, want[0].Keys) || !slices.Equal(exp[0].Gone, want[0].Gone) {
						t.Fatalf("at %v s: Expire = %+v, want %+v", s.at, exp, want)
					}
					if tb.Known(job) || tb.Len() != 0 {
						t.Fatalf("expired job still known")
					}
					if _, st := tb.Lookup(rr4, now); st != table.Unknown {
						t.Fatalf("expired job's RR: %v", st)
					}
				}
			}
		})
	}
}

func TestExpireSeveral(t *testing.T) {
	tb := table.New(table.Config{IdleTimeout: time.Minute})
	for i, name := range []string{"c.c.c.c", "a.a.a.a", "b.b.b.b"} {
		r := &mqttapi.TableQueryResult{AppName: name, InstanceList: []mqttapi.TableInstance{{
			InstanceNumber: 1, InstanceIP: netip.AddrFrom4([4]byte{10, 30, 2, byte(i)}),
			ServiceIP: []mqttapi.ServiceIP{{IPType: mqttapi.IPTypeRR, Address: netip.AddrFrom4([4]byte{10, 30, 3, byte(i)})}},
		}}}
		if _, err := tb.Apply(r, t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if got := tb.Jobs(); !slices.Equal(got, []string{"a.a.a.a", "b.b.b.b", "c.c.c.c"}) {
		t.Fatalf("Jobs = %v", got)
	}
	exp := tb.Expire(t0.Add(2 * time.Minute)) // c at 0 and a at 1 min are a minute idle
	if len(exp) != 2 || exp[0].Job != "a.a.a.a" || exp[1].Job != "c.c.c.c" || exp[0].Gone != nil {
		t.Fatalf("Expire = %+v", exp)
	}
	if got := tb.Jobs(); !slices.Equal(got, []string{"b.b.b.b"}) || tb.Len() != 1 {
		t.Fatalf("Jobs = %v", got)
	}
}

func TestLocal(t *testing.T) {
	for _, order := range []string{"AddLocal first", "Apply first"} {
		t.Run(order, func(t *testing.T) {
			tb := table.New(table.Config{})
			apply := func() {
				if _, err := tb.Apply(result(1, instance(1, nil), instance(2, nil)), t0); err != nil {
					t.Fatal(err)
				}
			}
			if order == "Apply first" {
				apply()
				if _, ok := tb.Sender(ns4(2)); ok {
					t.Fatal("Sender knows an instance not registered as local")
				}
			}
			tb.AddLocal(job, 2, ns4(2), ns6(2))
			if order == "AddLocal first" {
				if !tb.IsLocalNamespace(ns4(2)) {
					t.Fatal("IsLocalNamespace false before the entry is known")
				}
				if a, ok := tb.Sender(ns4(2)); ok {
					t.Fatalf("Sender = %v before the entry is known", a)
				}
				apply()
			}
			for _, c := range []struct {
				ns, want netip.Addr
			}{{ns4(2), inst4(2)}, {ns6(2), inst6(2)}} {
				if got, ok := tb.Sender(c.ns); !ok || got != c.want {
					t.Errorf("Sender(%v) = %v, %v; want %v", c.ns, got, ok, c.want)
				}
				if !tb.IsLocalNamespace(c.ns) {
					t.Errorf("IsLocalNamespace(%v) = false", c.ns)
				}
			}
			for _, a := range []netip.Addr{ns4(1), ns6(1), inst4(2), rr4} {
				if _, ok := tb.Sender(a); ok || tb.IsLocalNamespace(a) {
					t.Errorf("%v counts as a local namespace IP", a)
				}
			}
			if tg, _ := tb.Lookup(inst6(2), t0); !tg.Local {
				t.Errorf("Lookup of the local instance: Local = false")
			}
			if tg, _ := tb.Lookup(inst4(1), t0); tg.Local {
				t.Errorf("Lookup of the remote instance: Local = true")
			}
			if tg, ok := tb.ByNamespace(ns4(2)); !ok || !tg.Local {
				t.Errorf("ByNamespace(local) = %+v, %v", tg, ok)
			}
			tb.RemoveLocal(job, 2)
			if _, ok := tb.Sender(ns4(2)); ok || tb.IsLocalNamespace(ns4(2)) {
				t.Errorf("removed local instance still known")
			}
			if tg, _ := tb.Lookup(inst4(2), t0); tg.Local {
				t.Errorf("after RemoveLocal: Local = true")
			}
		})
	}
}

func TestLocalEdgeCases(t *testing.T) {
	tb := newTable(t, nil, result(1, instance(1, nil), instance(2, nil)))
	// Re-registering moves the instance to new namespace IPs.
	tb.AddLocal(job, 1, ns4(9), ns6(9))
	tb.AddLocal(job, 1, ns4(1), netip.Addr{})
	if tb.IsLocalNamespace(ns4(9)) || tb.IsLocalNamespace(ns6(9)) {
		t.Error("old namespace IPs still local after re-registering")
	}
	if got, ok := tb.Sender(ns4(1)); !ok || got != inst4(1) {
		t.Errorf("Sender = %v, %v", got, ok)
	}
	// Addresses of the wrong family are ignored, an IPv4-mapped one unmapped.
	tb.AddLocal(job, 2, ns6(2), ns4(2))
	if tb.IsLocalNamespace(ns4(2)) || tb.IsLocalNamespace(ns6(2)) {
		t.Error("wrong-family addresses registered")
	}
	tb.AddLocal(job, 2, netip.AddrFrom16(ns4(2).As16()), netip.Addr{})
	if got, ok := tb.Sender(ns4(2)); !ok || got != inst4(2) {
		t.Errorf("Sender(mapped registration) = %v, %v", got, ok)
	}
	// A namespace IP taken over by another registration stays with the new one when the
	// old one is removed.
	tb.AddLocal("other.ns.x.ns", 5, ns4(2), netip.Addr{})
	tb.RemoveLocal(job, 2)
	if !tb.IsLocalNamespace(ns4(2)) {
		t.Error("the new holder lost its namespace IP")
	}
	if _, ok := tb.Sender(ns4(2)); ok {
		t.Error("Sender answers for a job with no entry")
	}
	tb.RemoveLocal("never.added.x.y", 1) // no-op
	// Deleting the job keeps the registration but forgets the Instance IP.
	tb.Delete(job)
	if _, ok := tb.Sender(ns4(1)); ok || !tb.IsLocalNamespace(ns4(1)) {
		t.Error("after Delete: Sender should fail, the namespace IP stay local")
	}
}

func TestDelete(t *testing.T) {
	tb := newTable(t, nil, result(1, instance(1, nil), instance(2, nil, status("failed"))))
	if gone := tb.Delete(job); !slices.Equal(gone, []netip.Addr{ns4(1), ns6(1)}) {
		t.Errorf("Delete = %v", gone)
	}
	if tb.Known(job) || tb.Len() != 0 || len(tb.Jobs()) != 0 || tb.Keys(job) != nil {
		t.Error("deleted job still known")
	}
	for _, dst := range []netip.Addr{rr4, rr6, cl4, inst4(1), inst6(2)} {
		if _, st := tb.Lookup(dst, t0); st != table.Unknown {
			t.Errorf("Lookup(%v) = %v after Delete", dst, st)
		}
	}
	if gone := tb.Delete(job); gone != nil {
		t.Errorf("second Delete = %v", gone)
	}
}

func TestStatusString(t *testing.T) {
	for st, want := range map[table.Status]string{table.Found: "found", table.Unknown: "unknown", table.NoInstance: "no instance", table.NotInstance: "not an instance", 9: "Status(9)"} {
		if st.String() != want {
			t.Errorf("%d: %q", st, st.String())
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	tb := newTable(t, &munich, threeCities(1))
	tb.AddLocal(job, 1, ns4(1), ns6(1))
	now := t0
	i4, i6, n4, n6, n43 := inst4(2), inst6(2), ns4(1), ns6(1), ns4(3)
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"Lookup RR v4", func() { tb.Lookup(rr4, now) }},
		{"Lookup RR v6", func() { tb.Lookup(rr6, now) }},
		{"Lookup Closest v4", func() { tb.Lookup(cl4, now) }},
		{"Lookup Closest v6", func() { tb.Lookup(cl6, now) }},
		{"Lookup Instance IP v4", func() { tb.Lookup(i4, now) }},
		{"Lookup Instance IP v6", func() { tb.Lookup(i6, now) }},
		{"Lookup unknown", func() { tb.Lookup(rr4.Next().Next().Next(), now) }},
		{"Origin v4", func() { tb.Origin(i4, now) }},
		{"Origin v6", func() { tb.Origin(i6, now) }},
		{"Sender", func() { tb.Sender(n6) }},
		{"IsLocalNamespace", func() { tb.IsLocalNamespace(n4) }},
		{"Touch", func() { tb.Touch(rr4, now); now = now.Add(2 * time.Second) }},
		{"ByNamespace", func() { tb.ByNamespace(n43) }},
	} {
		if n := testing.AllocsPerRun(1000, c.f); n != 0 {
			t.Errorf("%s: %v allocations per call, want 0", c.name, n)
		}
	}
}

// TestConcurrent runs lookups, touches and sender look-ups on several goroutines while
// the entry is re-applied, local instances come and go and entries expire: run with -race.
// Every answer must be internally consistent.
func TestConcurrent(t *testing.T) {
	tb := newTable(t, &munich, threeCities(1))
	var stop atomic.Bool
	var wg sync.WaitGroup
	var found atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			addrs := []netip.Addr{rr4, rr6, cl4, cl6, inst4(1), inst6(2), inst4(3)}
			for i := 0; !stop.Load(); i++ {
				dst := addrs[(i+g)%len(addrs)]
				tg, st := tb.Lookup(dst, t0.Add(time.Duration(i)*time.Millisecond))
				switch st {
				case table.Found:
					found.Add(1)
					if tg.Job != job || tg.NamespaceIP.Is4() != dst.Is4() || tg.InstanceIP.Is4() != dst.Is4() || !tg.Endpoint.IsValid() {
						t.Errorf("Lookup(%v) = %+v: inconsistent", dst, tg)
						return
					}
				case table.Unknown, table.NoInstance: // expired, or every instance failed
				}
				tb.Touch(dst, t0)
				if a, ok := tb.Sender(ns4(1)); ok && a != inst4(1) {
					t.Errorf("Sender = %v", a)
				}
			}
		})
	}
	mods := [][]func(*mqttapi.TableInstance){
		nil, {status("failed")}, {nil, status("failed")}, {status("failed"), status("failed"), status("failed")},
	}
	for i := range 2000 {
		if _, err := tb.Apply(threeCities(uint64(i+2), mods[i%len(mods)]...), t0); err != nil {
			t.Fatal(err)
		}
		switch i % 50 {
		case 10:
			tb.AddLocal(job, 1, ns4(1), ns6(1))
		case 20:
			tb.RemoveLocal(job, 1)
		case 30:
			tb.Expire(t0.Add(time.Hour))
		}
	}
	stop.Store(true)
	wg.Wait()
	if found.Load() == 0 {
		t.Error("no lookup found anything")
	}
}

// FuzzApply feeds arbitrary results: Apply must never panic, and whatever it installs
// must answer lookups consistently.
func FuzzApply(f *testing.F) {
	f.Add(uint8(3), uint8(0), uint8(0), uint16(50103), uint64(1), "")
	f.Add(uint8(1), uint8(1), uint8(7), uint16(0), uint64(0), "10.30.0.1")
	f.Add(uint8(2), uint8(255), uint8(3), uint16(1), uint64(9), "fdff:2000::1")
	f.Fuzz(func(t *testing.T, n, dead, dup uint8, port uint16, rev uint64, key string) {
		tb := newTable(t, &munich, threeCities(5))
		r := &mqttapi.TableQueryResult{AppName: job, QueryKey: key, Revision: rev}
		for i := range int(n % 8) {
			in := instance(i+1, &paris)
			if dead&(1<<i) != 0 {
				in.Status = "failed"
			}
			if dup&(1<<i) != 0 {
				in.InstanceIP = inst4(int(dup % 4))
			}
			in.HostPort = int(port) + i
			r.InstanceList = append(r.InstanceList, in)
		}
		gone, err := tb.Apply(r, t0)
		if err != nil && gone != nil {
			t.Fatalf("error %v with gone %v", err, gone)
		}
		for _, dst := range []netip.Addr{rr4, rr6, cl4, cl6, inst4(0), inst4(1), inst6(3), inst4(7)} {
			tg, st := tb.Lookup(dst, t0)
			if st == table.Found && (tg.NamespaceIP.Is4() != dst.Is4() || tg.Job != job || tg.Endpoint.Port() == 0) {
				t.Fatalf("Lookup(%v) = %+v", dst, tg)
			}
			if st != table.Found && tg != (table.Target{}) {
				t.Fatalf("Lookup(%v) = %+v, %v", dst, tg, st)
			}
			// Origin finds exactly the instances whose Instance IP Lookup finds.
			at, ost := tb.Origin(dst, t0)
			instance := st == table.Found && tg.InstanceIP == dst
			if (ost == table.Found) != instance || instance && at != tg.Endpoint || ost != table.Found && at.IsValid() {
				t.Fatalf("Origin(%v) = %v, %v; Lookup = %+v, %v", dst, at, ost, tg, st)
			}
		}
	})
}

// FuzzApplyJSON applies a sequence of arbitrary results as they would arrive over MQTT,
// with a local instance registered, and checks that every answer stays consistent.
func FuzzApplyJSON(f *testing.F) {
	seed := func(rs ...*mqttapi.TableQueryResult) {
		b, err := json.Marshal(rs)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(threeCities(1), threeCities(2, status("failed")))
	seed(threeCities(3), result(2), &mqttapi.TableQueryResult{AppName: job, QueryKey: rr6.String()})
	other := result(1, instance(1, nil))
	other.AppName = "other.ns.x.ns"
	seed(threeCities(0), other, threeCities(0, nil, func(ti *mqttapi.TableInstance) { ti.NamespaceIP = ns4(1) }))
	f.Fuzz(func(t *testing.T, b []byte) {
		var rs []*mqttapi.TableQueryResult
		if json.Unmarshal(b, &rs) != nil {
			return
		}
		tb := table.New(table.Config{Location: &munich})
		tb.AddLocal(job, 1, ns4(1), ns6(1))
		var addrs []netip.Addr
		for _, r := range rs {
			tb.Apply(r, t0)
			if r == nil {
				continue
			}
			for _, in := range r.InstanceList {
				addrs = append(addrs, in.InstanceIP, in.InstanceIPv6, in.NamespaceIP)
				for _, s := range in.ServiceIP {
					addrs = append(addrs, s.Address, s.AddressV6)
				}
			}
			for _, dst := range addrs {
				tg, st := tb.Lookup(dst, t0)
				switch st {
				case table.Found:
					if tg.NamespaceIP.Is4() != dst.Is4() || tg.InstanceIP.Is4() != dst.Is4() || !tb.Known(tg.Job) ||
						!tg.Endpoint.IsValid() || tg.Endpoint.Port() == 0 || tg.Local != tb.IsLocalNamespace(tg.NamespaceIP) {
						t.Fatalf("Lookup(%v) = %+v", dst, tg)
					}
				default:
					if tg != (table.Target{}) {
						t.Fatalf("Lookup(%v) = %+v, %v", dst, tg, st)
					}
				}
			}
			if a, ok := tb.Sender(ns4(1)); ok && !a.Is4() {
				t.Fatalf("Sender(%v) = %v", ns4(1), a)
			}
		}
		if tb.Len() != len(tb.Jobs()) {
			t.Fatalf("Len %d, Jobs %v", tb.Len(), tb.Jobs())
		}
		for _, e := range tb.Expire(t0.Add(time.Hour)) {
			if e.Job == job || len(e.Keys) == 0 || e.Keys[0] != e.Job {
				t.Fatalf("Expire: %+v", e)
			}
		}
	})
}

// TestCandidates: the whole order each policy takes, consistent with Lookup, and no
// effect on the Round Robin sequence.
func TestCandidates(t *testing.T) {
	tb := newTable(t, &lyon, threeCities(1, nil, status("stopped")))
	numbers := func(ts []table.Target) []int {
		var out []int
		for _, tg := range ts {
			out = append(out, tg.InstanceNumber)
		}
		return out
	}
	for _, c := range []struct {
		dst  netip.Addr
		want []int
	}{
		{cl4, []int{3, 1}}, // Lyon: Paris, then Munich; Berlin is stopped
		{cl6, []int{3, 1}},
		{rr4, []int{1, 3}},
		{inst4(3), []int{3}},
		{inst6(1), []int{1}},
		{inst4(2), nil}, // stopped
		{ip("10.30.9.9"), nil},
	} {
		got := tb.Candidates(c.dst)
		if !slices.Equal(numbers(got), c.want) {
			t.Errorf("Candidates(%v) = %v, want %v", c.dst, numbers(got), c.want)
		}
		if len(got) > 0 {
			checkTarget(t, c.dst.String(), got[0], table.Found, c.want[0], c.dst.Is6())
		}
	}
	first, _ := tb.Lookup(rr4, t0)
	tb.Candidates(rr4)
	second, _ := tb.Lookup(rr4, t0)
	if first.InstanceNumber != 1 || second.InstanceNumber != 3 {
		t.Errorf("RR after Candidates: %d, %d; want 1, 3", first.InstanceNumber, second.InstanceNumber)
	}
	if tg, _ := tb.Lookup(cl4, t0); tg.InstanceNumber != tb.Candidates(cl4)[0].InstanceNumber {
		t.Errorf("Lookup(Closest) = %d, not the first candidate", tg.InstanceNumber)
	}
}
