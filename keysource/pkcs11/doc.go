// Package pkcs11 is the kmsfs key source for PKCS#11 tokens (HSMs,
// SoftHSM2). It is the only package of kmsfs that uses cgo, through
// github.com/miekg/pkcs11. A build without cgo (CGO_ENABLED=0) keeps the
// package's API, and URI parsing, but Open fails with an error
// wrapping keysource.ErrInvalid that says to rebuild with cgo; local and
// AWS KMS keys work in such a build.
//
// A Source is made by Open(ctx, spec, Options), as every kmsfs key
// source is.
//
// # Key specs
//
// A key is named by an RFC 7512 URI (see URI and ParseURI):
//
//	pkcs11:token=Prod%20HSM;object=kmsfs-wrap?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/secrets/hsm-pin
//
// The token is the one whose label, serial, model, manufacturer and
// slot-id match those the URI gives; the key is found by label, and by id
// when the URI has one. The module comes from module-path, else from
// KMSFS_PKCS11_MODULE; there is no built-in default. The user PIN comes
// from pin-source (a file, one trailing newline dropped, or env:NAME),
// else from KMSFS_PKCS11_PIN; never from the URI itself or the command
// line, and it never appears in an error. The query attributes wrap=gcm
// or wrap=kwp choose how an AES key wraps, and max-sessions=N caps the
// sessions the key holds.
//
// # Keys and mechanisms
//
// An AES secret key wraps data keys on the token with CKM_AES_GCM, a
// 128-bit tag, and the body's bytes up to the IV followed by the volume
// ID as additional data. Tokens differ in who draws the IV: kmsfs tries
// its own first and, if the token refuses that parameter, hands the
// token a zeroed IV buffer, reading the token's IV back from the buffer
// (AWS CloudHSM) or from the end of the output (Thales Luna in FIPS
// mode); and in the CK_GCM_PARAMS layout they take (with ulIvBits first,
// then without). What works is kept for the token. The body records the
// IV and its length apart from the ciphertext, so any token opens it.
//
// Where the token lacks GCM, or the URI says wrap=kwp, the key wraps with
// RFC 5649 key wrap, under the first of CKM_AES_KEY_WRAP_KWP (0x210B),
// CKM_AES_KEY_WRAP_PAD (0x210A, SoftHSM), CloudHSM's 0x8000216F and
// Luna's 0x80000171 that the token offers and that wraps a test key
// exactly as RFC 5649 does. Key wrap has no additional data and wraps key
// objects only, so the volume ID is bound by wrapping V ‖ K (volume ID,
// then data key) as a sensitive session object, checked after
// unwrapping. No object's value is ever read, which HSMs that keep every
// secret key sensitive refuse: the unwrapped V ‖ K is wrapped out again
// under a one-time AES key kmsfs drew and unwrapped in Go.
//
// An RSA key pair (2048 bits or more) wraps like an asymmetric KMS key:
// V ‖ K is encrypted in Go with RSA-OAEP under the public key (read from
// the private key object's CKA_MODULUS and CKA_PUBLIC_EXPONENT, or from
// the public key object of the same label), and decrypted on the token
// with CKM_RSA_PKCS_OAEP. OAEP uses SHA-256 when the token accepts it for
// decryption, and SHA-1 only when the token definitely refuses SHA-256
// (SoftHSM); the body records which. The volume ID goes in the plaintext
// rather than the OAEP label because tokens such as SoftHSM refuse
// labels. OAEP is non-malleable, so a stanza cannot be moved to another
// volume; anyone with the public key can, by design, wrap new keys for
// any volume.
//
// Keys with CKA_ALWAYS_AUTHENTICATE, which want the PIN again before each
// use, are refused at Open: kmsfs runs unattended.
//
// # Key identity
//
// The stanza body layout is drawn in body.go. A stanza's KeyID is the
// canonical URI of the key (token label, object, id; no module, no PIN
// source), but the body carries the key's fingerprint: CKA_CHECK_VALUE
// for an AES key, SHA-256 of the DER public key for an RSA key. A stanza
// with a fingerprint is this Source's exactly when the fingerprint is
// this key's, whatever label, id or token label its KeyID names, so
// relabelling the key, adding id= to the URI or restoring the token under
// another label leaves its stanzas readable; a stanza naming this key
// whose fingerprint is another key's fails as keysource.ErrInvalid (the
// key under the name was replaced). Stanzas without a fingerprint (body
// version 1, or tokens that show no check value) go by their KeyID
// (keysource.ErrNotMine when it names another token, object or id).
//
// # Sessions, login and the module
//
// A Loader, which the CLI creates once per process and passes to every
// Open as Options.Loader, loads each module once, however many paths lead
// to its file, and finalises it after its last Source closes. Each token
// in use keeps one read-write anchor session open, through which it logs
// in once; PKCS#11 login state belongs to the token and the process, so
// all Sources on a token share it (CKR_USER_ALREADY_LOGGED_IN counts as
// success). Sessions are read-write because AWS CloudHSM refuses
// read-only ones. Each Source lends operations a bounded pool of
// sessions, sized from Options.Sessions or max-sessions, lowered to what
// the token reports in ulMaxSessionCount and ulMaxRwSessionCount; a call
// that meets CKR_SESSION_COUNT waits (bounded, and cancelled with its
// context) for a session. A session whose call failed is closed rather
// than reused, since it may hold an active operation.
//
// When the token drops the sessions or the login (a cluster failover, a
// device removed and put back), calls fail with CKR_SESSION_HANDLE_INVALID,
// CKR_USER_NOT_LOGGED_IN and the like. The Source then opens a new anchor
// session, logs in again with the PIN read afresh, drops its pooled
// sessions and key handle, finds the key again (checking its
// fingerprint), and repeats the call, a bounded number of times with a
// growing wait.
//
// # SoftHSM2 2.6 quirks
//
//   - A failed GCM tag check, a failed RFC 5649 integrity check and bad
//     OAEP padding all return CKR_GENERAL_ERROR, not
//     CKR_ENCRYPTED_DATA_INVALID; the package treats both as an invalid
//     stanza (keysource.ErrInvalid) on unwrap.
//   - CKM_RSA_PKCS_OAEP takes only SHA-1 with MGF1-SHA-1, source
//     CKZ_DATA_SPECIFIED and an empty label; anything else is
//     CKR_ARGUMENTS_BAD at C_EncryptInit/C_DecryptInit.
//   - CKM_AES_KEY_WRAP_PAD works with C_WrapKey/C_UnwrapKey only, not
//     C_Encrypt (CKR_MECHANISM_INVALID).
//   - CKA_ALWAYS_AUTHENTICATE is taken on private keys only
//     (CKR_ATTRIBUTE_TYPE_INVALID on secret keys).
//   - ulMaxSessionCount is reported as effectively infinite.
//   - A session runs one operation at a time: an initialised but
//     unfinished operation makes the next *Init fail with
//     CKR_OPERATION_ACTIVE until the session is closed.
//   - The token is logged out when the process's last session on it
//     closes, and it reads SOFTHSM2_CONF once, at C_Initialize.
//
// # Secrets in memory
//
// Go buffers holding data keys or PINs are cleared after use, but the C
// side of github.com/miekg/pkcs11 copies arguments and results into
// malloc'd memory that it frees without clearing, and Login takes the
// PIN as a Go string.
package pkcs11
