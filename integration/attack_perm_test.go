package integration_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// mntOptionsOf returns the mount's per-mount options and its
// superblock options (mountinfo's sixth and last fields).
func mntOptionsOf(t testing.TB, mnt string) (perMnt, super []string) {
	t.Helper()
	f, ok := fusetest.MountInfo(t, mnt)
	if !ok || len(f) < 7 {
		t.Fatalf("%s: no mountinfo line", mnt)
	}
	return strings.Split(f[5], ","), strings.Split(f[len(f)-1], ",")
}

// TestAttackAllowOtherAlone is the attack of another local user on a
// mount made with --allow-other and no -o default_permissions: user
// nobody goes for root's 0600 file. kmsfs checks no permissions itself,
// so --allow-other must bring the kernel's checks with it.
func TestAttackAllowOtherAlone(t *testing.T) {
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, MountArgs: []string{"--allow-other"}})
	nobody := suite.User(t, fusetest.NobodyCred())
	mntOpenToAll(t, v)
	if _, super := mntOptionsOf(t, v.Mnt); !slices.Contains(super, "default_permissions") {
		t.Fatalf("--allow-other mounted without default_permissions: %v", super)
	}

	secret := []byte("root's secret")
	p := v.Path("private")
	if err := os.WriteFile(p, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	before := mntLstat(t, p)
	for _, c := range []struct {
		op   []string
		want syscall.Errno
	}{
		{[]string{"read", p}, syscall.EACCES},
		{[]string{"write", p, "nobody's"}, syscall.EACCES},
		{[]string{"append", p, "nobody's"}, syscall.EACCES},
		{[]string{"truncate", p, "0"}, syscall.EACCES},
		{[]string{"chmod", p, "666"}, syscall.EPERM},
		{[]string{"chown", p, fmt.Sprint(fusetest.Nobody), fmt.Sprint(fusetest.Nobody)}, syscall.EPERM},
		{[]string{"utimes", p, "1000000000"}, syscall.EPERM},
	} {
		t.Run("op="+c.op[0], func(t *testing.T) {
			out, errno := nobody.Do(t, c.op...)
			if errno != c.want {
				t.Errorf("nobody %v: errno %v (output %q), want %v", c.op[0], errno, out, c.want)
			}
			after := mntLstat(t, p)
			if after.Mode != before.Mode || after.Uid != before.Uid || after.Gid != before.Gid ||
				after.Mtim != before.Mtim || after.Size != before.Size {
				t.Errorf("nobody's %s changed the file: mode %o uid %d gid %d mtime %v size %d, was %o %d %d %v %d",
					c.op[0], after.Mode, after.Uid, after.Gid, after.Mtim, after.Size,
					before.Mode, before.Uid, before.Gid, before.Mtim, before.Size)
			}
			mntCheckFile(t, p, secret) // the owner still reads it
		})
	}
}

// TestAttackSetidKept is the attack of a user who may write a set-user-ID
// or set-group-ID file: a write, truncate or fallocate by that user must
// clear the bits as a local filesystem does, or the user's content runs
// with the owner's privileges. Every case runs on a directory of the
// cipher dir's own filesystem too, whose result is the one wanted, and
// the mode the cipher file keeps must be the one the mount shows.
func TestAttackSetidKept(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) { mntAttackSetidKept(t, nm.encrypted) })
	}
}

func mntAttackSetidKept(t *testing.T, encNames bool) {
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, InitArgs: mntNamesArgs(encNames), MountArgs: []string{"--allow-other"}})
	mntOpenToAll(t, v)
	local := filepath.Join(dir, "local")
	if err := os.Mkdir(local, 0o755); err != nil {
		t.Fatal(err)
	}
	users := []struct {
		name string
		h    *fusetest.User
	}{
		{"nobody", suite.User(t, fusetest.NobodyCred())},
		{"root", suite.User(t, nil)},
	}
	ops := [][]string{
		{"append", "x"},
		{"write", "x"}, // open with O_TRUNC, then write
		{"truncate", "3"},
		{"fallocate", "0", "0", "65536"},
		{"fallocate", fmt.Sprint(unix.FALLOC_FL_KEEP_SIZE), "0", "65536"},
	}
	modes := []struct {
		mode uint32
		gid  int
	}{
		{0o6777, 0},               // set-group-ID and group-executable
		{0o2676, 0},               // set-group-ID, writer not in the group
		{0o2666, fusetest.Nobody}, // set-group-ID, writer in the group: kept
		{0o4646, 0},               // set-user-ID only
	}
	i := 0
	for _, u := range users {
		for _, m := range modes {
			for _, op := range ops {
				i++
				name := fmt.Sprintf("user=%s,mode=%o,gid=%d,op=%s", u.name, m.mode, m.gid, strings.Join(op, "-"))
				t.Run(name, func(t *testing.T) {
					var got [2]uint32
					for j, d := range []string{local, v.Mnt} {
						p := filepath.Join(d, fmt.Sprintf("f%d", i))
						if err := os.WriteFile(p, []byte("content"), 0o600); err != nil {
							t.Fatal(err)
						}
						if err := os.Chown(p, 0, m.gid); err != nil {
							t.Fatal(err)
						}
						if err := unix.Chmod(p, m.mode); err != nil {
							t.Fatal(err)
						}
						u.h.Must(t, append([]string{op[0], p}, op[1:]...)...)
						got[j] = mntLstat(t, p).Mode & 07777
					}
					if got[1] != got[0] {
						t.Errorf("mode after %s by %s: %o on the mount, %o on a local filesystem", op[0], u.name, got[1], got[0])
					}
					if st := mntLstat(t, mntCipherOf(t, v, fmt.Sprintf("f%d", i))); st.Mode&07777 != got[1] {
						t.Errorf("the cipher dir has mode %o, the mount shows %o", st.Mode&07777, got[1])
					}
				})
			}
		}
	}
}

