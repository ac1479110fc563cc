package integration_test

import (
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpsLocks checks flock, POSIX record locks and OFD locks through a
// mount: conflicts between open file descriptions and between processes,
// F_GETLK/F_OFD_GETLK reports, and release on unlock, close and exit.
func TestOpsLocks(t *testing.T) {
	v := mntOps(t)
	h := suite.User(t, nil)
	p := v.Path("locked")
	mntWriteFile(t, p, mntRandom(50, 5000))

	t.Run("flock", func(t *testing.T) {
		a := mntOpen(t, p, os.O_RDONLY, 0)
		b := mntOpen(t, p, os.O_RDONLY, 0)
		if err := unix.Flock(int(a.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatal(err)
		}
		mntWantErrno(t, "LOCK_EX on another description", unix.Flock(int(b.Fd()), unix.LOCK_EX|unix.LOCK_NB), syscall.EWOULDBLOCK)
		mntWantErrno(t, "LOCK_SH on another description", unix.Flock(int(b.Fd()), unix.LOCK_SH|unix.LOCK_NB), syscall.EWOULDBLOCK)
		if _, errno := h.Hold(t, "flock", p); errno != syscall.EWOULDBLOCK {
			t.Fatalf("another process took the lock: %v, want EWOULDBLOCK", errno)
		}
		if err := unix.Flock(int(a.Fd()), unix.LOCK_UN); err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(b.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
			t.Fatalf("LOCK_SH after unlock: %v", err)
		}
		if err := unix.Flock(int(a.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
			t.Fatalf("two shared locks: %v", err)
		}
		b.Close()
		a.Close()
		// Held by another process: refused here until it exits.
		release, errno := h.Hold(t, "flock", p)
		if errno != 0 {
			t.Fatalf("flock in another process: %v", errno)
		}
		c := mntOpen(t, p, os.O_RDONLY, 0)
		err := unix.Flock(int(c.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		release()
		mntWantErrno(t, "LOCK_EX while another process holds it", err, syscall.EWOULDBLOCK)
		if err := unix.Flock(int(c.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Fatalf("LOCK_EX after the other process exited: %v", err)
		}
	})

	t.Run("posix", func(t *testing.T) {
		release, errno := h.Hold(t, "posixlock", p, "0", "100")
		if errno != 0 {
			t.Fatalf("lock in another process: %v", errno)
		}
		f := mntOpen(t, p, os.O_RDWR, 0)
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: 10, Len: 5}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if lk.Type != unix.F_WRLCK || lk.Start != 0 || lk.Len != 100 || lk.Pid <= 0 {
			release()
			t.Fatalf("F_GETLK: %+v, want the other process's write lock on [0,100)", lk)
		}
		err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_RDLCK, Start: 99, Len: 1})
		errFree := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 100, Len: 50})
		release()
		mntWantErrno(t, "F_SETLK on a range another process locked", err, syscall.EAGAIN)
		if errFree != nil {
			t.Fatalf("F_SETLK next to the locked range: %v", errFree)
		}
		// Our lock on [100,150) now keeps the other process out; its exit freed [0,100).
		if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 10}); err != nil {
			t.Fatalf("F_SETLK after the other process exited: %v", err)
		}
		if _, errno := h.Hold(t, "posixlock", p, "120", "1"); errno != syscall.EAGAIN {
			t.Fatalf("another process locked inside our range: %v, want EAGAIN", errno)
		}
		// An OFD lock conflicts with a POSIX lock, even in one process.
		g := mntOpen(t, p, os.O_RDWR, 0)
		err = unix.FcntlFlock(g.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 5, Len: 1})
		mntWantErrno(t, "OFD lock over this process's POSIX lock", err, syscall.EAGAIN)
	})

	t.Run("ofd", func(t *testing.T) {
		a := mntOpen(t, p, os.O_RDWR, 0)
		b := mntOpen(t, p, os.O_RDWR, 0)
		if err := unix.FcntlFlock(a.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 1000, Len: 100}); err != nil {
			t.Fatal(err)
		}
		err := unix.FcntlFlock(b.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 1050, Len: 10})
		mntWantErrno(t, "OFD lock on another description's range", err, syscall.EAGAIN)
		lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 1050, Len: 10}
		if err := unix.FcntlFlock(b.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		if lk.Type != unix.F_WRLCK || lk.Start != 1000 || lk.Len != 100 || lk.Pid != -1 {
			t.Fatalf("F_OFD_GETLK: %+v, want an OFD write lock on [1000,1100)", lk)
		}
		if err := unix.FcntlFlock(b.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 1100, Len: 10}); err != nil {
			t.Fatalf("OFD lock next to the locked range: %v", err)
		}
		a.Close() // releases a's OFD locks
		if err := unix.FcntlFlock(b.Fd(), unix.F_OFD_SETLK, &unix.Flock_t{Type: unix.F_WRLCK, Start: 1050, Len: 10}); err != nil {
			t.Fatalf("OFD lock after the holder closed: %v", err)
		}
	})
}
