// Package hsmtest gives tests a fresh SoftHSM2 token store for one test
// run: a softhsm2.conf in a temporary directory, tokens with random
// labels and PINs, an AES-256 key and an RSA-2048 key pair on each, the
// user PIN in a 0600 file, and the key specs that name them.
//
// SoftHSM reads SOFTHSM2_CONF once, when a process first initialises the
// module, and PKCS#11 allows one initialisation per process. So Start
// runs once per test binary, from TestMain, before any test loads the
// module; it creates everything through the PKCS#11 API, finalises the
// module again, and leaves SOFTHSM2_CONF set for the tests. Test packages
// get it through fusetest (SuiteOptions.Tokens, Suite.HSM), which fails a
// test that needs the tokens under CI=true when the store could not be
// made, and skips it otherwise. A build without cgo cannot load the
// module: there Start always fails.
package hsmtest

import (
	"fmt"
	"os"
	"strings"
)

// DefaultModule is the SoftHSM2 module of the Debian package softhsm2,
// used when Options.Module and KMSFS_PKCS11_MODULE are empty.
const DefaultModule = "/usr/lib/softhsm/libsofthsm2.so"

// ModulePath returns the SoftHSM2 module tests use when none is named:
// $KMSFS_PKCS11_MODULE, else DefaultModule.
func ModulePath() string {
	if mod := os.Getenv("KMSFS_PKCS11_MODULE"); mod != "" {
		return mod
	}
	return DefaultModule
}

// IDs given to the keys as CKA_ID, in bytes.
const (
	AESID = "\xa5\x01"
	RSAID = "\x5a\x02"
)

// Options say what Start makes.
type Options struct {
	// Module is the SoftHSM2 module; "" means $KMSFS_PKCS11_MODULE, then
	// DefaultModule.
	Module string
	// Tokens are made in this order.
	Tokens []TokenOptions
}

// TokenOptions describe one token.
type TokenOptions struct {
	// Name is a short name (up to 12 of [a-z0-9-]) that Token looks the
	// token up by and that ends its random label.
	Name string
	// AESLabel labels an AES-256 key (encrypt, decrypt, wrap, unwrap);
	// "" makes none.
	AESLabel string
	// RSALabel labels an RSA-2048 key pair (public: encrypt, wrap;
	// private: decrypt, unwrap); "" makes none.
	RSALabel string
}

// HSM is a SoftHSM2 token store made by Start. Close removes it.
type HSM struct {
	// Dir holds softhsm2.conf, the token directory and the PIN files.
	Dir string
	// Module is the path of the SoftHSM2 module.
	Module string

	tokens  map[string]*Token
	oldConf string
	hadConf bool
}

// Token is one token made by Start.
type Token struct {
	Name  string
	Label string // random: "kmsfs-<8 hex>-<Name>"
	// PIN is the user PIN, for tests that must tell it apart from a
	// wrong one. It is also in PINFile (mode 0600, no newline).
	PIN     string
	PINFile string

	AESLabel string
	RSALabel string
	module   string
}

// Token returns the token Start made under name; it panics if there is
// none, a mistake in the test.
func (h *HSM) Token(name string) *Token {
	t := h.tokens[name]
	if t == nil {
		panic("hsmtest: no token named " + name)
	}
	return t
}

// Close removes the token store and restores SOFTHSM2_CONF. Everything
// that used the module must be closed first. Close on nil does nothing.
func (h *HSM) Close() error {
	if h == nil {
		return nil
	}
	if h.hadConf {
		os.Setenv("SOFTHSM2_CONF", h.oldConf)
	} else {
		os.Unsetenv("SOFTHSM2_CONF")
	}
	return os.RemoveAll(h.Dir)
}

// URI returns the key spec of object on t, with module-path and
// pin-source=file: set.
func (t *Token) URI(object string) string { return t.URIVia(t.module, object) }

// URIVia is URI with module-path set to module: a module that reaches
// t's token through something in between, such as a test shim.
func (t *Token) URIVia(module, object string) string {
	return fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s",
		escape(t.Label), escape(object), escape(module), escape(t.PINFile))
}

// AESSpec returns the key spec of t's AES key.
func (t *Token) AESSpec() string { return t.URI(t.AESLabel) }

// RSASpec returns the key spec of t's RSA key pair.
func (t *Token) RSASpec() string { return t.URI(t.RSALabel) }

// escape percent-encodes what an attribute value may not hold.
func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ';' || c == '?' || c == '&' || c == '#' || c == '%' || c == '=' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
