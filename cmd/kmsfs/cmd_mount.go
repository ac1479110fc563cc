package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/volume"
)

type mountFlags struct {
	foreground     bool
	readOnly       bool
	xattr          bool
	allowOther     bool
	options        []string
	logLevel       string
	logFormat      string
	logFile        string
	passphraseFile string
	publicKeyFile  string
	trustDir       string
	timeout        time.Duration
	keyTimeout     time.Duration
	cacheTimeout   time.Duration
	keyCheck       time.Duration
	metricsListen  string
	readyFD        int // internal: the background child reports readiness here
	secretsFD      int // internal: secrets from the environment or a prompt, handed over here
}

func newMountCmd() *cobra.Command {
	f := &mountFlags{}
	c := &cobra.Command{
		Use:   "mount [-f] [--ro] [--allow-other] [-o OPTS] CIPHERDIR MOUNTPOINT",
		Short: "Mount a cipher dir",
		Long: `mount makes the plaintext of CIPHERDIR appear at MOUNTPOINT. Like mount(8) it
returns once the mount is ready, or fails with the reason (key unusable, cipher
dir missing, mount point busy); the filesystem keeps running in the background
until 'kmsfs unmount MOUNTPOINT'. With -f it stays in the foreground and logs to
stderr (for systemd: the journal reads stderr), and tells a service manager
that set $NOTIFY_SOCKET when the mount is ready and when it stops (systemd's
Type=notify).

SIGTERM or SIGINT unmounts and exits 0; if files are still open it unmounts
lazily: the mount point is free at once, and the open files are served until
they are closed. SIGHUP reopens --log-file (after logrotate moved it) and
changes nothing else: options, keys and trust stay as mounted.

As root kmsfs mounts directly; an ordinary user mounts through fusermount3.
--allow-other implies -o default_permissions: kmsfs checks no permissions
itself, the kernel does. Mounts are nosuid,nodev unless -o suid or -o dev.
-o passes FUSE mount options, e.g. -o noexec.

In /etc/fstab (type fuse.kmsfs) every flag is a mount option as well, e.g.
  /srv/cipher /mnt/plain fuse.kmsfs defaults,_netdev,allow_other,key-timeout=10s 0 0
mount(8) runs 'kmsfs CIPHERDIR MOUNTPOINT -o OPTS' through mount.fuse3.
Secrets come from files there (passphrase-file=/etc/kmsfs/pass), and such
mounts are nosuid,nodev.`,
		Example: `  kmsfs mount /srv/cipher /mnt/plain
  kmsfs mount -f --log-format json /srv/cipher /mnt/plain
  kmsfs mount --allow-other /srv/cipher /mnt/plain`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.trustDir = trustDirOf(cmd)
			if !f.foreground {
				return mountInBackground(f, args)
			}
			// A background child (--ready-fd) got its environment from
			// mountInBackground with the secrets taken out already.
			if f.secretsFD < 0 && f.readyFD < 0 {
				if err := reexecWithoutSecrets(args[0], f.trustDir); err != nil {
					return err
				}
			}
			return runMount(cmd.Context(), f, args[0], args[1])
		},
	}
	fl := c.Flags()
	fl.BoolVarP(&f.foreground, "foreground", "f", false, "stay in the foreground")
	fl.BoolVar(&f.readOnly, "ro", false, "mount read-only")
	fl.BoolVar(&f.xattr, "xattr", false, "support extended attributes, stored UNENCRYPTED in the cipher dir (off: they fail with EOPNOTSUPP)")
	fl.BoolVar(&f.allowOther, "allow-other", false, "let other users access the mount, with the kernel's permission checks (implies -o default_permissions; new files belong to their creator)")
	fl.StringSliceVarP(&f.options, "options", "o", nil, "FUSE mount options, comma-separated")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.StringVar(&f.logFile, "log-file", "", "log to this file, reopened on SIGHUP (background mounts log nowhere without it)")
	fl.StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	fl.StringVar(&f.publicKeyFile, "public-key-file", "", "awskms RSA key: wrap with this public key (DER) only; files written cannot be read here")
	fl.DurationVar(&f.timeout, "timeout", 60*time.Second, "bound on mounting, key checks included")
	fl.DurationVar(&f.keyTimeout, "key-timeout", kfs.DefaultKeyTimeout, "bound on one key call made while opening or creating a file")
	fl.DurationVar(&f.cacheTimeout, "cache-timeout", kfs.DefaultCacheTimeout, "how long the kernel may cache names, attributes and absent names (the cipher dir must not change behind the mount)")
	fl.DurationVar(&f.keyCheck, "key-check-interval", 24*time.Hour, "after mounting and then at this interval, warn in the log of files that depend only on a disabled, pending-deletion or missing key (0: after mounting only)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "", "serve Prometheus metrics on http://ADDR/metrics (host:port, e.g. 127.0.0.1:9464; off by default)")
	fl.IntVar(&f.readyFD, "ready-fd", -1, "")
	fl.IntVar(&f.secretsFD, "secrets-fd", -1, "")
	fl.MarkHidden("ready-fd")
	fl.MarkHidden("secrets-fd")
	return c
}

