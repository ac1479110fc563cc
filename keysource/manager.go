package keysource

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/internal/secmem"
)

// ErrClosed is returned by a Manager's methods after Close.
var ErrClosed = errors.New("keysource: manager closed")

// DefaultPoolFiles is how many creates the default data-key pool covers
// without a KMS call: it holds max(2, DefaultPoolFiles/MaxFiles) data keys
// (2 under the batched default, 64 under per-file).
const DefaultPoolFiles = 64

// DefaultRefillWorkers caps the generate calls the pool makes at once:
// enough to refill a per-file pool at 400 keys a second against a KMS that
// answers in 10 ms, few enough to stay polite to a shared quota.
const DefaultRefillWorkers = 4

// Options configure a Manager. Only Primary is required.
type Options struct {
	// Primary wraps every new data key (or generates it, if it is a
	// Generator); its stanza comes first.
	Primary KeySource
	// Escrow sources each add a stanza wrapping the same data key, in
	// order after the primary's. All sources, primary first, are tried
	// when unwrapping.
	Escrow []KeySource
	// UnwrapOnly sources are tried when unwrapping, after the primary and
	// escrow sources and in order, and never wrap or generate a data key
	// for a new file: the keys a rewrap is retiring, so that files not yet
	// rewrapped still open.
	UnwrapOnly []KeySource
	// Policy bounds data-key reuse; the zero value is the batched default.
	Policy Policy
	// PoolSize is the number of ready data keys kept ahead of need
	// (besides the one being handed out); 0 means
	// max(2, DefaultPoolFiles/MaxFiles).
	PoolSize int
	// RefillWorkers caps concurrent generate calls; 0 means
	// min(DefaultRefillWorkers, PoolSize).
	RefillWorkers int
	// DeferPool holds back the first generate call until the first
	// NewDataKey or WaitReady, for read-only mounts and tools that seldom
	// create files.
	DeferPool bool
	// CacheEntries bounds the unwrapped keys cached; 0 means
	// DefaultCacheEntries, negative disables the cache (concurrent unwraps
	// of one stanza still coalesce).
	CacheEntries int
	// CacheMaxAge bounds how long an unwrapped key stays cached, counted
	// from its unwrap; 0 means DefaultCacheMaxAge.
	CacheMaxAge time.Duration
	// Now is the clock for cache and policy ages; nil means time.Now.
	Now func() time.Time
	// Rand supplies data keys for sources that cannot generate them; nil
	// means crypto/rand.Reader. It must be safe for concurrent use.
	Rand io.Reader
	// Mem holds every data key the Manager keeps (cache, pool, unwraps in
	// flight): locked cells, zeroed when a key leaves. A key a source
	// returns is copied into a cell at once and the source's slice cleared.
	// nil keeps keys on the Go heap (still zeroed when dropped).
	Mem *secmem.Arena
	// Observer, if set, is told of every key-source call, cache lookup and
	// eviction, and pool change (for metrics); nil observes nothing.
	Observer Observer
}

// Manager is the data-key manager of a mounted volume: it unwraps the
// stanzas of file headers through its key sources, caching and coalescing
// unwraps, and hands out data keys for new files from a pool that
// background goroutines keep filled, under a reuse Policy. It implements
// envelope.KeyUnwrapper.
//
// A Manager is safe for concurrent use. It starts goroutines; Close stops
// them and zeroes every key it holds. The key sources and Options.Mem stay
// the caller's.
type Manager struct {
	policy   Policy
	poolSize int
	now      func() time.Time
	rand     io.Reader
	mem      *secmem.Arena
	obs      Observer

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	keys    *keySet // replaced whole by SetKeys
	cache   *keyCache
	flights map[digest]*flight
	pool    pool
	changed chan struct{} // closed and replaced whenever pool state changes

	onJoin func() // test hook: a caller joined a flight (called without mu)
}

// NewManager returns a Manager configured by o and starts its background
// goroutines.
func NewManager(o Options) (*Manager, error) {
	if err := checkKeys(o.Primary, o.Escrow, o.UnwrapOnly); err != nil {
		return nil, err
	}
	if err := o.Policy.check(); err != nil {
		return nil, err
	}
	if o.PoolSize < 0 || o.RefillWorkers < 0 || o.CacheMaxAge < 0 {
		return nil, errors.New("keysource: manager pool size, refill workers and cache age must not be negative")
	}
	m := &Manager{
		policy:   o.Policy.withDefaults(),
		poolSize: o.PoolSize,
		now:      o.Now,
		rand:     o.Rand,
		mem:      o.Mem,
		obs:      o.Observer,
		flights:  make(map[digest]*flight),
		changed:  make(chan struct{}),
	}
	if m.poolSize == 0 {
		m.poolSize = max(2, DefaultPoolFiles/m.policy.MaxFiles)
	}
	workers := o.RefillWorkers
	if workers == 0 {
		workers = min(DefaultRefillWorkers, m.poolSize)
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.rand == nil {
		m.rand = rand.Reader
	}
	entries, maxAge := o.CacheEntries, o.CacheMaxAge
	if entries == 0 {
		entries = DefaultCacheEntries
	}
	if maxAge == 0 {
		maxAge = DefaultCacheMaxAge
	}
	m.cache = newKeyCache(entries, maxAge, m.mem, m.obs)
	m.pool.paused = o.DeferPool
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.keys = m.newKeySet(o.Primary, o.Escrow, o.UnwrapOnly)

	m.wg.Add(workers + 1)
	for range workers {
		go m.refill()
	}
	go m.sweep(min(max(maxAge/4, time.Second), time.Minute))
	return m, nil
}

// Close stops the background goroutines, cancels key-source calls still
// running for the Manager, and clears every cached and pooled key. Calls
// after Close return ErrClosed. Close is idempotent and always returns nil.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.broadcast()
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.mu.Lock()
	m.cache.purge()
	m.pool.purge(m.mem)
	m.mu.Unlock()
	return nil
}

