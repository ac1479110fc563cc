//go:build cgo

package hsmtest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	p11 "github.com/miekg/pkcs11"
)

// Start makes a fresh token store in a new temporary directory, points
// SOFTHSM2_CONF at it and makes the tokens o describes. It must run before
// anything in the process loads the module. On error it removes what it
// made.
func Start(o Options) (h *HSM, err error) {
	mod := o.Module
	if mod == "" {
		mod = ModulePath()
	}
	if _, err := os.Stat(mod); err != nil {
		return nil, fmt.Errorf("hsmtest: SoftHSM2 module: %w (install the softhsm2 package or set KMSFS_PKCS11_MODULE)", err)
	}
	dir, err := os.MkdirTemp("", "kmsfs-hsmtest-")
	if err != nil {
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	h = &HSM{Dir: dir, Module: mod, tokens: map[string]*Token{}}
	h.oldConf, h.hadConf = os.LookupEnv("SOFTHSM2_CONF")
	defer func() {
		if err != nil {
			h.Close()
			h = nil
		}
	}()
	tokdir := filepath.Join(dir, "tokens")
	if err := os.Mkdir(tokdir, 0o700); err != nil {
		return h, fmt.Errorf("hsmtest: %w", err)
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	text := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokdir)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return h, fmt.Errorf("hsmtest: %w", err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
		return h, fmt.Errorf("hsmtest: %w", err)
	}

	c := p11.New(mod)
	if c == nil {
		return h, fmt.Errorf("hsmtest: module %s could not be loaded", mod)
	}
	defer c.Destroy()
	if err := c.Initialize(); err != nil {
		if errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			return h, fmt.Errorf("hsmtest: module %s is already initialised in this process: call Start once, from TestMain, before any test opens it", mod)
		}
		return h, fmt.Errorf("hsmtest: initialise %s: %w", mod, err)
	}
	defer func() {
		if e := c.Finalize(); e != nil && err == nil {
			err = fmt.Errorf("hsmtest: finalise: %w", e)
		}
	}()
	for _, to := range o.Tokens {
		t, err := h.makeToken(c, to)
		if err != nil {
			return h, err
		}
		h.tokens[to.Name] = t
	}
	return h, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand.Read does not fail
	}
	return hex.EncodeToString(b)
}

func (h *HSM) makeToken(c *p11.Ctx, o TokenOptions) (*Token, error) {
	if o.Name == "" || len(o.Name) > 12 || strings.Trim(o.Name, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return nil, fmt.Errorf("hsmtest: token name %q: want 1 to 12 of [a-z0-9-]", o.Name)
	}
	if _, dup := h.tokens[o.Name]; dup {
		return nil, fmt.Errorf("hsmtest: token name %q twice", o.Name)
	}
	t := &Token{
		Name:     o.Name,
		Label:    "kmsfs-" + randomHex(4) + "-" + o.Name,
		PIN:      randomHex(8),
		PINFile:  filepath.Join(h.Dir, o.Name+".pin"),
		AESLabel: o.AESLabel,
		RSALabel: o.RSALabel,
		module:   h.Module,
	}
	soPIN := randomHex(8)
	if err := os.WriteFile(t.PINFile, []byte(t.PIN), 0o600); err != nil {
		return nil, fmt.Errorf("hsmtest: %w", err)
	}
	slot, err := freeSlot(c)
	if err != nil {
		return nil, err
	}
	if err := c.InitToken(slot, soPIN, t.Label); err != nil {
		return nil, fmt.Errorf("hsmtest: init token %s: %w", t.Label, err)
	}
	// SoftHSM may give an initialised token a new slot ID.
	if slot, err = slotOf(c, t.Label); err != nil {
		return nil, err
	}
	sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return nil, fmt.Errorf("hsmtest: open session: %w", err)
	}
	defer c.CloseSession(sh)
	if err := c.Login(sh, p11.CKU_SO, soPIN); err != nil {
		return nil, fmt.Errorf("hsmtest: SO login: %w", err)
	}
	if err := c.InitPIN(sh, t.PIN); err != nil {
		return nil, fmt.Errorf("hsmtest: init user PIN: %w", err)
	}
	if err := c.Logout(sh); err != nil {
		return nil, fmt.Errorf("hsmtest: SO logout: %w", err)
	}
	if err := c.Login(sh, p11.CKU_USER, t.PIN); err != nil {
		return nil, fmt.Errorf("hsmtest: user login: %w", err)
	}
	defer c.Logout(sh)
	if o.AESLabel != "" {
		if err := makeAES(c, sh, o.AESLabel); err != nil {
			return nil, err
		}
	}
	if o.RSALabel != "" {
		if err := makeRSA(c, sh, o.RSALabel, false); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func freeSlot(c *p11.Ctx) (uint, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("hsmtest: slot list: %w", err)
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err == nil && ti.Flags&p11.CKF_TOKEN_INITIALIZED == 0 {
			return s, nil
		}
	}
	return 0, errors.New("hsmtest: SoftHSM offers no free slot")
}

func slotOf(c *p11.Ctx, label string) (uint, error) {
	slots, err := c.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("hsmtest: slot list: %w", err)
	}
	for _, s := range slots {
		if ti, err := c.GetTokenInfo(s); err == nil && strings.TrimRight(ti.Label, " ") == label {
			return s, nil
		}
	}
	return 0, fmt.Errorf("hsmtest: token %s vanished after init", label)
}

