package awskms

import (
	"encoding/binary"
	"errors"
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go"
)

// newRetryer returns the SDK's retryer of mode o.RetryMode (standard, or
// adaptive, which also paces requests after throttling), which retries
// ThrottlingException, LimitExceededException, 5xx answers and connection
// failures, bounded by o.MaxAttempts, with the SDK's backoff unless
// o.BaseDelay or o.MaxBackoff replace it. Two changes to the SDK's
// defaults:
//
//   - no client-wide retry quota: once a burst of throttling has spent it,
//     the SDK fails every later call at its first error without a retry,
//     which turns the next create into an EIO. The source's own bound on
//     requests in flight (MaxConcurrent) already keeps retries from
//     multiplying the load.
//   - for a key in a custom key store (customStore reports one), a
//     KMSInvalidStateException is retried too: the store answers it,
//     with the key still Enabled, while it cannot reach its CloudHSM
//     cluster or external key store proxy, which is often brief.
func newRetryer(o Options, customStore func() bool) aws.Retryer {
	std := func(so *retry.StandardOptions) {
		so.MaxAttempts = max(o.MaxAttempts, 1)
		so.RateLimiter = ratelimit.None
		if o.BaseDelay != 0 {
			so.MaxBackoff = o.MaxBackoff
			so.Backoff = fullJitter{base: o.BaseDelay, cap: o.MaxBackoff, rand: o.Rand}
		}
		so.Retryables = append(so.Retryables, retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
			var apiErr smithy.APIError
			if customStore() && errors.As(err, &apiErr) && apiErr.ErrorCode() == "KMSInvalidStateException" {
				return aws.TrueTernary
			}
			return aws.UnknownTernary
		}))
	}
	if o.RetryMode == aws.RetryModeAdaptive {
		return retry.NewAdaptiveMode(func(ao *retry.AdaptiveModeOptions) {
			ao.StandardOptions = append(ao.StandardOptions, std)
		})
	}
	return retry.NewStandard(std)
}

// inCustomStore reports whether the key is in a custom key store. It is
// known after the first DescribeKey and does not change after Open.
func (s *source) inCustomStore() bool { return s.store != "" }

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
