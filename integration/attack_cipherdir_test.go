package integration_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// mntAttackCache is the entry and attribute cache of the mounts below:
// long, so that the kernel keeps the node of the file it looked up while
// the cipher dir changes behind it and sends the operation to that node
// (with a short cache it would look the name up again, see the symlink,
// and follow it itself, as for any symlink).
const mntAttackCache = "1h"

// mntOpenBound bounds an open or read through the mount of a planted
// object: a daemon that opens a FIFO for reading hangs there for ever.
const mntOpenBound = 10 * time.Second

// mntNamesArgs returns the `kmsfs init` flags of a volume that stores
// names encrypted (the default) or in the clear (--plaintext-names, as
// older volumes keep doing): attacks on the cipher dir must fail in both
// (sxNameModes, subtests names=encrypted and names=plain).
func mntNamesArgs(encrypted bool) []string {
	if encrypted {
		return nil
	}
	return []string{"--plaintext-names"}
}

// mntPlant replaces the cipher file at p with what mk creates there:
// "rename" makes it under another name and renames it over the file (a
// new inode number), "recreate" removes the file first (the filesystem
// may give the new object the file's inode number).
func mntPlant(t testing.TB, p, how string, mk func(string) error) {
	t.Helper()
	switch how {
	case "rename":
		tmp := p + ".planted"
		if err := mk(tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, p); err != nil {
			t.Fatal(err)
		}
	case "recreate":
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := mk(p); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unknown way to plant: %s", how)
	}
}

// mntKnownFile writes a file through the mount, waits until the daemon
// has closed it, and stats it through the mount, so that the kernel
// holds its node. It returns the file's cipher file: with encrypted names
// the storage attacker cannot make a valid name of its own, so the attack
// goes at the backing entry of a name that exists.
func mntKnownFile(t testing.TB, v *fusetest.CLIVolume, name string, data []byte) string {
	t.Helper()
	mntWriteFile(t, v.Path(name), data)
	v.WaitReleased(t, name)
	if st := mntLstat(t, v.Path(name)); st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Fatalf("%s: mode %o, want a regular file", name, st.Mode)
	}
	return mntCipherOf(t, v, name)
}

// mntCipherOf returns the cipher file behind name of v's mount.
func mntCipherOf(t testing.TB, v *fusetest.CLIVolume, name string) string {
	t.Helper()
	cp, err := v.MountedCipherPath(name)
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// mntOpenToAll opens the mount's root (the cipher dir's, made 0700) to
// every user, so that other users reach the files in it.
func mntOpenToAll(t testing.TB, v *fusetest.CLIVolume) {
	t.Helper()
	if err := unix.Chmod(v.Mnt, 0o755); err != nil {
		t.Fatal(err)
	}
}

// victimState is what an operation could change of a file outside the
// cipher dir.
type victimState struct {
	st    unix.Stat_t
	data  []byte
	attrs []byte
}

// mntVictimState returns the state of the file at p, read without moving
// its access time.
func mntVictimState(t testing.TB, p string) victimState {
	t.Helper()
	var s victimState
	if err := unix.Lstat(p, &s.st); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	if s.data, err = io.ReadAll(f); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	s.attrs = buf[:n]
	return s
}

// TestAttackPlantedSymlink is the attack of whoever controls the cipher
// dir on the files of the mounting host: a symlink to a host file planted
// where a file of the mount was, after the kernel looked the file up, and
// then a user of the mount changes the file. No operation of the daemon
// may follow the symlink: the host file's mode, owner, times, size,
// content and attributes stay as they were.
//
// The user is nobody, on its own file of an --allow-other mount, and the
// host file sits in a directory only root may enter: once the daemon
// answers that the file is gone (ESTALE), the kernel looks the path up
// again and, for calls that follow symlinks, follows the new one itself,
// as the user, who may not reach the host file. A change of the host
// file can then only come from the daemon, which runs as root.
//
// With encrypted names the symlink replaces the file's backing entry
// under its stored name; with plaintext names that name is the file's.
func TestAttackPlantedSymlink(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) { mntAttackPlantedSymlink(t, nm.encrypted) })
	}
}

