package fs

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// A write, truncate or fallocate clears a regular file's set-user-ID bit,
// and its set-group-ID bit when the file is group-executable or the
// writer is not in the file's group, unless the writer holds CAP_FSETID
// (the kernel's setattr_should_drop_suidgid). A local filesystem does so
// in the kernel. Over FUSE the kernel does it for writes and truncates
// only in part (it sends a SETATTR of the mode for the set-user-ID bit and
// for a group-executable set-group-ID file, never for the group rule) and
// not at all for fallocate; and the daemon, which writes as root, holds
// CAP_FSETID, so the backing filesystem keeps the bits too. So kmsfs
// applies the rule itself, with the credentials of the process that made
// the request.

// privBits are the mode bits a change of content may clear.
const privBits = unix.S_ISUID | unix.S_ISGID

// capFsetid is CAP_FSETID's bit in a capability set.
const capFsetid = 1 << unix.CAP_FSETID

// dropPrivs clears the bits of the open file's mode that a change of its
// content by the caller of ctx must clear. A file known to have neither
// bit (openFile.privs) costs nothing.
func (n *Node) dropPrivs(ctx context.Context, of *openFile) syscall.Errno {
	if !of.privs.Load() {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(of.back.fd, &st); err != nil {
		return gofs.ToErrno(err)
	}
	old := st.Mode
	if errno := dropPrivsFd(ctx, of.back.fd, &st); errno != 0 {
		return errno
	}
	of.privs.Store(st.Mode&privBits != 0)
	if st.Mode != old {
		// The kernel caches the mode and saw no SETATTR. Attributes only
		// (offset -1): that takes no lock a request in flight holds.
		n.NotifyContent(-1, 0)
	}
	return 0
}

// dropPrivsFd applies the rule to the regular file open at fd, whose stat
// is st; st.Mode is updated.
func dropPrivsFd(ctx context.Context, fd int, st *unix.Stat_t) syscall.Errno {
	if st.Mode&privBits == 0 || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0
	}
	c := callerOf(ctx)
	if c.fsetid {
		return 0
	}
	var kill uint32
	if st.Mode&unix.S_ISUID != 0 {
		kill |= unix.S_ISUID
	}
	if st.Mode&unix.S_ISGID != 0 && (st.Mode&unix.S_IXGRP != 0 || !c.inGroup(st.Gid)) {
		kill |= unix.S_ISGID
	}
	if kill == 0 {
		return 0
	}
	mode := st.Mode &^ kill
	if err := unix.Fchmod(fd, mode&07777); err != nil {
		return gofs.ToErrno(err)
	}
	st.Mode = mode
	return 0
}

// caller is what the rule needs to know of the process behind a request.
type caller struct {
	gid    uint32
	groups []uint32
	fsetid bool // holds CAP_FSETID
}

func (c *caller) inGroup(gid uint32) bool {
	if c.gid == gid {
		return true
	}
	for _, g := range c.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// callerOf returns the credentials of the request's process: its group
// from the request, its supplementary groups and capabilities from
// /proc. When /proc has nothing (the process is gone, or the request came
// from the kernel), only root counts as holding CAP_FSETID. A capability
// counts only in the daemon's user namespace: any user may make a
// namespace of its own and hold every capability inside it.
func callerOf(ctx context.Context) caller {
	fc, ok := fuse.FromContext(ctx)
	if !ok {
		return caller{fsetid: true} // not a FUSE request: the daemon's own
	}
	c := caller{gid: fc.Gid, fsetid: fc.Uid == 0}
	if fc.Pid == 0 {
		return c
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", fc.Pid))
	if err != nil {
		return c
	}
	for line := range bytes.Lines(status) {
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		fields := bytes.Fields(val)
		switch string(key) {
		case "Groups":
			c.groups = c.groups[:0]
			for _, f := range fields {
				if g, err := strconv.ParseUint(string(f), 10, 32); err == nil {
					c.groups = append(c.groups, uint32(g))
				}
			}
		case "CapEff":
			if len(fields) == 1 {
				if caps, err := strconv.ParseUint(string(fields[0]), 16, 64); err == nil {
					c.fsetid = caps&capFsetid != 0 && sameUserNS(fc.Pid)
				}
			}
		}
	}
	return c
}

// sameUserNS reports whether process pid is in the daemon's user
// namespace.
func sameUserNS(pid uint32) bool {
	var mine, theirs unix.Stat_t
	return unix.Stat("/proc/self/ns/user", &mine) == nil &&
		unix.Stat(fmt.Sprintf("/proc/%d/ns/user", pid), &theirs) == nil &&
		mine.Ino == theirs.Ino && mine.Dev == theirs.Dev
}