// broadcast wakes everyone waiting for a pool change. Call with mu held.
func (m *Manager) broadcast() {
	close(m.changed)
	m.changed = make(chan struct{})
	if m.obs != nil {
		m.obs.PoolDepth(len(m.pool.ready))
	}
}

// sweep clears expired cache entries and an expired current data key every
// interval, so keys do not outlive their age in an idle mount.
func (m *Manager) sweep(every time.Duration) {
	defer m.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
			m.sweepOnce()
		}
	}
}

func (m *Manager) sweepOnce() {
	m.mu.Lock()
	now := m.now()
	m.cache.sweep(now)
	m.pool.expire(now, m.policy, m.mem)
	m.mu.Unlock()
}

// keySet is the Manager's key sources at one time. It never changes once
// made: SetKeys installs a new one, and the set's identity tells a pool
// worker whether the batch it made is still for the current keys.
type keySet struct {
	primary KeySource
	escrow  []KeySource
	unwrap  []KeySource // primary, escrow, then unwrap-only: the unwrap order
	nUnwrap int         // how many at the end of unwrap are unwrap-only
	// ctx bounds the calls that make batches for this set. SetKeys cancels
	// it, so a worker stuck on a retired key comes back to work for the
	// new one.
	ctx    context.Context
	cancel context.CancelFunc
}

// checkKeys refuses a key set with a nil source.
func checkKeys(primary KeySource, escrow, unwrapOnly []KeySource) error {
	if primary == nil {
		return errors.New("keysource: manager needs a primary key source")
	}
	for i, e := range escrow {
		if e == nil {
			return fmt.Errorf("keysource: escrow key source %d is nil", i)
		}
	}
	for i, u := range unwrapOnly {
		if u == nil {
			return fmt.Errorf("keysource: unwrap-only key source %d is nil", i)
		}
	}
	return nil
}

// newKeySet returns a set of checked sources; the slices are copied, so
// the caller may reuse them.
func (m *Manager) newKeySet(primary KeySource, escrow, unwrapOnly []KeySource) *keySet {
	ks := &keySet{
		primary: primary,
		escrow:  append([]KeySource(nil), escrow...),
		nUnwrap: len(unwrapOnly),
	}
	ks.unwrap = make([]KeySource, 0, 1+len(escrow)+len(unwrapOnly))
	ks.unwrap = append(append(append(ks.unwrap, primary), escrow...), unwrapOnly...)
	ks.ctx, ks.cancel = context.WithCancel(m.ctx)
	return ks
}

// SetKeys replaces the Manager's key sources, as a rewrap does: from its
// return on, every data key NewDataKey and NewDataKeyTo hand out is
// wrapped (or generated) by primary and wrapped by each of escrow, and
// unwraps try primary, escrow, then unwrapOnly. Pooled data keys of the old
// sources are cleared and dropped, and batches still being made for them
// are dropped when they arrive (their calls are cancelled), so none is
// handed out afterwards; callers waiting in NewDataKey get a data key of
// the new sources. Cached unwrapped keys stay: data keys do not change.
// Unwraps already running finish with the old sources.
//
// SetKeys refuses a nil source and returns ErrClosed after Close. The
// sources stay the caller's; the Manager copies the slices.
func (m *Manager) SetKeys(primary KeySource, escrow, unwrapOnly []KeySource) error {
	if err := checkKeys(primary, escrow, unwrapOnly); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.keys.cancel()
	m.keys = m.newKeySet(primary, escrow, unwrapOnly)
	p := &m.pool
	p.purge(m.mem)
	// Calls for the old keys no longer count against the pool: workers
	// that return from them drop their batch and start afresh.
	p.pending = 0
	if p.err != nil {
		// The error was the old keys'; the new ones get their own try.
		p.err, p.paused = nil, false
	}
	m.broadcast()
	return nil
}

// keyNames lists "type:keyID" of every source, for error messages.
func (ks *keySet) keyNames() string {
	names := make([]string, len(ks.unwrap))
	for i, s := range ks.unwrap {
		names[i] = sourceName(s)
		if i >= len(ks.unwrap)-ks.nUnwrap {
			names[i] += " (unwrap only)"
		}
	}
	return strings.Join(names, ", ")
}

func sourceName(s KeySource) string { return s.Type() + ":" + s.KeyID() }
