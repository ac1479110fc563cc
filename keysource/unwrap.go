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
	key     []byte        // the flight's copy, a cell; freed by the last waiter
	err     error
	waiters int // guarded by Manager.mu
	cancel  context.CancelFunc
}

// UnwrapKey returns the data key held by one of stanzas, trying them in
// order with every configured source of the stanza's type. A cached key
// answers without a key-source call; concurrent calls for one stanza make
// one call. The result is a fresh copy on the Go heap that belongs to the
// caller, who clears it when done (UnwrapKeyTo writes it into a buffer of
// the caller's choice, such as a secmem cell, instead).
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
	key := make([]byte, DataKeySize)
	if err := m.UnwrapKeyTo(ctx, key, stanzas); err != nil {
		return nil, err
	}
	return key, nil
}

// UnwrapKeyTo is UnwrapKey writing the key into dst, which must hold
// DataKeySize bytes and stays the caller's (to free or clear). On error dst
// is left zeroed.
func (m *Manager) UnwrapKeyTo(ctx context.Context, dst []byte, stanzas []Stanza) error {
	if len(dst) != DataKeySize {
		return fmt.Errorf("keysource: data key buffer of %d bytes, want %d: %w", len(dst), DataKeySize, ErrInvalid)
	}
	clear(dst)
	if len(stanzas) == 0 {
		return fmt.Errorf("keysource: no stanzas to unwrap: %w", ErrInvalid)
	}
	var small [4]digest
	ds := small[:0]
	for _, s := range stanzas {
		ds = append(ds, stanzaDigest(s))
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	ks, now := m.keys, m.now()
	for _, d := range ds {
		if k := m.cache.get(d, now); k != nil {
			copy(dst, k)
			m.mu.Unlock()
			if m.obs != nil {
				m.obs.CacheLookup(true)
			}
			return nil
		}
	}
	m.mu.Unlock()
	if m.obs != nil {
		m.obs.CacheLookup(false)
	}

	var fails []error
	var notMine error
	for i, s := range stanzas {
		if !ks.hasType(s.Type) {
			continue
		}
		err := m.unwrapOne(ctx, ks, s, ds[i], dst)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil || errors.Is(err, ErrClosed):
			return fmt.Errorf("keysource: stanza %v: %w", s, err)
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
		return fmt.Errorf("keysource: no configured key opens any stanza (stanzas: %s; configured keys: %s): %w",
			strings.Join(names, ", "), ks.keyNames(), notMine)
	}
	best := 0
	for i, err := range fails {
		if severity(err) > severity(fails[best]) {
			best = i
		}
	}
	if len(fails) == 1 {
		return fails[0]
	}
	others := append(fails[:best:best], fails[best+1:]...)
	return &unwrapError{best: fails[best], others: others}
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

func (ks *keySet) hasType(t string) bool {
	for _, s := range ks.unwrap {
		if s.Type() == t {
			return true
		}
	}
	return false
}

// unwrapOne copies the key of s, whose digest is d, into dst: from the
// cache, from a flight in progress, or from a new flight with the sources
// of ks.
func (m *Manager) unwrapOne(ctx context.Context, ks *keySet, s Stanza, d digest, dst []byte) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if k := m.cache.get(d, m.now()); k != nil {
		copy(dst, k)
		m.mu.Unlock()
		return nil
	}
	f := m.flights[d]
	if f == nil {
		fctx, cancel := context.WithCancel(m.ctx)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		m.flights[d] = f
		m.wg.Add(1)
		// The flight may outlive this caller, so it gets its own body.
		go m.fly(fctx, ks, f, Stanza{Type: s.Type, KeyID: s.KeyID, Body: bytes.Clone(s.Body)}, d)
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
		if f.err == nil {
			copy(dst, f.key)
		}
		if f.waiters == 0 {
			m.mem.Free(f.key)
			f.key = nil
		}
		if f.err != nil && m.closed {
			return ErrClosed // the source failed because Close cancelled it
		}
		return f.err
	default:
		if f.waiters == 0 {
			// Nobody wants the answer any more; a later caller starts afresh.
			f.cancel()
			if m.flights[d] == f {
				delete(m.flights, d)
			}
		}
		return ctx.Err()
	}
}

// fly runs flight f for stanza s with the sources of ks and caches its
// key. The source's slice is cleared as soon as the key is in cells of
// m.mem.
func (m *Manager) fly(ctx context.Context, ks *keySet, f *flight, s Stanza, d digest) {
	defer m.wg.Done()
	defer f.cancel()
	key, err := ks.unwrapWith(ctx, s, m.obs)
	var cached []byte
	if err == nil {
		cached = m.mem.Clone(key)
		clear(key)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.flights[d] == f {
		delete(m.flights, d)
	}
	if err == nil {
		f.key = m.mem.Clone(cached)
		if m.closed {
			m.mem.Free(cached)
		} else {
			m.cache.put(d, cached, m.now())
		}
	}
	f.err = err
	close(f.done)
	if f.waiters == 0 {
		m.mem.Free(f.key)
		f.key = nil
	}
}

// unwrapWith asks every source of s's type in turn, timing each call for
// obs (nil: nobody).
func (ks *keySet) unwrapWith(ctx context.Context, s Stanza, obs Observer) ([]byte, error) {
	var best error
	for _, src := range ks.unwrap {
		if src.Type() != s.Type {
			continue
		}
		start := startCall(obs)
		key, err := src.Unwrap(ctx, s)
		endCall(obs, src, OpUnwrap, start, err)
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
