package table_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/semnet/semnet/node/table"
	"github.com/semnet/semnet/proto/mqttapi"
)

// Benchmarks of the per-packet calls (target well under 50 ns, 0 allocations) and of the
// control-plane write. Run:
//
//	go test -run '^$' -bench . -benchmem ./node/table/

// benchTable holds the three-city job plus jobs more jobs of three instances each, so
// the maps are of a realistic size.
func benchTable(b *testing.B, jobs int) *table.Table {
	tb := newTable(b, &munich, threeCities(1))
	for j := range jobs {
		if _, err := tb.Apply(otherJob(j, 1), t0); err != nil {
			b.Fatal(err)
		}
	}
	tb.AddLocal(job, 1, ns4(1), ns6(1))
	return tb
}

// otherJob is job j of benchTable, its addresses in 10.31/16 and fdff:8000::/33.
func otherJob(j int, rev uint64) *mqttapi.TableQueryResult {
	a4 := func(k int) netip.Addr { return netip.AddrFrom4([4]byte{10, 31, byte(j >> 4), byte(j<<4 | k)}) }
	a6 := func(k int) netip.Addr { return ip(fmt.Sprintf("fdff:8000::%x:%x", j, k)) }
	r := &mqttapi.TableQueryResult{AppName: fmt.Sprintf("app.ns.s%d.ns", j), Revision: rev}
	for n := 1; n <= 3; n++ {
		r.InstanceList = append(r.InstanceList, mqttapi.TableInstance{
			InstanceNumber: n, InstanceIP: a4(2 + n), InstanceIPv6: a6(2 + n),
			NamespaceIP: netip.AddrFrom4([4]byte{10, 19, byte(j), byte(n)}), NamespaceIPv6: ip(fmt.Sprintf("fc01::%x:%x", j, n)),
			HostIP: host(n), HostPort: 50103, Lat: &paris.Lat, Lon: &paris.Lon,
			ServiceIP: []mqttapi.ServiceIP{
				{IPType: mqttapi.IPTypeRR, Address: a4(1), AddressV6: a6(1)},
				{IPType: mqttapi.IPTypeClosest, Address: a4(2), AddressV6: a6(2)},
				{IPType: mqttapi.IPTypeInstanceIP, Address: a4(2 + n), AddressV6: a6(2 + n)},
			},
		})
	}
	return r
}

func BenchmarkLookup(b *testing.B) {
	tb := benchTable(b, 1000)
	now := t0
	for _, c := range []struct {
		name string
		dst  netip.Addr
	}{
		{"RR/v4", rr4}, {"RR/v6", rr6},
		{"Closest/v4", cl4}, {"Closest/v6", cl6},
		{"InstanceIP/v4", inst4(2)}, {"InstanceIP/v6", inst6(2)},
		{"Unknown/v4", ip("10.30.99.99")}, {"Unknown/v6", ip("fdff:9::9")},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tb.Lookup(c.dst, now)
			}
		})
	}
}

// BenchmarkLookupParallel looks up from every core at once: the RR counter is the one
// line they all write; Closest writes nothing.
func BenchmarkLookupParallel(b *testing.B) {
	tb := benchTable(b, 1000)
	for _, c := range []struct {
		name string
		dst  netip.Addr
	}{{"RR/v4", rr4}, {"Closest/v6", cl6}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					tb.Lookup(c.dst, t0)
				}
			})
		})
	}
}

// BenchmarkOrigin is the tunnel's source check: where an Instance IP's instance runs.
func BenchmarkOrigin(b *testing.B) {
	tb := benchTable(b, 1000)
	for _, src := range []netip.Addr{inst4(2), inst6(2)} {
		b.Run(map[bool]string{false: "v4", true: "v6"}[src.Is6()], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tb.Origin(src, t0)
			}
		})
	}
}

func BenchmarkSender(b *testing.B) {
	tb := benchTable(b, 1000)
	ns := ns6(1)
	b.ReportAllocs()
	for b.Loop() {
		tb.Sender(ns)
	}
}

func BenchmarkTouch(b *testing.B) {
	tb := benchTable(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		tb.Touch(rr4, t0)
	}
}

func BenchmarkByNamespace(b *testing.B) {
	tb := benchTable(b, 1000)
	ns := ns4(2)
	b.ReportAllocs()
	for b.Loop() {
		tb.ByNamespace(ns)
	}
}

// BenchmarkApply is the write side: re-applying one job's entry while the table holds
// 1,000 others (each write copies the maps).
func BenchmarkApply(b *testing.B) {
	tb := benchTable(b, 1000)
	r := otherJob(7, 2)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tb.Apply(r, t0); err != nil {
			b.Fatal(err)
		}
		r.Revision++
	}
}