// mountInBackground starts this program again with -f as a session
// leader and waits until it reports the mount ready, or its error. Secrets
// of the environment (and a prompted passphrase) reach the child through a
// pipe, never its environment or command line.
func mountInBackground(f *mountFlags, args []string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	childArgs := append([]string{}, os.Args[1:]...)
	childArgs = append(childArgs, "--foreground", "--ready-fd=3")
	extra := []*os.File{pw}
	a := trustedOrNil(args[0], f.trustDir)
	secrets, env := takeSecrets(os.Environ(), secretEnvNames(a))
	defer clearSecrets(secrets)
	if needsPrompt(a, f) {
		pp, err := promptPassphrase(false)
		if err != nil {
			return err
		}
		secrets[local.PassphraseEnv] = pp
	}
	if len(secrets) > 0 {
		sr, err := secretsPipe(secrets)
		if err != nil {
			return err
		}
		defer sr.Close()
		extra = append(extra, sr)
		childArgs = append(childArgs, "--secrets-fd=4")
	}
	cmd := exec.Command(self, childArgs...)
	cmd.Env = env
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	pw.Close()
	msg, _ := io.ReadAll(bufio.NewReader(pr))
	pr.Close()
	if s := strings.TrimSpace(string(msg)); s != "ready" {
		cmd.Wait()
		if s == "" {
			s = "the mount process exited without saying why"
		}
		return errors.New(s)
	}
	cmd.Process.Release()
	return nil
}

// needsPrompt reports whether mounting the volume anchor a approved needs
// a passphrase from the terminal.
func needsPrompt(a *volconf.Anchor, f *mountFlags) bool {
	if a == nil || f.passphraseFile != "" || os.Getenv(local.PassphraseEnv) != "" {
		return false
	}
	for _, k := range a.Conf.Keys {
		if k.Spec == "local:passphrase" {
			return true
		}
	}
	return false
}

// newLogger returns the mount's logger and, with --log-file, the file it
// writes to (for SIGHUP to reopen).
func newLogger(f *mountFlags) (*logrus.Entry, *logFile, error) {
	l := logrus.New()
	lvl, err := logrus.ParseLevel(f.logLevel)
	if err != nil {
		return nil, nil, err
	}
	l.SetLevel(lvl)
	switch f.logFormat {
	case "json":
		l.SetFormatter(&logrus.JSONFormatter{})
	case "text":
		l.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	default:
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", f.logFormat)
	}
	l.Out = os.Stderr
	var lf *logFile
	if f.logFile != "" {
		if lf, err = openLogFile(f.logFile); err != nil {
			return nil, nil, err
		}
		l.Out = lf
	} else if f.readyFD >= 0 {
		l.Out = io.Discard
	}
	return logrus.NewEntry(l), lf, nil
}

