package pkcs11

import "io"

// Type is the key-source type of PKCS#11 specs and stanzas.
const Type = "pkcs11"

// DefaultSessions is how many sessions a Source holds open at most when
// Options.Sessions is 0. SoftHSM and network HSMs serve one operation per
// session at a time, so this bounds a Source's parallelism.
const DefaultSessions = 8

// Options configure a Source (see Open). The zero value binds the Source
// to the all-zero volume ID and gives it a Loader of its own.
type Options struct {
	// VolumeID is the volume's 128-bit ID, bound into every stanza the
	// Source writes and checked in every stanza it opens.
	VolumeID [16]byte
	// Loader loads the PKCS#11 module and shares it, and each token's
	// login, between the Sources opened through it (see Loader). nil
	// gives the Source a Loader of its own, which loads the module for it
	// alone and finalises it when the Source closes, for a program that
	// opens one Source. Sources that use one module at the same time must
	// share a Loader: a Source with a Loader of its own would finalise
	// the module under the others when it closes.
	Loader *Loader
	// Rand supplies AES-GCM IVs and the one-time keys of RFC 5649 key
	// wrap (and is handed to RSA-OAEP); nil means crypto/rand.Reader. It
	// must be safe for concurrent use.
	Rand io.Reader
	// LookupEnv reads EnvModule, EnvPIN and pin-source=env: variables;
	// nil means os.LookupEnv.
	LookupEnv func(key string) (string, bool)
	// Sessions caps the sessions the Source holds open, and so the
	// operations it runs at once on the token; 0 means DefaultSessions.
	// The URI's max-sessions overrides it; either is lowered to the
	// token's own limit.
	Sessions int
	// AESKeyWrap makes an AES key wrap with RFC 5649 key wrap even when
	// the token offers AES-GCM, as wrap=kwp in the URI does (which wins
	// when the URI says wrap=gcm). Without either, key wrap is used only
	// when the token lacks CKM_AES_GCM. Unwrap reads both kinds either
	// way.
	AESKeyWrap bool
}
