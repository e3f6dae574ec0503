package ippool

import "math/bits"

// full is a leaf or summary word with every bit set.
const full = ^uint64(0)

// chunkWords is how many leaf words are allocated together: exactly the words one
// first-level summary word describes, so a chunk and a summary word share an index.
const chunkWords = 64

// bitmap is a hierarchical bitmap of taken slots. A leaf bit is set when its slot is not
// free (used, quarantined, reserved or padding). A summary bit is set when the word it
// describes is full, so the lowest free slot is found by following the lowest clear bit
// down from the single top word: one word per level, at most 6 levels for 2^32 slots.
//
// Leaf words are allocated in chunks on first use (a nil chunk is all clear), so a pool
// over a huge IPv6 prefix costs only its summary levels until addresses are handed out.
type bitmap struct {
	n      uint64                // slots tracked; bits from n up are padding, always set
	leaves []*[chunkWords]uint64 // leaf chunk c holds leaf words c*64 … c*64+63
	upper  [][]uint64            // upper[0] summarises leaf words; the last level is one word
}

func newBitmap(n uint64) *bitmap {
	words := (n + 63) / 64
	b := &bitmap{n: n, leaves: make([]*[chunkWords]uint64, (words+chunkWords-1)/chunkWords)}
	for cnt := words; cnt > 1; {
		children := cnt
		cnt = (cnt + 63) / 64
		lvl := make([]uint64, cnt)
		// Bits for children that do not exist read as full, so a search never descends
		// into them and a level fills up exactly when its real children do.
		for j := children; j < cnt*64; j++ {
			lvl[j/64] |= 1 << (j % 64)
		}
		b.upper = append(b.upper, lvl)
	}
	for i := n; i < words*64; i++ {
		b.set(i)
	}
	return b
}

// get reports whether slot i is taken.
func (b *bitmap) get(i uint64) bool {
	c := b.leaves[i/(64*chunkWords)]
	return c != nil && c[(i/64)%chunkWords]&(1<<(i%64)) != 0
}

// set marks slot i taken and reports whether it was free.
func (b *bitmap) set(i uint64) bool {
	c := b.leaves[i/(64*chunkWords)]
	if c == nil {
		c = new([chunkWords]uint64)
		b.leaves[i/(64*chunkWords)] = c
	}
	wi, bit := (i/64)%chunkWords, uint64(1)<<(i%64)
	w := c[wi]
	if w&bit != 0 {
		return false
	}
	w |= bit
	c[wi] = w
	// The word just became full: tell the levels above, as far as words fill up.
	for j, k := i/64, 0; w == full && k < len(b.upper); j, k = j/64, k+1 {
		w = b.upper[k][j/64] | 1<<(j%64)
		b.upper[k][j/64] = w
	}
	return true
}

// clear marks slot i free and reports whether it was taken.
func (b *bitmap) clear(i uint64) bool {
	c := b.leaves[i/(64*chunkWords)]
	if c == nil {
		return false
	}
	wi, bit := (i/64)%chunkWords, uint64(1)<<(i%64)
	w := c[wi]
	if w&bit == 0 {
		return false
	}
	c[wi] = w &^ bit
	// The word was full and no longer is: clear its summary bit, and the summaries of
	// every level above that was full because of it.
	for j, k := i/64, 0; w == full && k < len(b.upper); j, k = j/64, k+1 {
		w = b.upper[k][j/64]
		b.upper[k][j/64] = w &^ (1 << (j % 64))
	}
	return true
}

// first returns the lowest free slot, or false if every slot is taken.
func (b *bitmap) first() (uint64, bool) {
	var j uint64 // word index at the level being read
	for k := len(b.upper) - 1; k >= 0; k-- {
		w := b.upper[k][j]
		if w == full {
			return 0, false // only the top word can be full here: a clear parent bit guarantees a free child
		}
		j = j*64 + uint64(bits.TrailingZeros64(^w))
	}
	var w uint64
	if c := b.leaves[j/chunkWords]; c != nil {
		w = c[j%chunkWords]
	}
	if w == full {
		return 0, false
	}
	i := j*64 + uint64(bits.TrailingZeros64(^w))
	if i >= b.n {
		return 0, false
	}
	return i, true
}

// leaf returns leaf word j (clear when its chunk was never touched).
func (b *bitmap) leaf(j uint64) uint64 {
	if c := b.leaves[j/chunkWords]; c != nil {
		return c[j%chunkWords]
	}
	return 0
}

// firstFrom returns the lowest free slot at or after i, or false if there is none: up
// from i's leaf word to the first summary word with a clear bit past i's branch, then
// down along the lowest clear bits, as first does.
func (b *bitmap) firstFrom(i uint64) (uint64, bool) {
	if i >= b.n {
		return 0, false
	}
	j := i / 64
	if w := b.leaf(j) | (1<<(i%64) - 1); w != full { // slots below i count as taken
		s := j*64 + uint64(bits.TrailingZeros64(^w))
		return s, s < b.n
	}
	for k := range b.upper {
		bit := j % 64
		j /= 64
		w := b.upper[k][j] | (2<<bit - 1) // i's branch and those before it count as full
		if w == full {
			continue
		}
		j = j*64 + uint64(bits.TrailingZeros64(^w))
		for d := k - 1; d >= 0; d-- {
			j = j*64 + uint64(bits.TrailingZeros64(^b.upper[d][j]))
		}
		s := j*64 + uint64(bits.TrailingZeros64(^b.leaf(j)))
		return s, s < b.n
	}
	return 0, false
}