// runMount mounts in the foreground and serves until unmounted or signalled.
func runMount(ctx context.Context, f *mountFlags, cipherDir, mnt string) (err error) {
	var ready *os.File
	if f.readyFD >= 0 {
		ready = os.NewFile(uintptr(f.readyFD), "ready")
		defer func() {
			if err != nil {
				fmt.Fprintln(ready, err) // the parent adds the "kmsfs:" prefix
			}
			ready.Close()
		}()
		devnull, _ := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		unix.Dup2(int(devnull.Fd()), 0)
		unix.Dup2(int(devnull.Fd()), 1)
		unix.Dup2(int(devnull.Fd()), 2)
	}
	log, lf, err := newLogger(f)
	if err != nil {
		return err
	}
	if err := checkGCM(log); err != nil {
		return err
	}
	sig := make(chan os.Signal, 4)
	notifySignals(sig)
	defer signal.Stop(sig)
	raiseFileLimit()

	if err := checkMountpoint(mnt); err != nil {
		return err
	}
	mm, err := startMetrics(log, f.metricsListen)
	if err != nil {
		return fmt.Errorf("--metrics-listen: %w", err)
	}
	defer mm.Close()
	mem := secmem.New(secmem.Options{OnLockError: func(err error) {
		log.WithError(err).Warn("keys are held in memory that may be swapped out")
	}})
	sec, clearSec, err := mountSecrets(f)
	if err != nil {
		return err
	}
	mctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	v, err := volume.Open(mctx, cipherDir, volume.Options{TrustDir: f.trustDir, ReadOnly: f.readOnly, CheckKeys: true,
		PublicKeyFile: f.publicKeyFile, Secrets: sec, Mem: mem, ParallelMin: mountParallelMin(), KeyObserver: mm.keyObserver()})
	clearSec()
	if errors.Is(err, volume.ErrBusy) {
		return fmt.Errorf("cipher dir %s is already mounted read-write by another kmsfs process", cipherDir)
	}
	if err != nil {
		return err
	}
	defer v.Close()
	nameCodec, rootDir, err := v.NameCodec()
	if err != nil {
		return err
	}
	logOpened(log, v)
	mm.opened(v)
	var extra []string
	for _, o := range f.options {
		extra = append(extra, strings.Split(o, ",")...)
	}
	if f.readOnly {
		extra = append(extra, "ro")
	}
	abs, _ := filepath.Abs(cipherDir)
	mo := kfs.MountOptions(abs, extra, f.allowOther)
	mo.EntryTimeout, mo.AttrTimeout, mo.NegativeTimeout = &f.cacheTimeout, &f.cacheTimeout, &f.cacheTimeout
	srv, err := kfs.Mount(mnt, kfs.Options{CipherDir: cipherDir, Volume: v.Format, Keys: v.Keys, Log: log,
		ReadOnly: f.readOnly, KeyTimeout: f.keyTimeout, Xattr: f.xattr, Admin: v, Names: nameCodec, RootDirID: rootDir, Observer: mm.fsObserver()}, mo)
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"cipherdir": abs, "mountpoint": mnt, "volume": v.Conf().VolumeID}).Info("mounted")
	if ready != nil {
		fmt.Fprintln(ready, "ready")
		ready.Close()
		ready = nil
	}
	d := &daemon{log: log, srv: srv, mnt: absPath(mnt), logFile: lf, notifier: newNotifier(log, f)}
	d.notifyReady(abs)
	defer startKeyCheck(log, v, f.keyCheck)()
	defer startProfile(log)()
	d.serve(sig)
	log.Info("unmounted")
	return nil
}

// keyCheckTimeout bounds one scan of the cipher dir by the key check: a
// huge or stalled cipher dir must not keep a scan running forever.
const keyCheckTimeout = 10 * time.Minute

