//go:build cgo

package pkcs11

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// How long a call waits for the token to free a session when it answers
// CKR_SESSION_COUNT, and how often it asks again meanwhile. Sessions that
// this pool hands back wake the wait at once; those freed by other pools
// or processes are seen at the next ask.
const (
	sessionWait      = 30 * time.Second
	sessionPollFirst = 5 * time.Millisecond
	sessionPollMax   = 200 * time.Millisecond
)

// lease is a session lent by a pool, with the token generation it was
// opened in.
type lease struct {
	sh  p11.SessionHandle
	gen uint64
}

// pool lends PKCS#11 sessions to one operation at a time. At most
// cap(sem) sessions exist; idle ones are kept for reuse. Sessions open
// lazily and share the token's login.
type pool struct {
	tok      *token
	sem      chan struct{} // one slot per session lent or being opened
	done     chan struct{} // closed by close
	returned chan struct{} // signalled when a session comes back

	mu     sync.Mutex
	idle   []lease // guarded by mu
	closed bool    // guarded by mu
}

func newPool(t *token, n int) *pool {
	return &pool{tok: t, sem: make(chan struct{}, n), done: make(chan struct{}), returned: make(chan struct{}, 1)}
}

// sessionLimit returns how many sessions a Source on a token reporting
// maxSessions and maxRW (CK_TOKEN_INFO's ulMaxSessionCount and
// ulMaxRwSessionCount) holds at most when it wants want: want, lowered to
// the token's limit less one for the anchor session. 0 (effectively
// infinite) and CK_UNAVAILABLE_INFORMATION set no limit.
func sessionLimit(maxSessions, maxRW uint, want int) int {
	n := want
	for _, m := range []uint{maxSessions, maxRW} {
		if m == 0 || m == ^uint(0) {
			continue
		}
		if lim := int(min(m, 1<<20)) - 1; lim < n {
			n = lim
		}
	}
	return max(n, 1)
}

// get lends a session, waiting for one while all are in use, or while the
// token has no session to spare. The caller hands it back with put.
func (p *pool) get(ctx context.Context) (lease, error) {
	select {
	case <-p.done:
		return lease{}, errClosed
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		return lease{}, fmt.Errorf("pkcs11: waiting for a session on token %q: %w: %w", p.tok.label, keysource.ErrUnavailable, ctx.Err())
	}
	var giveUp *time.Timer
	poll := sessionPollFirst
	for {
		l, ok, err := p.idleOne()
		if err != nil || ok {
			return l, err
		}
		gen := p.tok.gen.Load()
		sh, err := openSession(p.tok.mod.ctx, p.tok.slot)
		if err == nil {
			return lease{sh: sh, gen: gen}, nil
		}
		if ckr(err) != p11.CKR_SESSION_COUNT {
			<-p.sem
			return lease{}, tokenErr("open session", p.tok.label, err)
		}
		if giveUp == nil {
			giveUp = time.NewTimer(sessionWait)
			defer giveUp.Stop()
		}
		t := time.NewTimer(poll)
		select {
		case <-p.returned:
		case <-t.C:
		case <-giveUp.C:
			t.Stop()
			<-p.sem
			return lease{}, fmt.Errorf("pkcs11: token %q has had no session to spare for %v (its session limit is reached; lower max-sessions in the key URI): %w",
				p.tok.label, sessionWait, keysource.ErrUnavailable)
		case <-ctx.Done():
			t.Stop()
			<-p.sem
			return lease{}, fmt.Errorf("pkcs11: waiting for the token %q to free a session: %w: %w", p.tok.label, keysource.ErrUnavailable, ctx.Err())
		case <-p.done:
			t.Stop()
			<-p.sem
			return lease{}, errClosed
		}
		t.Stop()
		poll = min(2*poll, sessionPollMax)
	}
}

// idleOne takes an idle session of the current generation, closing those
// of older ones, which the token has dropped.
func (p *pool) idleOne() (lease, bool, error) {
	gen := p.tok.gen.Load()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		<-p.sem
		return lease{}, false, errClosed
	}
	for n := len(p.idle); n > 0; n = len(p.idle) {
		l := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if l.gen == gen {
			return l, true, nil
		}
		_ = p.tok.mod.ctx.CloseSession(l.sh)
	}
	return lease{}, false, nil
}

// put takes a lent session back. keep is false after any failed call, as
// the session may be left with an operation active: it is closed then.
func (p *pool) put(l lease, keep bool) {
	p.mu.Lock()
	if keep && !p.closed && l.gen == p.tok.gen.Load() {
		p.idle = append(p.idle, l)
		p.mu.Unlock()
	} else {
		p.mu.Unlock()
		_ = p.tok.mod.ctx.CloseSession(l.sh)
	}
	<-p.sem
	select {
	case p.returned <- struct{}{}:
	default:
	}
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
	for _, l := range idle {
		_ = p.tok.mod.ctx.CloseSession(l.sh)
	}
}

// do runs f on a lent session and puts the session back, closing it if f
// failed.
func (p *pool) do(ctx context.Context, f func(sh p11.SessionHandle) error) error {
	l, err := p.get(ctx)
	if err != nil {
		return err
	}
	err = f(l.sh)
	p.put(l, err == nil)
	return err
}
