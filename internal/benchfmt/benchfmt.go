// Package benchfmt holds what the benchmark reports share.
package benchfmt

import "slices"

// Median returns the median of xs, 0 if it is empty; xs is left as is.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
