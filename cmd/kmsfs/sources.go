package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"strings"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// secretOptions say where secrets come from: never the command line.
type secretOptions struct {
	passphraseFile string
	passphrase     []byte // handed over by the parent process, or prompted
	publicKeyFile  string // awskms: wrap-only with this public key (DER)
	prompt         func(confirm bool) ([]byte, error)
	handed         map[string][]byte           // secrets handed over by the parent (secrets.go)
	lookupEnv      func(string) (string, bool) // nil: os.LookupEnv
	mem            *secmem.Arena               // locked memory for local keys; nil: the heap
}

// sources are the opened key sources of a volume, primary first.
type sources struct {
	list    []keysource.KeySource
	closers []io.Closer
	loader  *pkcs11.Loader
}

func randRead(b []byte) (int, error) { return rand.Read(b) }

func (s *sources) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

// openSource opens one key source for the volume. For init, kdf is nil for
// a passphrase and fresh parameters are made (and returned).
func (s *sources) open(ctx context.Context, spec keysource.Spec, vid envelope.VolumeID, kdf *local.KDFParams, so *secretOptions, confirm bool) (keysource.KeySource, *local.KDFParams, error) {
	switch spec.Type {
	case "local":
		o := local.Options{VolumeID: vid, PassphraseFile: so.passphraseFile, LookupEnv: so.lookupEnv, Mem: so.mem}
		if spec.Value != "passphrase" {
			src, err := local.Open(ctx, spec, o)
			return src, nil, err
		}
		if kdf == nil {
			p, err := local.NewKDFParams(nil)
			if err != nil {
				return nil, nil, err
			}
			kdf = &p
		}
		o.KDF = *kdf
		if so.passphrase != nil {
			pp := so.passphrase
			o.Prompt = func() ([]byte, error) { return append([]byte(nil), pp...), nil }
		} else if so.prompt != nil {
			o.Prompt = func() ([]byte, error) { return so.prompt(confirm) }
		}
		src, err := local.Open(ctx, spec, o)
		return src, kdf, err
	case "pkcs11":
		if s.loader == nil {
			s.loader = pkcs11.NewLoader()
		}
		src, err := pkcs11.Open(ctx, spec, pkcs11.Options{VolumeID: vid, Loader: s.loader, LookupEnv: so.lookupEnv})
		if err != nil {
			return nil, nil, err
		}
		s.closers = append(s.closers, src)
		return src, nil, nil
	case "awskms":
		src, err := awskms.Open(ctx, spec, awskms.Options{VolumeID: vid, PublicKeyFile: so.publicKeyFile})
		return src, nil, err
	}
	return nil, nil, fmt.Errorf("unknown key type %q", spec.Type)
}

// redactSpec drops the query of a PKCS#11 URI (module path, PIN source),
// which is not secret but is noise in messages.
func redactSpec(spec string) string {
	if i := strings.IndexByte(spec, '?'); i >= 0 && strings.HasPrefix(spec, "pkcs11:") {
		return spec[:i]
	}
	return spec
}

// checkRoundTrip wraps a random test key with src and unwraps it again,
// proving the key works for both before a volume depends on it. A
// wrap-only source (public key only) is checked by wrapping alone.
func checkRoundTrip(ctx context.Context, src keysource.KeySource, wrapOnly bool) error {
	dk := make([]byte, keysource.DataKeySize)
	if _, err := randRead(dk); err != nil {
		return err
	}
	st, err := src.Wrap(ctx, dk)
	if err != nil {
		return fmt.Errorf("wrapping a test key with %s: %w", src.KeyID(), err)
	}
	if wrapOnly {
		return nil
	}
	got, err := src.Unwrap(ctx, st)
	if err != nil {
		return fmt.Errorf("unwrapping a test key with %s: %w", src.KeyID(), err)
	}
	defer clear(got)
	if string(got) != string(dk) {
		return fmt.Errorf("key %s returned a different key than it wrapped", src.KeyID())
	}
	return nil
}
