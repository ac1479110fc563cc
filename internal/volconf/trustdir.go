package volconf

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// TrustDirEnv names the environment variable that overrides the default
// trust dir (the --trust-dir flag wins over it).
const TrustDirEnv = "KMSFS_TRUST_DIR"

// SystemTrustDir is the trust dir of root.
const SystemTrustDir = "/etc/kmsfs/trust"

// anchorSuffix ends the name of every anchor file: VOLUMEID.anchor.
const anchorSuffix = ".anchor"

// DefaultTrustDir returns the trust dir to use when no flag names one:
// $KMSFS_TRUST_DIR, else SystemTrustDir for root (euid 0), else
// $XDG_CONFIG_HOME/kmsfs/trust, else ~/.config/kmsfs/trust. lookupEnv
// reads the environment (os.LookupEnv).
func DefaultTrustDir(euid int, lookupEnv func(string) (string, bool)) (string, error) {
	if d, ok := lookupEnv(TrustDirEnv); ok && d != "" {
		return d, nil
	}
	if euid == 0 {
		return SystemTrustDir, nil
	}
	if d, ok := lookupEnv("XDG_CONFIG_HOME"); ok && filepath.IsAbs(d) {
		return filepath.Join(d, "kmsfs", "trust"), nil
	}
	if h, ok := lookupEnv("HOME"); ok && filepath.IsAbs(h) {
		return filepath.Join(h, ".config", "kmsfs", "trust"), nil
	}
	return "", fmt.Errorf("volconf: no trust dir: set HOME, XDG_CONFIG_HOME or %s, or give --trust-dir", TrustDirEnv)
}

// Store is a trust dir: one anchor file per approved volume, named by the
// volume ID. The directory is 0700 and its files 0600; a store refuses a
// directory or file that is a symbolic link, belongs to another user than
// the process's (or root), or is writable by group or others.
//
// A Store holds no descriptors; it is safe for concurrent use, and writes
// are atomic (temporary file, fsync, rename, fsync of the directory).
type Store struct {
	dir  string
	euid int
}

// NewStore returns the store at dir for the user euid. It touches nothing
// on disk.
func NewStore(dir string, euid int) *Store { return &Store{dir: dir, euid: euid} }

// Dir returns the trust dir's path.
func (s *Store) Dir() string { return s.dir }

// Path returns the anchor file of a volume ID.
func (s *Store) Path(volumeID string) string { return filepath.Join(s.dir, volumeID+anchorSuffix) }

