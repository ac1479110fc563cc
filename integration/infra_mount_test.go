package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/mountinfo"
)

// mount(8) runs fuse.kmsfs lines through /sbin/mount.fuse.kmsfs (or
// mount.fuse) and mount.fuse3, which finds kmsfs by the shell's default
// PATH: mount(8) clears the caller's. So these tests install kmsfs where
// mount(8) looks, /sbin and /usr/local/bin, but only inside a private
// mount namespace of their own (an overlay of a staged tree on those
// directories), and run mount and umount there; the test reaches the
// namespace's mounts through /proc/PID/root of the process that holds it.

// infraNS is a private mount namespace with a staged install laid over
// /usr/local and /sbin, held open by a process of the test's.
type infraNS struct {
	pid   int
	stdin io.Closer
	done  chan struct{}
	// inherited are the IDs of the mounts the namespace started with,
	// copies of the host's (other tests' among them): never the test's.
	inherited map[string]bool
}

// newInfraNS starts a namespace in which tree (holding usr/local/bin/kmsfs
// and sbin/mount.fuse.kmsfs, as make install lays them out) shows over
// the host's directories; the cleanup unmounts what is left mounted there,
// bounded, and ends it.
func newInfraNS(t *testing.T, tree string) *infraNS {
	t.Helper()
	fusetest.NeedFUSE(t)
	sbin, err := filepath.EvalSymlinks("/sbin")
	if err != nil {
		t.Fatal(err)
	}
	const script = `set -e
mount -t overlay kmsfs-test -o "lowerdir=$1/usr/local:/usr/local" /usr/local
mount -t overlay kmsfs-test -o "lowerdir=$1/sbin:$2" "$2"
echo ready
exec cat`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", tree, sbin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare: %v", err)
	}
	ns := &infraNS{pid: cmd.Process.Pid, stdin: stdin, done: make(chan struct{})}
	go func() { cmd.Wait(); close(ns.done) }()
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- line
	}()
	select {
	case line := <-ready:
		if line != "ready\n" {
			<-ns.done
			t.Fatalf("mount namespace with %s over /usr/local and %s: %s", tree, sbin, stderr.String())
		}
	case <-time.After(fusetest.CmdTimeout):
		cmd.Process.Kill()
		t.Fatalf("mount namespace not set up within %v: %s", fusetest.CmdTimeout, stderr.String())
	}
	ns.inherited = map[string]bool{}
	for _, m := range ns.mounts(t) {
		ns.inherited[m.Fields[0]] = true
	}
	t.Cleanup(func() { ns.close(t) })
	return ns
}

// close detaches every mount the test left in the namespace, kills its
// daemon, and ends the namespace's process: closing its input ends cat.
func (ns *infraNS) close(t *testing.T) {
	for _, m := range ns.mounts(t) {
		if !ns.inherited[m.Fields[0]] && m.FSType == "fuse.kmsfs" {
			t.Errorf("cleanup: %s still mounted", m.Point)
			pid := fusetest.DaemonPID(m.Point)
			ns.run(nil, "umount", "-l", m.Point)
			if pid != 0 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	ns.stdin.Close()
	select {
	case <-ns.done:
	case <-time.After(fusetest.ExitTimeout):
		syscall.Kill(ns.pid, syscall.SIGKILL)
		<-ns.done
	}
}

// run runs a command in the namespace with env added to the test's
// environment, bounded by fusetest.CmdTimeout, and returns its combined
// output.
func (ns *infraNS) run(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--target", fmt.Sprint(ns.pid), "--mount", "--"}, args...)...)
	cmd.Env = append(infraEnv(), env...)
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%s did not finish within %v)", err, args[0], fusetest.CmdTimeout)
	}
	return string(out), err
}

// path returns the name of the namespace's path p for the test.
func (ns *infraNS) path(p string) string { return fmt.Sprintf("/proc/%d/root%s", ns.pid, p) }

// mounts returns the namespace's mounts.
func (ns *infraNS) mounts(t *testing.T) []mountinfo.Mount {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", ns.pid))
	if err != nil {
		t.Fatal(err)
	}
	return mountinfo.Parse(string(raw))
}

// mount returns the namespace's mount at mnt and whether there is one.
func (ns *infraNS) mount(t *testing.T, mnt string) (mountinfo.Mount, bool) {
	t.Helper()
	for _, m := range ns.mounts(t) {
		if m.Point == mnt {
			return m, true
		}
	}
	return mountinfo.Mount{}, false
}

