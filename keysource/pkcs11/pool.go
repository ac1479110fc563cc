//go:build cgo

package pkcs11

import (
	"context"
	"fmt"
	"sync"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// pool lends PKCS#11 sessions to one operation at a time. At most
// cap(sem) sessions exist; idle ones are kept for reuse. Sessions open
// lazily and share the token's login.
type pool struct {
	tok  *token
	sem  chan struct{} // one slot per session lent or being opened
	done chan struct{} // closed by close

	mu     sync.Mutex
	idle   []p11.SessionHandle // guarded by mu
	closed bool                // guarded by mu
}

func newPool(t *token, n int) *pool {
	return &pool{tok: t, sem: make(chan struct{}, n), done: make(chan struct{})}
}

// get lends a session, waiting for one while all are in use. The caller
// must hand it back with put.
func (p *pool) get(ctx context.Context) (p11.SessionHandle, error) {
	select {
	case <-p.done:
		return 0, errClosed
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("pkcs11: waiting for a session on token %q: %w: %w", p.tok.label, keysource.ErrUnavailable, ctx.Err())
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.sem
		return 0, errClosed
	}
	if n := len(p.idle); n > 0 {
		sh := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return sh, nil
	}
	p.mu.Unlock()
	sh, err := p.tok.mod.ctx.OpenSession(p.tok.slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		<-p.sem
		return 0, tokenErr("open session", p.tok.label, err)
	}
	return sh, nil
}

// put takes a lent session back. keep is false after any failed call, as
// the session may be left with an operation active: it is closed then.
func (p *pool) put(sh p11.SessionHandle, keep bool) {
	p.mu.Lock()
	if keep && !p.closed {
		p.idle = append(p.idle, sh)
		p.mu.Unlock()
	} else {
		p.mu.Unlock()
		_ = p.tok.mod.ctx.CloseSession(sh)
	}
	<-p.sem
}

// close refuses new loans, waits for lent sessions to come back and
// closes them all.
func (p *pool) close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.done)
	p.mu.Unlock()
	for range cap(p.sem) {
		p.sem <- struct{}{}
	}
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, sh := range idle {
		_ = p.tok.mod.ctx.CloseSession(sh)
	}
}

// do runs f on a lent session and puts the session back, closing it if f
// failed.
func (p *pool) do(ctx context.Context, f func(sh p11.SessionHandle) error) error {
	sh, err := p.get(ctx)
	if err != nil {
		return err
	}
	err = f(sh)
	p.put(sh, err == nil)
	return err
}
