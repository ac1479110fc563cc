package pkcs11

import (
	"fmt"

	"github.com/kmsfs/kmsfs/keysource"
)

// Stanza body, version 1. Byte 0 is the version, byte 1 the kind; the rest
// depends on the kind. V is the 16-byte volume ID, K the 32-byte data key.
//
//	kind 1, AES-GCM on the token (CKM_AES_GCM, 128-bit tag):
//	+-----+------+-----------+--------------------------------+
//	| 0x01| 0x01 | IV (12)   | AES-GCM(K) ciphertext‖tag (48)  |   62 bytes
//	+-----+------+-----------+--------------------------------+
//	  additional data = body[0:2] ‖ V
//
//	kind 2, RFC 5649 key wrap on the token (CKM_AES_KEY_WRAP_PAD):
//	+-----+------+--------------------------------+
//	| 0x01| 0x02 | KWP(V ‖ K) (56)                 |                 58 bytes
//	+-----+------+--------------------------------+
//	  the unwrapped V must equal the volume ID
//
//	kind 3, RSA-OAEP (wrap in Go, unwrap by C_Decrypt CKM_RSA_PKCS_OAEP):
//	+-----+------+------+-----------------------------------+
//	| 0x01| 0x03 | hash | OAEP(V ‖ K) (modulus size)          |  3+k bytes
//	+-----+------+------+-----------------------------------+
//	  hash 1 = SHA-1, 2 = SHA-256 (OAEP and MGF1 both); empty label;
//	  the decrypted V must equal the volume ID
const (
	bodyVersion = 1

	kindGCM = 1
	kindKWP = 2
	kindRSA = 3

	hashSHA1   = 1
	hashSHA256 = 2

	volumeIDSize = 16
	gcmIVSize    = 12
	gcmTagSize   = 16
	bodyHead     = 2

	gcmBodySize = bodyHead + gcmIVSize + keysource.DataKeySize + gcmTagSize
	boundSize   = volumeIDSize + keysource.DataKeySize // V ‖ K
	kwpBodySize = bodyHead + boundSize + 8
	rsaBodyHead = bodyHead + 1
)

// body is a parsed stanza body. Its slices alias the stanza's.
type body struct {
	kind byte
	iv   []byte // kind 1
	hash byte   // kind 3: hashSHA1 or hashSHA256
	data []byte // ciphertext
}

// parseBody checks a body's version, kind and size. The key it was made
// with checks the rest.
func parseBody(b []byte) (body, error) {
	if len(b) < bodyHead {
		return body{}, fmt.Errorf("pkcs11: stanza body of %d bytes: %w", len(b), keysource.ErrInvalid)
	}
	if b[0] != bodyVersion {
		return body{}, fmt.Errorf("pkcs11: stanza body version %d, want %d: %w", b[0], bodyVersion, keysource.ErrInvalid)
	}
	bd := body{kind: b[1]}
	switch bd.kind {
	case kindGCM:
		if len(b) != gcmBodySize {
			return body{}, fmt.Errorf("pkcs11: AES-GCM stanza body of %d bytes, want %d: %w", len(b), gcmBodySize, keysource.ErrInvalid)
		}
		bd.iv, bd.data = b[bodyHead:bodyHead+gcmIVSize], b[bodyHead+gcmIVSize:]
	case kindKWP:
		if len(b) != kwpBodySize {
			return body{}, fmt.Errorf("pkcs11: AES key-wrap stanza body of %d bytes, want %d: %w", len(b), kwpBodySize, keysource.ErrInvalid)
		}
		bd.data = b[bodyHead:]
	case kindRSA:
		if len(b) <= rsaBodyHead {
			return body{}, fmt.Errorf("pkcs11: RSA stanza body of %d bytes: %w", len(b), keysource.ErrInvalid)
		}
		switch b[2] {
		case hashSHA1, hashSHA256:
			bd.hash = b[2]
		default:
			return body{}, fmt.Errorf("pkcs11: RSA stanza names OAEP hash %d: %w", b[2], keysource.ErrInvalid)
		}
		bd.data = b[rsaBodyHead:]
	default:
		return body{}, fmt.Errorf("pkcs11: stanza body kind %d: %w", bd.kind, keysource.ErrInvalid)
	}
	return bd, nil
}
