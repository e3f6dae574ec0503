package ippool

// qEntry is one quarantine: slot becomes free again at until (Unix nanoseconds). seq tells
// a live heap entry from a stale one: a slot's quarantine can be cut short (MarkUsed,
// Unreserve) or lengthened (MarkQuarantined), and rather than search the heap for its old
// entry, the map keeps the current seq and the heap drops entries whose seq no longer
// matches when they surface.
type qEntry struct {
	slot  u128
	until int64
	seq   uint64
}

// qheap is a min-heap of quarantines by expiry. It is typed rather than built on
// container/heap because heap.Push boxes every entry into an interface: an allocation on
// each Release, the allocator's hot path.
type qheap []qEntry

func (h qheap) less(i, j int) bool {
	if h[i].until != h[j].until {
		return h[i].until < h[j].until
	}
	return h[i].seq < h[j].seq
}

func (h *qheap) push(e qEntry) {
	*h = append(*h, e)
	h.up(len(*h) - 1)
}

// pop removes and returns the earliest entry; h must not be empty.
func (h *qheap) pop() qEntry {
	old := *h
	n := len(old) - 1
	e := old[0]
	old[0] = old[n]
	*h = old[:n]
	h.down(0)
	return e
}

// init restores the heap order of an arbitrary slice.
func (h qheap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

func (h qheap) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !h.less(i, p) {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func (h qheap) down(i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h.less(r, l) {
			m = r
		}
		if !h.less(m, i) {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