func mntAttackPlantedSymlink(t *testing.T, encNames bool) {
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, InitArgs: mntNamesArgs(encNames),
		MountArgs: []string{"--allow-other", "--xattr", "--cache-timeout", mntAttackCache}})
	nobody := suite.User(t, fusetest.NobodyCred())
	mntOpenToAll(t, v)
	victims := t.TempDir() // outside the cipher dir, closed to nobody
	old := time.Unix(1_000_000_000, 0)
	ops := []struct {
		name string
		do   func(t *testing.T, p string)
	}{
		{"chmod", func(t *testing.T, p string) { nobody.Do(t, "chmod", p, "4777") }},
		{"chown", func(t *testing.T, p string) {
			nobody.Do(t, "chown", p, fmt.Sprint(fusetest.Nobody), fmt.Sprint(fusetest.Nobody))
		}},
		{"utimes", func(t *testing.T, p string) { nobody.Do(t, "utimes", p, "1000000000") }},
		{"truncate", func(t *testing.T, p string) { nobody.Do(t, "truncate", p, "1") }},
		{"truncate-0", func(t *testing.T, p string) { nobody.Do(t, "truncate", p, "0") }},
		{"open-write", func(t *testing.T, p string) { nobody.Do(t, "write", p, "attacker") }},
		{"open-append", func(t *testing.T, p string) { nobody.Do(t, "append", p, "attacker") }},
		{"open-read", func(t *testing.T, p string) { nobody.Do(t, "read", p) }},
		{"setxattr", func(t *testing.T, p string) { unix.Lsetxattr(p, "trusted.attack", []byte("x"), 0) }},
	}
	for _, how := range []string{"rename", "recreate"} {
		for _, op := range ops {
			t.Run(fmt.Sprintf("plant=%s,op=%s", how, op.name), func(t *testing.T) {
				name := fmt.Sprintf("%s-%s", how, op.name)
				victim := filepath.Join(victims, "kmsfs-test-victim-"+name)
				if err := os.WriteFile(victim, []byte("the host's file"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Chtimes(victim, old, old); err != nil {
					t.Fatal(err)
				}
				before := mntVictimState(t, victim)
				cp := mntKnownFile(t, v, name, []byte("the mount's file"))
				if err := os.Chown(v.Path(name), fusetest.Nobody, fusetest.Nobody); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(v.Path(name), 0o666); err != nil {
					t.Fatal(err)
				}
				mntPlant(t, cp, how, func(p string) error { return os.Symlink(victim, p) })

				op.do(t, v.Path(name))

				after := mntVictimState(t, victim)
				b, a := before.st, after.st
				if a.Mode != b.Mode || a.Uid != b.Uid || a.Gid != b.Gid || a.Size != b.Size || a.Mtim != b.Mtim || a.Atim != b.Atim || a.Ctim != b.Ctim {
					t.Errorf("the host file changed: mode %o owner %d:%d size %d mtime %v atime %v ctime %v, was %o %d:%d %d %v %v %v",
						a.Mode, a.Uid, a.Gid, a.Size, a.Mtim, a.Atim, a.Ctim, b.Mode, b.Uid, b.Gid, b.Size, b.Mtim, b.Atim, b.Ctim)
				}
				if !bytes.Equal(after.data, before.data) {
					t.Errorf("the host file's content changed: %q, was %q", after.data, before.data)
				}
				if !bytes.Equal(after.attrs, before.attrs) {
					t.Errorf("the host file's attributes changed: %q, were %q", after.attrs, before.attrs)
				}
			})
		}
	}
}

// TestAttackPlantedSpecial is the attack of whoever controls the cipher
// dir on the mount daemon: a FIFO, a socket or a device node planted
// where a file of the mount was, after the kernel looked it up. The
// daemon must neither hang on it (a FIFO opened for reading waits for a
// writer) nor read from it, on a read-write and a read-only mount: an
// open through the mount fails, or opens what the cipher dir now holds
// (a FIFO, which the kernel serves itself), never as the file.
//
// With encrypted names the object replaces the file's backing entry under
// its stored name; with plaintext names that name is the file's.
func TestAttackPlantedSpecial(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) { mntAttackPlantedSpecial(t, nm.encrypted) })
	}
}

