package kmstest

import (
	"context"
	"maps"
	"sync"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/smithy-go/middleware"
)

// Counter counts KMS API use at the SDK client boundary, per operation name
// ("Decrypt", "GenerateDataKey", …): Calls counts operations invoked,
// Attempts counts requests sent (retries included, which is what a KMS
// request quota counts). Install it with Register as an SDK API option
// (in awskms.Options.APIOptions). It is safe for concurrent use.
type Counter struct {
	mu       sync.Mutex
	calls    map[string]int
	attempts map[string]int
}

// NewCounter returns a Counter at zero.
func NewCounter() *Counter {
	return &Counter{calls: map[string]int{}, attempts: map[string]int{}}
}

// Register adds the counting middleware to an operation's stack; its
// signature is that of an SDK API option.
func (c *Counter) Register(stack *middleware.Stack) error {
	err := stack.Initialize.Add(middleware.InitializeMiddlewareFunc("kmstest.CountCalls",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			c.add(c.calls, awsmiddleware.GetOperationName(ctx))
			return next.HandleInitialize(ctx, in)
		}), middleware.Before)
	if err != nil {
		return err
	}
	attempt := middleware.FinalizeMiddlewareFunc("kmstest.CountAttempts",
		func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
			c.add(c.attempts, awsmiddleware.GetOperationName(ctx))
			return next.HandleFinalize(ctx, in)
		})
	if err := stack.Finalize.Insert(attempt, "Retry", middleware.After); err != nil {
		return stack.Finalize.Add(attempt, middleware.After) // a stack without a retryer
	}
	return nil
}

func (c *Counter) add(m map[string]int, op string) {
	c.mu.Lock()
	m[op]++
	c.mu.Unlock()
}

// Calls returns how many times op was invoked.
func (c *Counter) Calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[op]
}

// Attempts returns how many requests op sent, retries included.
func (c *Counter) Attempts(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attempts[op]
}

// Total returns the number of calls over all operations.
func (c *Counter) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.calls {
		n += v
	}
	return n
}

// Snapshot returns a copy of the per-operation call counts.
func (c *Counter) Snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.calls)
}

// Reset sets every count back to zero.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.calls)
	clear(c.attempts)
}
