package integration

import (
	"cmp"
	"fmt"
	"html"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// restPrefix starts the names of the tooling calls' latencies by kind ("rest:create
// service"); "rest" holds them all.
const restPrefix = "rest:"

// series holds the soak's samples per second of the run: latencies by name ("query",
// "rest", "propagation") and event counts ("query_failed", ...), each attributed to the
// second the operation started in.
type series struct {
	mu  sync.Mutex
	t0  time.Time
	lat map[string][][]time.Duration
	cnt map[string][]int
}

func newSeries(t0 time.Time) *series {
	return &series{t0: t0, lat: map[string][][]time.Duration{}, cnt: map[string][]int{}}
}

func (s *series) restart(t0 time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t0, s.lat, s.cnt = t0, map[string][][]time.Duration{}, map[string][]int{}
}

func (s *series) sec(at time.Time) int { return max(0, int(at.Sub(s.t0)/time.Second)) }

func grow[T any](v []T, i int) []T {
	if i >= len(v) {
		v = append(v, make([]T, i+1-len(v))...)
	}
	return v
}

func (s *series) add(name string, at time.Time, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.sec(at)
	v := grow(s.lat[name], i)
	v[i] = append(v[i], d)
	s.lat[name] = v
}

func (s *series) count(name string, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.sec(at)
	v := grow(s.cnt[name], i)
	v[i]++
	s.cnt[name] = v
}

// quantile of sorted d (0 when empty).
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// pooled returns the sorted samples of name from seconds for which keep is true.
func (s *series) pooled(name string, keep func(sec int) bool) []time.Duration {
	var all []time.Duration
	for i, v := range s.lat[name] {
		if keep(i) {
			all = append(all, v...)
		}
	}
	slices.Sort(all)
	return all
}

func (s *series) total(name string) int {
	n := 0
	for _, c := range s.cnt[name] {
		n += c
	}
	return n
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }

func dist(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", ms(quantile(d, .5)), ms(quantile(d, .99)), ms(d[len(d)-1]), len(d))
}

// report writes summary.md (the table), series.csv and latency.svg to dir and logs the
// table.
func (s *soak) report(dir string, end time.Duration) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	se := s.series
	se.mu.Lock()
	defer se.mu.Unlock()
	// A second counts as calm when no fault was under way in it or the 10 s after.
	calm := func(sec int) bool {
		at := time.Duration(sec) * time.Second
		for _, e := range s.events {
			if at+time.Second > e.start && at < e.end+10*time.Second {
				return false
			}
		}
		return true
	}
	all := func(int) bool { return true }
	var b strings.Builder
	fmt.Fprintf(&b, "# semnet soak: %s, %d simulated nodes on 2 clusters, 2 root replicas on FerretDB\n\n", end.Round(time.Second), len(s.nodes))
	fmt.Fprintf(&b, "Offered: %.0f table queries/s (open loop), %.0f churn operations/s. \"calm\": seconds with no fault under way and none in the 10 s before.\n\n", *soakQPS, *soakChurn)
	b.WriteString("| what | all of the run | calm seconds | target (PERFORMANCE.md) |\n|---|---|---|---|\n")
	row := func(what, name, target string) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", what, dist(se.pooled(name, all)), dist(se.pooled(name, calm)), target)
	}
	row("table query over MQTT (answered)", "query", "p99 <= 10 ms (hit, 5,000/s at 1,000 nodes)")
	row("of which for a job the node already followed (no SUBSCRIBE first)", "query_followed", "")
	row("tooling REST call at root (with retries)", "rest", "p99 <= 20 ms (deploy on MongoDB)")
	for _, name := range slices.Sorted(maps.Keys(se.lat)) {
		if kind, ok := strings.CutPrefix(name, restPrefix); ok {
			row("of which "+kind, name, "")
		}
	}
	row("propagation: root's change -> each pushed node's table", "root_propagation", "p99 <= 100 ms (root change -> 1,000 nodes)")
	row("end to end: tooling change or node report -> each following node's table", "propagation", "(includes the report's way to root and root's write)")
	fmt.Fprintf(&b, "\n| counter | total |\n|---|---|\n")
	for _, c := range []struct{ name, what string }{
		{"query_failed", "table queries unanswered (5 s timeout) or not sent"},
		{"query_unknown", "table queries answered \"unknown service\" (undeployed meanwhile)"},
		{"query_stale", "answers marked stale (cluster cut off from root)"},
		{"query_rejected", "answers the node table refused"},
		{"push_rejected", "pushes the node table refused"},
		{"rest_failed", "tooling calls failed after a minute of retries"},
		{"report_failed", "node reports not acknowledged by the broker (re-announced later)"},
		{"churn_skipped", "churn operations skipped (16 still waiting)"},
	} {
		fmt.Fprintf(&b, "| %s | %d |\n", c.what, se.total(c.name))
	}
	fmt.Fprintf(&b, "| propagations superseded by a later change before arriving | %d |\n", s.exp.superseded)
	missing, some := s.exp.missing(se.t0)
	if missing > 0 {
		s.t.Logf("soak: propagations never seen, e.g.: %s", strings.Join(some, "; "))
	}
	fmt.Fprintf(&b, "| propagations never seen (node still waiting at the end) | %d |\n", missing)
	fmt.Fprintf(&b, "| cluster: table queries answered from the cache / from root / \"unknown\" / with an error (since each cluster's last start, faults included) | %s |\n", s.queryOutcomes())
	fmt.Fprintf(&b, "| cluster: pushes made within 50 / 100 / 250 ms of root's change (since each cluster's last start, faults included) | %s |\n", s.pushDelays())
	fmt.Fprintf(&b, "| SUBSCRIBEs carrying the packet identifier of an unacknowledged delivery, carried out by the broker (since each cluster's last start) | %s |\n",
		s.clusterMetric("semnet_cluster_mqtt_packet_id_collisions_total", "packet", "subscribe"))
	b.WriteString("\n| # | fault | at | lasted | observed |\n|---|---|---|---|---|\n")
	for i, e := range s.events {
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s |\n", i+1, e.name, e.start.Round(time.Second), (e.end - e.start).Round(time.Second), e.note)
	}
	b.WriteString("\n| consistency check | result |\n|---|---|\n")
	for _, f := range s.figures {
		fmt.Fprintf(&b, "| %s | %s |\n", f.what, f.value)
	}
	b.WriteString(s.storeTable())
	b.WriteString(s.routeTable())
	b.WriteString("\n![latency over time](latency.svg)\n")
	s.t.Logf("soak summary (%s):\n%s", dir, b.String())
	if err := os.WriteFile(filepath.Join(dir, "summary.md"), []byte(b.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "series.csv"), []byte(s.csv(end)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "latency.svg"), []byte(s.svg(end)), 0o644)
}