func makeAES(c *p11.Ctx, sh p11.SessionHandle, label string) error {
	_, err := c.GenerateKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
		p11.NewAttribute(p11.CKA_VALUE_LEN, 32),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, []byte(AESID)),
		p11.NewAttribute(p11.CKA_ENCRYPT, true),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_WRAP, true),
		p11.NewAttribute(p11.CKA_UNWRAP, true),
	})
	if err != nil {
		return fmt.Errorf("hsmtest: generate AES key %s: %w", label, err)
	}
	return nil
}

// makeRSA makes an RSA-2048 key pair labelled label; alwaysAuth sets
// CKA_ALWAYS_AUTHENTICATE on its private key.
func makeRSA(c *p11.Ctx, sh p11.SessionHandle, label string, alwaysAuth bool) error {
	priv := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PRIVATE_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_RSA),
		p11.NewAttribute(p11.CKA_TOKEN, true),
		p11.NewAttribute(p11.CKA_PRIVATE, true),
		p11.NewAttribute(p11.CKA_SENSITIVE, true),
		p11.NewAttribute(p11.CKA_EXTRACTABLE, false),
		p11.NewAttribute(p11.CKA_LABEL, label),
		p11.NewAttribute(p11.CKA_ID, []byte(RSAID)),
		p11.NewAttribute(p11.CKA_DECRYPT, true),
		p11.NewAttribute(p11.CKA_UNWRAP, true),
	}
	if alwaysAuth {
		priv = append(priv, p11.NewAttribute(p11.CKA_ALWAYS_AUTHENTICATE, true))
	}
	_, _, err := c.GenerateKeyPair(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)},
		[]*p11.Attribute{
			p11.NewAttribute(p11.CKA_CLASS, p11.CKO_PUBLIC_KEY),
			p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_RSA),
			p11.NewAttribute(p11.CKA_TOKEN, true),
			p11.NewAttribute(p11.CKA_LABEL, label),
			p11.NewAttribute(p11.CKA_ID, []byte(RSAID)),
			p11.NewAttribute(p11.CKA_MODULUS_BITS, 2048),
			p11.NewAttribute(p11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			p11.NewAttribute(p11.CKA_ENCRYPT, true),
			p11.NewAttribute(p11.CKA_WRAP, true),
		},
		priv)
	if err != nil {
		return fmt.Errorf("hsmtest: generate RSA key pair %s: %w", label, err)
	}
	return nil
}

// AddAESKey makes another AES key labelled label on tok, as Start makes
// the token's own, for a test that deletes it (DeleteKey) without touching
// the keys other tests use. Its CKA_ID is AESID too: the label tells it
// apart.
func (h *HSM) AddAESKey(tok *Token, label string) error {
	return h.withUser(tok, func(c *p11.Ctx, sh p11.SessionHandle) error { return makeAES(c, sh, label) })
}

// AddAlwaysAuthRSAKey makes an RSA key pair labelled label on tok, as
// Start makes the token's own, but whose private key wants the PIN again
// before every use (CKA_ALWAYS_AUTHENTICATE): a key an unattended
// program cannot use.
func (h *HSM) AddAlwaysAuthRSAKey(tok *Token, label string) error {
	return h.withUser(tok, func(c *p11.Ctx, sh p11.SessionHandle) error { return makeRSA(c, sh, label, true) })
}

// DeleteKey destroys every object labelled label on tok: a key deleted
// from the token behind the back of whatever uses it.
func (h *HSM) DeleteKey(tok *Token, label string) error {
	return h.withUser(tok, func(c *p11.Ctx, sh p11.SessionHandle) error {
		if err := c.FindObjectsInit(sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, label)}); err != nil {
			return fmt.Errorf("hsmtest: find %s: %w", label, err)
		}
		objs, _, err := c.FindObjects(sh, 16)
		c.FindObjectsFinal(sh)
		if err != nil {
			return fmt.Errorf("hsmtest: find %s: %w", label, err)
		}
		if len(objs) == 0 {
			return fmt.Errorf("hsmtest: no object labelled %s on %s", label, tok.Label)
		}
		for _, o := range objs {
			if err := c.DestroyObject(sh, o); err != nil {
				return fmt.Errorf("hsmtest: destroy %s: %w", label, err)
			}
		}
		return nil
	})
}

// withUser runs f in a read-write session of tok logged in as the user.
// The module may be initialised in this process already (a key source of
// a test): it is then left initialised.
func (h *HSM) withUser(tok *Token, f func(*p11.Ctx, p11.SessionHandle) error) (err error) {
	c := p11.New(h.Module)
	if c == nil {
		return fmt.Errorf("hsmtest: module %s could not be loaded", h.Module)
	}
	switch err := c.Initialize(); {
	case errors.Is(err, p11.Error(p11.CKR_CRYPTOKI_ALREADY_INITIALIZED)):
	case err != nil:
		return fmt.Errorf("hsmtest: initialise %s: %w", h.Module, err)
	default:
		defer c.Finalize()
	}
	slot, err := slotOf(c, tok.Label)
	if err != nil {
		return err
	}
	sh, err := c.OpenSession(slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("hsmtest: open session: %w", err)
	}
	defer c.CloseSession(sh)
	if err := c.Login(sh, p11.CKU_USER, tok.PIN); err != nil && !errors.Is(err, p11.Error(p11.CKR_USER_ALREADY_LOGGED_IN)) {
		return fmt.Errorf("hsmtest: user login: %w", err)
	}
	return f(c, sh)
}
