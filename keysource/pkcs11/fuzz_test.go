//go:build cgo

package pkcs11_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// FuzzUnwrap feeds changed bodies to the token: each must fail as
// ErrInvalid, unless it is the very body that was wrapped. Seeds are real
// stanzas of this run's keys, whole and cut.
func FuzzUnwrap(f *testing.F) {
	h := needHSM(f)
	cases := keyCases(h)
	srcs := make([]*pkcs11.Source, len(cases))
	stanzas := make([]keysource.Stanza, len(cases))
	for i, kc := range cases {
		srcs[i] = open(f, kc.spec, volA, kc.opts)
		st, err := srcs[i].Wrap(f.Context(), newDataKey())
		if err != nil {
			f.Fatal(err)
		}
		stanzas[i] = st
		f.Add(uint8(i), st.Body)
		f.Add(uint8(i), st.Body[:len(st.Body)-1])
		f.Add(uint8(i), st.Body[:3])
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		i := int(which) % len(cases)
		st := stanzas[i]
		st.Body = body
		_, err := srcs[i].Unwrap(t.Context(), st)
		switch {
		case err == nil && !bytes.Equal(body, stanzas[i].Body):
			t.Fatalf("key=%s: a changed body unwrapped", cases[i].name)
		case err != nil && !errors.Is(err, keysource.ErrInvalid):
			t.Fatalf("key=%s: %v, want ErrInvalid", cases[i].name, err)
		}
	})
}
