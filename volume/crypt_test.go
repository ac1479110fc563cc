package volume_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/volume"
)

// cryptVolume opens a fresh local-key volume the way kmsfs encrypt and
// decrypt do: read-only, no journal.
func cryptVolume(t *testing.T) (testVolume, *volume.Volume) {
	t.Helper()
	tv := initVolume(t)
	v, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return tv, v
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// encryptTo writes plain as the cipher file path of v, atomically.
func encryptTo(t *testing.T, v *volume.Volume, path string, plain []byte) {
	t.Helper()
	err := volume.WriteAtomic(path, 0o600, func(f *os.File) error {
		_, err := v.Encrypt(ctx(t), f, bytes.NewReader(plain))
		return err
	})
	if err != nil {
		t.Fatalf("encrypt %s: %v", path, err)
	}
}

// decryptFile decrypts the cipher file at src into the file dst.
func decryptFile(t *testing.T, v *volume.Volume, src, dst string) error {
	t.Helper()
	f, err := volume.OpenCipherFile(src)
	if err != nil {
		return err
	}
	defer f.Close()
	return volume.WriteAtomic(dst, 0o600, func(out *os.File) error {
		_, err := v.Decrypt(ctx(t), out, f, src)
		return err
	})
}

// leftovers lists the temporary files WriteAtomic left in dir.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		if strings.Contains(e.Name(), ".kmsfs-tmp-") {
			names = append(names, e.Name())
		}
	}
	return names
}

func TestEncryptDecryptRoundTrip(t *testing.T) {
	tv, v := cryptVolume(t)
	bs := v.Format.Layout().BlockSize()
	for _, n := range []int{0, 1, bs - 1, bs, bs + 1, 2*bs + 17, 3<<20 + 5} {
		t.Run(fmt.Sprintf("size=%d", n), func(t *testing.T) {
			plain := randomBytes(t, n)
			name := filepath.Join(tv.dir, fmt.Sprintf("f%d", n))
			encryptTo(t, v, name, plain)
			fi, err := os.Stat(name)
			if err != nil {
				t.Fatal(err)
			}
			if want := v.Format.Layout().CipherSize(int64(n)); fi.Size() != want {
				t.Errorf("cipher file of %d bytes, want %d", fi.Size(), want)
			}
			raw, _ := os.ReadFile(name)
			if n >= 16 && bytes.Contains(raw, plain[:16]) {
				t.Error("the cipher file holds plaintext")
			}
			var got bytes.Buffer
			f, err := volume.OpenCipherFile(name)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			m, err := v.Decrypt(ctx(t), &got, f, name)
			if err != nil {
				t.Fatalf("decrypt: %v", err)
			}
			if m != int64(n) || !bytes.Equal(got.Bytes(), plain) {
				t.Fatalf("decrypt gave %d bytes, not the %d encrypted", m, n)
			}
			if l := leftovers(t, tv.dir); len(l) > 0 {
				t.Errorf("temporary files left: %v", l)
			}
		})
	}
}

