package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/sdnotify"
)

// notifySignals relays to c the signals a mount handles: SIGINT and
// SIGTERM unmount (systemd stops a service with SIGTERM), SIGHUP reopens
// --log-file (logrotate's postrotate convention) and otherwise does
// nothing, so that a hangup of the terminal of `kmsfs mount -f` leaves the
// mount alone. They are caught from the start: a stop that arrives while
// the mount is being set up must unmount once it is up, not leave a dead
// mount behind. The caller stops the relay with signal.Stop.
func notifySignals(c chan<- os.Signal) {
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
}

// newNotifier returns the notifier of the service manager that started a
// `kmsfs mount -f`, or nil. The child of a background mount (readyFD set)
// never notifies: the manager knows only its parent, which exits once the
// mount is up (a Type=forking unit); a Type=notify unit runs -f.
func newNotifier(log *logrus.Entry, f *mountFlags) *sdnotify.Notifier {
	if f.readyFD >= 0 {
		return nil
	}
	n, err := sdnotify.New(os.Getenv(sdnotify.SocketEnv))
	if err != nil {
		log.WithError(err).Warn("not notifying the service manager")
		return nil
	}
	return n
}

// daemon is a mount being served: what a signal acts on.
type daemon struct {
	log      *logrus.Entry
	srv      *kfs.Server
	mnt      string
	logFile  *logFile // nil without --log-file
	notifier *sdnotify.Notifier

	stopOnce sync.Once
	detached bool // unmounted lazily; only the signal goroutine uses it
}

// serve runs the mount until it is unmounted, by `kmsfs unmount` or
// umount(8) or by a stop signal on sig, and returns once the filesystem
// has let go of the cipher dir.
//
// A stop signal unmounts the way `kmsfs unmount` does. If files are still
// open (the mount is busy), it unmounts lazily: the mount point is free at
// once and takes no new opens, while the files open on it are served
// until closed; then the kernel ends the connection and serve returns.
// Refusing, as `kmsfs unmount` does, would leave the service manager to
// kill the process after its stop timeout and the mount point dead
// (ENOTCONN) for the next start. What a writer had fsynced is on disk
// either way; a kill only fails the writes still to come.
func (d *daemon) serve(sig <-chan os.Signal) {
	done := make(chan struct{})
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		for {
			select {
			case <-done:
				return
			case s := <-sig:
				d.handle(s)
			}
		}
	}()
	d.srv.Wait()
	close(done)
	<-handled
	d.notifyStopping()
}

func (d *daemon) handle(s os.Signal) {
	if s == syscall.SIGHUP {
		d.reopenLog()
		return
	}
	log := d.log.WithField("signal", s.String())
	d.notifyStopping()
	if d.detached {
		log.Warn("still serving the files open on the lazily unmounted filesystem; kmsfs exits once they are closed")
		return
	}
	log.Info("unmounting")
	err := d.srv.Unmount()
	if err == nil {
		return
	}
	log.WithError(err).Warn("unmount failed (busy?): unmounting lazily")
	switch err := d.detach(); {
	case errors.Is(err, unix.EINVAL):
		// umount -l came first (a .mount unit with LazyUnmount=yes):
		// the mount point is free, the open files are still served.
	case err != nil:
		log.WithError(err).Error("lazy unmount failed: unmount with kmsfs unmount once files are closed")
		return
	}
	d.detached = true
	log.Warn("unmounted lazily: the mount point is free; files still open are served until closed, then kmsfs exits")
}

// detach unmounts lazily (umount -l): directly as root, else through
// fusermount3 like go-fuse's own unmount.
func (d *daemon) detach() error {
	if os.Geteuid() == 0 {
		return unix.Unmount(d.mnt, unix.MNT_DETACH)
	}
	out, err := exec.Command("fusermount3", "-u", "-z", d.mnt).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -u -z %s: %w: %s", d.mnt, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// notifyStopping tells the service manager, once, that the mount is going
// away.
func (d *daemon) notifyStopping() {
	d.stopOnce.Do(func() {
		if err := d.notifier.Send(sdnotify.Stopping, sdnotify.Status("unmounting "+d.mnt)); err != nil {
			d.log.WithError(err).Warn("could not tell the service manager that the mount is stopping")
		}
	})
}

// notifyReady tells the service manager that the mount serves.
func (d *daemon) notifyReady(cipherDir string) {
	if err := d.notifier.Send(sdnotify.Ready, sdnotify.Status("serving "+cipherDir+" at "+d.mnt)); err != nil {
		d.log.WithError(err).Warn("could not tell the service manager that the mount is ready")
	}
}

// absPath returns path made absolute (for the service manager's status
// line and fusermount3), or path itself if the working directory is gone.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// reopenLog reopens --log-file on SIGHUP: the last line in the old file
// says so, and the first in the new one.
func (d *daemon) reopenLog() {
	if d.logFile == nil {
		d.log.Info("SIGHUP: no --log-file to reopen")
		return
	}
	d.log.WithField("path", d.logFile.path).Info("SIGHUP: reopening the log file")
	if err := d.logFile.Reopen(); err != nil {
		d.log.WithError(err).Error("SIGHUP: cannot reopen the log file; still writing to the old one")
		return
	}
	d.log.WithField("path", d.logFile.path).Info("log file reopened")
}