// startKeyCheck logs, in the background so that mounting does not wait
// for a scan of the whole cipher dir, the files that depend only on a key
// that is not usable: once now and then every interval (0: once). A key
// disabled or scheduled for deletion takes its files with it; the log is
// where a mount's operator sees it first. The returned stop ends the
// check and waits for it, before the volume's key sources close.
func startKeyCheck(log *logrus.Entry, v *volume.Volume, every time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var tick <-chan time.Time
		if every > 0 {
			t := time.NewTicker(every)
			defer t.Stop()
			tick = t.C
		}
		for {
			checkKeys(ctx, log, v)
			select {
			case <-ctx.Done():
				return
			case <-tick:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// checkKeys scans the volume once and logs what volume.Status warns of.
func checkKeys(ctx context.Context, log *logrus.Entry, v *volume.Volume) {
	sctx, cancel := context.WithTimeout(ctx, keyCheckTimeout)
	defer cancel()
	r, err := v.Status(sctx)
	if ctx.Err() != nil {
		return // unmounting
	}
	if err != nil {
		log.WithError(err).Warn("key check: could not scan the cipher dir")
		return
	}
	ws := r.Warnings()
	for _, w := range ws {
		log.WithFields(w.Fields).Warn(w.Msg)
	}
	if len(ws) == 0 {
		log.WithFields(logrus.Fields{"files": r.Files, "keys": len(r.Keys)}).Info("key check: every file opens under a usable key")
	}
}

// logOpened logs what opening the volume noticed: warnings, entries the
// journal dropped, and the recovery of interrupted writes.
func logOpened(log *logrus.Entry, v *volume.Volume) {
	for _, w := range v.Warnings {
		log.WithFields(w.Fields).Warn(w.Msg)
	}
	for _, derr := range v.Recovery.Dropped {
		log.WithField("error", derr.Error()).Warn("journal: removed an entry the journal did not write; nothing was read from it")
	}
	if r := v.Recovery; r.Pending > 0 {
		fields := logrus.Fields{"records": r.Pending, "recovered": r.Recovered}
		if r.Err != nil {
			fields["error"] = r.Err.Error()
		}
		log.WithFields(fields).Info("journal: finished or undid the writes a crash interrupted; any left are recovered when their files are next opened")
	}
}

// checkMountpoint refuses a mount point that is missing, not a directory,
// or already a mount point.
func checkMountpoint(mnt string) error {
	var st, pst unix.Stat_t
	if err := unix.Stat(mnt, &st); err != nil {
		return fmt.Errorf("mount point %s: %w", mnt, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("mount point %s is not a directory", mnt)
	}
	if err := unix.Stat(filepath.Join(mnt, ".."), &pst); err == nil && (pst.Dev != st.Dev || pst.Ino == st.Ino) {
		return fmt.Errorf("mount point %s is busy: something is mounted there already", mnt)
	}
	return nil
}

// raiseFileLimit lifts the soft limit on open files to the hard limit: the
// mount holds a descriptor per known directory and per open file.
func raiseFileLimit() {
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
}

func newUnmountCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "unmount MOUNTPOINT",
		Aliases: []string{"umount"},
		Short:   "Unmount a kmsfs mount",
		Example: "  kmsfs unmount /mnt/plain",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mnt := args[0]
			if os.Geteuid() == 0 {
				if err := unix.Unmount(mnt, 0); err != nil {
					return fmt.Errorf("unmount %s: %w", mnt, err)
				}
				return nil
			}
			out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput()
			if err != nil {
				return fmt.Errorf("fusermount3 -u %s: %v: %s", mnt, err, strings.TrimSpace(string(out)))
			}
			return nil
		},
	}
}

// mountParallelMin is the Volume's ParallelMin for a mount. On two cores
// with the wide GCM (envelope.WideGCM) a 1 MiB request is sealed or opened
// alone: one core runs the application and the other the request, so a
// helper taking part of it starts late and only adds CPU (through the
// mount: the same throughput with helpers, more daemon CPU; the figures
// are in docs/PERFORMANCE.md). With crypto/cipher's slower GCM the helpers
// still pay for writes, and more cores leave them room.
func mountParallelMin() int {
	if envelope.WideGCM() && runtime.GOMAXPROCS(0) <= 2 {
		return -1
	}
	return 0
}