// TestDecryptTampered is the attacker who edits a cipher file in the
// backup (or the cipher dir) before it is restored: decrypt fails naming
// the file and the block, the destination keeps what it held (or stays
// absent), and no temporary file with partial plaintext remains.
func TestDecryptTampered(t *testing.T) {
	tv, v := cryptVolume(t)
	l := v.Format.Layout()
	bs := l.BlockSize()
	size := 4*bs + 100
	hdr := l.HeaderSize()
	sealed := l.SealedBlockSize()
	cases := []struct {
		name      string
		tamper    func(b []byte) []byte
		wantBlock int64 // -1: the header or the size fails, no block named
	}{
		{"edit=block2", func(b []byte) []byte { b[hdr+2*sealed+40] ^= 1; return b }, 2},
		{"edit=lastblock", func(b []byte) []byte { b[len(b)-1] ^= 0x80; return b }, 4},
		{"swap=block0,block1", func(b []byte) []byte {
			b0 := append([]byte(nil), b[hdr:hdr+sealed]...)
			copy(b[hdr:], b[hdr+sealed:hdr+2*sealed])
			copy(b[hdr+sealed:], b0)
			return b
		}, 0},
		{"cut=lastblock", func(b []byte) []byte { return b[:hdr+4*sealed] }, 3},
		{"cut=midblock", func(b []byte) []byte { return b[:hdr+3*sealed+10] }, -1},
		{"edit=header", func(b []byte) []byte { b[40] ^= 1; b[int64(l.SlotSize())+40] ^= 1; return b }, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plain := randomBytes(t, size)
			src := filepath.Join(tv.dir, "victim")
			encryptTo(t, v, src, plain)
			raw, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(src, c.tamper(raw), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, existing := range []bool{false, true} {
				t.Run(fmt.Sprintf("dst-exists=%v", existing), func(t *testing.T) {
					outDir := t.TempDir()
					dst := filepath.Join(outDir, "restored")
					old := []byte("what the destination held before\n")
					if existing {
						if err := os.WriteFile(dst, old, 0o600); err != nil {
							t.Fatal(err)
						}
					}
					err := decryptFile(t, v, src, dst)
					if err == nil {
						t.Fatal("decrypt of a tampered file succeeded")
					}
					if !errors.Is(err, envelope.ErrAuth) && !errors.Is(err, envelope.ErrFormat) {
						t.Errorf("error %v, want envelope.ErrAuth or ErrFormat", err)
					}
					if !strings.Contains(err.Error(), src) {
						t.Errorf("error %q does not name the file %s", err, src)
					}
					if c.wantBlock >= 0 {
						var be *envelope.BlockError
						if !errors.As(err, &be) || be.Block != c.wantBlock {
							t.Errorf("error %v, want a BlockError of block %d", err, c.wantBlock)
						}
						if want := fmt.Sprintf("block %d (plaintext offset %d)", c.wantBlock, c.wantBlock*int64(bs)); !strings.Contains(err.Error(), want) {
							t.Errorf("error %q does not say %q", err, want)
						}
					}
					got, rerr := os.ReadFile(dst)
					switch {
					case existing && !bytes.Equal(got, old):
						t.Errorf("the destination changed to %d bytes", len(got))
					case !existing && !errors.Is(rerr, os.ErrNotExist):
						t.Errorf("the destination exists (%d bytes, %v)", len(got), rerr)
					}
					if l := leftovers(t, outDir); len(l) > 0 {
						t.Errorf("temporary files left: %v", l)
					}
				})
			}
		})
	}
}

// TestDecryptStopsAtBadBlock checks the stream contract: what reaches a
// writer before the first damaged block is the file's own plaintext, and
// nothing of that block or after it.
func TestDecryptStopsAtBadBlock(t *testing.T) {
	tv, v := cryptVolume(t)
	l := v.Format.Layout()
	bs := l.BlockSize()
	for _, bad := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("bad=%d", bad), func(t *testing.T) {
			plain := randomBytes(t, 4*bs+1)
			src := filepath.Join(tv.dir, "stream")
			encryptTo(t, v, src, plain)
			f, err := os.OpenFile(src, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt([]byte{0xff}, l.BlockOffset(int64(bad))+7); err != nil {
				t.Fatal(err)
			}
			var got bytes.Buffer
			n, err := v.Decrypt(ctx(t), &got, f, src)
			if !errors.Is(err, envelope.ErrAuth) {
				t.Fatalf("decrypt: %v, want ErrAuth", err)
			}
			if n != int64(bad*bs) || !bytes.Equal(got.Bytes(), plain[:bad*bs]) {
				t.Errorf("wrote %d bytes before the bad block %d, want its first %d bytes of plaintext", n, bad, bad*bs)
			}
		})
	}
}

