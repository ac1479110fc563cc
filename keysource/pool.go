package keysource

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/kmsfs/kmsfs/internal/secmem"
)

// batch is one data key, in a cell of the Manager's arena, with its
// stanzas, serving up to Policy.MaxFiles new files for up to Policy.MaxAge
// after its first.
type batch struct {
	key      []byte
	stanzas  []Stanza
	uses     int
	firstUse time.Time
}

// retire zeroes the batch's key and returns its cell to mem.
func (b *batch) retire(mem *secmem.Arena) {
	mem.Free(b.key)
	b.key = nil
}

// handOut copies the key into dst and returns copies of the stanzas for
// one new file.
func (b *batch) handOut(dst []byte) []Stanza {
	n := 0
	for _, s := range b.stanzas {
		n += len(s.Body)
	}
	bodies := make([]byte, 0, n)
	out := make([]Stanza, len(b.stanzas))
	for i, s := range b.stanzas {
		lo := len(bodies)
		bodies = append(bodies, s.Body...)
		out[i] = Stanza{Type: s.Type, KeyID: s.KeyID, Body: bodies[lo:len(bodies):len(bodies)]}
	}
	copy(dst, b.key)
	return out
}

// pool is the state of the data-key pool, guarded by Manager.mu.
//
// Refill workers generate a batch whenever ready+pending < PoolSize and
// the pool is not paused, so every generate call replaces a batch that was
// taken: after the pool first fills, N creates that use up K batches cost
// exactly K generate calls. A failed generate pauses the pool, so a broken
// key service is asked again only when a caller takes a batch or finds the
// pool empty, never in a loop.
type pool struct {
	ready   []*batch // fresh batches, oldest first
	cur     *batch   // the batch being handed out, or nil
	pending int      // generate calls running
	paused  bool     // no refill until demand (after an error, or DeferPool)
	err     error    // last generate error, nil after a success
	errSeq  uint64   // counts generate errors
}

// expire retires the current batch if it has served its age.
func (p *pool) expire(now time.Time, pol Policy, mem *secmem.Arena) {
	if p.cur != nil && now.Sub(p.cur.firstUse) >= pol.MaxAge {
		p.cur.retire(mem)
		p.cur = nil
	}
}

func (p *pool) purge(mem *secmem.Arena) {
	if p.cur != nil {
		p.cur.retire(mem)
		p.cur = nil
	}
	for i, b := range p.ready {
		b.retire(mem)
		p.ready[i] = nil
	}
	p.ready = p.ready[:0]
}

// NewDataKey returns a data key for a new file and its stanzas: the
// primary's first, then one per escrow source, all wrapping that key. Both
// are fresh copies that belong to the caller; the key is on the Go heap and
// the caller clears it when done (NewDataKeyTo writes it into a buffer of
// the caller's choice, such as a secmem cell, instead).
//
// The key comes from the pool, so a create does not wait on the key
// service unless the pool is empty. Then NewDataKey waits for a refill
// until ctx ends; if the last refill failed and nothing has been retried
// since, it returns that error at once (and starts a retry), and a caller
// waiting when a refill fails gets that error.
func (m *Manager) NewDataKey(ctx context.Context) ([]byte, []Stanza, error) {
	key := make([]byte, DataKeySize)
	stanzas, err := m.NewDataKeyTo(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	return key, stanzas, nil
}

// NewDataKeyTo is NewDataKey writing the key into dst, which must hold
// DataKeySize bytes and stays the caller's (to free or clear).
func (m *Manager) NewDataKeyTo(ctx context.Context, dst []byte) ([]Stanza, error) {
	if len(dst) != DataKeySize {
		return nil, fmt.Errorf("keysource: data key buffer of %d bytes, want %d: %w", len(dst), DataKeySize, ErrInvalid)
	}
	m.mu.Lock()
	p := &m.pool
	first, seq := true, uint64(0)
	for {
		if m.closed {
			m.mu.Unlock()
			return nil, ErrClosed
		}
		now := m.now()
		p.expire(now, m.policy, m.mem)
		if b := p.cur; b != nil {
			stanzas := b.handOut(dst)
			if b.uses++; b.uses >= m.policy.MaxFiles {
				b.retire(m.mem)
				p.cur = nil
			}
			m.mu.Unlock()
			return stanzas, nil
		}
		if len(p.ready) > 0 {
			p.cur = p.ready[0]
			p.cur.firstUse = now
			// Files made with this key reopen without asking the key
			// service (and while it is unreachable): cache it under each
			// of its stanzas, as an unwrap would.
			for _, st := range p.cur.stanzas {
				m.cache.put(stanzaDigest(st), m.mem.Clone(p.cur.key), now)
			}
			copy(p.ready, p.ready[1:])
			p.ready[len(p.ready)-1] = nil
			p.ready = p.ready[:len(p.ready)-1]
			p.paused = false
			m.broadcast()
			continue
		}
		if first {
			first, seq = false, p.errSeq
			if p.paused {
				p.paused = false
				m.broadcast()
				if p.err != nil {
					err := p.err
					m.mu.Unlock()
					return nil, fmt.Errorf("keysource: no data key ready: %w", err)
				}
			}
		} else if p.errSeq != seq {
			err := p.err
			m.mu.Unlock()
			return nil, fmt.Errorf("keysource: no data key ready: %w", err)
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("keysource: waiting for a data key: %w", ctx.Err())
		}
		m.mu.Lock()
	}
}

// WaitReady waits until the pool holds PoolSize ready data keys and no
// generate call is running, and returns nil; or until a generate call made
// meanwhile fails, and returns its error; or until ctx ends. It starts a
// deferred or paused pool. Call it after mounting to make the first creates
// fast; tests call it to let the refill settle before counting calls.
func (m *Manager) WaitReady(ctx context.Context) error {
	m.mu.Lock()
	p := &m.pool
	if p.paused {
		p.paused = false
		m.broadcast()
	}
	seq := p.errSeq
	for {
		switch {
		case m.closed:
			m.mu.Unlock()
			return ErrClosed
		case len(p.ready) >= m.poolSize && p.pending == 0:
			m.mu.Unlock()
			return nil
		case p.errSeq != seq:
			err := p.err
			m.mu.Unlock()
			return fmt.Errorf("keysource: filling the data-key pool: %w", err)
		}
		ch := m.changed
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("keysource: waiting for the data-key pool: %w", ctx.Err())
		}
		m.mu.Lock()
	}
}

