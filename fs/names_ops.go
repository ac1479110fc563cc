package fs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/namestore"
)

// The directory operations with Options.Names: a directory is made
// complete, with its ID, under a temporary name and then renamed into
// place, and never loses its ID while it has entries; a long name's side
// file is written before its entry appears and removed after it goes.

// mkdirNamed makes the directory nm in directory fd with its new ID: a
// crash leaves either nothing visible or the whole directory.
func (n *Node) mkdirNamed(fd int, nm names.Name, mode uint32) syscall.Errno {
	err := namestore.Mkdir(fd, nm, mode)
	var errno syscall.Errno
	if err != nil && !errors.As(err, &errno) {
		return syscall.EIO // no ID or temporary name could be drawn
	}
	return errno
}

// rmdirNamed removes the empty directory nm of directory fd (emptyDir),
// and then its long name's side file.
func (n *Node) rmdirNamed(fd int, nm names.Name) syscall.Errno {
	restore, errno := n.emptyDir(fd, nm.Backing)
	if errno != 0 {
		return errno
	}
	if err := unix.Unlinkat(fd, nm.Backing, unix.AT_REMOVEDIR); err != nil {
		restore()
		return gofs.ToErrno(err)
	}
	removeLongSide(fd, nm)
	return 0
}

// emptyDir readies the directory backing of directory fd, which must hold
// no entry, to be removed or renamed over: kmsfs's own files in it go
// (orphan side files, then its ID). If it then cannot go after all, the
// caller calls restore, which puts its ID back: a directory never loses
// its ID while it has entries.
func (n *Node) emptyDir(fd int, backing string) (restore func(), errno syscall.Errno) {
	cfd, err := unix.Openat(fd, backing, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	own, errno := ownFilesOnly(cfd)
	if errno != 0 {
		unix.Close(cfd)
		return nil, errno
	}
	id, idErr := readDirID(cfd)
	for _, name := range own {
		removeOrphan(cfd, name)
	}
	if idErr == nil {
		if err := unix.Unlinkat(cfd, names.DirIDFile, 0); err != nil {
			unix.Close(cfd)
			return nil, gofs.ToErrno(err)
		}
	}
	unix.Close(cfd)
	return func() {
		if idErr != nil {
			return
		}
		// Through a fresh descriptor of the name: the directory is still
		// there, since it could not go.
		cfd, err := unix.Openat(fd, backing, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == nil {
			err = writeDirID(cfd, id)
			unix.Close(cfd)
		}
		if err != nil {
			n.r.log.WithFields(map[string]any{"op": "rmdir", "path": n.Path(nil), "backing": backing}).
				Error(fmt.Sprintf("fs: put back %s: %v", names.DirIDFile, err))
		}
	}, 0
}

// ownFilesOnly returns what of kmsfs's own the directory open as fd
// holds other than its ID (orphan side files, mkdirs' temporary
// directories), or ENOTEMPTY if it holds an entry or anything else.
func ownFilesOnly(fd int) ([]string, syscall.Errno) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	f := os.NewFile(uintptr(dfd), ".")
	defer f.Close()
	var own []string
	for {
		ents, err := f.ReadDir(64)
		for _, e := range ents {
			name := e.Name()
			switch {
			case name == names.DirIDFile:
			case e.IsDir() && strings.HasPrefix(name, tmpPrefix):
				own = append(own, name) // a mkdir's, cut short by a crash
			case names.IsLong(name) || !names.IsSpecial(name) || !e.Type().IsRegular():
				return nil, syscall.ENOTEMPTY
			default:
				own = append(own, name)
			}
		}
		if err == io.EOF {
			return own, 0
		}
		if err != nil {
			return nil, gofs.ToErrno(err)
		}
	}
}

// removeOrphan removes what a crash left in directory fd under the
// special name name: a side file, or a directory that a mkdir had not
// yet renamed into place, with the ID it may hold.
func removeOrphan(fd int, name string) {
	if unix.Unlinkat(fd, name, 0) != unix.EISDIR {
		return
	}
	if tfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		unix.Unlinkat(tfd, names.DirIDFile, 0)
		unix.Close(tfd)
	}
	unix.Unlinkat(fd, name, unix.AT_REMOVEDIR)
}