// TestDecryptRefusesSymlink is the attacker who plants, in a cipher dir
// or a backup, a symlink under a file's name to another cipher file:
// decrypt would restore the wrong file under the name asked for.
func TestDecryptRefusesSymlink(t *testing.T) {
	tv, v := cryptVolume(t)
	target := filepath.Join(tv.dir, "other")
	encryptTo(t, v, target, []byte("another file"))
	link := filepath.Join(tv.dir, "asked")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	err := decryptFile(t, v, link, dst)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("decrypt through a symlink: %v, want it refused", err)
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the destination exists: %v", err)
	}
}

// TestEncryptOverPlantedSymlink is the attacker who plants a symlink at
// the destination, pointing at a file they want overwritten: the rename
// replaces the link, the target is untouched.
func TestEncryptOverPlantedSymlink(t *testing.T) {
	tv, v := cryptVolume(t)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tv.dir, "drop")
	if err := os.Symlink(victim, dst); err != nil {
		t.Fatal(err)
	}
	encryptTo(t, v, dst, []byte("new content"))
	if got, _ := os.ReadFile(victim); string(got) != "keep me" {
		t.Errorf("the symlink's target changed to %q", got)
	}
	if fi, err := os.Lstat(dst); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("destination %v, %v: want a regular file", fi, err)
	}
}

// TestDecryptWrongVolume is a cipher file of another volume given to
// decrypt: refused, never decrypted under this volume's keys.
func TestDecryptWrongVolume(t *testing.T) {
	tv1, v1 := cryptVolume(t)
	_, v2 := cryptVolume(t)
	src := filepath.Join(tv1.dir, "mine")
	encryptTo(t, v1, src, []byte("volume one"))
	f, err := volume.OpenCipherFile(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := v2.Decrypt(ctx(t), io.Discard, f, src); err == nil {
		t.Fatal("decrypt with another volume succeeded")
	}
}

// TestEncryptedFileReadsThroughMount checks that encrypt writes exactly
// what a mount writes: a file encrypted into the cipher dir beside a
// running mount reads back through it, and a file the mount wrote
// decrypts.
func TestEncryptedFileReadsThroughMount(t *testing.T) {
	// A mount clears the process umask (fs applies the caller's own);
	// the package's later tests expect the one they started with.
	umask := syscall.Umask(0o022)
	t.Cleanup(func() { syscall.Umask(umask) })
	m := fusetest.MountVolume(t, 4096, kfs.Options{})
	v, err := volume.Open(ctx(t), m.Cipher, volume.Options{TrustDir: m.TrustDir, ReadOnly: true})
	if err != nil {
		t.Fatalf("Open beside the mount: %v", err)
	}
	defer v.Close()
	for _, n := range []int{0, 1, 4095, 4096, 4097, 1<<20 + 3} {
		t.Run(fmt.Sprintf("size=%d", n), func(t *testing.T) {
			plain := randomBytes(t, n)
			name := fmt.Sprintf("enc%d", n)
			encryptTo(t, v, filepath.Join(m.Cipher, name), plain)
			got, err := os.ReadFile(m.Path(name))
			if err != nil {
				t.Fatalf("read through the mount: %v", err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("the mount read %d bytes, not the %d encrypted", len(got), n)
			}
			back := fmt.Sprintf("mnt%d", n)
			if err := os.WriteFile(m.Path(back), plain, 0o600); err != nil {
				t.Fatalf("write through the mount: %v", err)
			}
			f, err := volume.OpenCipherFile(filepath.Join(m.Cipher, back))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var buf bytes.Buffer
			if _, err := v.Decrypt(ctx(t), &buf, f, back); err != nil {
				t.Fatalf("decrypt the mount's file: %v", err)
			}
			if !bytes.Equal(buf.Bytes(), plain) {
				t.Fatalf("decrypt gave %d bytes, not the %d written", buf.Len(), n)
			}
		})
	}
}
