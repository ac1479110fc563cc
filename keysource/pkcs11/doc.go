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
// The token is found by label among the module's slots; the key by label,
// and by id when the URI has one. The module comes from module-path, else
// from KMSFS_PKCS11_MODULE; there is no built-in default. The user PIN
// comes from pin-source (a file, one trailing newline dropped, or
// env:NAME), else from KMSFS_PKCS11_PIN; never from the URI itself or the
// command line, and it never appears in an error.
//
// # Keys and mechanisms
//
// An AES secret key wraps data keys on the token with CKM_AES_GCM: a
// 12-byte IV that kmsfs draws, a 128-bit tag, and the body's version and
// kind bytes followed by the volume ID as additional data. Where the
// token lacks GCM (or Options.AESKeyWrap asks for it), the key wraps with
// RFC 5649 key wrap, CKM_AES_KEY_WRAP_PAD; that mechanism has no
// additional data and wraps key objects only, so the volume ID is bound
// by wrapping V ‖ K (volume ID, then data key) as a short-lived,
// non-token generic secret object, and checked after unwrapping.
//
// An RSA key pair (2048 bits or more) wraps like an asymmetric KMS key:
// V ‖ K is encrypted in Go with RSA-OAEP under the public key (read from
// the private key object's CKA_MODULUS and CKA_PUBLIC_EXPONENT, or from
// the public key object of the same label), and decrypted on the token
// with CKM_RSA_PKCS_OAEP. OAEP uses SHA-256 when the token accepts it for
// decryption, else SHA-1 (SoftHSM); the body records which. The volume
// ID goes in the plaintext rather than the OAEP label because tokens
// such as SoftHSM refuse labels. OAEP is non-malleable, so a stanza
// cannot be moved to another volume; anyone with the public key can, by
// design, wrap new keys for any volume.
//
// The stanza body layout is drawn in body.go. A stanza's KeyID is the
// canonical URI of the key (token, object, id; no module, no PIN source);
// a stanza whose KeyID names another token, object or id is not this
// Source's (keysource.ErrNotMine).
//
// # Sessions, login and the module
//
// A Loader, which the CLI creates once per process and passes to every
// Open as Options.Loader, loads each module once and finalises it after
// its last Source closes. Each token in use
// keeps one anchor session open, through which it logs in once; PKCS#11
// login state belongs to the token and the process, so all Sources on a
// token share it (CKR_USER_ALREADY_LOGGED_IN counts as success). Each
// Source lends operations a bounded pool of sessions; a session whose
// call failed is closed rather than reused, since it may hold an active
// operation.
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