// removeDir removes the directory nm of directory fd just made, for a
// create that failed half-way.
func (n *Node) removeDir(fd int, nm names.Name) {
	if n.r.opts.Names == nil {
		unix.Unlinkat(fd, nm.Backing, unix.AT_REMOVEDIR)
		return
	}
	n.rmdirNamed(fd, nm)
}

// removeSides removes the side files of the entry nm of directory fd,
// which is gone: its long name's, and its long target's ts, looked up
// before it went (sideOf).
func (n *Node) removeSides(fd int, nm names.Name, ts targetSide) {
	if n.r.opts.Names == nil {
		return
	}
	removeLongSide(fd, nm)
	ts.removeAfter(fd)
}

// sideBefore returns the long-target side file of this directory's entry
// nm, open as fd, before it goes: none if it cannot be a symlink.
func (n *Node) sideBefore(fd int, name string, nm names.Name) targetSide {
	if n.r.opts.Names == nil || !n.maybeSymlink(name) {
		return targetSide{}
	}
	return sideOf(fd, nm.Backing)
}

// maybeSymlink reports whether this directory's entry name may be a
// symbolic link: it is one, or the kernel has not looked it up.
func (n *Node) maybeSymlink(name string) bool {
	c := n.GetChild(name)
	return c == nil || c.StableAttr().Mode == unix.S_IFLNK
}

