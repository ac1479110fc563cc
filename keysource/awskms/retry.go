package awskms

import (
	"encoding/binary"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
)

// newRetryer returns the SDK's standard retryer (which retries
// ThrottlingException, LimitExceededException, 5xx answers and connection
// failures, within a per-client retry quota) bounded by the source's
// attempts, with full-jitter exponential backoff.
func newRetryer(o Options) aws.Retryer {
	return retry.NewStandard(func(so *retry.StandardOptions) {
		so.MaxAttempts = max(o.MaxAttempts, 1)
		so.MaxBackoff = o.MaxBackoff
		so.Backoff = fullJitter{base: o.BaseDelay, cap: o.MaxBackoff, rand: o.Rand}
	})
}

// fullJitter waits a uniform random time in [0, min(cap, base·2^(n-1)))
// before retry n ("full jitter", which spreads out clients that were
// throttled together). It is safe for concurrent use if rand is.
type fullJitter struct {
	base, cap time.Duration
	rand      io.Reader
}

// BackoffDelay implements retry.BackoffDelayer; attempt is the number of
// the attempt that failed, from 1.
func (j fullJitter) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	ceil := j.base
	for i := 1; i < attempt && ceil < j.cap; i++ {
		ceil *= 2
	}
	ceil = min(ceil, j.cap)
	if ceil <= 0 {
		return 0, nil
	}
	var b [8]byte
	if _, err := io.ReadFull(j.rand, b[:]); err != nil {
		return ceil / 2, nil // no randomness: the mean of the jitter
	}
	return time.Duration(binary.LittleEndian.Uint64(b[:]) % uint64(ceil)), nil
}
