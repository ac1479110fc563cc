package fs

import (
	"errors"
	"fmt"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
	"github.com/kmsfs/kmsfs/internal/safeopen"
)

// With Options.Names set, every entry of the cipher dir is named by
// envelope/names under its directory's ID, and whatever else kmsfs keeps
// next to the entries has a '.' in its name (names.IsSpecial): never
// listed, and never reached by a plaintext name, which is always
// encrypted first.
const (
	// longTarget is the target of a backing symlink whose encrypted target
	// is too long to be a symlink's: the encrypted target is then in the
	// side file named by the entry's backing name and targetSuffix.
	longTarget = "kmsfs.longtarget"
	// targetSuffix names a symlink's long-target side file.
	targetSuffix = ".target"
	// tmpPrefix starts the names of what is made under a temporary name
	// and renamed into place (directories, side files).
	tmpPrefix = namestore.TmpPrefix
	// maxTargetSide bounds a long-target side file's read: the encoded
	// form of the longest target.
	maxTargetSide = ((16+16+names.MaxTargetLen)*8 + 5) / 6
)

// errDirID marks a directory whose kmsfs.dirid is missing or bad: its
// entries cannot be named.
var errDirID = errors.New("fs: directory ID unreadable")

// backing returns the backing name of the entry name in this directory,
// with the directory's descriptor: the name itself without Options.Names,
// otherwise its encrypted form under the directory's ID. It is the one
// place an entry's backing name is made.
func (n *Node) backing(name string) (int, names.Name, syscall.Errno) {
	fd, errno := n.dir()
	if errno != 0 {
		return -1, names.Name{}, errno
	}
	c := n.r.opts.Names
	if c == nil {
		return fd, names.Name{Backing: name}, 0
	}
	n.mu.Lock()
	id, err := n.dirID, n.dirIDErr
	n.mu.Unlock()
	if err != nil {
		return -1, names.Name{}, syscall.EIO
	}
	if nm, ok := n.r.names.get(id, name); ok {
		return fd, nm, 0
	}
	nm, err := c.Encrypt(id, name)
	if err != nil {
		if len(name) > names.MaxNameLen {
			return -1, names.Name{}, syscall.ENAMETOOLONG
		}
		return -1, names.Name{}, syscall.EINVAL
	}
	n.r.names.put(id, name, nm)
	return fd, nm, 0
}

// loadDirID reads the ID of the directory just opened as fd into the node
// (n.mu held). A missing or bad one is logged once, here, and makes every
// later naming of the directory's entries fail with EIO: without its ID
// no name in it can be checked, and a guess would show wrong names.
//
// The exception is a directory with no entries whose ID is missing: an
// rmdir, or a rename over the directory, removes the ID before the
// directory (the backing one must be empty to go), and a crash in between
// leaves just that. It gets a new ID: there is no name in it to misread.
func (n *Node) loadDirID(fd int) {
	if n.r.opts.Names == nil || n.isRoot() {
		return
	}
	var err error
	n.dirID, err = readDirID(fd)
	n.dirIDErr = nil
	if errors.Is(err, unix.ENOENT) {
		if id, ok := newEmptyDirID(fd); ok {
			n.dirID = id
			n.r.log.WithFields(map[string]any{"op": "dirid", "path": n.Path(nil)}).
				Warn(fmt.Sprintf("fs: empty directory without its %s (an rmdir or a rename over it cut short): given a new one", names.DirIDFile))
			return
		}
	}
	if err != nil {
		n.dirIDErr = fmt.Errorf("%w: %w", errDirID, err)
		n.r.log.WithFields(map[string]any{"op": "dirid", "path": n.Path(nil)}).
			Error(fmt.Sprintf("fs: %s of this directory: %v; its entries are not shown", names.DirIDFile, err))
	}
}

// newEmptyDirID gives the directory open as fd, which has no ID, a new
// one if it holds no entry (only kmsfs's own files, if anything).
func newEmptyDirID(fd int) (names.DirID, bool) {
	if _, errno := ownFilesOnly(fd); errno != 0 {
		return names.DirID{}, false
	}
	id, err := names.NewDirID()
	if err == nil {
		err = writeDirID(fd, id)
	}
	return id, err == nil
}

// readDirID reads the ID of the directory open as fd from its
// names.DirIDFile link, never followed.
func readDirID(fd int) (names.DirID, error) { return namestore.ReadDirID(fd) }

// writeDirID gives the directory open as fd its ID (namestore.WriteDirID).
func writeDirID(fd int, id names.DirID) error { return namestore.WriteDirID(fd, id) }

// readSmall reads the regular file name in directory dirfd, not followed
// if it is a link, refusing one of more than max bytes.
func readSmall(dirfd int, name string, max int) ([]byte, error) {
	return safeopen.ReadSmall(dirfd, name, max)
}