// exists reports whether directory fd has an entry backing.
func exists(fd int, backing string) bool {
	var st unix.Stat_t
	return unix.Fstatat(fd, backing, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// linkSides prepares the side files of the new name nm in directory fd
// for a link to the entry tname of directory tfd, a symlink if symlink.
// An ID-named long target's side file is copied into fd unless it is
// there already (another link of the symlink); an old-form one is copied
// to the new name's own.
func linkSides(tfd int, tname string, fd int, nm names.Name, symlink bool) syscall.Errno {
	if symlink {
		switch s := sideOf(tfd, tname); {
		case s.byID:
			if !exists(fd, s.name) {
				if errno := copySide(tfd, s.name, fd, s.name); errno != 0 {
					return errno
				}
			}
		case s.name != "":
			if exists(fd, nm.Backing) {
				return syscall.EEXIST // the existing entry's target side stays its own
			}
			if errno := copySide(tfd, s.name, fd, nm.Backing+namestore.TargetSuffix); errno != 0 {
				return errno
			}
		}
	}
	return writeLongSide(fd, nm)
}

// renameNamed renames the entry from of directory fd to to of directory
// nfd with renameat2's flags. The side files of the new name are in
// place before the entry moves, and those of the old name go after.
// fromLink and toLink say whether the entries may be symlinks.
func (n *Node) renameNamed(fd int, from names.Name, nfd int, to names.Name, flags uint32, fromLink, toLink bool) syscall.Errno {
	var fst, tst unix.Stat_t
	if err := unix.Fstatat(fd, from.Backing, &fst, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return gofs.ToErrno(err)
	}
	toErr := unix.Fstatat(nfd, to.Backing, &tst, unix.AT_SYMLINK_NOFOLLOW)
	if toErr == nil && fst.Dev == tst.Dev && fst.Ino == tst.Ino {
		// The same object under both names (or one name): rename does
		// nothing, and both names keep their side files.
		if flags&unix.RENAME_NOREPLACE != 0 {
			return syscall.EEXIST
		}
		return 0
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	if toErr == nil && flags&unix.RENAME_NOREPLACE != 0 {
		return syscall.EEXIST
	}
	var fromT, toT targetSide
	if fromLink {
		fromT = sideOf(fd, from.Backing)
	}
	if toLink && toErr == nil {
		toT = sideOf(nfd, to.Backing)
	}
	cross := !sameDir(fd, nfd)
	if errno := writeLongSide(nfd, to); errno != 0 {
		return errno
	}
	// Every symlink that moves finds its target's side file where it goes
	// before it moves. An ID-named one moves with the symlink, so within a
	// directory only the entries move, and a crash leaves the old or the
	// new state (or an orphan side file, never listed).
	oldBoth := exchange && fromT.old() && toT.old()
	if errno := fromT.prepare(fd, from.Backing, nfd, to.Backing, cross, oldBoth); errno != 0 {
		return errno
	}
	if exchange {
		if errno := toT.prepare(nfd, to.Backing, fd, from.Backing, cross, oldBoth); errno != 0 {
			return errno
		}
	}
	restore := func() {}
	if toErr == nil && !exchange && fst.Mode&unix.S_IFMT == unix.S_IFDIR && tst.Mode&unix.S_IFMT == unix.S_IFDIR {
		// A directory over an empty one: the backing one holds its ID.
		var errno syscall.Errno
		if restore, errno = n.emptyDir(nfd, to.Backing); errno != 0 {
			return errno
		}
	}
	if err := unix.Renameat2(fd, from.Backing, nfd, to.Backing, uint(flags)); err != nil {
		restore()
		return gofs.ToErrno(err)
	}
	if !exchange {
		removeLongSide(fd, from)
		fromT.left(fd, cross)
		switch {
		case toT.byID && toT.name != fromT.name:
			toT.removeAfter(nfd) // the replaced symlink's, if it was its last link
		case toT.old() && !fromT.old():
			unix.Unlinkat(nfd, toT.name, 0) // not overwritten by from's copy
		}
		return 0
	}
	// The names stay (with their long names' side files); the objects
	// swapped, each with its ID-named side file; the old form's side files
	// are named by the entries and swap after them, which a crash can cut
	// in two (the old form's limit, docs/FORMAT.md).
	switch {
	case oldBoth:
		unix.Renameat2(fd, fromT.name, nfd, toT.name, unix.RENAME_EXCHANGE)
	case fromT.old():
		unix.Unlinkat(fd, fromT.name, 0) // copied to to's name before
	case toT.old():
		unix.Unlinkat(nfd, toT.name, 0) // copied to from's name before
	}
	if fromT.byID {
		fromT.left(fd, cross)
	}
	if toT.byID {
		toT.left(nfd, cross)
	}
	return 0
}

// old reports whether s is an old-form side file, named by its entry.
func (s targetSide) old() bool { return s.name != "" && !s.byID }

// prepare puts the side file s of the symlink from of fromfd where the
// symlink reads it once moved to to of tofd: an ID-named one into tofd if
// that is another directory (cross) and it is not there yet; an old-form
// one to to's own name, unless skip (two old-form ones swap after).
func (s targetSide) prepare(fromfd int, from string, tofd int, to string, cross, skip bool) syscall.Errno {
	switch {
	case s.name == "":
		return 0
	case s.byID:
		if !cross || exists(tofd, s.name) {
			return 0
		}
		return copySide(fromfd, s.name, tofd, s.name)
	case skip:
		return 0
	}
	return copySide(fromfd, s.name, tofd, to+namestore.TargetSuffix)
}

// left removes the side file s from directory fd, which the symlink left
// (an ID-named one only if it moved to another directory, cross, and had
// no other link).
func (s targetSide) left(fd int, cross bool) {
	if s.old() || cross {
		s.removeAfter(fd)
	}
}

// plainTarget returns the plaintext of the symlink target stored in the
// node's backing symlink: stored as is without Options.Names, otherwise
// decrypted, from the long-target side file if the symlink holds the
// marker. A target that does not decrypt is logged and fails with EIO.
func (n *Node) plainTarget(stored []byte) ([]byte, syscall.Errno) {
	c := n.r.opts.Names
	if c == nil {
		return stored, 0
	}
	if strings.HasPrefix(string(stored), namestore.LongTargetMarker) {
		var sideErr error
		n.atName(func(pfd int, name string) error {
			var side string
			if side, _, sideErr = namestore.TargetSide(name, string(stored)); sideErr == nil {
				stored, sideErr = readSmall(pfd, side, maxTargetSide)
			}
			return sideErr
		})
		if sideErr != nil {
			n.r.log.WithFields(map[string]any{"op": "readlink", "path": n.Path(nil)}).
				Error(fmt.Sprintf("fs: side file of a long symlink target: %v", sideErr))
			return nil, syscall.EIO
		}
	}
	target, err := c.DecryptTarget(string(stored))
	if err != nil {
		n.r.log.WithFields(map[string]any{"op": "readlink", "path": n.Path(nil)}).Error(fmt.Sprintf("fs: symlink target: %v", err))
		return nil, syscall.EIO
	}
	return []byte(target), 0
}