// openDir opens the trust dir and checks it is safe; the caller closes
// the descriptor.
func (s *Store) openDir() (int, error) {
	fd, err := unix.Open(s.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			if fi, lerr := os.Lstat(s.dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
				return -1, fmt.Errorf("volconf: trust dir %s is a symbolic link: refused (make it a real directory): %w", s.dir, ErrInsecure)
			}
		}
		return -1, fmt.Errorf("volconf: trust dir %s: %w", s.dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("volconf: trust dir %s: %w", s.dir, err)
	}
	if err := s.checkOwner(s.dir, "trust dir", &st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// checkOwner refuses st if someone other than the user or root owns it,
// or group or others may write it.
func (s *Store) checkOwner(path, what string, st *unix.Stat_t) error {
	if int(st.Uid) != s.euid && st.Uid != 0 {
		return fmt.Errorf("volconf: %s %s belongs to user %d, not to this user (%d) or root: refused: %w", what, path, st.Uid, s.euid, ErrInsecure)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("volconf: %s %s is writable by group or others (mode %04o): refused (chmod go-w %s): %w",
			what, path, st.Mode&0o7777, path, ErrInsecure)
	}
	return nil
}

// Load returns the anchor of volumeID. It fails wrapping ErrNotTrusted if
// there is none, ErrInsecure if the trust dir or the file is not safe.
func (s *Store) Load(volumeID string) (*Anchor, error) {
	if !validVolumeID(volumeID) {
		return nil, fmt.Errorf("volconf: volume ID %q is not 32 lowercase hex digits", volumeID)
	}
	if _, err := os.Lstat(s.dir); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("volconf: no trust anchor for volume %s (trust dir %s does not exist): %w", volumeID, s.dir, ErrNotTrusted)
	}
	dfd, err := s.openDir()
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	return s.loadAt(dfd, volumeID+anchorSuffix)
}

// loadAt reads and checks the anchor file name in the trust dir dfd.
func (s *Store) loadAt(dfd int, name string) (*Anchor, error) {
	p := filepath.Join(s.dir, name)
	raw, st, err := readRegularAt(dfd, name)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("volconf: no trust anchor %s: %w", p, ErrNotTrusted)
	case errors.Is(err, unix.ELOOP):
		return nil, fmt.Errorf("volconf: trust anchor %s is a symbolic link: refused: %w", p, ErrInsecure)
	case errors.Is(err, errNotRegular):
		return nil, fmt.Errorf("volconf: trust anchor %s %w: %w", p, err, ErrInsecure)
	case errors.Is(err, errTooLarge):
		return nil, fmt.Errorf("volconf: trust anchor %s %w", p, err)
	case err != nil:
		return nil, fmt.Errorf("volconf: trust anchor %s: %w", p, err)
	}
	if err := s.checkOwner(p, "trust anchor", st); err != nil {
		return nil, err
	}
	a, err := decodeAnchor(raw, p)
	if err != nil {
		return nil, err
	}
	if a.Conf.VolumeID+anchorSuffix != name {
		return nil, fmt.Errorf("volconf: trust anchor %s holds volume %s: refused", p, a.Conf.VolumeID)
	}
	return a, nil
}

// ApprovedAt returns the volume IDs of the anchors approved at cipherDir
// (an absolute path), for a message when a cipher dir's kmsfs.conf names
// a volume the host does not know. Unreadable anchors are skipped.
func (s *Store) ApprovedAt(cipherDir string) []string {
	dfd, err := s.openDir()
	if err != nil {
		return nil
	}
	defer unix.Close(dfd)
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil
	}
	var ids []string
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), anchorSuffix) {
			continue
		}
		if a, err := s.loadAt(dfd, e.Name()); err == nil && a.CipherDir == cipherDir {
			ids = append(ids, a.Conf.VolumeID)
		}
	}
	return ids
}

// Check makes sure the trust dir exists (made 0700, its parents 0755)
// and is safe to write to, before a command does work that ends in Save.
func (s *Store) Check() error {
	fd, err := s.makeDir()
	if err == nil {
		unix.Close(fd)
	}
	return err
}

// makeDir creates the trust dir if needed and opens it (openDir).
func (s *Store) makeDir() (int, error) {
	if err := os.MkdirAll(filepath.Dir(s.dir), 0o755); err != nil {
		return -1, fmt.Errorf("volconf: trust dir: %w", err)
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return -1, fmt.Errorf("volconf: trust dir: %w", err)
	}
	return s.openDir()
}

// Save writes a as its volume's anchor, atomically, replacing any
// earlier one.
func (s *Store) Save(a *Anchor) error {
	if err := a.Check(); err != nil {
		return err
	}
	raw, err := encodeAnchor(a)
	if err != nil {
		return err
	}
	dfd, err := s.makeDir()
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	name := a.Conf.VolumeID + anchorSuffix
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	tmp := name + ".tmp-" + hex.EncodeToString(rnd[:])
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("volconf: write trust anchor in %s: %w", s.dir, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(s.dir, tmp))
	_, err = f.Write(raw)
	if err == nil {
		err = f.Chmod(0o600) // whatever the umask left
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(dfd, tmp, dfd, name)
	}
	if err != nil {
		unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("volconf: write trust anchor %s: %w", s.Path(a.Conf.VolumeID), err)
	}
	if err := unix.Fsync(dfd); err != nil {
		return fmt.Errorf("volconf: trust dir %s: %w", s.dir, err)
	}
	return nil
}

func validVolumeID(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == 16 && strings.ToLower(s) == s
}
