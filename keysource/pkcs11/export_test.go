//go:build cgo

package pkcs11

import (
	"context"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// LoaderOf returns the Loader s was opened through, so tests can tell a
// Loader of the Source's own from a shared one.
func LoaderOf(s *Source) *Loader { return s.loader }

// Modules returns how many modules l holds loaded.
func Modules(l *Loader) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mods)
}

// WrapV1 returns a stanza of dataKey in body version 1, as kmsfs wrote
// before stanzas carried the key's fingerprint, for the tests that show
// such stanzas still open.
func WrapV1(ctx context.Context, s *Source, dataKey []byte) (keysource.Stanza, error) {
	st, err := s.Wrap(ctx, dataKey)
	if err != nil {
		return st, err
	}
	bd, err := parseBody(st.Body)
	if err != nil {
		return st, err
	}
	switch bd.kind {
	case kindGCM:
		err = s.call(ctx, func(sh p11.SessionHandle, key p11.ObjectHandle) error {
			head := []byte{bodyV1, kindGCM}
			iv, sealed, err := s.gcmSeal(sh, key, ivCaller, gcmWithIVBits, s.gcmAAD(head), dataKey)
			st.Body = append(append(head, iv...), sealed...)
			return err
		})
	case kindKWP:
		st.Body = append([]byte{bodyV1, kindKWP}, bd.data...)
	case kindRSA:
		st.Body = append([]byte{bodyV1, kindRSA, bd.hash}, bd.data...)
	}
	return st, err
}

// SessionLimit exposes sessionLimit.
func SessionLimit(maxSessions, maxRW uint, want int) int {
	return sessionLimit(maxSessions, maxRW, want)
}

// KWPWrap and KWPUnwrap expose the Go RFC 5649 code.
func KWPWrap(kek, p []byte) ([]byte, error)   { return kwpWrap(kek, p) }
func KWPUnwrap(kek, w []byte) ([]byte, error) { return kwpUnwrap(kek, w) }

// OAEPHashFor says which OAEP hash the probe settles on after the token
// answered DecryptInit with SHA-256 by err: 2 for SHA-256, 1 for SHA-1, 0
// with an error when the probe must fail instead.
func OAEPHashFor(err error) (byte, error) { return oaepHashFor(err) }
