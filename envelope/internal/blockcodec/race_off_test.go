//go:build !race

package blockcodec_test

// raceEnabled is true under -race, whose instrumentation allocates.
const raceEnabled = false