func mntAttackPlantedSpecial(t *testing.T, encNames bool) {
	var zero unix.Stat_t
	if err := unix.Stat("/dev/zero", &zero); err != nil {
		t.Fatal(err)
	}
	kinds := []struct {
		name string
		make func(p string) error
	}{
		{"fifo", func(p string) error { return unix.Mkfifo(p, 0o666) }},
		{"socket", func(p string) error {
			// A socket's path must fit in sockaddr_un (108 bytes), which an
			// encrypted name below a test's temp dir need not: bind it in
			// a short dir of the same filesystem and move it into place.
			short, err := os.MkdirTemp("", "kmsfs-sock-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(short)
			fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(short, "s")}); err != nil {
				return err
			}
			return os.Rename(filepath.Join(short, "s"), p)
		}},
		{"chardev", func(p string) error { return unix.Mknod(p, unix.S_IFCHR|0o666, int(zero.Rdev)) }},
	}
	hows := []string{"rename", "recreate"}
	v := suite.StartVolume(t, fusetest.CLIOptions{InitArgs: mntNamesArgs(encNames), MountArgs: []string{"--cache-timeout", mntAttackCache}})
	roCipher := map[string]string{} // name -> its cipher file, found while read-write
	for _, ro := range []bool{false, true} {
		if ro {
			// The files are made on the read-write mount first.
			for _, k := range kinds {
				for _, how := range hows {
					name := fmt.Sprintf("ro-%s-%s", how, k.name)
					mntWriteFile(t, v.Path(name), []byte("the mount's file"))
					roCipher[name] = mntCipherOf(t, v, name)
				}
			}
			mark := v.LogMark()
			v.Remount(t, "--ro")
			// The mount's key check reads every file's header in the
			// background: had it one of these files open when it is
			// replaced, the daemon would hold the removed file.
			fusetest.Eventually(t, "the key check after mounting", fusetest.CmdTimeout, func() bool {
				return v.LogHas(mark, func(l fusetest.LogLine) bool { return strings.HasPrefix(l.F["msg"], "key check") })
			})
		}
		for _, k := range kinds {
			for _, how := range hows {
				t.Run(fmt.Sprintf("ro=%v,plant=%s,kind=%s", ro, how, k.name), func(t *testing.T) {
					name := fmt.Sprintf("rw-%s-%s", how, k.name)
					var cp string
					if ro {
						name = fmt.Sprintf("ro-%s-%s", how, k.name)
						mntLstat(t, v.Path(name))
						cp = roCipher[name]
					} else {
						cp = mntKnownFile(t, v, name, []byte("the mount's file"))
					}
					mntPlant(t, cp, how, k.make)
					mntOpenPlanted(t, v.Path(name))
					held, err := fusetest.Holds(v.PID(), cp)
					if err != nil {
						t.Fatalf("daemon descriptors: %v", err)
					}
					if len(held) != 0 {
						t.Errorf("the daemon holds the planted %s open: descriptors %v", k.name, held)
					}
				})
			}
		}
	}
}

// mntOpenPlanted opens p through the mount without blocking and reads
// it, bounded by mntOpenBound, and fails the test if that hangs, reads
// anything, or opens a regular file of the mount.
func mntOpenPlanted(t *testing.T, p string) {
	t.Helper()
	type result struct {
		openErr error
		mode    uint32
		n       int
		readErr error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if r.openErr = err; err != nil {
			done <- r
			return
		}
		defer unix.Close(fd)
		var st unix.Stat_t
		unix.Fstat(fd, &st)
		r.mode = st.Mode
		buf := make([]byte, 4096)
		r.n, r.readErr = unix.Read(fd, buf)
		done <- r
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(mntOpenBound):
		// The cleanup aborts the mount, which frees the stuck open.
		t.Fatalf("open and read of %s through the mount did not finish within %v", p, mntOpenBound)
	}
	t.Logf("open: %v, mode %o, read %d bytes: %v", r.openErr, r.mode, r.n, r.readErr)
	if r.openErr != nil {
		return
	}
	if r.mode&unix.S_IFMT == unix.S_IFREG {
		t.Errorf("the mount opened the planted object as a regular file")
	}
	if r.n > 0 {
		t.Errorf("read %d bytes through the mount from the planted object", r.n)
	}
}