// TestAttackPlantedSetuidAndDevice is the attack of whoever controls the
// cipher dir on the local users of an --allow-other mount: a set-user-ID
// root program and a world-writable device node planted there must not
// work through the mount (nosuid and nodev by default). Both are planted
// at the backing entries of files of the volume, which works with
// encrypted names too (the attacker cannot make a valid name of its
// own), while the volume is not mounted, so that the mount sees them
// from its first lookup.
func TestAttackPlantedSetuidAndDevice(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) { mntAttackPlantedSetuidAndDevice(t, nm.encrypted) })
	}
}

func mntAttackPlantedSetuidAndDevice(t *testing.T, encNames bool) {
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, InitArgs: mntNamesArgs(encNames), MountArgs: []string{"--allow-other"}})
	mntOpenToAll(t, v)
	perMount, _ := mntOptionsOf(t, v.Mnt)
	for _, o := range []string{"nosuid", "nodev"} {
		if !slices.Contains(perMount, o) {
			t.Errorf("mounted without %s: %v", o, perMount)
		}
	}

	// The program: a copy of id, an encrypted file as any file of the
	// volume is, given set-user-ID root in the cipher dir.
	idBin, err := exec.LookPath("id")
	if err != nil {
		t.Fatal(err)
	}
	prog, err := os.ReadFile(idBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(v.Path("id"), prog, 0o755); err != nil {
		t.Fatal(err)
	}
	mntWriteFile(t, v.Path("zero"), []byte("a file the attacker replaces"))
	idCipher, zeroCipher := mntCipherOf(t, v, "id"), mntCipherOf(t, v, "zero")
	v.Unmount(t)
	if err := unix.Chmod(idCipher, 0o4755); err != nil {
		t.Fatal(err)
	}
	// A device node where the storage attacker wants it: /dev/zero's.
	var zero unix.Stat_t
	if err := unix.Stat("/dev/zero", &zero); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(zeroCipher); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(zeroCipher, unix.S_IFCHR|0o666, int(zero.Rdev)); err != nil {
		t.Fatal(err)
	}
	v.Mount(t)
	if st := mntLstat(t, v.Path("zero")); st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Fatalf("the planted device node shows mode %o through the mount, want a character device", st.Mode)
	}

	t.Run("exec=setuid-id", func(t *testing.T) {
		if st := mntLstat(t, v.Path("id")); st.Mode&unix.S_ISUID == 0 || st.Uid != 0 {
			t.Fatalf("the planted program shows mode %o owner %d, want set-user-ID root", st.Mode, st.Uid)
		}
		cmd := exec.Command(v.Path("id"), "-u")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: fusetest.NobodyCred()}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nobody runs %s: %v", v.Path("id"), err)
		}
		if got := strings.TrimSpace(string(out)); got != fmt.Sprint(fusetest.Nobody) {
			t.Fatalf("the planted set-user-ID program runs with euid %s, want nobody's %d", got, fusetest.Nobody)
		}
	})
	for _, u := range []struct {
		name string
		cred *syscall.Credential
	}{{"nobody", fusetest.NobodyCred()}, {"root", nil}} {
		t.Run("open=device,user="+u.name, func(t *testing.T) {
			h := suite.User(t, u.cred)
			if out, errno := h.Do(t, "read", v.Path("zero")); errno != syscall.EACCES {
				t.Fatalf("%s reads the planted device node through the mount: %d bytes, errno %v, want EACCES (nodev)", u.name, len(out), errno)
			}
		})
	}
}
