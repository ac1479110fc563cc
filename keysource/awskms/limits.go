package awskms

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/smithy-go/middleware"
)

// attemptLimits returns an SDK API option that bounds every attempt (each
// request the retryer sends): at most cap(sem) in flight at once, waiting
// for a slot as long as the caller's context allows, and each cut short
// after timeout. It runs after the retryer, so a call waiting out its
// backoff holds no slot, and a timed-out attempt is retried. A nil sem or
// a timeout of 0 or less bounds nothing.
func attemptLimits(sem chan struct{}, timeout time.Duration) func(*middleware.Stack) error {
	return func(stack *middleware.Stack) error {
		limit := middleware.FinalizeMiddlewareFunc("kmsfs.AttemptLimits",
			func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
				if sem != nil {
					select {
					case sem <- struct{}{}:
						defer func() { <-sem }()
					case <-ctx.Done():
						return middleware.FinalizeOutput{}, middleware.Metadata{}, fmt.Errorf("waiting for one of %d KMS request slots: %w", cap(sem), ctx.Err())
					}
				}
				if timeout <= 0 {
					return next.HandleFinalize(ctx, in)
				}
				actx, cancel := context.WithTimeout(ctx, timeout)
				defer cancel()
				out, md, err := next.HandleFinalize(actx, in)
				if err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
					err = &attemptTimeout{timeout: timeout, err: err}
				}
				return out, md, err
			})
		if err := stack.Finalize.Insert(limit, "Retry", middleware.After); err != nil {
			return stack.Finalize.Add(limit, middleware.Before) // a stack without a retryer
		}
		return nil
	}
}

// attemptTimeout is an attempt that got no answer within the request
// timeout: the SDK retries it (RetryableError), as a connection failure.
type attemptTimeout struct {
	timeout time.Duration
	err     error
}

func (e *attemptTimeout) Error() string {
	return fmt.Sprintf("no answer within the request timeout of %v: %v", e.timeout, e.err)
}

// RetryableError marks the attempt for a retry. attemptTimeout has no
// Unwrap on purpose: the SDK marks the cut-short request as canceled,
// and a canceled request is never retried.
func (e *attemptTimeout) RetryableError() bool { return true }

// profileOf returns the shared config profile cfg was loaded from, or "".
func profileOf(cfg aws.Config) string {
	for _, src := range cfg.ConfigSources {
		switch c := src.(type) {
		case config.SharedConfig:
			if c.Profile != "" {
				return c.Profile
			}
		case config.EnvConfig:
			if c.SharedConfigProfile != "" {
				return c.SharedConfigProfile
			}
		}
	}
	return ""
}
