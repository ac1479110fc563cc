package pkcs11

import "io"

// Type is the key-source type of PKCS#11 specs and stanzas.
const Type = "pkcs11"

// DefaultSessions is how many sessions a Source holds open at most when
// Options.Sessions is 0. SoftHSM and network HSMs serve one operation per
// session at a time, so this bounds a Source's parallelism.
const DefaultSessions = 8

// Options configure a Source. The zero value is ready to use.
type Options struct {
	// Rand supplies AES-GCM IVs (and is handed to RSA-OAEP); nil means
	// crypto/rand.Reader. It must be safe for concurrent use.
	Rand io.Reader
	// LookupEnv reads EnvModule, EnvPIN and pin-source=env: variables;
	// nil means os.LookupEnv.
	LookupEnv func(key string) (string, bool)
	// Sessions caps the sessions the Source holds open, and so the
	// operations it runs at once on the token; 0 means DefaultSessions.
	Sessions int
	// AESKeyWrap makes an AES key wrap with RFC 5649 key wrap
	// (CKM_AES_KEY_WRAP_PAD) even when the token offers AES-GCM, for
	// tokens whose policy refuses caller-chosen GCM IVs. Without it, key
	// wrap is used only when the token lacks CKM_AES_GCM. Unwrap reads
	// both kinds either way.
	AESKeyWrap bool
}
