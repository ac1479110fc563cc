package names_test

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/tink-crypto/tink-go/v2/daead/subtle"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors.json from the current code (only for a new name format)")

const vectorsFile = "testdata/vectors.json"

type vectorFile struct {
	Comment   string         `json:"comment"`
	NameKey   string         `json:"name_key"`
	DirID     string         `json:"dir_id"`
	VolumeID  string         `json:"volume_id"`
	RootDirID string         `json:"root_dir_id"`
	Names     []nameVector   `json:"names"`
	Targets   []targetVector `json:"targets"`
}

type nameVector struct {
	Label   string `json:"label"`
	NameHex string `json:"name_hex"`
	Backing string `json:"backing"`
	SideHex string `json:"side_hex,omitempty"`
}

type targetVector struct {
	Label   string `json:"label"`
	Target  string `json:"target"`
	Nonce   string `json:"nonce"`
	Encoded string `json:"encoded"`
}

// vectorInputs are the names and targets of the golden vectors.
func vectorInputs() (nameIn, targetIn []struct{ label, s string }) {
	nameIn = []struct{ label, s string }{
		{"len=1", "a"},
		{"ascii", "salaries-2026.xlsx"},
		{"len=15", "fifteen-bytes.."},
		{"len=16", "sixteen-bytes..."},
		{"len=17", "seventeen-bytes.."},
		{"dotfile", ".bashrc"},
		{"controls-and-high-bytes", "\x01\t\n\x7f\x80\xfe\xff"},
		{"unicode", "Gehälter – 日本語 😀"},
		{"len=160-longest-short", strings.Repeat("s", 160)},
		{"len=161-shortest-long", strings.Repeat("l", 161)},
		{"len=255-unicode-long", strings.Repeat("ü", 127) + "x"},
		{"len=255", strings.Repeat("m", 255)},
	}
	targetIn = []struct{ label, s string }{
		{"relative", "../shared/report.pdf"},
		{"absolute-long", "/" + strings.Repeat("very-long-directory/", 200) + "end"},
	}
	return nameIn, targetIn
}

