//go:build cgo

package pkcs11

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

var (
	_ keysource.KeySource = (*Source)(nil)
	_ keysource.Describer = (*Source)(nil)
	_ io.Closer           = (*Source)(nil)
)

type keyKind int

const (
	keyAES keyKind = iota + 1
	keyRSA
)

// Source is a keysource.KeySource over one key on a PKCS#11 token: an AES
// secret key that wraps data keys on the token, or an RSA key pair whose
// public half wraps in Go and whose private half unwraps on the token.
// It is bound to one volume ID, which every stanza it writes binds and
// every stanza it opens must carry.
//
// A Source is safe for concurrent use; its calls share a bounded pool of
// sessions (Options.Sessions). PKCS#11 calls cannot be interrupted, so a
// context only bounds the wait for a session. The owner calls Close,
// which waits for calls in flight; calls after it fail.
type Source struct {
	loader *Loader
	tok    *token
	pool   *pool
	uri    URI
	keyID  string
	volume [volumeIDSize]byte
	rand   io.Reader

	pin func() ([]byte, error) // reads the PIN afresh for each login

	kind    keyKind
	aesMode byte           // kindGCM or kindKWP: how an AES key wraps
	kwpMech uint           // the token's RFC 5649 mechanism, 0 if none
	pub     *rsa.PublicKey // for keyRSA
	hash    byte           // hashSHA1 or hashSHA256, for keyRSA
	fp      []byte         // the key's fingerprint (see body.go), maybe empty
	detail  string         // for Describe

	mu     sync.Mutex
	key    p11.ObjectHandle // AES secret key or RSA private key, guarded by mu
	keyGen uint64           // token generation key was found in, guarded by mu

	closeOnce sync.Once
	closeErr  error
}

