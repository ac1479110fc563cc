//go:build !amd64 || purego

package vaesgcm

import "crypto/cipher"

// Supported reports false: this build has no VAES implementation.
func Supported() bool { return false }

// New reports false: this build has no VAES implementation.
func New(key []byte) (cipher.AEAD, bool) { return nil, false }

// NewIn reports false: this build has no VAES implementation.
func NewIn(key, mem []byte) (cipher.AEAD, bool) { return nil, false }

func ghash(htab *[64][16]byte, acc *[16]byte, data []byte) { panic("vaesgcm: unsupported") }

func ctr(rk *[15][32]byte, counter *[16]byte, dst, src []byte) { panic("vaesgcm: unsupported") }
