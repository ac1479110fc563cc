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
	primary  KeySource
	sources  []KeySource // primary, then escrow
	policy   Policy
	poolSize int
	now      func() time.Time
	rand     io.Reader
	mem      *secmem.Arena

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	cache   *keyCache
	flights map[digest]*flight
	pool    pool
	changed chan struct{} // closed and replaced whenever pool state changes

	onJoin func() // test hook: a caller joined a flight (called without mu)
}

// NewManager returns a Manager configured by o and starts its background
// goroutines.
func NewManager(o Options) (*Manager, error) {
	if o.Primary == nil {
		return nil, errors.New("keysource: manager needs a primary key source")
	}
	for i, e := range o.Escrow {
		if e == nil {
			return nil, fmt.Errorf("keysource: escrow key source %d is nil", i)
		}
	}
	if err := o.Policy.check(); err != nil {
		return nil, err
	}
	if o.PoolSize < 0 || o.RefillWorkers < 0 || o.CacheMaxAge < 0 {
		return nil, errors.New("keysource: manager pool size, refill workers and cache age must not be negative")
	}
	m := &Manager{
		primary:  o.Primary,
		sources:  append([]KeySource{o.Primary}, o.Escrow...),
		policy:   o.Policy.withDefaults(),
		poolSize: o.PoolSize,
		now:      o.Now,
		rand:     o.Rand,
		mem:      o.Mem,
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
	m.cache = newKeyCache(entries, maxAge, m.mem)
	m.pool.paused = o.DeferPool
	m.ctx, m.cancel = context.WithCancel(context.Background())

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

// keyNames lists "type:keyID" of every source, for error messages.
func (m *Manager) keyNames() string {
	names := make([]string, len(m.sources))
	for i, s := range m.sources {
		names[i] = s.Type() + ":" + s.KeyID()
	}
	return strings.Join(names, ", ")
}

func sourceName(s KeySource) string { return s.Type() + ":" + s.KeyID() }
