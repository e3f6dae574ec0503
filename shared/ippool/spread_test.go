package ippool

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestFirstFrom compares the bitmap's search from a slot with a plain scan, over sizes
// with one to three summary levels, ends that are not whole words, and fill levels
// from empty to nearly full.
func TestFirstFrom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []uint64{1, 63, 64, 65, 4095, 4096, 4097, 300_001} {
		for _, fill := range []float64{0, 0.5, 0.99, 1} {
			b := newBitmap(n)
			taken := make([]bool, n)
			for i := range n {
				if r.Float64() < fill {
					b.set(i)
					taken[i] = true
				}
			}
			// Long taken runs too: a summary word only fills when 64 words do.
			if n > 5000 && fill > 0 {
				for i := uint64(1000); i < 4800; i++ {
					b.set(i)
					taken[i] = true
				}
			}
			for probe := 0; probe < 2000; probe++ {
				i := r.Uint64N(n + 2)
				want, wantOK := uint64(0), false
				for s := i; s < n; s++ {
					if !taken[s] {
						want, wantOK = s, true
						break
					}
				}
				got, ok := b.firstFrom(i)
				if ok != wantOK || (ok && got != want) {
					t.Fatalf("n=%d fill=%v: firstFrom(%d) = %d, %v; want %d, %v", n, fill, i, got, ok, want, wantOK)
				}
			}
		}
	}
}

// TestSpread: a spreading pool still hands out every free address exactly once, and two
// of them in the same state rarely propose the same one, where two lowest-first pools
// always do.
func TestSpread(t *testing.T) {
	prefix := netip.MustParsePrefix("10.30.0.0/16")
	p, err := New("spread", prefix, Options{Spread: true, Reserved: []netip.Prefix{netip.MustParsePrefix("10.30.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for {
		a, err := p.Allocate()
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if seen[a] || !prefix.Contains(a) || a.As4()[2] == 0 {
			t.Fatalf("Allocate gave %s: twice, outside the pool or reserved", a)
		}
		seen[a] = true
	}
	if want := 1<<16 - 256; len(seen) != want {
		t.Fatalf("handed out %d addresses, want %d", len(seen), want)
	}

	overlap := func(spread bool) int {
		a, _ := New("a", prefix, Options{Spread: spread})
		b, _ := New("b", prefix, Options{Spread: spread})
		got := map[netip.Addr]bool{}
		for range 50 {
			x, _ := a.Allocate()
			got[x] = true
		}
		n := 0
		for range 50 {
			if y, _ := b.Allocate(); got[y] {
				n++
			}
		}
		return n
	}
	if n := overlap(false); n != 50 {
		t.Fatalf("lowest-first pools proposed %d of 50 addresses alike, want all (the test's premise)", n)
	}
	if n := overlap(true); n > 5 {
		t.Errorf("spreading pools proposed %d of 50 addresses alike", n)
	}
}
