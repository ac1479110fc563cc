//go:build !cgo

package pkcs11_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// TestNoCgoOpen runs only in a build without cgo (CGO_ENABLED=0 go
// test ./keysource/pkcs11/): Open refuses every pkcs11 key with an
// ErrInvalid that says why and what to do, names the key when its URI
// parses, and never echoes a URI that does not (it may hold a PIN).
func TestNoCgoOpen(t *testing.T) {
	const noCgo = "kmsfs was built without PKCS#11 support (CGO_ENABLED=0); rebuild with cgo to use pkcs11: keys"
	tests := []struct {
		name    string
		spec    keysource.Spec
		want    []string // substrings of the error
		notWant string   // never in the error
	}{
		{
			name: "spec=aes",
			spec: keysource.Spec{Type: "pkcs11", Value: "pkcs11:token=hsm;object=wrap?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"},
			want: []string{"pkcs11: key pkcs11:token=hsm;object=wrap: ", noCgo},
		},
		{
			name: "spec=rsa-no-module",
			spec: keysource.Spec{Type: "pkcs11", Value: "pkcs11:token=hsm;object=rsa;type=private"},
			want: []string{"pkcs11: key pkcs11:token=hsm;object=rsa: ", noCgo},
		},
		{
			name:    "spec=pin-value",
			spec:    keysource.Spec{Type: "pkcs11", Value: "pkcs11:token=hsm;object=wrap?pin-value=s3cret-1234"},
			want:    []string{"pkcs11: key: ", noCgo},
			notWant: "s3cret-1234",
		},
		{
			name: "spec=local",
			spec: keysource.Spec{Type: "local", Value: "/etc/key"},
			want: []string{`pkcs11: key spec of type "local", want "pkcs11"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := pkcs11.Open(context.Background(), tt.spec, pkcs11.Options{VolumeID: [16]byte{1}})
			if err == nil || s != nil {
				t.Fatalf("Open = %v, %v; want an error", s, err)
			}
			if !errors.Is(err, keysource.ErrInvalid) {
				t.Errorf("error %q does not wrap keysource.ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q, want it to contain %q", err, w)
				}
			}
			if tt.notWant != "" && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("error %q holds %q", err, tt.notWant)
			}
		})
	}
}
