package volume

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// ErrNotKmsfsFile means a file has no header kmsfs can read.
var ErrNotKmsfsFile = errors.New("not a kmsfs file")

// SlotInfo is what one header slot holds.
type SlotInfo struct {
	// Seq is the slot's sequence number; the newer slot is the header
	// in force.
	Seq uint64 `json:"seq"`
	// Error says why the slot does not parse; "" if it does.
	Error string `json:"error,omitempty"`
}

// StanzaInfo is one wrapped copy of a file's data key, without the
// wrapped key itself.
type StanzaInfo struct {
	Type  string `json:"type"`
	KeyID string `json:"key_id"`
}

// FileInfo is what a cipher file's header says of it; nothing is
// unwrapped, and the header's MAC (which needs the data key) is not
// checked.
type FileInfo struct {
	// Path is the path asked about; CipherPath the cipher file read.
	Path       string `json:"path"`
	CipherPath string `json:"cipher_path"`
	// Version is the format version of the header in force.
	Version   int    `json:"format_version"`
	FileID    string `json:"file_id"`
	VolumeID  string `json:"volume_id"`
	BlockSize int    `json:"block_size"`
	SlotSize  int    `json:"slot_size"`
	// Slots are the two header slots; Current indexes the one in force.
	Slots   [2]SlotInfo  `json:"slots"`
	Current int          `json:"current_slot"`
	Stanzas []StanzaInfo `json:"stanzas"`
	// SparseRanges counts the block ranges the header vouches may be
	// holes.
	SparseRanges int   `json:"sparse_ranges"`
	PlainSize    int64 `json:"plain_size"`
	CipherSize   int64 `json:"cipher_size"`
}

// Info reads the header of the cipher file at path, or of the cipher file
// behind a file seen through a kmsfs mount. It needs no key and no
// kmsfs.conf: block and slot size are in the header.
func Info(path string) (*FileInfo, error) {
	dir, rel, err := cipherFileOf(path)
	if err != nil {
		return nil, err
	}
	cp := path
	var f *os.File
	if dir == "" {
		f, err = OpenCipherFile(path)
	} else {
		if rel, err = cipherRelOf(path, dir, rel); err != nil {
			return nil, err
		}
		cp = filepath.Join(dir, rel)
		f, err = openInCipherDir(dir, rel, unix.O_RDONLY)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", cp, err)
	}
	var prefix [envelope.LayoutPrefixSize]byte
	if _, err := f.ReadAt(prefix[:], 0); err != nil {
		return nil, fmt.Errorf("volume: %s: no kmsfs header: %w", cp, ErrNotKmsfsFile)
	}
	l, err := envelope.DeclaredLayout(prefix[:])
	if err != nil {
		return nil, fmt.Errorf("volume: %s: no kmsfs header: %w: %w", cp, err, ErrNotKmsfsFile)
	}
	raw := make([]byte, l.HeaderSize())
	if _, err := f.ReadAt(raw, 0); err != nil {
		return nil, fmt.Errorf("volume: %s: header cut short (%d bytes, a header is %d): %w", cp, st.Size(), l.HeaderSize(), ErrNotKmsfsFile)
	}
	fi := &FileInfo{Path: path, CipherPath: cp, BlockSize: l.BlockSize(), SlotSize: l.SlotSize(),
		PlainSize: l.PlainSize(st.Size()), CipherSize: st.Size(), Current: -1}
	var cur *envelope.Header
	for i := range 2 {
		h, err := envelope.ParseHeaderSlot(l, raw[i*l.SlotSize():(i+1)*l.SlotSize()])
		if err != nil {
			fi.Slots[i].Error = err.Error()
			continue
		}
		fi.Slots[i].Seq = h.Seq
		if cur == nil || h.Seq > cur.Seq {
			cur, fi.Current = h, i
		}
	}
	if cur == nil {
		return nil, fmt.Errorf("volume: %s: neither header slot parses (%s): %w", cp, fi.Slots[0].Error, ErrNotKmsfsFile)
	}
	fi.Version, fi.SparseRanges = cur.Version, len(cur.Sparse)
	fi.FileID, fi.VolumeID = hex.EncodeToString(cur.File[:]), hex.EncodeToString(cur.Volume[:])
	for _, s := range cur.Stanzas {
		fi.Stanzas = append(fi.Stanzas, StanzaInfo{Type: s.Type, KeyID: s.KeyID})
	}
	return fi, nil
}