// Open returns a Source for the key that spec (a keysource.Spec of type
// "pkcs11", whose Value is a URI that ParseURI takes) names, bound to the
// volume o.VolumeID. It loads the module through o.Loader (a Loader of the
// Source's own when nil) if no other Source has, finds the token by label,
// logs in with the PIN from the URI's pin-source or EnvPIN unless the
// token is logged in already, and finds the key by label and id.
//
// Errors wrap keysource.ErrDenied when the token refuses the PIN,
// keysource.ErrInvalid for a bad URI or a token or key that is not there
// (naming it and, for a token, the labels present), and
// keysource.ErrUnavailable when the module cannot be loaded. No error
// holds the PIN. The caller closes the Source.
func Open(ctx context.Context, spec keysource.Spec, o Options) (*Source, error) {
	if spec.Type != Type {
		return nil, fmt.Errorf("pkcs11: key spec of type %q, want %q: %w", spec.Type, Type, keysource.ErrInvalid)
	}
	u, err := ParseURI(spec.Value)
	if err != nil {
		return nil, err
	}
	lookup := o.LookupEnv
	if lookup == nil {
		lookup = os.LookupEnv
	}
	path, err := u.modulePath(lookup)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pkcs11: open %s: %w", u.KeyID(), err)
	}
	l := o.Loader
	if l == nil {
		l = NewLoader()
	}
	m, err := l.acquire(path)
	if err != nil {
		return nil, err
	}
	tok, err := m.openToken(u)
	if err != nil {
		_ = l.release(m)
		return nil, err
	}
	// The key ID names the token by its label, whatever selected it.
	u.Token = tok.label
	pin := func() ([]byte, error) { return u.readPIN(lookup) }
	if err := withRecovery(ctx, tok, u, pin, func(uint64) error { return tok.login(u, pin) }); err != nil {
		tok.release()
		_ = l.release(m)
		return nil, err
	}
	n := o.Sessions
	if n <= 0 {
		n = DefaultSessions
	}
	if u.MaxSessions > 0 {
		n = u.MaxSessions
	}
	n = sessionLimit(tok.info.MaxSessionCount, tok.info.MaxRwSessionCount, n)
	s := &Source{
		loader: l,
		tok:    tok,
		pool:   newPool(tok, n),
		uri:    u,
		keyID:  u.KeyID(),
		volume: o.VolumeID,
		rand:   o.Rand,
		pin:    pin,
		keyGen: tok.gen.Load(),
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	wrap := u.Wrap
	if wrap == "" && o.AESKeyWrap {
		wrap = WrapKWP
	}
	if err := s.findKey(ctx, wrap); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// Type returns "pkcs11".
func (s *Source) Type() string { return Type }

// KeyID returns the canonical URI of the key (see URI.KeyID) that the
// Source writes into its stanzas.
func (s *Source) KeyID() string { return s.keyID }

// Wrap returns a stanza holding dataKey, which must be DataKeySize bytes
// and stays the caller's, wrapped under the Source's key and bound to its
// volume. An AES key wraps on the token; an RSA key wraps in Go with its
// public key and makes no token call.
func (s *Source) Wrap(ctx context.Context, dataKey []byte) (keysource.Stanza, error) {
	if len(dataKey) != keysource.DataKeySize {
		return keysource.Stanza{}, fmt.Errorf("pkcs11: data key of %d bytes, want %d: %w", len(dataKey), keysource.DataKeySize, keysource.ErrInvalid)
	}
	if err := s.usable(ctx); err != nil {
		return keysource.Stanza{}, err
	}
	var body []byte
	var err error
	switch {
	case s.kind == keyRSA:
		body, err = s.wrapRSA(dataKey)
	case s.aesMode == kindKWP:
		body, err = s.wrapKWP(ctx, dataKey)
	default:
		body, err = s.wrapGCM(ctx, dataKey)
	}
	if err != nil {
		return keysource.Stanza{}, err
	}
	return keysource.Stanza{Type: Type, KeyID: s.keyID, Body: body}, nil
}

// Unwrap returns the data key in st; the caller owns it. It returns an
// error wrapping keysource.ErrNotMine if st is not a pkcs11 stanza for
// this token, object and id, and one wrapping keysource.ErrInvalid if st
// is malformed, was changed, or belongs to another volume.
func (s *Source) Unwrap(ctx context.Context, st keysource.Stanza) ([]byte, error) {
	if st.Type != Type {
		return nil, fmt.Errorf("pkcs11: stanza of type %q: %w", st.Type, keysource.ErrNotMine)
	}
	named := st.KeyID == s.keyID
	if !named {
		u, err := ParseURI(st.KeyID)
		named = err == nil && u.sameKey(s.uri)
	}
	bd, err := parseBody(st.Body)
	if err != nil {
		if !named {
			return nil, fmt.Errorf("pkcs11: stanza for %s, this key is %s: %w", st.KeyID, s.keyID, keysource.ErrNotMine)
		}
		return nil, err
	}
	// A stanza that carries a fingerprint is this key's exactly when the
	// fingerprint is this key's, whatever label and id it names: a
	// relabelled key, an id= added to the URI, a token restored under
	// another label all still open their stanzas, and another key put
	// under the old label does not pass for this one.
	switch {
	case len(bd.fp) > 0 && len(s.fp) > 0 && subtle.ConstantTimeCompare(bd.fp, s.fp) == 1:
	case len(bd.fp) > 0 && len(s.fp) > 0 && named:
		return nil, fmt.Errorf("pkcs11: stanza names %s, but was written by a key with fingerprint %x, and this key has %x: the key under this name was replaced: %w",
			st.KeyID, bd.fp, s.fp, keysource.ErrInvalid)
	case !named:
		return nil, fmt.Errorf("pkcs11: stanza for %s, this key is %s: %w", st.KeyID, s.keyID, keysource.ErrNotMine)
	}
	if (bd.kind == kindRSA) != (s.kind == keyRSA) {
		return nil, fmt.Errorf("pkcs11: stanza body kind %d does not fit the %s on token %q: %w",
			bd.kind, s.keyName(), s.uri.Token, keysource.ErrInvalid)
	}
	if err := s.usable(ctx); err != nil {
		return nil, err
	}
	switch bd.kind {
	case kindGCM:
		return s.unwrapGCM(ctx, bd)
	case kindKWP:
		return s.unwrapKWP(ctx, bd)
	default:
		return s.unwrapRSA(ctx, bd)
	}
}

// usable fails once the Source is closed or ctx is done.
func (s *Source) usable(ctx context.Context) error {
	select {
	case <-s.pool.done:
		return errClosed
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pkcs11: %s: %w", s.keyID, err)
	}
	return nil
}

// Describe reports the key: its type and token in Detail, State
// "Present", "Restricted" (its attributes no longer allow the operations
// kmsfs needs), "Missing" (the object is gone) or "Unavailable" (the
// token does not answer), and Usable. It returns an error only when the
// Source is closed or ctx ends while it waits for a session.
func (s *Source) Describe(ctx context.Context) (keysource.KeyState, error) {
	st := keysource.KeyState{KeyID: s.keyID, Detail: s.detail}
	if err := s.usable(ctx); err != nil {
		return st, err
	}
	var ok bool
	err := s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
		var err error
		ok, err = s.permitted(sh, key)
		return err
	})
	if err != nil && (errors.Is(err, errClosed) || ctx.Err() != nil) {
		return st, err
	}
	switch {
	case err == nil && ok:
		st.State, st.Usable = "Present", true
	case err == nil:
		st.State = "Restricted"
		_, what := s.needs()
		st.Detail += "; the key's attributes no longer allow " + what
	case errors.Is(err, errKeyGone):
		st.State = "Missing"
		st.Detail += "; the key is no longer on the token"
	default:
		st.State = "Unavailable"
		st.Detail += fmt.Sprintf("; token does not answer: %v", err)
	}
	return st, nil
}

