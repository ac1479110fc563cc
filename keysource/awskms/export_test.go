package awskms

import (
	"io"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
)

// StateProblem exposes the key-state check to the external tests.
func StateProblem(key string, md *types.KeyMetadata) (string, error) { return stateProblem(key, md) }

// BackoffDelay exposes the full-jitter backoff to the external tests.
func BackoffDelay(base, cap time.Duration, rand io.Reader, attempt int) (time.Duration, error) {
	return fullJitter{base: base, cap: cap, rand: rand}.BackoffDelay(attempt, nil)
}
