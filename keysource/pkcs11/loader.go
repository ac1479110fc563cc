//go:build cgo

package pkcs11

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// Loader loads PKCS#11 modules for the Sources opened through it and
// shares each module, and each token's login, between them.
//
// A module is loaded and initialised (C_Initialize) when the first Source
// needs it, and finalised and unloaded (C_Finalize) when the last Source
// using it is closed: never while a Source may still call it. PKCS#11
// keeps one library state per process, so a process should create one
// Loader (the CLI does, at start) and open every Source through it, as
// Options.Loader. If a
// module was already initialised by someone else in the process, the
// Loader uses it and leaves finalising to its owner.
//
// Login state in PKCS#11 belongs to the token and the process: once one
// Source has logged in to a token, every further Source on that token
// shares the login and its own PIN is not checked again. The login ends
// when the last Source on the token closes.
//
// A Loader is safe for concurrent use and needs no closing: it holds
// nothing once every Source opened through it is closed.
type Loader struct {
	mu   sync.Mutex
	mods map[string]*module // by module path, guarded by mu
}

// NewLoader returns an empty Loader.
func NewLoader() *Loader { return &Loader{mods: map[string]*module{}} }

// module is one loaded PKCS#11 library.
type module struct {
	path string
	ctx  *p11.Ctx
	own  bool // we called C_Initialize, so we call C_Finalize
	refs int  // Sources using the module, guarded by Loader.mu

	mu     sync.Mutex
	tokens map[uint]*token // open tokens by slot ID, guarded by mu
}

// acquire returns the module at path, loading it on first use.
func (l *Loader) acquire(path string) (*module, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.mods[path]; m != nil {
		m.refs++
		return m, nil
	}
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("pkcs11: module %s: %w (set module-path in the key URI or %s): %w",
			path, err, EnvModule, keysource.ErrUnavailable)
	}
	ctx := p11.New(path)
	if ctx == nil {
		return nil, fmt.Errorf("pkcs11: module %s could not be loaded: not a PKCS#11 library, or a library it needs is missing: %w",
			path, keysource.ErrUnavailable)
	}
	own := true
	if err := ctx.Initialize(); err != nil {
		if ckr(err) != p11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, fmt.Errorf("pkcs11: module %s: initialise: %w: %w", path, keysource.ErrUnavailable, err)
		}
		own = false
	}
	m := &module{path: path, ctx: ctx, own: own, refs: 1, tokens: map[uint]*token{}}
	l.mods[path] = m
	return m, nil
}

// release drops one reference to m and finalises it after the last.
func (l *Loader) release(m *module) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.refs--; m.refs > 0 {
		return nil
	}
	delete(l.mods, m.path)
	var err error
	if m.own {
		if e := m.ctx.Finalize(); e != nil {
			err = fmt.Errorf("pkcs11: module %s: finalise: %w", m.path, e)
		}
	}
	m.ctx.Destroy()
	return err
}

// token is one token in use by at least one Source. Its anchor session
// stays open as long as the token is in use, so that the login, which
// PKCS#11 ends with the last session, outlives the pooled sessions.
type token struct {
	mod   *module
	slot  uint
	label string
	refs  int // guarded by mod.mu

	mu       sync.Mutex
	anchor   p11.SessionHandle
	loggedIn bool // guarded by mu
}

// openToken finds the token labelled label and returns it with one more
// reference.
func (m *module) openToken(label string) (*token, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return nil, tokenErr("list slots", label, err)
	}
	var found []uint
	var labels []string
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		l := strings.TrimRight(ti.Label, " \x00")
		if l == label {
			found = append(found, s)
		}
		labels = append(labels, fmt.Sprintf("%q", l))
	}
	switch {
	case len(found) == 0:
		sort.Strings(labels)
		avail := "none"
		if len(labels) > 0 {
			avail = strings.Join(labels, ", ")
		}
		return nil, fmt.Errorf("pkcs11: no token labelled %q in module %s (tokens present: %s): %w",
			label, m.path, avail, keysource.ErrInvalid)
	case len(found) > 1:
		return nil, fmt.Errorf("pkcs11: %d tokens labelled %q in module %s; relabel one: %w",
			len(found), label, m.path, keysource.ErrInvalid)
	}
	slot := found[0]

	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.tokens[slot]; t != nil {
		t.refs++
		return t, nil
	}
	sh, err := m.ctx.OpenSession(slot, p11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, tokenErr("open session", label, err)
	}
	t := &token{mod: m, slot: slot, label: label, refs: 1, anchor: sh}
	m.tokens[slot] = t
	return t, nil
}

// release drops one reference to t; after the last it closes the anchor
// session, which ends the login.
func (t *token) release() {
	m := t.mod
	m.mu.Lock()
	defer m.mu.Unlock()
	if t.refs--; t.refs > 0 {
		return
	}
	delete(m.tokens, t.slot)
	_ = m.ctx.CloseSession(t.anchor)
}

// login logs the user in to t once; pin is called only if the token needs
// a login and nobody in this process has logged in yet.
func (t *token) login(u URI, pin func() ([]byte, error)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.loggedIn {
		return nil
	}
	ctx := t.mod.ctx
	if si, err := ctx.GetSessionInfo(t.anchor); err == nil &&
		(si.State == p11.CKS_RO_USER_FUNCTIONS || si.State == p11.CKS_RW_USER_FUNCTIONS) {
		t.loggedIn = true
		return nil
	}
	ti, err := ctx.GetTokenInfo(t.slot)
	if err != nil {
		return tokenErr("token info", t.label, err)
	}
	if ti.Flags&p11.CKF_LOGIN_REQUIRED == 0 {
		t.loggedIn = true
		return nil
	}
	p, err := pin()
	if err != nil {
		return err
	}
	err = ctx.Login(t.anchor, p11.CKU_USER, string(p))
	clear(p)
	if err != nil && ckr(err) != p11.CKR_USER_ALREADY_LOGGED_IN {
		return pinErr(u, err)
	}
	t.loggedIn = true
	return nil
}
