package awskms

import (
	"io"
	"time"
)

// BackoffDelay exposes the full-jitter backoff to the external tests.
func BackoffDelay(base, cap time.Duration, rand io.Reader, attempt int) (time.Duration, error) {
	return fullJitter{base: base, cap: cap, rand: rand}.BackoffDelay(attempt, nil)
}