// options returns the mount's per-mount and superblock options.
func infraOptions(m mountinfo.Mount) (perMount, super []string) {
	perMount = strings.Split(m.Fields[5], ",")
	super = strings.Split(m.Fields[len(m.Fields)-1], ",")
	return perMount, super
}

// umount runs umount(8) on mnt in the namespace and checks that the mount
// is gone and its daemon exited, bounded, after logging its unmount.
func (ns *infraNS) umount(t *testing.T, mnt, log string) {
	t.Helper()
	pid := fusetest.DaemonPID(mnt)
	if pid == 0 {
		t.Fatalf("no kmsfs daemon serves %s", mnt)
	}
	if out, err := ns.run(nil, "umount", mnt); err != nil {
		t.Fatalf("umount %s: %v\n%s", mnt, err, out)
	}
	if _, ok := ns.mount(t, mnt); ok {
		t.Fatalf("%s still mounted after umount", mnt)
	}
	fusetest.Eventually(t, fmt.Sprintf("kmsfs (pid %d) exits after umount", pid), fusetest.ExitTimeout, func() bool { return fusetest.Exited(pid) })
	if log == "" {
		return
	}
	raw, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(raw), "msg=unmounted") {
		t.Errorf("%s does not log the unmount:\n%s", log, raw)
	}
}

// infraEnv is the test's environment less what would steer a nested make.
func infraEnv() []string {
	return slices.DeleteFunc(os.Environ(), func(e string) bool {
		return strings.HasPrefix(e, "MAKEFLAGS=") || strings.HasPrefix(e, "MFLAGS=") || strings.HasPrefix(e, "MAKELEVEL=")
	})
}