// makeVectors encrypts the vector inputs under fixed keys and nonces.
func makeVectors(t *testing.T) vectorFile {
	t.Helper()
	key, dir := testKey(0x40), dirID(0x5a)
	var vol [16]byte
	copy(vol[:], "kmsfs-volume-id!")
	c, err := names.New(key)
	if err != nil {
		t.Fatal(err)
	}
	root := names.RootDirID(vol)
	vf := vectorFile{
		Comment:   "kmsfs encrypted names; see docs/FORMAT.md. Regenerate only for a new format: go test ./envelope/names -run Vectors -update",
		NameKey:   hex.EncodeToString(key),
		DirID:     hex.EncodeToString(dir[:]),
		VolumeID:  hex.EncodeToString(vol[:]),
		RootDirID: hex.EncodeToString(root[:]),
	}
	nameIn, targetIn := vectorInputs()
	for _, in := range nameIn {
		n, err := c.Encrypt(dir, in.s)
		if err != nil {
			t.Fatalf("%s: %v", in.label, err)
		}
		vf.Names = append(vf.Names, nameVector{Label: in.label, NameHex: hex.EncodeToString([]byte(in.s)), Backing: n.Backing, SideHex: hex.EncodeToString(n.Side)})
	}
	for i, in := range targetIn {
		var nonce [16]byte
		for j := range nonce {
			nonce[j] = byte(0xa0 + i*16 + j)
		}
		enc, err := names.EncryptTargetNonce(c, in.s, nonce)
		if err != nil {
			t.Fatalf("%s: %v", in.label, err)
		}
		vf.Targets = append(vf.Targets, targetVector{Label: in.label, Target: in.s, Nonce: hex.EncodeToString(nonce[:]), Encoded: enc})
	}
	return vf
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hexBytes(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hexBytes decodes s; the empty string is nil, as in a Name without side
// file.
func hexBytes(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	return hex.DecodeString(s)
}

func loadVectors(t testing.TB) vectorFile {
	t.Helper()
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var vf vectorFile
	if err := json.Unmarshal(raw, &vf); err != nil {
		t.Fatalf("%s: %v", vectorsFile, err)
	}
	if len(vf.Names) == 0 || len(vf.Targets) == 0 {
		t.Fatalf("%s holds no vectors", vectorsFile)
	}
	return vf
}

// TestVectorsReproducible fails when the code's output drifts from the
// committed vectors: the format changed, or randomness leaked in.
func TestVectorsReproducible(t *testing.T) {
	got, err := json.MarshalIndent(makeVectors(t), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if *update {
		if err := os.WriteFile(vectorsFile, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(committed, got) {
		t.Fatalf("%s differs from what the code writes (format change? -update only for a new format)", vectorsFile)
	}
}

// TestVectorsDecrypt reads the committed vectors with the current code.
func TestVectorsDecrypt(t *testing.T) {
	vf := loadVectors(t)
	c, err := names.New(mustHex(t, vf.NameKey))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := names.ParseDirID(mustHex(t, vf.DirID))
	if err != nil {
		t.Fatal(err)
	}
	if root := names.RootDirID([16]byte(mustHex(t, vf.VolumeID))); hex.EncodeToString(root[:]) != vf.RootDirID {
		t.Fatalf("root directory ID %x, want %s", root, vf.RootDirID)
	}
	for _, v := range vf.Names {
		t.Run("name="+v.Label, func(t *testing.T) {
			want := string(mustHex(t, v.NameHex))
			got, err := decryptAny(c, dir, names.Name{Backing: v.Backing, Side: mustHex(t, v.SideHex)})
			if err != nil || got != want {
				t.Fatalf("decrypt: %q, %v; want %q", got, err, want)
			}
		})
	}
	for _, v := range vf.Targets {
		t.Run("target="+v.Label, func(t *testing.T) {
			got, err := c.DecryptTarget(v.Encoded)
			if err != nil || got != v.Target {
				t.Fatalf("decrypt: %.40q, %v", got, err)
			}
		})
	}
}

// TestVectorsSpec recomputes every committed vector from the steps that
// docs/FORMAT.md gives, without the package, so the document and the
// code cannot drift apart.
func TestVectorsSpec(t *testing.T) {
	vf := loadVectors(t)
	siv := func(info string) *subtle.AESSIV {
		k, err := hkdf.Key(sha256.New, mustHex(t, vf.NameKey), nil, info, 64)
		if err != nil {
			t.Fatal(err)
		}
		s, err := subtle.NewAESSIV(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	entries, targets := siv("kmsfs names: entries"), siv("kmsfs names: symlink targets")
	vol := mustHex(t, vf.VolumeID)
	root := sha256.Sum256(append([]byte("kmsfs names: root directory\x00"), vol...))
	if hex.EncodeToString(root[:16]) != vf.RootDirID {
		t.Fatalf("root directory ID %x, want %s", root[:16], vf.RootDirID)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	for _, v := range vf.Names {
		t.Run("name="+v.Label, func(t *testing.T) {
			name := mustHex(t, v.NameHex)
			padded := append(name, make([]byte, max(16, (len(name)+15)/16*16)-len(name))...)
			sealed, err := entries.EncryptDeterministically(padded, mustHex(t, vf.DirID))
			if err != nil {
				t.Fatal(err)
			}
			backing, side := b64(sealed), []byte(nil)
			if len(backing) > names.MaxNameLen {
				sum := sha256.Sum256(sealed)
				backing, side = "kmsfs.L"+b64(sum[:]), sealed
			}
			if backing != v.Backing || !bytes.Equal(side, mustHex(t, v.SideHex)) {
				t.Fatalf("spec gives %q, vector has %q", backing, v.Backing)
			}
		})
	}
	for _, v := range vf.Targets {
		t.Run("target="+v.Label, func(t *testing.T) {
			nonce := mustHex(t, v.Nonce)
			sealed, err := targets.EncryptDeterministically([]byte(v.Target), nonce)
			if err != nil {
				t.Fatal(err)
			}
			if got := b64(append(nonce, sealed...)); got != v.Encoded {
				t.Fatalf("spec gives %.40q, vector has %.40q", got, v.Encoded)
			}
		})
	}
}
