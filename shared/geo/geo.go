// Package geo provides the geography behind the Closest policy: points on the earth,
// great-circle distance, and a stable nearest-first ordering.
//
// Distance is the contract (ADDRESSING.md): Closest means the smallest great-circle
// distance from the querying node to a live instance, ties broken by a stable hash so every
// node and the root agree on the order without coordinating.
package geo

import (
	"fmt"
	"hash/fnv"
	"math"
	"slices"
)

// earthRadiusKM is the mean earth radius (IUGG), the usual choice for haversine.
const earthRadiusKM = 6371.0088

// Point is a location in decimal degrees.
type Point struct {
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// Validate reports whether p is a real location.
func (p Point) Validate() error {
	if math.IsNaN(p.Lat) || p.Lat < -90 || p.Lat > 90 {
		return fmt.Errorf("latitude %v is outside [-90, 90]", p.Lat)
	}
	if math.IsNaN(p.Lon) || p.Lon < -180 || p.Lon > 180 {
		return fmt.Errorf("longitude %v is outside [-180, 180]", p.Lon)
	}
	return nil
}

// DistanceKM is the great-circle distance between a and b (haversine formula, which stays
// accurate for the short distances between nearby edge sites, unlike the spherical law of
// cosines).
func DistanceKM(a, b Point) float64 {
	const rad = math.Pi / 180
	dLat := (b.Lat - a.Lat) * rad
	dLon := (b.Lon - a.Lon) * rad
	s := math.Sin(dLat/2)*math.Sin(dLat/2) +
		math.Cos(a.Lat*rad)*math.Cos(b.Lat*rad)*math.Sin(dLon/2)*math.Sin(dLon/2)
	return 2 * earthRadiusKM * math.Asin(math.Min(1, math.Sqrt(s)))
}

// TieBreak is the stable hash that orders candidates at equal distance. Every tier
// computes it from the same key (for instances: "<job name>/<instance number>").
func TieBreak(key string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()
}

// SortByDistance orders items nearest-first from `from`; loc and key give each item's
// location and tie-break key. The order is total and stable across processes.
func SortByDistance[T any](items []T, from Point, loc func(T) Point, key func(T) string) {
	type ranked struct {
		d   float64
		tie uint64
		key string
	}
	r := make(map[string]ranked, len(items))
	for _, it := range items {
		k := key(it)
		r[k] = ranked{d: DistanceKM(from, loc(it)), tie: TieBreak(k), key: k}
	}
	slices.SortStableFunc(items, func(x, y T) int {
		a, b := r[key(x)], r[key(y)]
		switch {
		case a.d < b.d:
			return -1
		case a.d > b.d:
			return 1
		case a.tie != b.tie:
			if a.tie < b.tie {
				return -1
			}
			return 1
		}
		switch {
		case a.key < b.key:
			return -1
		case a.key > b.key:
			return 1
		}
		return 0
	})
}