// infraStage lays out bin as make install does, for newInfraNS, in a
// new directory: usr/local/bin/kmsfs and sbin/mount.fuse.kmsfs.
func infraStage(t *testing.T, bin string) string {
	t.Helper()
	tree := t.TempDir()
	mountFuse3, err := exec.LookPath("/sbin/mount.fuse3")
	if err != nil {
		fusetest.Unavailable(t, "fuse3's mount.fuse3: %v", err)
	}
	for _, d := range []string{"usr/local/bin", "sbin"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(bin, filepath.Join(tree, "usr/local/bin/kmsfs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(mountFuse3, filepath.Join(tree, "sbin/mount.fuse.kmsfs")); err != nil {
		t.Fatal(err)
	}
	return tree
}

// infraMountCase is one `mount -t fuse.kmsfs -o OPTS`: LOG in opts stands
// for the volume's log file.
type infraMountCase struct {
	name string
	opts string
	// super and perMount are options the mount must show in mountinfo.
	super, perMount []string
	readOnly        bool
}

// TestInfraMountType mounts with `mount -t fuse.kmsfs CIPHERDIR MNT -o
// OPTS` as root would by hand or from fstab: the options that name kmsfs
// mount flags act as the flags, FUSE's reach the mount, mount(8)'s own are
// left out, and `umount` stops the daemon after it has flushed what was
// written. A line with defaults gets dev,suid from mount.fuse3: the mount
// must still be nosuid,nodev, or a set-user-ID program or a device node
// planted in the cipher dir would take effect.
func TestInfraMountType(t *testing.T) {
	cases := []infraMountCase{
		{name: "ro", opts: "ro,log-file=LOG", super: []string{"ro"}, perMount: []string{"nosuid", "nodev"}, readOnly: true},
		{name: "fstab-defaults", opts: "defaults,_netdev,nofail,allow_other,key-timeout=10s,x-systemd.requires=kms.service,log_file=LOG",
			super: []string{"rw", "allow_other", "default_permissions"}, perMount: []string{"rw", "nosuid", "nodev"}},
		{name: "fuse-options", opts: "noexec,noatime,log-level=debug,log-file=LOG", perMount: []string{"noexec", "noatime", "nosuid", "nodev"}},
	}
	tree := infraStage(t, suite.Kmsfs(t))
	for _, c := range cases {
		t.Run("case="+c.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			if !c.readOnly {
				// The file that the mount through mount(8) writes and a
				// later mount reads.
				v.Mount(t)
				v.Unmount(t)
			}
			ns := newInfraNS(t, tree)
			opts := strings.ReplaceAll(c.opts, "LOG", v.Log)
			if out, err := ns.run(v.Env, "mount", "-t", "fuse.kmsfs", v.Cipher, v.Mnt, "-o", opts); err != nil {
				t.Fatalf("mount -t fuse.kmsfs -o %s: %v\n%s", opts, err, out)
			}
			m, ok := ns.mount(t, v.Mnt)
			if !ok || m.FSType != "fuse.kmsfs" || m.Source != v.Cipher {
				t.Fatalf("mount returned, but %s is not a kmsfs mount of %s: %v", v.Mnt, v.Cipher, m.Fields)
			}
			perMount, super := infraOptions(m)
			for _, o := range c.perMount {
				if !slices.Contains(perMount, o) {
					t.Errorf("mount options %v lack %s", perMount, o)
				}
			}
			for _, o := range c.super {
				if !slices.Contains(super, o) {
					t.Errorf("superblock options %v lack %s", super, o)
				}
			}
			if log, _ := os.ReadFile(v.Log); !strings.Contains(string(log), "msg=mounted") {
				t.Errorf("log-file %s does not log the mount:\n%s", v.Log, log)
			}
			data := []byte("written through a mount by mount(8)")
			err := os.WriteFile(ns.path(filepath.Join(v.Mnt, "f")), data, 0o644)
			if c.readOnly {
				mntWantErrno(t, "write on a ro mount", err, syscall.EROFS)
			} else if err != nil {
				t.Fatalf("write: %v", err)
			}
			ns.umount(t, v.Mnt, v.Log)
			if !c.readOnly {
				v.Mount(t)
				mntCheckFile(t, v.Path("f"), data)
			}
		})
	}
}

// TestInfraMountRefused checks that mount(8) fails, naming the option,
// when an option is neither a kmsfs mount flag nor a FUSE option, and
// leaves nothing mounted or running.
func TestInfraMountRefused(t *testing.T) {
	cases := []struct{ opts, want string }{
		{"allow_other,bogus", `mount option "bogus" is neither a flag of kmsfs mount nor a FUSE option`},
		{"strictatime", `mount option "strictatime"`},
		{"log-file", `mount option "log-file" needs a value`},
		{"foreground", `mount option "foreground"`},
	}
	tree := infraStage(t, suite.Kmsfs(t))
	for _, c := range cases {
		t.Run("opts="+strings.ReplaceAll(c.opts, ",", "+"), func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			ns := newInfraNS(t, tree)
			out, err := ns.run(v.Env, "mount", "-t", "fuse.kmsfs", v.Cipher, v.Mnt, "-o", c.opts)
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("mount -o %s: %v, want a non-zero exit\n%s", c.opts, err, out)
			}
			if !strings.Contains(out, c.want) {
				t.Errorf("mount -o %s says %q, want %q", c.opts, strings.TrimSpace(out), c.want)
			}
			if _, ok := ns.mount(t, v.Mnt); ok {
				t.Errorf("%s is mounted after a refused mount", v.Mnt)
			}
			if pid := fusetest.DaemonPID(v.Mnt); pid != 0 {
				t.Errorf("a kmsfs daemon (pid %d) serves %s after a refused mount", pid, v.Mnt)
			}
		})
	}
}

