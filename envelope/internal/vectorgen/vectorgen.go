// Package vectorgen makes the envelope package's golden test vectors: cipher
// files of known content, produced with fixed randomness so that the same
// code always yields the same bytes. The committed copies under
// envelope/testdata/ (Dir: one directory per format version) are what
// later versions must still read; they are regenerated only by hand
// (`make vectors`, for the current version), never by tests.
package vectorgen

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/memfile"
	"github.com/kmsfs/kmsfs/stanza"
)

// Manifest describes the vectors; it is written as vectors.json.
type Manifest struct {
	Comment string   `json:"comment"`
	Vectors []Vector `json:"vectors"`
}

// Vector is one cipher file and what it must decrypt to.
type Vector struct {
	Name      string `json:"name"`
	BlockSize int    `json:"block_size"`
	SlotSize  int    `json:"slot_size"`
	VolumeID  string `json:"volume_id"` // hex
	DataKey   string `json:"data_key"`  // hex; the stanza is of type "test" and holds it in clear
	PlainSize int64  `json:"plain_size"`
	PlainSHA  string `json:"plain_sha256"`
	Cipher    string `json:"cipher_file"` // file name beside vectors.json
	Plain     string `json:"plain_file"`  // file name beside vectors.json
	Note      string `json:"note,omitempty"`
}

// Dir returns the directory, relative to the envelope package, that holds
// the vectors of format version.
func Dir(version int) string {
	if version == 1 {
		return "testdata/vectors"
	}
	return fmt.Sprintf("testdata/vectors-v%d", version)
}

// testKeys unwraps the vectors' clear stanzas.
type testKeys struct{}

func (testKeys) UnwrapKey(_ context.Context, stanzas []stanza.Stanza) ([]byte, error) {
	for _, s := range stanzas {
		if s.Type == "test" && len(s.Body) == stanza.DataKeySize {
			return append([]byte(nil), s.Body...), nil
		}
	}
	return nil, stanza.ErrNotMine
}

// VolumeID is the volume of every vector.
var volumeID = envelope.VolumeID{'k', 'm', 's', 'f', 's', '-', 'v', 'e', 'c', 't', 'o', 'r', 's', 0, 0, 1}

// TestStanza returns the clear-text stanza the vectors use for dataKey.
func TestStanza(keyID string, dataKey []byte) stanza.Stanza {
	return stanza.Stanza{Type: "test", KeyID: keyID, Body: dataKey}
}

type recipe struct {
	name      string
	blockSize int
	note      string
	build     func(f *envelope.File, rng *rand.ChaCha8, bs int) error
}

func writeRandom(size int) func(f *envelope.File, rng *rand.ChaCha8, bs int) error {
	return func(f *envelope.File, rng *rand.ChaCha8, bs int) error {
		p := make([]byte, size)
		rng.Read(p)
		_, err := f.WriteAt(p, 0)
		return err
	}
}

func recipes(version int) []recipe {
	const b = 4096
	rs := []recipe{}
	for _, n := range []int{0, 1, b - 1, b, b + 1, 2*b + 100} {
		rs = append(rs, recipe{name: fmt.Sprintf("bs4096-size%d", n), blockSize: b, build: writeRandom(n)})
	}
	rs = append(rs,
		recipe{name: "bs65536-size65539", blockSize: 64 << 10, build: writeRandom(64<<10 + 3)},
		recipe{name: "bs4096-hole", blockSize: b, note: "blocks 0-2 are holes (all-zero on disk), block 3 holds data",
			build: func(f *envelope.File, rng *rand.ChaCha8, bs int) error {
				p := make([]byte, bs/2)
				rng.Read(p)
				_, err := f.WriteAt(p, 3*int64(bs))
				return err
			}},
		recipe{name: "bs4096-truncated-up", blockSize: b, note: "5000 bytes written, then truncated up to 3 blocks + 10",
			build: func(f *envelope.File, rng *rand.ChaCha8, bs int) error {
				if err := writeRandom(5000)(f, rng, bs); err != nil {
					return err
				}
				return f.Truncate(3*int64(bs) + 10)
			}},
	)
	if version >= 2 {
		rs = append(rs, recipe{name: "bs4096-hole-split", blockSize: b,
			note: "a write at block 9 leaves blocks 0-8 holes; block 4 is then written: holes 0-3 and 5-8 are in the header",
			build: func(f *envelope.File, rng *rand.ChaCha8, bs int) error {
				p := make([]byte, bs+7)
				rng.Read(p)
				if _, err := f.WriteAt(p, 9*int64(bs)); err != nil {
					return err
				}
				if _, err := f.WriteAt(p[:bs], 4*int64(bs)); err != nil {
					return err
				}
				return f.Close() // writes the header's holes
			}})
	}
	return rs
}

// Generate returns the manifest of format version's vectors and the files
// it names, deterministically.
func Generate(version int) (Manifest, map[string][]byte, error) {
	m := Manifest{Comment: fmt.Sprintf("kmsfs format v%d golden vectors; made by envelope/internal/vectorgen (make vectors). Do not edit.", version)}
	files := map[string][]byte{}
	for i, r := range recipes(version) {
		var seed [32]byte
		copy(seed[:], r.name)
		rng := rand.NewChaCha8(seed)
		l, err := envelope.NewLayout(r.blockSize, envelope.DefaultSlotSize)
		if err != nil {
			return m, nil, err
		}
		v, err := envelope.NewVolume(envelope.Options{Layout: l, Volume: volumeID, Rand: rng, Workers: 1, FormatVersion: version})
		if err != nil {
			return m, nil, err
		}
		dk := make([]byte, stanza.DataKeySize)
		rng.Read(dk)
		backing := &memfile.File{}
		f, err := v.Create(backing, dk, []stanza.Stanza{TestStanza("test-key", dk)})
		if err != nil {
			return m, nil, err
		}
		if err := r.build(f, rng, r.blockSize); err != nil {
			return m, nil, fmt.Errorf("%s: %w", r.name, err)
		}
		if i == 1 {
			// One vector is rewrapped, so its slots carry sequence 2 and 3.
			if err := f.Rewrap(dk, []stanza.Stanza{TestStanza("test-key-rotated", dk)}); err != nil {
				return m, nil, err
			}
			r.note = "rewrapped to key ID test-key-rotated (slots at sequence 3 and 2)"
		}
		g, err := v.Open(context.Background(), backing, testKeys{})
		if err != nil {
			return m, nil, fmt.Errorf("%s: open: %w", r.name, err)
		}
		plain := make([]byte, g.Size())
		if _, err := g.ReadAt(plain, 0); err != nil {
			return m, nil, fmt.Errorf("%s: read back: %w", r.name, err)
		}
		sum := sha256.Sum256(plain)
		vec := Vector{
			Name: r.name, BlockSize: r.blockSize, SlotSize: envelope.DefaultSlotSize,
			VolumeID: hex.EncodeToString(volumeID[:]), DataKey: hex.EncodeToString(dk),
			PlainSize: int64(len(plain)), PlainSHA: hex.EncodeToString(sum[:]),
			Cipher: r.name + ".kmsfs", Plain: r.name + ".plain", Note: r.note,
		}
		m.Vectors = append(m.Vectors, vec)
		files[vec.Cipher] = backing.Bytes()
		files[vec.Plain] = plain
	}
	return m, files, nil
}
