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
// as short as either form of the marker.
func isLongTarget(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFLNK &&
		(st.Size == int64(len(namestore.LongTargetMarker)) || st.Size == int64(namestore.MarkerLen))
}

// targetSide is where a backing symlink's stored target is kept when it is
// not in the symlink.
type targetSide struct {
	name  string // the side file in the symlink's directory; "" for none
	byID  bool   // named by the symlink's ID, not by its entry (old form)
	nlink uint64 // the symlink's link count when looked at
}

// sideOf returns the long-target side file of the backing entry backing of
// dirfd, none if it is no symlink with a well-formed marker.
func sideOf(dirfd int, backing string) targetSide {
	var st unix.Stat_t
	if unix.Fstatat(dirfd, backing, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !isLongTarget(&st) {
		return targetSide{}
	}
	buf := make([]byte, namestore.MarkerLen+1)
	m, err := unix.Readlinkat(dirfd, backing, buf)
	if err != nil {
		return targetSide{}
	}
	name, byID, err := namestore.TargetSide(backing, string(buf[:m]))
	if err != nil {
		return targetSide{}
	}
	return targetSide{name: name, byID: byID, nlink: uint64(st.Nlink)}
}

// removeAfter removes the side file s of an entry of dirfd that is gone:
// the old form's is the entry's own; an ID-named one is shared by the
// symlink's other links in the directory, and goes with the last.
func (s targetSide) removeAfter(dirfd int) {
	if s.name != "" && (!s.byID || s.nlink <= 1) {
		unix.Unlinkat(dirfd, s.name, 0)
	}
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
		if s := sideOf(dirfd, backing); s.name != "" && unix.Fstatat(dirfd, s.name, &side, unix.AT_SYMLINK_NOFOLLOW) == nil {
			size = side.Size
		}
	}
	st.Size = max(0, size*6/8-32)
}

// encryptTarget returns what a new backing symlink in directory dirfd
// holds for target, writing the long-target side file first (returned as
// side, for the caller to remove if the symlink cannot be made) when the
// encrypted target does not fit in a symlink.
func (r *root) encryptTarget(dirfd int, target string) (stored, side string, errno syscall.Errno) {
	c := r.opts.Names
	if c == nil {
		return target, "", 0
	}
	enc, err := c.EncryptTarget(target)
	if err != nil {
		if len(target) > names.MaxTargetLen {
			return "", "", syscall.ENAMETOOLONG
		}
		return "", "", syscall.EINVAL
	}
	if names.TargetFits(enc) {
		return enc, "", 0
	}
	marker, side, err := namestore.NewTargetMarker()
	if err != nil {
		return "", "", syscall.EIO
	}
	if err := writeFileAt(dirfd, side, []byte(enc)); err != nil {
		return "", "", gofs.ToErrno(err)
	}
	return marker, side, 0
}

// copySide copies the side file from of directory fromfd to to of
// directory tofd, durably, before an entry that reads it appears there.
func copySide(fromfd int, from string, tofd int, to string) syscall.Errno {
	b, err := readSmall(fromfd, from, maxTargetSide)
	if err != nil {
		return gofs.ToErrno(err)
	}
	return gofs.ToErrno(writeFileAt(tofd, to, b))
}

// sameDir reports whether the descriptors a and b are of one directory.
func sameDir(a, b int) bool {
	if a == b {
		return true
	}
	var sa, sb unix.Stat_t
	return unix.Fstat(a, &sa) == nil && unix.Fstat(b, &sb) == nil && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}