// infraMake runs make in the module's root with args, bounded, and fails
// the test if it fails. BIN and MANOUT point into the test's directories,
// so that it leaves the tree's bin/ and out/ alone.
func infraMake(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", append([]string{"-C", "..", "--no-print-directory"}, args...)...)
	cmd.Env = infraEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// infraInstall runs make install with DESTDIR a new directory, and
// returns it.
func infraInstall(t *testing.T) string {
	t.Helper()
	dest, work := t.TempDir(), t.TempDir()
	infraMake(t, "install", "DESTDIR="+dest, "BIN="+filepath.Join(work, "bin"), "MANOUT="+filepath.Join(work, "man"))
	return dest
}

// TestInfraInstall checks what make install puts under DESTDIR: the
// binary, the link mount(8) runs for fuse.kmsfs, man pages that man(1)
// renders without a warning and that a second make man reproduces byte
// for byte, and the completions; make uninstall takes them away again.
func TestInfraInstall(t *testing.T) {
	dest := infraInstall(t)
	man := "usr/local/share/man/"
	want := []string{
		"usr/local/bin/kmsfs", "sbin/mount.fuse.kmsfs",
		man + "man1/kmsfs.1", man + "man1/kmsfs-mount.1", man + "man1/kmsfs-init.1", man + "man1/kmsfs-unmount.1",
		man + "man5/kmsfs-format.5",
		"usr/local/share/bash-completion/completions/kmsfs", "usr/local/share/zsh/site-functions/_kmsfs",
		"usr/local/share/fish/vendor_completions.d/kmsfs.fish",
	}
	for _, f := range want {
		t.Run("file="+f, func(t *testing.T) {
			p := filepath.Join(dest, f)
			fi, err := os.Lstat(p)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case strings.HasSuffix(f, "/mount.fuse.kmsfs"):
				target, err := os.Readlink(p)
				if err != nil || filepath.Base(target) != "mount.fuse3" {
					t.Fatalf("%s: %v, %q: want a link to mount.fuse3", f, err, target)
				}
				if _, err := os.Stat(target); err != nil {
					t.Errorf("%s links to %s: %v", f, target, err)
				}
			case strings.HasSuffix(f, "/kmsfs") && strings.Contains(f, "/bin/"):
				if fi.Mode()&0o111 == 0 {
					t.Errorf("%s is not executable: %v", f, fi.Mode())
				}
			case strings.Contains(f, "/man/"):
				infraCheckManPage(t, p)
			default:
				if raw, err := os.ReadFile(p); err != nil || !bytes.Contains(raw, []byte("kmsfs")) || len(raw) < 200 {
					t.Errorf("%s: %v, %d bytes: not a completion for kmsfs", f, err, len(raw))
				}
			}
		})
	}
	t.Run("reproducible", func(t *testing.T) {
		again := t.TempDir()
		infraMake(t, "man", "MANOUT="+again)
		for _, page := range []string{"man1/kmsfs.1", "man1/kmsfs-mount.1", "man5/kmsfs-format.5"} {
			a, errA := os.ReadFile(filepath.Join(dest, man, page))
			b, errB := os.ReadFile(filepath.Join(again, page))
			if errA != nil || errB != nil || !bytes.Equal(a, b) {
				t.Errorf("%s differs between two runs of make man (%v, %v)", page, errA, errB)
			}
		}
	})
	t.Run("uninstall", func(t *testing.T) {
		infraMake(t, "uninstall", "DESTDIR="+dest)
		var left []string
		filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				left = append(left, p)
			}
			return nil
		})
		if len(left) > 0 {
			t.Errorf("make uninstall left %q", left)
		}
	})
}

// infraCheckManPage renders the man page at p with man -l and checks that
// groff warns of nothing and the page has its sections.
func infraCheckManPage(t *testing.T, p string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "man", "--warnings", "-l", p)
	cmd.Env = append(os.Environ(), "MANWIDTH=80", "MANPAGER=cat", "LC_ALL=C.UTF-8")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("man -l %s: %v\n%s", p, err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("man -l %s warns:\n%s", p, stderr.String())
	}
	name := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
	for _, want := range []string{`\nNAME\n\s+` + regexp.QuoteMeta(name) + `\s+-\s+\S`, `\nDESCRIPTION\n`, `\nSEE ALSO\n`} {
		if !regexp.MustCompile(want).MatchString(stdout.String()) {
			t.Errorf("man -l %s does not match %q:\n%s", p, want, stdout.String())
		}
	}
}

// infraReadmeFstab returns the lines of the fstab block in README.md's
// "Running in production" section.
func infraReadmeFstab(t *testing.T) [][]string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(raw), "\n## Running in production\n")
	_, block, ok2 := strings.Cut(sec, "\n```fstab\n")
	block, _, ok3 := strings.Cut(block, "\n```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("README.md has no fstab block under \"## Running in production\"")
	}
	var lines [][]string
	for _, l := range strings.Split(block, "\n") {
		if f := strings.Fields(l); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			if len(f) != 6 || f[2] != "fuse.kmsfs" {
				t.Fatalf("README.md's fstab line %q is not a fuse.kmsfs line of six fields", l)
			}
			lines = append(lines, f)
		}
	}
	if len(lines) == 0 {
		t.Fatal("README.md's fstab block is empty")
	}
	return lines
}

// infraFstabVolume is one README fstab line made real under a test's
// root: its paths moved there, its cipher dir a volume.
type infraFstabVolume struct {
	line     []string // the fields as in the fstab file the test writes
	cipher   string
	mnt      string
	log      string // the line's log-file, or ""
	readOnly bool
}

