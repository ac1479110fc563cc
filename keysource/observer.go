package keysource

import "time"

// Operations a Manager reports to an Observer's KeyCall.
const (
	OpWrap     = "wrap"     // KeySource.Wrap of a new data key
	OpUnwrap   = "unwrap"   // KeySource.Unwrap of a stanza
	OpGenerate = "generate" // Generator.GenerateDataKey
)

// Observer receives what a Manager does, for metrics. A Manager calls it
// on its hot paths, some calls with its lock held, so the methods must be
// quick, must not block and must not call back into the Manager; they are
// called concurrently. Nothing passed to an Observer names a file or holds
// a key. A nil Options.Observer turns observation off, and then the
// Manager does not read the clock for it either.
type Observer interface {
	// KeyCall reports one call to a key source: the source's Type(), the
	// operation (OpWrap, OpUnwrap, OpGenerate), how long it took, and its
	// error (nil on success).
	KeyCall(source, op string, d time.Duration, err error)
	// CacheLookup reports an unwrap answered from the data-key cache (hit)
	// or not (a key-source call, or a wait for one already running).
	CacheLookup(hit bool)
	// CacheEvict reports a data key dropped from the cache to make room or
	// because it reached its age; a Close or a replaced entry does not
	// count.
	CacheEvict()
	// PoolDepth reports how many pre-generated data keys are ready, each
	// time the pool changes.
	PoolDepth(n int)
}

// startCall returns the time a key-source call starts, or the zero time
// when nobody observes, so an unobserved call never reads the clock.
func startCall(obs Observer) time.Time {
	if obs == nil {
		return time.Time{}
	}
	return time.Now()
}

// endCall reports a key-source call that began at start to obs, if any.
func endCall(obs Observer, src KeySource, op string, start time.Time, err error) {
	if obs != nil {
		obs.KeyCall(src.Type(), op, time.Since(start), err)
	}
}