// refill is a pool worker: it generates batches while the pool is short.
func (m *Manager) refill() {
	defer m.wg.Done()
	p := &m.pool
	m.mu.Lock()
	for {
		for !m.closed && (p.paused || len(p.ready)+p.pending >= m.poolSize) {
			ch := m.changed
			m.mu.Unlock()
			<-ch
			m.mu.Lock()
		}
		if m.closed {
			m.mu.Unlock()
			return
		}
		p.pending++
		ks := m.keys
		m.mu.Unlock()
		b, err := m.newBatch(ks)
		m.mu.Lock()
		switch {
		case ks != m.keys:
			// SetKeys retired these keys while the batch was being made
			// (and reset pending): it must never be handed out, and its
			// error, if any, was the old keys'.
			if err == nil {
				b.retire(m.mem)
			}
			m.broadcast()
			continue
		case err != nil:
			p.pending--
			p.err, p.paused = err, true
			p.errSeq++
		case m.closed:
			p.pending--
			b.retire(m.mem)
		default:
			p.pending--
			p.ready = append(p.ready, b)
			p.err = nil
		}
		m.broadcast()
	}
}

// newBatch makes a data key and its stanzas with the sources of ks, under
// ks.ctx: generated by the primary if it is a Generator (the key moved
// into a cell of m.mem and the source's copy cleared), else read from
// m.rand into a cell and wrapped by the primary; then wrapped by every
// escrow source.
func (m *Manager) newBatch(ks *keySet) (*batch, error) {
	ctx, primary := ks.ctx, ks.primary
	b := &batch{stanzas: make([]Stanza, 0, 1+len(ks.escrow))}
	if g, ok := primary.(Generator); ok {
		start := startCall(m.obs)
		key, s, err := g.GenerateDataKey(ctx)
		endCall(m.obs, primary, OpGenerate, start, err)
		if err != nil {
			return nil, fmt.Errorf("keysource: generate data key with %s: %w", sourceName(primary), err)
		}
		if len(key) != DataKeySize {
			clear(key)
			return nil, fmt.Errorf("keysource: %s generated a %d-byte data key, want %d: %w",
				sourceName(primary), len(key), DataKeySize, ErrInvalid)
		}
		b.key = m.mem.Clone(key)
		clear(key)
		b.stanzas = append(b.stanzas, s)
	} else {
		b.key = m.mem.Alloc(DataKeySize)
		if _, err := io.ReadFull(m.rand, b.key); err != nil {
			b.retire(m.mem)
			return nil, fmt.Errorf("keysource: random data key: %w", err)
		}
		start := startCall(m.obs)
		s, err := primary.Wrap(ctx, b.key)
		endCall(m.obs, primary, OpWrap, start, err)
		if err != nil {
			b.retire(m.mem)
			return nil, fmt.Errorf("keysource: wrap data key with %s: %w", sourceName(primary), err)
		}
		b.stanzas = append(b.stanzas, s)
	}
	for _, e := range ks.escrow {
		start := startCall(m.obs)
		s, err := e.Wrap(ctx, b.key)
		endCall(m.obs, e, OpWrap, start, err)
		if err != nil {
			b.retire(m.mem)
			return nil, fmt.Errorf("keysource: wrap data key with escrow key %s: %w", sourceName(e), err)
		}
		b.stanzas = append(b.stanzas, s)
	}
	return b, nil
}
