package volume

import (
	"encoding/hex"
	"errors"
	"fmt"
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

// cipherFileOf returns where the cipher file of path is: for a path
// inside a kmsfs mount, the cipher dir (the mount's source) and the path
// below the mount point, since names are stored as they are; for any
// other path, dir is "".
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
