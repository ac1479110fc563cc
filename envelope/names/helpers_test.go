package names_test

import (
	"errors"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// nameKeySize is the length of a volume's name key.
const nameKeySize = 64

// maxShortName is the longest name stored as a short backing name.
const maxShortName = 160

// testKey returns a fixed name key, seed varying it.
func testKey(seed byte) []byte {
	k := make([]byte, nameKeySize)
	for i := range k {
		k[i] = seed + byte(i)
	}
	return k
}

func newCodec(t testing.TB, seed byte) *names.Codec {
	t.Helper()
	c, err := names.New(testKey(seed))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dirID(seed byte) names.DirID {
	var d names.DirID
	for i := range d {
		d[i] = seed ^ byte(i*7)
	}
	return d
}

// allowed lists every byte value a name may hold.
func allowed() []byte {
	var bs []byte
	for b := 1; b < 256; b++ {
		if b != '/' {
			bs = append(bs, byte(b))
		}
	}
	return bs
}

// nameOfLen returns a name of n bytes cycling through every allowed byte,
// starting at the byte start.
func nameOfLen(n, start int) string {
	bs := allowed()
	out := make([]byte, n)
	for i := range out {
		out[i] = bs[(start+i)%len(bs)]
	}
	if string(out) == "." || string(out) == ".." {
		out[0] = 'x'
	}
	return string(out)
}

// decryptAny decrypts a Name as the mount would: through its side file
// when it has one.
func decryptAny(c *names.Codec, dir names.DirID, n names.Name) (string, error) {
	if names.IsLong(n.Backing) {
		return c.DecryptLong(dir, n.Backing, n.Side)
	}
	return c.Decrypt(dir, n.Backing)
}

// wantRejected fails unless err wraps want and got is empty.
func wantRejected(t *testing.T, got string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want %v", err, want)
	}
	if got != "" {
		t.Fatalf("rejected input still gave the name %q", got)
	}
}
