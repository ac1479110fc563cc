package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/safeopen"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
)

// NamesName is the name key file at the root of a cipher dir: a cipher
// file of the volume whose plaintext is the volume's name key, so its
// header carries the volume's stanzas and status, rewrap and escrow cover
// it as they cover every file.
const NamesName = volconf.NamesName

// ErrNameKey means a volume with encrypted names has a name key file Open
// refuses: missing, not a regular file, not of this volume, of the wrong
// size or holding another key than the one the host approved.
var ErrNameKey = errors.New("name key file refused")

// EncryptedNames reports whether the volume encrypts file names and
// symlink targets (kmsfs.conf's encrypted-names feature).
func (v *Volume) EncryptedNames() bool { return v.encNames }

// NameKey returns the volume's name key, names.KeySize bytes in locked
// memory, or nil for a volume with plaintext names or one opened with
// only a public key (Options.PublicKeyFile), which cannot unwrap it. The
// volume owns it and frees it at Close: the caller must neither change it
// nor keep it past Close.
func (v *Volume) NameKey() []byte { return v.nameKey }

// NameKeyErr returns why Open refused the name key file of a volume
// opened with Options.NameKeyMayFail (it wraps ErrNameKey), or nil.
func (v *Volume) NameKeyErr() error { return v.nameKeyErr }

// NameCodec returns the name codec of a volume with encrypted names and
// the ID of its root directory, which a mount needs; nil for a volume
// with plaintext names. It fails for a volume whose name key is not at
// hand (opened with only a public key).
func (v *Volume) NameCodec() (*names.Codec, names.DirID, error) {
	if !v.encNames {
		return nil, names.DirID{}, nil
	}
	if v.nameKeyErr != nil {
		return nil, names.DirID{}, v.nameKeyErr
	}
	if v.nameKey == nil {
		return nil, names.DirID{}, fmt.Errorf("volume: %s encrypts names, and its name key is not at hand (a public key only opens no key)", v.Dir)
	}
	c, err := names.New(v.nameKey)
	if err != nil {
		return nil, names.DirID{}, err
	}
	vid, err := v.Conf().ID()
	if err != nil {
		return nil, names.DirID{}, err
	}
	return c, names.RootDirID(vid), nil
}

// writeNameKey writes key to dir's NamesName as a new cipher file of the
// volume v (v.Keys and v.Format are all it uses), atomically: a crash
// leaves the old file or the new one, never half of one.
func (v *Volume) writeNameKey(ctx context.Context, dir string, key []byte) error {
	p := filepath.Join(dir, NamesName)
	return WriteAtomic(p, 0o600, func(f *os.File) error {
		if _, err := v.Encrypt(ctx, f, bytes.NewReader(key)); err != nil {
			return fmt.Errorf("volume: write name key file %s: %w", p, err)
		}
		return nil
	})
}

// loadNameKey reads the volume's name key from NamesName into locked
// memory and checks it is the key kmsfs.conf (as approved) names. The
// file comes from untrusted storage: it is opened relative to the cipher
// dir's descriptor without following a symbolic link, authenticated as a
// file of this volume, and must hold exactly names.KeySize bytes.
func (v *Volume) loadNameKey(ctx context.Context, conf *volconf.Conf) error {
	p := filepath.Join(v.Dir, NamesName)
	dfd, err := unix.Open(v.Dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("volume: open cipher dir %s: %w", v.Dir, err)
	}
	defer unix.Close(dfd)
	// A read-write volume opens it for writing too, so that a journal
	// record of a rewrap cut short can be applied.
	flags := unix.O_RDWR
	if v.Journal == nil {
		flags = unix.O_RDONLY
	}
	fd, _, err := safeopen.OpenAt(dfd, NamesName, flags, unix.S_IFREG)
	var wt *safeopen.WrongType
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("volume: %s is missing: the volume encrypts names and no name can be read without it (restore it from a backup of the cipher dir): %w", p, ErrNameKey)
	case errors.As(err, &wt):
		return fmt.Errorf("volume: %s %v: it must be a regular file in the cipher dir: %w", p, wt, ErrNameKey)
	case err != nil:
		return fmt.Errorf("volume: open name key file %s: %w", p, err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	ef, err := v.Format.Open(ctx, f, v.Keys)
	if errors.Is(err, envelope.ErrNoHeader) || errors.Is(err, envelope.ErrFormat) || errors.Is(err, envelope.ErrAuth) ||
		errors.Is(err, envelope.ErrOtherVolume) {
		return fmt.Errorf("volume: name key file %s is damaged or not this volume's: %w (%w)", p, ErrNameKey, err)
	}
	if err != nil {
		return fmt.Errorf("volume: name key file %s: %w", p, err)
	}
	defer ef.Close()
	if n := ef.Size(); n != names.KeySize {
		return fmt.Errorf("volume: name key file %s holds %d bytes, a name key is %d: %w", p, n, names.KeySize, ErrNameKey)
	}
	key := v.opts.Mem.Alloc(names.KeySize)
	if n, err := ef.ReadAt(key, 0); n != len(key) || (err != nil && err != io.EOF) {
		v.opts.Mem.Free(key)
		if errors.Is(err, envelope.ErrAuth) {
			return fmt.Errorf("volume: name key file %s is damaged: %w (%w)", p, ErrNameKey, err)
		}
		return fmt.Errorf("volume: read name key file %s: %w", p, err)
	}
	if id := names.KeyID(key); id != conf.NameKeyID {
		v.opts.Mem.Free(key)
		return fmt.Errorf("volume: name key file %s holds name key %s, but this host approved %s: the file was replaced: %w", p, id, conf.NameKeyID, ErrNameKey)
	}
	v.nameKey = key
	return nil
}

// initNameKey makes a new name key for the volume being initialised and
// writes it to cipherDir's NamesName with a data key from the keys Init
// opened (list, primary first), under the layout and volume ID of conf.
// It returns the key's ID for kmsfs.conf.
func initNameKey(ctx context.Context, cipherDir string, conf *volconf.Conf, list []keysource.KeySource) (string, error) {
	layout, err := conf.Layout()
	if err != nil {
		return "", err
	}
	vid, err := conf.ID()
	if err != nil {
		return "", err
	}
	policy, err := conf.Policy()
	if err != nil {
		return "", err
	}
	// One data key is all init needs: no pool kept ahead of need.
	mgr, err := keysource.NewManager(keysource.Options{Primary: list[0], Escrow: list[1:], Policy: policy, DeferPool: true, PoolSize: 1, RefillWorkers: 1})
	if err != nil {
		return "", err
	}
	defer mgr.Close()
	format, err := envelope.NewVolume(envelope.Options{Layout: layout, Volume: vid})
	if err != nil {
		return "", err
	}
	key, err := names.GenerateKey()
	if err != nil {
		return "", err
	}
	defer clear(key)
	v := &Volume{Keys: mgr, Format: format}
	if err := v.writeNameKey(ctx, cipherDir, key); err != nil {
		return "", err
	}
	return names.KeyID(key), nil
}
