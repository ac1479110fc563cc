package names_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// fuzzCodec is the codec and directory of the golden vectors, so the
// seeds decrypt and the fuzzer mutates names that authenticate.
func fuzzCodec(f *testing.F) (*names.Codec, names.DirID, vectorFile) {
	f.Helper()
	vf := loadVectors(f)
	key, err := hexBytes(vf.NameKey)
	if err != nil {
		f.Fatal(err)
	}
	c, err := names.New(key)
	if err != nil {
		f.Fatal(err)
	}
	d, err := hexBytes(vf.DirID)
	if err != nil {
		f.Fatal(err)
	}
	dir, err := names.ParseDirID(d)
	if err != nil {
		f.Fatal(err)
	}
	return c, dir, vf
}

// checkRejection fails unless err wraps one of the package's sentinels.
func checkRejection(t *testing.T, got string, err error) {
	t.Helper()
	if !errors.Is(err, names.ErrInvalidName) && !errors.Is(err, names.ErrAuth) && !errors.Is(err, names.ErrLong) {
		t.Fatalf("error %v wraps no sentinel", err)
	}
	if got != "" {
		t.Fatalf("rejected input gave %q", got)
	}
}

func FuzzDecrypt(f *testing.F) {
	c, dir, vf := fuzzCodec(f)
	for _, v := range vf.Names {
		f.Add(v.Backing)
	}
	f.Add(names.DirIDFile)
	f.Fuzz(func(t *testing.T, backing string) {
		got, err := c.Decrypt(dir, backing)
		if err != nil {
			checkRejection(t, got, err)
			return
		}
		n, err := c.Encrypt(dir, got)
		if err != nil || n.Backing != backing {
			t.Fatalf("%q decrypted to %q, which encrypts to %q, %v", backing, got, n.Backing, err)
		}
	})
}

func FuzzDecryptLong(f *testing.F) {
	c, dir, vf := fuzzCodec(f)
	for _, v := range vf.Names {
		side, err := hexBytes(v.SideHex)
		if err != nil {
			f.Fatal(err)
		}
		if side != nil {
			f.Add(v.Backing, side)
		}
	}
	f.Fuzz(func(t *testing.T, backing string, side []byte) {
		got, err := c.DecryptLong(dir, backing, side)
		if err != nil {
			checkRejection(t, got, err)
			return
		}
		n, err := c.Encrypt(dir, got)
		if err != nil || n.Backing != backing || !bytes.Equal(n.Side, side) {
			t.Fatalf("%q decrypted to %q, which encrypts to %q, %v", backing, got, n.Backing, err)
		}
	})
}

func FuzzDecryptTarget(f *testing.F) {
	c, _, vf := fuzzCodec(f)
	for _, v := range vf.Targets {
		f.Add(v.Encoded)
	}
	f.Fuzz(func(t *testing.T, enc string) {
		got, err := c.DecryptTarget(enc)
		if err != nil {
			checkRejection(t, got, err)
			return
		}
		raw, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil {
			t.Fatalf("accepted %q, which is not base64url", enc)
		}
		again, err := names.EncryptTargetNonce(c, got, [16]byte(raw[:16]))
		if err != nil || again != enc {
			t.Fatalf("%q decrypted to %q, which encrypts to %q, %v", enc, got, again, err)
		}
	})
}

// FuzzParseDirIDLink reads arbitrary kmsfs.dirid link targets, which
// the cipher dir's owner controls: never a panic, and an accepted target
// is exactly the one the ID it gives is written as (one stored form per
// ID, so no two targets name one directory).
func FuzzParseDirIDLink(f *testing.F) {
	var d names.DirID
	f.Add(d.LinkTarget())
	f.Add("AAAAAAAAAAAAAAAAAAAAAB")
	f.Add("AAAAAAAAAAAAAAAAAAAAAA==")
	f.Add("../../kmsfs.conf")
	f.Fuzz(func(t *testing.T, target string) {
		d, err := names.ParseDirIDLink(target)
		if err != nil {
			return
		}
		if got := d.LinkTarget(); got != target {
			t.Fatalf("ParseDirIDLink(%q) accepted a target that writes back as %q", target, got)
		}
	})
}
