package envelope_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/internal/vectorgen"
	"github.com/kmsfs/kmsfs/internal/memfile"
)

type vector struct {
	vectorgen.Vector
	vol    *envelope.Volume
	cipher []byte
	plain  []byte
	key    []byte
	dir    string
}

// vectorVersions are the format versions with committed golden vectors.
var vectorVersions = []int{1, 2}

// loadVectors reads the committed golden vectors of every version.
func loadVectors(t testing.TB) []vector {
	t.Helper()
	var vs []vector
	for _, version := range vectorVersions {
		vs = append(vs, loadVectorDir(t, vectorgen.Dir(version))...)
	}
	if len(vs) == 0 {
		t.Fatal("no golden vectors found")
	}
	return vs
}

// loadVectorDir reads the golden vectors in dir.
func loadVectorDir(t testing.TB, vectorDir string) []vector {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(vectorDir, "vectors.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m vectorgen.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	var vs []vector
	for _, v := range m.Vectors {
		x := vector{Vector: v}
		var err error
		if x.cipher, err = os.ReadFile(filepath.Join(vectorDir, v.Cipher)); err != nil {
			t.Fatal(err)
		}
		if x.plain, err = os.ReadFile(filepath.Join(vectorDir, v.Plain)); err != nil {
			t.Fatal(err)
		}
		if x.key, err = hex.DecodeString(v.DataKey); err != nil {
			t.Fatal(err)
		}
		vid, err := hex.DecodeString(v.VolumeID)
		if err != nil {
			t.Fatal(err)
		}
		l, err := envelope.NewLayout(v.BlockSize, v.SlotSize)
		if err != nil {
			t.Fatal(err)
		}
		var id envelope.VolumeID
		copy(id[:], vid)
		if x.vol, err = envelope.NewVolume(envelope.Options{Layout: l, Volume: id}); err != nil {
			t.Fatal(err)
		}
		x.dir = vectorDir
		vs = append(vs, x)
	}
	if len(vs) == 0 {
		t.Fatalf("no golden vectors in %s", vectorDir)
	}
	return vs
}

// bothGCMs runs f with codecs on vaesgcm (where the processor has it) and
// on crypto/cipher: the two must read and write the same bytes.
func bothGCMs(t *testing.T, f func(t *testing.T)) {
	for _, wide := range []bool{true, false} {
		t.Run(fmt.Sprintf("wide=%v", wide), func(t *testing.T) {
			defer envelope.SetWideGCM(wide)()
			f(t)
		})
	}
}

func TestVectorsDecrypt(t *testing.T) { bothGCMs(t, testVectorsDecrypt) }

func testVectorsDecrypt(t *testing.T) {
	for _, v := range loadVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			sum := sha256.Sum256(v.plain)
			if hex.EncodeToString(sum[:]) != v.PlainSHA || int64(len(v.plain)) != v.PlainSize {
				t.Fatal("plaintext file does not match the manifest")
			}
			if got := v.vol.Layout().PlainSize(int64(len(v.cipher))); got != v.PlainSize {
				t.Fatalf("size from ciphertext length = %d, want %d", got, v.PlainSize)
			}
			f, err := v.vol.Open(context.Background(), memfile.New(v.cipher), &clearKeys{})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(v.plain)+1)
			n, err := f.ReadAt(got, 0)
			if err != io.EOF || !bytes.Equal(got[:n], v.plain) {
				t.Fatalf("read %d bytes, %v; content equal: %v", n, err, bytes.Equal(got[:n], v.plain))
			}
		})
	}
}

func TestVectorsHoleIsSparse(t *testing.T) {
	for _, v := range loadVectors(t) {
		if v.Name != "bs4096-hole" {
			continue
		}
		l := v.vol.Layout()
		if !bytes.Equal(v.cipher[l.HeaderSize():l.BlockOffset(3)], make([]byte, l.BlockOffset(3)-l.HeaderSize())) {
			t.Fatal("hole blocks are not stored as zeros")
		}
		return
	}
	t.Fatal("vector bs4096-hole missing")
}

// TestVectorsReproducible fails when the generator's output drifts from
// the committed vectors: the format changed, or randomness leaked in.
func TestVectorsReproducible(t *testing.T) { bothGCMs(t, testVectorsReproducible) }

func testVectorsReproducible(t *testing.T) {
	for _, version := range vectorVersions {
		m, files, err := vectorgen.Generate(version)
		if err != nil {
			t.Fatal(err)
		}
		dir := vectorgen.Dir(version)
		for _, v := range m.Vectors {
			for _, name := range []string{v.Cipher, v.Plain} {
				committed, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(committed, files[name]) {
					t.Errorf("%s/%s: generator output differs from the committed vector (format change? run `make vectors` only for a new format version)", dir, name)
				}
			}
		}
	}
}