// Close waits for calls in flight, closes the Source's sessions, and
// releases its token and module: the last Source on a token ends the
// login, the last on a module finalises it. A Source opened without
// Options.Loader is the only one on its Loader, so it finalises the
// module unless someone else in the process initialised it. Later calls
// on the Source fail. Close is idempotent.
func (s *Source) Close() error {
	s.closeOnce.Do(func() {
		s.pool.close()
		s.tok.release()
		s.closeErr = s.loader.release(s.tok.mod)
	})
	return s.closeErr
}

// ck returns the module's PKCS#11 context.
func (s *Source) ck() *p11.Ctx { return s.tok.mod.ctx }

// Recovery after a lost session or login: a call gives up only after at
// least callAttempts attempts AND recoveryWindow since its first, so that
// a cluster that fails over again while calls queue up behind a busy
// host is outwaited, not reported as gone after a second and a half of
// backoff; ctx bounds it earlier. The wait before the third and later
// attempts doubles up to the cap. The first repeat runs at once, since
// one drop costs every call in flight one failure and the recovery has
// already been done by then.
const (
	callAttempts   = 8
	recoveryWindow = 10 * time.Second
	retryFirst     = 10 * time.Millisecond
	retryMaxDelay  = time.Second
)

// call runs f on a pooled session with the key's handle, through
// withRecovery. f must be safe to repeat.
func (s *Source) call(ctx context.Context, f func(sh p11.SessionHandle, key p11.ObjectHandle) error) error {
	return withRecovery(ctx, s.tok, s.uri, s.pin, func(gen uint64) error {
		key, err := s.keyHandle(ctx, gen)
		if err != nil {
			return err
		}
		return s.pool.do(ctx, func(sh p11.SessionHandle) error { return f(sh, key) })
	})
}

// withRecovery runs f, given tok's generation. When f fails because the
// token dropped the session, the login or a handle, it recovers the
// token (a new session, a new login with pin; a Source's key is found
// again by its next keyHandle) and runs f again, waiting between
// attempts; ctx bounds the waits. Open logs in through it before its
// Source exists, so a failover while a volume mounts is recovered too.
func withRecovery(ctx context.Context, tok *token, u URI, pin func() ([]byte, error), f func(gen uint64) error) error {
	var err error
	delay := retryFirst
	start := time.Now()
	attempt := 0
	for ; attempt < callAttempts || time.Since(start) < recoveryWindow; attempt++ {
		if attempt >= 2 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("pkcs11: token %q: %w (after %v)", u.Token, ctx.Err(), err)
			}
			delay = min(2*delay, retryMaxDelay)
		}
		gen := tok.gen.Load()
		if err = f(gen); err == nil || !lost(err) {
			return err
		}
		if rerr := tok.recover(gen, u, pin); rerr != nil && !lost(rerr) {
			return rerr
		}
	}
	return fmt.Errorf("pkcs11: token %q keeps dropping sessions (%d attempts in %v): %w", u.Token, attempt, time.Since(start).Round(time.Millisecond), err)
}

// keyHandle returns the key's handle, found again after the token moved
// to generation gen.
func (s *Source) keyHandle(ctx context.Context, gen uint64) (p11.ObjectHandle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keyGen == gen {
		return s.key, nil
	}
	err := s.pool.do(ctx, func(sh p11.SessionHandle) error {
		h, err := s.refind(sh)
		if err == nil {
			s.key, s.keyGen = h, gen
		}
		return err
	})
	return s.key, err
}