// infraFstabVolumes rewrites the README's lines for the root dir: every
// absolute path (the cipher dir, the mount point, option values) moves
// under it, and each cipher dir becomes a volume whose key suits its
// line: a passphrase in the line's passphrase-file, else a key file.
func infraFstabVolumes(t *testing.T, root string, env []string) []infraFstabVolume {
	t.Helper()
	var vols []infraFstabVolume
	for _, f := range infraReadmeFstab(t) {
		v := infraFstabVolume{cipher: root + f[0], mnt: root + f[1]}
		var opts []string
		key := ""
		for _, o := range strings.Split(f[3], ",") {
			name, value, _ := strings.Cut(o, "=")
			if strings.HasPrefix(value, "/") {
				value = root + value
				o = name + "=" + value
				if err := os.MkdirAll(filepath.Dir(value), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			switch name {
			case "passphrase-file", "passphrase_file":
				if err := os.WriteFile(value, []byte("correct horse battery staple\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				key = "local:passphrase"
			case "log-file", "log_file":
				v.log = value
			case "ro":
				v.readOnly = true
			}
			opts = append(opts, o)
		}
		for _, d := range []string{v.cipher, v.mnt} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
		}
		initEnv := env
		if key == "" {
			key = "local:" + fusetest.KeyFile(t, root, nil)
		} else {
			initEnv = append(slices.Clone(env), "KMSFS_PASSPHRASE=correct horse battery staple")
		}
		args := fusetest.InitArgs([]string{key}, nil, v.cipher)
		if out, err := fusetest.RunKmsfs(suite.Kmsfs(t), nil, initEnv, args...); err != nil {
			t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		v.line = []string{v.cipher, v.mnt, f[2], strings.Join(opts, ","), f[4], f[5]}
		vols = append(vols, v)
	}
	return vols
}

// TestInfraFstabReadme installs kmsfs with make install (into a staged
// tree laid over the system's directories in a mount namespace), writes
// the README's fstab lines into a temporary fstab with their paths moved
// under the test's directory, and mounts them as a booting machine does,
// with `mount -a`; then `umount` and `mount MOUNTPOINT` again: what was
// written before the umount is there after it. The README's example thus
// cannot drift from what works.
func TestInfraFstabReadme(t *testing.T) {
	root := t.TempDir()
	env := fusetest.TrustEnv(t, root, nil, nil)
	vols := infraFstabVolumes(t, root, env)
	ns := newInfraNS(t, infraInstall(t))
	var fstab strings.Builder
	for _, v := range vols {
		fstab.WriteString(strings.Join(v.line, " ") + "\n")
	}
	tab := filepath.Join(root, "fstab")
	if err := os.WriteFile(tab, []byte(fstab.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := ns.run(env, "mount", "--fstab", tab, "-a"); err != nil {
		t.Fatalf("mount -a with\n%s: %v\n%s", fstab.String(), err, out)
	}
	data := []byte("written through the README's fstab line")
	for _, v := range vols {
		t.Run("mnt="+strings.TrimPrefix(v.mnt, root), func(t *testing.T) {
			m, ok := ns.mount(t, v.mnt)
			if !ok || m.FSType != "fuse.kmsfs" {
				t.Fatalf("mount -a did not mount %s", v.mnt)
			}
			perMount, super := infraOptions(m)
			for _, o := range strings.Split(v.line[3], ",") {
				if (o == "allow_other" || o == "ro") && !slices.Contains(super, o) {
					t.Errorf("superblock options %v lack %s", super, o)
				}
			}
			if !slices.Contains(perMount, "nosuid") || !slices.Contains(perMount, "nodev") {
				t.Errorf("mount options %v: want nosuid,nodev", perMount)
			}
			f := ns.path(filepath.Join(v.mnt, "f"))
			err := os.WriteFile(f, data, 0o644)
			if v.readOnly {
				mntWantErrno(t, "write on a ro mount", err, syscall.EROFS)
			} else if err != nil {
				t.Fatalf("write: %v", err)
			}
			ns.umount(t, v.mnt, v.log)
			if out, err := ns.run(env, "mount", "--fstab", tab, v.mnt); err != nil {
				t.Fatalf("mount %s: %v\n%s", v.mnt, err, out)
			}
			if !v.readOnly {
				mntCheckFile(t, f, data)
			} else if _, err := os.ReadDir(ns.path(v.mnt)); err != nil {
				t.Errorf("list %s after mounting again: %v", v.mnt, err)
			}
			ns.umount(t, v.mnt, v.log)
		})
	}
}
