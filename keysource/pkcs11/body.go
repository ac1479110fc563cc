package pkcs11

import (
	"fmt"

	"github.com/kmsfs/kmsfs/keysource"
)

// Stanza bodies. Byte 0 is the version, byte 1 the kind; the rest depends
// on both. V is the 16-byte volume ID, K the 32-byte data key.
//
// Version 2, written from now on, carries the key's fingerprint (F), so
// that a stanza names its key by what the key is rather than by its label:
// the AES key's CKA_CHECK_VALUE (3 bytes), or SHA-256 of the RSA public
// key's DER SubjectPublicKeyInfo (32 bytes); 0 bytes when the token shows
// no check value.
//
//	+-----+------+-----+--------+----------------------------------+
//	| 0x02| kind | len | F (len)| kind-specific                    |
//	+-----+------+-----+--------+----------------------------------+
//
//	kind 1, AES-GCM on the token (CKM_AES_GCM, 128-bit tag):
//	| ivlen (1) | IV (ivlen) | AES-GCM(K) ciphertext‖tag (48) |
//	  additional data = body up to and including F, then V. The IV is
//	  stored apart from the ciphertext whoever drew it and wherever the
//	  token returned it (written back into the parameters, appended to
//	  the output), so any token opens it with the IV as a parameter.
//
//	kind 2, RFC 5649 key wrap on the token:
//	| KWP(V ‖ K) (56) |
//
//	kind 3, RSA-OAEP (wrap in Go, unwrap by C_Decrypt CKM_RSA_PKCS_OAEP):
//	| hash (1) | OAEP(V ‖ K) (modulus size) |
//	  hash 1 = SHA-1, 2 = SHA-256 (OAEP and MGF1 both); empty label
//
// Version 1, read only, has no fingerprint, and a 12-byte IV:
//
//	kind 1: | 0x01 | 0x01 | IV (12) | ciphertext‖tag (48) |   62 bytes,
//	        additional data = body[0:2] ‖ V
//	kind 2: | 0x01 | 0x02 | KWP(V ‖ K) (56) |                 58 bytes
//	kind 3: | 0x01 | 0x03 | hash | OAEP(V ‖ K) |
//
// In every kind the unwrapped V must equal the volume ID.
const (
	bodyV1      = 1
	bodyVersion = 2

	kindGCM = 1
	kindKWP = 2
	kindRSA = 3

	hashSHA1   = 1
	hashSHA256 = 2

	volumeIDSize = 16
	gcmIVSize    = 12 // the IV kmsfs draws when the token takes one
	maxIVSize    = 16
	gcmTagSize   = 16
	maxFPSize    = 32
	bodyHead     = 2

	gcmSealedSize = keysource.DataKeySize + gcmTagSize
	boundSize     = volumeIDSize + keysource.DataKeySize // V ‖ K
	kwpSize       = boundSize + 8
)

// body is a parsed stanza body. Its slices alias the stanza's.
type body struct {
	version byte
	kind    byte
	fp      []byte // version 2: the key's fingerprint, maybe empty
	head    []byte // kind 1: the body bytes the additional data starts with
	iv      []byte // kind 1
	hash    byte   // kind 3: hashSHA1 or hashSHA256
	data    []byte // ciphertext
}

// parseBody checks a body's version, kind and sizes. The key it was made
// with checks the rest.
func parseBody(b []byte) (body, error) {
	if len(b) < bodyHead {
		return body{}, fmt.Errorf("pkcs11: stanza body of %d bytes: %w", len(b), keysource.ErrInvalid)
	}
	bd := body{version: b[0], kind: b[1]}
	rest := b[bodyHead:]
	switch bd.version {
	case bodyV1:
		bd.head = b[:bodyHead]
	case bodyVersion:
		if len(rest) < 1 || int(rest[0]) > maxFPSize || len(rest) < 1+int(rest[0]) {
			return body{}, fmt.Errorf("pkcs11: stanza body with a bad key fingerprint: %w", keysource.ErrInvalid)
		}
		n := int(rest[0])
		bd.fp, bd.head = rest[1:1+n], b[:bodyHead+1+n]
		rest = rest[1+n:]
	default:
		return body{}, fmt.Errorf("pkcs11: stanza body version %d, want %d or %d: %w", b[0], bodyV1, bodyVersion, keysource.ErrInvalid)
	}
	switch bd.kind {
	case kindGCM:
		ivLen := gcmIVSize
		if bd.version == bodyVersion {
			if len(rest) < 1 {
				return body{}, fmt.Errorf("pkcs11: AES-GCM stanza body without an IV: %w", keysource.ErrInvalid)
			}
			ivLen, rest = int(rest[0]), rest[1:]
		}
		if ivLen < 1 || ivLen > maxIVSize || len(rest) != ivLen+gcmSealedSize {
			return body{}, fmt.Errorf("pkcs11: AES-GCM stanza body of %d bytes with a %d-byte IV: %w", len(b), ivLen, keysource.ErrInvalid)
		}
		bd.iv, bd.data = rest[:ivLen], rest[ivLen:]
	case kindKWP:
		if len(rest) != kwpSize {
			return body{}, fmt.Errorf("pkcs11: AES key-wrap stanza body of %d bytes: %w", len(b), keysource.ErrInvalid)
		}
		bd.data = rest
	case kindRSA:
		if len(rest) <= 1 {
			return body{}, fmt.Errorf("pkcs11: RSA stanza body of %d bytes: %w", len(b), keysource.ErrInvalid)
		}
		switch rest[0] {
		case hashSHA1, hashSHA256:
			bd.hash = rest[0]
		default:
			return body{}, fmt.Errorf("pkcs11: RSA stanza names OAEP hash %d: %w", rest[0], keysource.ErrInvalid)
		}
		bd.data = rest[1:]
	default:
		return body{}, fmt.Errorf("pkcs11: stanza body kind %d: %w", bd.kind, keysource.ErrInvalid)
	}
	return bd, nil
}

// newBody starts a version-2 body of kind for a key with fingerprint fp.
func newBody(kind byte, fp []byte, size int) []byte {
	b := make([]byte, 0, bodyHead+1+len(fp)+size)
	b = append(b, bodyVersion, kind, byte(len(fp)))
	return append(b, fp...)
}