// perSecond returns quantile q of name for each second up to end (0: no sample).
func (se *series) perSecond(name string, q float64, end time.Duration) []time.Duration {
	out := make([]time.Duration, int(end/time.Second)+1)
	for i := range out {
		if i < len(se.lat[name]) {
			v := slices.Clone(se.lat[name][i])
			slices.Sort(v)
			out[i] = quantile(v, q)
		}
	}
	return out
}

func (s *soak) csv(end time.Duration) string {
	se := s.series
	var b strings.Builder
	cols := []string{"query_p50_ms", "query_p99_ms", "rest_p99_ms", "propagation_p99_ms", "root_propagation_p99_ms"}
	counts := []string{"query_failed", "query_unknown", "query_stale", "rest_failed", "report_failed"}
	b.WriteString("second,query_n," + strings.Join(cols, ",") + "," + strings.Join(counts, ",") + "\n")
	lines := [][]time.Duration{se.perSecond("query", .5, end), se.perSecond("query", .99, end), se.perSecond("rest", .99, end), se.perSecond("propagation", .99, end),
		se.perSecond("root_propagation", .99, end)}
	for i := range lines[0] {
		n := 0
		if i < len(se.lat["query"]) {
			n = len(se.lat["query"][i])
		}
		fmt.Fprintf(&b, "%d,%d", i, n)
		for _, l := range lines {
			fmt.Fprintf(&b, ",%.3f", float64(l[i])/float64(time.Millisecond))
		}
		for _, c := range counts {
			v := 0
			if i < len(se.cnt[c]) {
				v = se.cnt[c][i]
			}
			fmt.Fprintf(&b, ",%d", v)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// svg plots per-second p99 latencies over the run on a log scale, with the fault windows
// shaded and numbered as in the summary's fault table.
func (s *soak) svg(end time.Duration) string {
	const (
		w, h                   = 1100.0, 460.0
		left, right, top, bott = 70.0, 20.0, 40.0, 50.0
		lo, hi                 = 0.1, 100000.0 // ms: 0.1 ms to 100 s
	)
	secs := math.Max(1, end.Seconds())
	x := func(sec float64) float64 { return left + (w-left-right)*sec/secs }
	y := func(d time.Duration) float64 {
		v := math.Min(hi, math.Max(lo, float64(d)/float64(time.Millisecond)))
		return top + (h-top-bott)*(1-(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo)))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", w, h)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="20" font-size="14">semnet soak: per-second p99 latency (log scale), %d nodes; shaded: faults</text>`+"\n", left, len(s.nodes))
	for i, e := range s.events {
		x0, x1 := x(e.start.Seconds()), x(math.Max(e.end.Seconds(), e.start.Seconds()+1))
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="%.1f" height="%.0f" fill="#f4c7c3" opacity="0.6"><title>%s</title></rect>`+"\n",
			x0, top, x1-x0, h-top-bott, html.EscapeString(e.name))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" fill="#a33">%d</text>`+"\n", (x0+x1)/2, top+14, i+1)
	}
	for v := lo; v <= hi; v *= 10 {
		yy := y(time.Duration(v * float64(time.Millisecond)))
		label := fmt.Sprintf("%g ms", v)
		if v >= 1000 {
			label = fmt.Sprintf("%g s", v/1000)
		}
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#ddd"/><text x="%.0f" y="%.1f" text-anchor="end">%s</text>`+"\n",
			left, w-right, yy, yy, left-6, yy+4, label)
	}
	step := max(10, int(secs/10)/10*10)
	for sec := 0; float64(sec) <= secs; sec += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%ds</text>`+"\n", x(float64(sec)), h-bott+18, sec)
	}
	fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="black"/>`+"\n", left, w-right, h-bott, h-bott)
	lines := []struct {
		name, label, color string
		q                  float64
	}{
		{"query", "table query p99", "#1f77b4", .99},
		{"query", "table query p50", "#9ecae1", .5},
		{"rest", "tooling REST p99", "#ff7f0e", .99},
		{"propagation", "end-to-end propagation p99", "#2ca02c", .99},
		{"root_propagation", "root change -> node p99", "#d62728", .99},
	}
	se := s.series
	for k, l := range lines {
		var pts []string
		for i, d := range se.perSecond(l.name, l.q, end) {
			if d > 0 {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(float64(i)+.5), y(d)))
			}
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", l.color, strings.Join(pts, " "))
		lx := left + 10 + float64(k)*170
		fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/><text x="%.0f" y="%.0f">%s</text>`+"\n",
			lx, lx+20, h-14, h-14, l.color, lx+25, h-10, l.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// storeTable is the summary's table of what the roots' MongoDB commands cost, the ten
// that took the most time in all, from the roots' metrics at the end (each root counts
// from its last start).
func (s *soak) storeTable() string {
	all := histTotals(s.roots, "semnet_root_store_command_seconds", func(l map[string]string) (string, bool) {
		return l["collection"] + " " + l["command"], true
	})
	var b strings.Builder
	b.WriteString("\n| store command (both roots, since each one's last start) | commands | total | mean |\n|---|---|---|---|\n")
	for _, h := range all[:min(10, len(all))] {
		fmt.Fprintf(&b, "| %s | %.0f | %.1f s | %.2f ms |\n", h.key, h.n, h.sum, 1000*h.sum/max(h.n, 1))
	}
	return b.String()
}

// routeTable is the summary's table of how long root took to answer its REST requests,
// by route, from the roots' own histograms at the end (each root counts from its last
// start, faults included): the requests that took the most time in all, the change
// stream's long polls left out. Set beside the tooling's own latencies above, it tells
// root's part from the time a request spent reaching root and coming back.
func (s *soak) routeTable() string {
	all := histTotals(s.roots, "semnet_root_http_request_duration_seconds", func(l map[string]string) (string, bool) {
		return l["method"] + " " + l["route"], !strings.HasSuffix(l["route"], "/changes")
	})
	var b strings.Builder
	b.WriteString("\n| root's REST answers (both roots, since each one's last start; change stream left out) | requests | mean | within 25 ms | within 100 ms |\n|---|---|---|---|---|\n")
	for _, h := range all[:min(10, len(all))] {
		n := max(h.n, 1)
		fmt.Fprintf(&b, "| %s | %.0f | %.1f ms | %.1f%% | %.1f%% |\n", h.key, h.n, 1000*h.sum/n, 100*h.within[.025]/n, 100*h.within[.1]/n)
	}
	return b.String()
}

// histTotal is one group of a histogram's series summed over processes: observations,
// their sum, and how many fell within each bucket's upper bound.
type histTotal struct {
	key    string
	n, sum float64
	within map[float64]float64
}

// histTotals sums histogram family name over the daemons' metrics, grouping its series
// by key (which may leave one out), most time first.
func histTotals(ds []*daemon, name string, key func(labels map[string]string) (string, bool)) []*histTotal {
	groups := map[string]*histTotal{}
	for _, d := range ds {
		for _, m := range d.metrics()[name].GetMetric() {
			k, ok := key(labels(m))
			if !ok {
				continue
			}
			g := groups[k]
			if g == nil {
				g = &histTotal{key: k, within: map[float64]float64{}}
				groups[k] = g
			}
			h := m.GetHistogram()
			g.n += float64(h.GetSampleCount())
			g.sum += h.GetSampleSum()
			for _, b := range h.GetBucket() {
				g.within[b.GetUpperBound()] += float64(b.GetCumulativeCount())
			}
		}
	}
	return slices.SortedFunc(maps.Values(groups), func(a, b *histTotal) int { return cmp.Compare(b.sum, a.sum) })
}

// labels returns a series' labels by name.
func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// hasLabels reports whether m has every label of pairs (name, value, name, value ...).
func hasLabels(m *dto.Metric, pairs ...string) bool {
	l := labels(m)
	for i := 0; i+1 < len(pairs); i += 2 {
		if l[pairs[i]] != pairs[i+1] {
			return false
		}
	}
	return true
}

// value is a counter's, gauge's or untyped series' value.
func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	default:
		return m.GetUntyped().GetValue()
	}
}
