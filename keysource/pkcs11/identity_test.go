//go:build cgo

package pkcs11_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// TestFingerprintIdentity moves a stanza's key ID the ways a token's
// keys get renamed (the key relabelled, the token restored under another
// label) and puts another key under the stanza's name: the key's
// fingerprint, not its name, decides whose a stanza is.
func TestFingerprintIdentity(t *testing.T) {
	h := needHSM(t)
	main, other := h.Token("main"), h.Token("other")
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			s := open(t, kc.spec, volA, kc.opts)
			object := labelOf(kc)
			// The key of the same label on the other token is another key.
			o := open(t, other.URI(object), volA, kc.opts)
			dk := newDataKey()
			st, err := s.Wrap(t.Context(), dk)
			if err != nil {
				t.Fatal(err)
			}
			rename := func(token, obj string) keysource.Stanza {
				c := st
				c.KeyID = pkcs11.URI{Token: token, Object: obj}.KeyID()
				return c
			}
			tests := []struct {
				name string
				src  *pkcs11.Source
				st   keysource.Stanza
				want error // nil: opens to dk
			}{
				{"change=relabelled-key", s, rename(main.Label, "old "+object), nil},
				{"change=token-restored-elsewhere", s, rename("old-token", object), nil},
				{"change=key-id-unparsable", s, func() keysource.Stanza { c := st; c.KeyID = "pkcs11:nonsense"; return c }(), nil},
				// The other token's key, named as the stanza names its key.
				{"change=key-replaced-under-name", o, rename(other.Label, object), keysource.ErrInvalid},
				{"change=none,source=other-key", o, st, keysource.ErrNotMine},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got, err := tt.src.Unwrap(t.Context(), tt.st)
					switch {
					case tt.want == nil && (err != nil || !bytes.Equal(got, dk)):
						t.Fatalf("unwrap: %v, want the data key", err)
					case tt.want != nil && !errors.Is(err, tt.want):
						t.Fatalf("unwrap: key %v, %v; want %v", got != nil, err, tt.want)
					}
				})
			}
		})
	}
}

// TestUnwrapVersion1 opens stanzas in the format before fingerprints, as
// volumes written by earlier kmsfs hold them: they open, and since they
// name their key only by label, one that names another key is not this
// Source's.
func TestUnwrapVersion1(t *testing.T) {
	h := needHSM(t)
	for _, kc := range keyCases(h) {
		t.Run("key="+kc.name, func(t *testing.T) {
			s := open(t, kc.spec, volA, kc.opts)
			dk := newDataKey()
			st, err := pkcs11.WrapV1(t.Context(), s, dk)
			if err != nil {
				t.Fatal(err)
			}
			if st.Body[0] != 1 {
				t.Fatalf("body version %d, want 1", st.Body[0])
			}
			if got, err := s.Unwrap(t.Context(), st); err != nil || !bytes.Equal(got, dk) {
				t.Fatalf("unwrap: %v", err)
			}
			b := open(t, kc.spec, volB, kc.opts)
			if _, err := b.Unwrap(t.Context(), st); !errors.Is(err, keysource.ErrInvalid) {
				t.Errorf("unwrap under another volume: %v, want ErrInvalid", err)
			}
			moved := st
			moved.KeyID += ";id=%01"
			if _, err := s.Unwrap(t.Context(), moved); !errors.Is(err, keysource.ErrNotMine) {
				t.Errorf("unwrap of a stanza naming another id: %v, want ErrNotMine", err)
			}
		})
	}
}
