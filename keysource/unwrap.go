package keysource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
)

// flight is one unwrap of one stanza in progress; callers that want the
// same stanza meanwhile wait for it instead of calling the key source. It
// runs on its own goroutine under the Manager's context, and is cancelled
// when every caller waiting for it has given up.
type flight struct {
	done    chan struct{} // closed when key and err are set
	key     []byte        // the flight's copy; cleared by the last waiter
	err     error
	waiters int // guarded by Manager.mu
	cancel  context.CancelFunc
}

// UnwrapKey returns the data key held by one of stanzas, trying them in
// order with every configured source of the stanza's type. A cached key
// answers without a key-source call; concurrent calls for one stanza make
// one call. The result is a fresh copy that belongs to the caller.
//
// A key-source call runs under the Manager's own context (values of ctx do
// not reach it) and is cancelled once every caller waiting for it has given
// up, or when the Manager closes.
//
// If no source accepts any stanza, the error wraps ErrNotMine and lists the
// stanzas and the configured keys, with the first source's reason if one
// gave any (such as a wrong passphrase). Otherwise the error is the most
// telling failure (ErrDenied, then ErrInvalid, then ErrUnavailable, then
// others), wrapped with its stanza; the message also names the other
// failures. If ctx ends first, the error wraps ctx.Err().
func (m *Manager) UnwrapKey(ctx context.Context, stanzas []Stanza) ([]byte, error) {
	if len(stanzas) == 0 {
		return nil, fmt.Errorf("keysource: no stanzas to unwrap: %w", ErrInvalid)
	}
	var small [4]digest
	ds := small[:0]
	for _, s := range stanzas {
		ds = append(ds, stanzaDigest(s))
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	now := m.now()
	for _, d := range ds {
		if k := m.cache.get(d, now); k != nil {
			out := bytes.Clone(k)
			m.mu.Unlock()
			return out, nil
		}
	}
	m.mu.Unlock()

	var fails []error
	var notMine error
	for i, s := range stanzas {
		if !m.hasType(s.Type) {
			continue
		}
		key, err := m.unwrapOne(ctx, s, ds[i])
		switch {
		case err == nil:
			return key, nil
		case ctx.Err() != nil || errors.Is(err, ErrClosed):
			return nil, fmt.Errorf("keysource: stanza %v: %w", s, err)
		case !errors.Is(err, ErrNotMine):
			fails = append(fails, fmt.Errorf("keysource: stanza %v: %w", s, err))
		case notMine == nil:
			notMine = err
		}
	}
	if len(fails) == 0 {
		names := make([]string, len(stanzas))
		for i, s := range stanzas {
			names[i] = s.String()
		}
		if notMine == nil {
			notMine = ErrNotMine
		}
		return nil, fmt.Errorf("keysource: no configured key opens any stanza (stanzas: %s; configured keys: %s): %w",
			strings.Join(names, ", "), m.keyNames(), notMine)
	}
	best := 0
	for i, err := range fails {
		if severity(err) > severity(fails[best]) {
			best = i
		}
	}
	if len(fails) == 1 {
		return nil, fails[0]
	}
	others := append(fails[:best:best], fails[best+1:]...)
	return nil, &unwrapError{best: fails[best], others: others}
}

// unwrapError is the main failure of an unwrap plus the others, which its
// message names but errors.Is does not see.
type unwrapError struct {
	best   error
	others []error
}

func (e *unwrapError) Error() string {
	var b strings.Builder
	b.WriteString(e.best.Error())
	for _, o := range e.others {
		b.WriteString("; also ")
		b.WriteString(o.Error())
	}
	return b.String()
}

func (e *unwrapError) Unwrap() error { return e.best }

// severity ranks errors by how much they tell the user.
func severity(err error) int {
	switch {
	case errors.Is(err, ErrDenied):
		return 4
	case errors.Is(err, ErrInvalid):
		return 3
	case errors.Is(err, ErrUnavailable):
		return 2
	case errors.Is(err, ErrNotMine):
		return 0
	}
	return 1
}

func (m *Manager) hasType(t string) bool {
	for _, s := range m.sources {
		if s.Type() == t {
			return true
		}
	}
	return false
}

// unwrapOne returns the key of s, whose digest is d, from the cache, from a
// flight in progress, or from a new flight.
func (m *Manager) unwrapOne(ctx context.Context, s Stanza, d digest) ([]byte, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, ErrClosed
	}
	if k := m.cache.get(d, m.now()); k != nil {
		out := bytes.Clone(k)
		m.mu.Unlock()
		return out, nil
	}
	f := m.flights[d]
	if f == nil {
		fctx, cancel := context.WithCancel(m.ctx)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		m.flights[d] = f
		m.wg.Add(1)
		// The flight may outlive this caller, so it gets its own body.
		go m.fly(fctx, f, Stanza{Type: s.Type, KeyID: s.KeyID, Body: bytes.Clone(s.Body)}, d)
	}
	f.waiters++
	hook := m.onJoin
	m.mu.Unlock()
	if hook != nil {
		hook()
	}

	select {
	case <-f.done:
	case <-ctx.Done():
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	f.waiters--
	select {
	case <-f.done:
		var key []byte
		if f.err == nil {
			key = bytes.Clone(f.key)
		}
		if f.waiters == 0 {
			clear(f.key)
		}
		if f.err != nil && m.closed {
			return nil, ErrClosed // the source failed because Close cancelled it
		}
		return key, f.err
	default:
		if f.waiters == 0 {
			// Nobody wants the answer any more; a later caller starts afresh.
			f.cancel()
			if m.flights[d] == f {
				delete(m.flights, d)
			}
		}
		return nil, ctx.Err()
	}
}

// fly runs flight f for stanza s and caches its key.
func (m *Manager) fly(ctx context.Context, f *flight, s Stanza, d digest) {
	defer m.wg.Done()
	defer f.cancel()
	key, err := m.unwrapWith(ctx, s)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.flights[d] == f {
		delete(m.flights, d)
	}
	if err == nil {
		f.key = bytes.Clone(key)
		if m.closed {
			clear(key)
		} else {
			m.cache.put(d, key, m.now()) // the cache now owns the source's slice
		}
	}
	f.err = err
	close(f.done)
	if f.waiters == 0 {
		clear(f.key)
	}
}

// unwrapWith asks every source of s's type in turn.
func (m *Manager) unwrapWith(ctx context.Context, s Stanza) ([]byte, error) {
	var best error
	for _, src := range m.sources {
		if src.Type() != s.Type {
			continue
		}
		key, err := src.Unwrap(ctx, s)
		if err == nil {
			if len(key) == DataKeySize {
				return key, nil
			}
			clear(key)
			err = fmt.Errorf("keysource: %s returned a %d-byte data key, want %d: %w",
				sourceName(src), len(key), DataKeySize, ErrInvalid)
		}
		if best == nil || severity(err) > severity(best) {
			best = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, best
}