// writeFileAt puts a file name holding data in directory dirfd, durably
// (namestore.WriteFileAt).
func writeFileAt(dirfd int, name string, data []byte) error {
	return namestore.WriteFileAt(dirfd, name, data)
}

// writeLongSide writes the side file of a long name before its entry is
// made or moved in (namestore.WriteLongSide).
func writeLongSide(dirfd int, nm names.Name) syscall.Errno {
	return gofs.ToErrno(namestore.WriteLongSide(dirfd, nm))
}

// removeLongSide removes the side file of a long name whose entry is gone.
func removeLongSide(dirfd int, nm names.Name) { namestore.RemoveLongSide(dirfd, nm) }

// decryptEntry returns the plaintext name of the backing entry backing of
// directory dirfd, whose ID is id; ok is false for kmsfs's own files,
// which are not entries. A long name is read from its side file.
func (r *root) decryptEntry(dirfd int, id names.DirID, backing string) (name string, ok bool, err error) {
	c := r.opts.Names
	switch {
	case backing == "." || backing == "..":
		return backing, true, nil
	case names.IsLong(backing):
		side, err := namestore.ReadLongSide(dirfd, backing)
		if err != nil {
			return "", true, fmt.Errorf("fs: side file of %s: %w", backing, err)
		}
		if name, err = c.DecryptLong(id, backing, side); err == nil {
			r.names.put(id, name, names.Name{Backing: backing, Side: side})
		}
		return name, true, err
	case names.IsSpecial(backing):
		return "", false, nil
	}
	if name, ok := r.names.plainName(id, backing); ok {
		return name, true, nil
	}
	if name, err = c.Decrypt(id, backing); err == nil {
		// Decrypt refuses any form Encrypt does not write: backing is
		// the name's one backing name.
		r.names.put(id, name, names.Name{Backing: backing})
	}
	return name, true, err
}

// isLongTarget reports whether the backing symlink of stat st may be one
// whose target is in a side file: an encrypted target that fits is never
// as short as the marker.
func isLongTarget(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFLNK && st.Size == int64(len(longTarget))
}

// plainLinkSize sets the size of the backing symlink backing of directory
// dirfd, of stat st, to its plaintext target's length, which follows from
// the encrypted target's length (the encoding's overhead is fixed).
func (r *root) plainLinkSize(dirfd int, backing string, st *unix.Stat_t) {
	if r.opts.Names == nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return
	}
	size := st.Size
	if isLongTarget(st) {
		var side unix.Stat_t
		if unix.Fstatat(dirfd, backing+targetSuffix, &side, unix.AT_SYMLINK_NOFOLLOW) == nil {
			size = side.Size
		}
	}
	st.Size = max(0, size*6/8-32)
}

// encryptTarget returns what the backing symlink of the entry nm in
// directory dirfd holds for target, writing the long-target side file
// first when the encrypted target does not fit in a symlink.
func (r *root) encryptTarget(dirfd int, nm names.Name, target string) (string, syscall.Errno) {
	c := r.opts.Names
	if c == nil {
		return target, 0
	}
	enc, err := c.EncryptTarget(target)
	if err != nil {
		if len(target) > names.MaxTargetLen {
			return "", syscall.ENAMETOOLONG
		}
		return "", syscall.EINVAL
	}
	if names.TargetFits(enc) {
		return enc, 0
	}
	if exists(dirfd, nm.Backing) {
		return "", syscall.EEXIST // the existing entry's target side stays its own
	}
	if err := writeFileAt(dirfd, nm.Backing+targetSuffix, []byte(enc)); err != nil {
		return "", gofs.ToErrno(err)
	}
	return longTarget, 0
}

// copyTargetSide gives the entry to of directory tofd the long-target side
// file of the entry from of directory fromfd, before the symlink is linked
// or moved there.
func copyTargetSide(fromfd int, from string, tofd int, to string) syscall.Errno {
	b, err := readSmall(fromfd, from+targetSuffix, maxTargetSide)
	if err != nil {
		return gofs.ToErrno(err)
	}
	return gofs.ToErrno(writeFileAt(tofd, to+targetSuffix, b))
}

// hasTargetSide reports whether the backing entry backing of dirfd is a
// symlink whose target is in a side file.
func hasTargetSide(dirfd int, backing string) bool {
	var st unix.Stat_t
	if unix.Fstatat(dirfd, backing, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !isLongTarget(&st) {
		return false
	}
	buf := make([]byte, len(longTarget)+1)
	m, err := unix.Readlinkat(dirfd, backing, buf)
	return err == nil && string(buf[:m]) == longTarget
}
