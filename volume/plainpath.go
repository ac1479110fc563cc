package volume

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// ErrNameAuth means a cipher path has no plain path because a name on it,
// or the ID of a directory on it, fails to authenticate: it was changed,
// or moved there from another directory.
var ErrNameAuth = errors.New("name does not authenticate")

// plainPaths maps paths below a cipher dir with encrypted names to the
// plain paths a mount shows, for reports that name files an operator
// must find. Everything it reads is untrusted: directories are opened
// beneath the cipher dir without following a link, a directory's ID is
// its names.DirIDFile link (read, never followed, strictly parsed), and a
// name that fails to authenticate gives no plain path, never a guess.
// Each directory's ID and plain path are read once and kept. It is not
// safe for concurrent use.
type plainPaths struct {
	dir   string
	codec *names.Codec
	root  names.DirID
	dirs  map[string]plainDir // by path below dir; "" is the root
}

// plainDir is what plainPaths learnt of one directory.
type plainDir struct {
	id    names.DirID
	plain string
	err   error // why its entries have no plain path
}

// plainPaths returns the resolver of the volume's cipher paths, or nil
// when there is nothing to resolve: plaintext names, where a cipher path
// is the plain path, or no name key at hand.
func (v *Volume) plainPaths() *plainPaths {
	if !v.encNames || v.nameKey == nil {
		return nil
	}
	c, root, err := v.NameCodec()
	if err != nil {
		return nil
	}
	return &plainPaths{dir: v.Dir, codec: c, root: root, dirs: map[string]plainDir{}}
}

// resolve returns the plain path of rel, a path below the cipher dir. A
// file of kmsfs's own (kmsfs.names, the journal, side files, directory
// IDs) has none, and no error either; a path whose names cannot be
// checked has none, and the error says why (ErrNameAuth when a name or a
// directory ID fails to authenticate). A nil resolver resolves nothing.
func (p *plainPaths) resolve(rel string) (string, error) {
	if p == nil || rel == "" {
		return "", nil
	}
	for c := range strings.SplitSeq(rel, "/") {
		if ownFile(c) {
			return "", nil
		}
	}
	parent, base := splitRel(rel)
	d := p.dirAt(parent)
	if d.err != nil {
		return "", d.err
	}
	name, err := p.entry(parent, d.id, base)
	if err != nil {
		return "", err
	}
	return path.Join(d.plain, name), nil
}

// annotate is resolve for a report: the plain path of rel, or "" and why
// there is none ("" for kmsfs's own files).
func (p *plainPaths) annotate(rel string) (plain, why string) {
	plain, err := p.resolve(rel)
	if err != nil {
		return "", err.Error()
	}
	return plain, ""
}

// ownFile reports whether the cipher-dir entry name is kmsfs's own and not
// an encrypted name: every such name has a '.' and is no long name.
func ownFile(name string) bool { return names.IsSpecial(name) && !names.IsLong(name) }

// sideFile reports whether name, a regular file in a cipher dir with
// encrypted names, is the side file of a long name or of a long symbolic
// link target: kmsfs's own, holding a sealed name, not a file's content.
func sideFile(name string) bool {
	if namestore.IsTargetSide(name) {
		return true // named by the symlink's ID
	}
	if base, ok := strings.CutSuffix(name, names.LongSuffix); ok {
		return names.IsLong(base)
	}
	if base, ok := strings.CutSuffix(name, namestore.TargetSuffix); ok {
		return base != "" && !ownFile(base)
	}
	return false
}

// volumeFile reports whether the walks of the cipher dir (fsck, rewrap,
// status) take e for a file of the volume: a regular file, but, with
// encrypted names (encNames), not a side file, which holds a sealed name.
func (e cipherEntry) volumeFile(encNames bool) bool {
	return e.typ.IsRegular() && !(encNames && sideFile(e.name))
}

// splitRel splits rel into its directory ("" for the root) and its last
// element.
func splitRel(rel string) (string, string) {
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		return "", rel
	}
	return rel[:i], rel[i+1:]
}

// dirAt returns what is known of the directory rel, reading it once.
func (p *plainPaths) dirAt(rel string) plainDir {
	if d, ok := p.dirs[rel]; ok {
		return d
	}
	d := plainDir{id: p.root}
	if rel != "" {
		parent, base := splitRel(rel)
		if d = p.dirAt(parent); d.err == nil {
			var name string
			if name, d.err = p.entry(parent, d.id, base); d.err == nil {
				d.plain = path.Join(d.plain, name)
				d.id, d.err = p.dirID(rel)
			}
		}
	}
	p.dirs[rel] = d
	return d
}

// entry decrypts the backing name base of the directory rel, whose ID is
// id; a long name's sealed form is read from its side file.
func (p *plainPaths) entry(rel string, id names.DirID, base string) (string, error) {
	var name string
	var err error
	if names.IsLong(base) {
		var side []byte
		side, err = p.readAt(rel, func(fd int) ([]byte, error) { return namestore.ReadLongSide(fd, base) })
		if err != nil {
			return "", fmt.Errorf("volume: side file %s%s of %s: %w", base, names.LongSuffix, p.where(rel), err)
		}
		name, err = p.codec.DecryptLong(id, base, side)
	} else {
		name, err = p.codec.Decrypt(id, base)
	}
	if err != nil {
		return "", fmt.Errorf("volume: in %s: %w (changed, or moved there from another directory): %w", p.where(rel), ErrNameAuth, err)
	}
	return name, nil
}

// dirID reads the ID of the directory rel from its names.DirIDFile link.
func (p *plainPaths) dirID(rel string) (names.DirID, error) {
	var id names.DirID
	_, err := p.readAt(rel, func(fd int) ([]byte, error) {
		var err error
		id, err = namestore.ReadDirID(fd)
		return nil, err
	})
	switch {
	case errors.Is(err, names.ErrInvalidName):
		return names.DirID{}, fmt.Errorf("volume: %s of %s: %w: %w", names.DirIDFile, p.where(rel), ErrNameAuth, err)
	case err != nil:
		return names.DirID{}, fmt.Errorf("volume: %s of %s: %w", names.DirIDFile, p.where(rel), err)
	}
	return id, nil
}

// readAt calls read with a descriptor of the directory rel, opened beneath
// the cipher dir without following a link.
func (p *plainPaths) readAt(rel string, read func(fd int) ([]byte, error)) ([]byte, error) {
	root, err := unix.Open(p.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(root)
	fd := root
	if rel != "" {
		if fd, err = safeopen.OpenBeneath(root, rel, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR); err != nil {
			return nil, err
		}
		defer unix.Close(fd)
	}
	return read(fd)
}

// where names the directory rel of the cipher dir in a message.
func (p *plainPaths) where(rel string) string {
	if rel == "" {
		return "the cipher dir's root"
	}
	return rel
}
