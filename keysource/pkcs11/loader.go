//go:build cgo

package pkcs11

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

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
	mods map[moduleKey]*module // by the module file's identity, guarded by mu
}

// moduleKey identifies a module file whatever path reaches it (a symlink,
// another mount of it), so that one library is initialised once: a
// second C_Initialize of the same library in one process is refused, and
// finalising "one" of two would pull it from under the other.
type moduleKey struct {
	dev, ino uint64
	path     string // the resolved path, where the system gives no inode
}

// NewLoader returns an empty Loader.
func NewLoader() *Loader { return &Loader{mods: map[moduleKey]*module{}} }

// module is one loaded PKCS#11 library.
type module struct {
	path string // as first given, for messages
	key  moduleKey
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
	real, err := filepath.EvalSymlinks(path)
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(real)
	}
	if err != nil {
		return nil, fmt.Errorf("pkcs11: module %s: %w (set module-path in the key URI or %s): %w",
			path, err, EnvModule, keysource.ErrUnavailable)
	}
	key := moduleKey{path: real}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key = moduleKey{dev: uint64(st.Dev), ino: st.Ino}
	}
	if m := l.mods[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := p11.New(real)
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
	m := &module{path: path, key: key, ctx: ctx, own: own, refs: 1, tokens: map[uint]*token{}}
	l.mods[key] = m
	return m, nil
}

// release drops one reference to m and finalises it after the last.
func (l *Loader) release(m *module) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.refs--; m.refs > 0 {
		return nil
	}
	delete(l.mods, m.key)
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
//
// When the token drops the sessions or the login (a failover, a device
// removed and put back), recover opens a new anchor, logs in again and
// moves to a new generation; sessions and key handles of an older
// generation are dropped rather than used.
type token struct {
	mod   *module
	slot  uint
	label string
	info  p11.TokenInfo // as found at open
	refs  int           // guarded by mod.mu

	gen atomic.Uint64 // changed only under mu

	// What AES-GCM parameters the token takes, learnt by the first
	// wrap or unwrap and kept for the token's life: 0 until known.
	gcmLayout  atomic.Int32 // a gcmLayout
	gcmTokenIV atomic.Int32 // ivCaller or ivToken

	// The token's RFC 5649 mechanism (0 if none), learnt by the first
	// Source whose key may wrap, since the test costs a wrap on the
	// token.
	kwpMu    sync.Mutex
	kwpKnown bool // guarded by kwpMu
	kwpMech  uint // guarded by kwpMu

	mu       sync.Mutex
	anchor   p11.SessionHandle // guarded by mu
	loggedIn bool              // guarded by mu
}

// Who draws AES-GCM encryption IVs on a token.
const (
	ivCaller = 1 // kmsfs, passed in the parameters
	ivToken  = 2 // the token, which refuses a caller's IV
)

// openSession opens a read-write session: AWS CloudHSM refuses read-only
// ones, and no token refuses read-write ones but a write-protected one,
// which gets a read-only session instead.
func openSession(c *p11.Ctx, slot uint) (p11.SessionHandle, error) {
	sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if ckr(err) == p11.CKR_TOKEN_WRITE_PROTECTED {
		sh, err = c.OpenSession(slot, p11.CKF_SERIAL_SESSION)
	}
	return sh, err
}

// openToken finds the token the URI's token attributes select and
// returns it with one more reference.
func (m *module) openToken(u URI) (*token, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return nil, tokenErr("list slots", u.tokenName(), err)
	}
	var found []uint
	var infos []p11.TokenInfo
	var seen []string
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil || ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		ti.Label = trimPad(ti.Label)
		if u.selects(s, ti) {
			found = append(found, s)
			infos = append(infos, ti)
		}
		seen = append(seen, fmt.Sprintf("%q (serial %q, slot %d)", ti.Label, trimPad(ti.SerialNumber), s))
	}
	switch {
	case len(found) == 0:
		sort.Strings(seen)
		avail := "none"
		if len(seen) > 0 {
			avail = strings.Join(seen, ", ")
		}
		return nil, fmt.Errorf("pkcs11: no token %s in module %s (tokens present: %s): %w",
			u.tokenName(), m.path, avail, keysource.ErrInvalid)
	case len(found) > 1:
		return nil, fmt.Errorf("pkcs11: %d tokens match %s in module %s; add serial=… to the URI or relabel one: %w",
			len(found), u.tokenName(), m.path, keysource.ErrInvalid)
	}
	slot := found[0]

	m.mu.Lock()
	defer m.mu.Unlock()
	if t := m.tokens[slot]; t != nil {
		t.refs++
		return t, nil
	}
	sh, err := openSession(m.ctx, slot)
	if err != nil {
		return nil, tokenErr("open session", infos[0].Label, err)
	}
	t := &token{mod: m, slot: slot, label: infos[0].Label, info: infos[0], refs: 1, anchor: sh}
	m.tokens[slot] = t
	return t, nil
}

// trimPad drops the blank padding of a PKCS#11 fixed-width string.
func trimPad(s string) string { return strings.TrimRight(s, " \x00") }

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
	t.mu.Lock()
	_ = m.ctx.CloseSession(t.anchor)
	t.mu.Unlock()
}

// login logs the user in to t once; pin is called only if the token needs
// a login and nobody in this process has logged in yet.
func (t *token) login(u URI, pin func() ([]byte, error)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.loginLocked(u, pin)
}

func (t *token) loginLocked(u URI, pin func() ([]byte, error)) error {
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

// needsLogin reports whether the token wants a user login at all.
func (t *token) needsLogin() bool { return t.info.Flags&p11.CKF_LOGIN_REQUIRED != 0 }

// recover starts a new generation after a call found the session or the
// login of generation seen gone: it closes the anchor, opens a new one
// and logs in again, reading the PIN afresh. If another call has
// recovered since seen, it does nothing. An error that is itself a lost
// session (the token is still away) leaves the generation as it is, so
// the next attempt tries again.
func (t *token) recover(seen uint64, u URI, pin func() ([]byte, error)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gen.Load() != seen {
		return nil
	}
	c := t.mod.ctx
	_ = c.CloseSession(t.anchor)
	sh, err := openSession(c, t.slot)
	if err != nil {
		return tokenErr("open session again", t.label, err)
	}
	t.anchor, t.loggedIn = sh, false
	t.gen.Add(1)
	return t.loginLocked(u, pin)
}

// selects reports whether the token ti in slot matches every token
// attribute of u. PKCS#11 pads these fields with blanks.
func (u URI) selects(slot uint, ti p11.TokenInfo) bool {
	return (u.Token == "" || trimPad(ti.Label) == u.Token) &&
		(u.Serial == "" || trimPad(ti.SerialNumber) == u.Serial) &&
		(u.Model == "" || trimPad(ti.Model) == u.Model) &&
		(u.Manufacturer == "" || trimPad(ti.ManufacturerID) == u.Manufacturer) &&
		(u.SlotID == nil || *u.SlotID == slot)
}