// cipherFileOf returns, for a path inside a kmsfs mount, the cipher dir
// (the mount's source) and the path below the mount point, which
// cipherRelOf maps to the cipher file by inode (with encrypted names the
// stored names differ); for any other path, dir is "".
func cipherFileOf(path string) (dir, rel string, err error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", "", err
	}
	ms, err := mountinfo.Read()
	if err != nil {
		return "", "", nil // no mount table: path is taken as a cipher file
	}
	best := ""
	for _, m := range ms {
		if m.FSType != "fuse.kmsfs" || len(m.Point) <= len(best) || m.Source == "" {
			continue
		}
		r, err := filepath.Rel(m.Point, abs)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			continue
		}
		best, dir, rel = m.Point, m.Source, r
	}
	return dir, rel, nil
}

// cipherRelOf returns the path below the cipher dir dir of the file at
// path, which is rel below a kmsfs mount of dir. Names may be stored
// encrypted, so it goes by identity, not by name: component by
// component, the entry of the cipher directory whose inode number is the
// one the mount reports for the plaintext component (the mount shows the
// backing inode numbers). No key is needed, and no link is followed.
func cipherRelOf(path, dir, rel string) (string, error) {
	if rel == "." {
		return "", fmt.Errorf("volume: %s is the mount's root, not a file: %w", path, ErrNotKmsfsFile)
	}
	parts := strings.Split(filepath.ToSlash(rel), "/")
	mnt := strings.TrimSuffix(filepath.Clean(path), string(filepath.Separator)+filepath.FromSlash(rel))
	cur, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("volume: cipher dir %s: %w", dir, err)
	}
	defer func() { unix.Close(cur) }()
	var out []string
	for i := range parts {
		var st unix.Stat_t
		plain := filepath.Join(append([]string{mnt}, parts[:i+1]...)...)
		if err := unix.Lstat(plain, &st); err != nil {
			return "", fmt.Errorf("volume: %s: %w", plain, err)
		}
		name, err := entryWithInode(cur, st.Ino)
		if err != nil {
			return "", fmt.Errorf("volume: %s: its entry in the cipher dir %s: %w", plain, filepath.Join(append([]string{dir}, out...)...), err)
		}
		out = append(out, name)
		if i == len(parts)-1 {
			break
		}
		next, _, err := safeopen.OpenAt(cur, name, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
		if err != nil {
			return "", fmt.Errorf("volume: %s: %w", filepath.Join(append([]string{dir}, out...)...), err)
		}
		unix.Close(cur)
		cur = next
	}
	return strings.Join(out, "/"), nil
}

// entryWithInode returns the name of the entry of the directory dfd whose
// inode number is ino.
func entryWithInode(dfd int, ino uint64) (string, error) {
	ents, err := direntries(dfd)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.ino == ino {
			return e.name, nil
		}
	}
	return "", fmt.Errorf("no entry has inode %d: %w", ino, fs.ErrNotExist)
}

// dirent is one entry of a directory listing.
type dirent struct {
	name string
	ino  uint64
	typ  uint8 // unix.DT_*
}

// direntries lists the directory dfd from its start, with each entry's
// inode number and type (which os.File.ReadDir does not give), "." and
// ".." left out.
func direntries(dfd int) ([]dirent, error) {
	if _, err := unix.Seek(dfd, 0, 0); err != nil {
		return nil, err
	}
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.ReadDirent(dfd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for b := buf[:n]; len(b) >= 19; {
			reclen := int(binary.NativeEndian.Uint16(b[16:18]))
			if reclen < 19 || reclen > len(b) {
				return nil, errors.New("malformed directory entry")
			}
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out = append(out, dirent{name: s, ino: binary.NativeEndian.Uint64(b[0:8]), typ: b[18]})
			}
			b = b[reclen:]
		}
	}
}

// openInCipherDir opens the regular file rel below the cipher dir dir one
// component at a time, never through a symbolic link the cipher dir holds
// (safeopen.OpenBeneath), with flags (unix.O_RDONLY or unix.O_RDWR).
func openInCipherDir(dir, rel string, flags int) (*os.File, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("volume: %w", err)
	}
	defer d.Close()
	cp := filepath.Join(dir, rel)
	fd, err := safeopen.OpenBeneath(int(d.Fd()), rel, flags, unix.S_IFREG)
	var wt *safeopen.WrongType
	if errors.As(err, &wt) || errors.Is(err, safeopen.ErrNotBeneath) {
		return nil, fmt.Errorf("volume: %s: %v: %w", cp, err, ErrNotKmsfsFile)
	}
	if err != nil {
		return nil, fmt.Errorf("volume: %s: %w", cp, err)
	}
	return os.NewFile(uintptr(fd), cp), nil
}
