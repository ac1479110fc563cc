package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/internal/safeopen"
	"github.com/kmsfs/kmsfs/internal/volconf"
)

// Mount is a kmsfs mount of a cipher dir on this host.
type Mount struct {
	Point    string
	ReadOnly bool
}

// MountsOf returns the kmsfs mounts of the cipher dir dir on this host:
// at most one read-write (it holds the journal), any number read-only.
// Any user may mount a FUSE file system that calls itself kmsfs and
// names dir as its source: only mounts made by root, by the caller or by
// the cipher dir's owner count, so another user's cannot stall or fool a
// rewrap.
func MountsOf(dir string) ([]Mount, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return nil, fmt.Errorf("volume: cipher dir %s: %w", abs, err)
	}
	ms, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	return kmsfsMounts(ms, abs, os.Geteuid(), int(st.Uid)), nil
}

// kmsfsMounts picks MountsOf's mounts of the cipher dir abs out of ms:
// kmsfs mounts made by root, by user uid or by owner.
func kmsfsMounts(ms []mountinfo.Mount, abs string, uid, owner int) []Mount {
	var out []Mount
	for _, m := range ms {
		if m.FSType != "fuse.kmsfs" || filepath.Clean(m.Source) != abs || len(m.Fields) < 6 {
			continue
		}
		super := strings.Split(m.Fields[len(m.Fields)-1], ",")
		if !slices.ContainsFunc(super, func(o string) bool {
			id, ok := strings.CutPrefix(o, "user_id=")
			return ok && (id == "0" || id == strconv.Itoa(uid) || id == strconv.Itoa(owner))
		}) {
			continue
		}
		// kmsfs --ro makes the file system read-only (the super
		// options), the mount itself may say rw.
		ro := slices.Contains(strings.Split(m.Fields[5], ","), "ro") || slices.Contains(super, "ro")
		out = append(out, Mount{Point: m.Point, ReadOnly: ro})
	}
	return out
}

// mountRounds bounds the scans of a rewrap through a mount: files created
// with an old key while the mount switched keys are found by the next.
const mountRounds = 3

// RewrapMounted is Rewrap for a volume that the kmsfs mount at mountPoint
// has open (read-write, so Open would fail with ErrBusy): after
// PrepareRewrap, the mount reloads its keys, so new files get the new
// ones, and rewraps each file that needs it through its own open-file
// state, so open files keep working. The caller must be root or the user
// the mount runs as.
func RewrapMounted(ctx context.Context, dir, mountPoint string, o RewrapOptions) (*RewrapReport, error) {
	plan, err := PrepareRewrap(ctx, dir, o)
	if err != nil {
		return nil, err
	}
	if err := askMount(mountPoint, volconf.ReloadAttr); err != nil {
		return nil, err
	}
	r := &RewrapReport{Dir: dir, Changes: plan.Changes}
	r.reloadMounts(o.Reload)
	c := &plan.Anchor.Conf
	n := c.ActiveCount()
	var done int64
	for round := 0; round < mountRounds; round++ {
		sc, err := ScanRewrap(ctx, dir, c)
		if err != nil {
			return nil, err
		}
		if round == 0 {
			r.Files, r.Empty, r.Foreign = sc.Files, sc.Empty, sc.Foreign
			r.Current = sc.Files - sc.Empty - sc.Foreign - int64(len(sc.Need))
		}
		if len(sc.Need) == 0 {
			break
		}
		failed := r.FailedFiles
		total := done + int64(len(sc.Need))
		record := func(rel, plain string, err error) { r.record(rel, plain, err, &done, total, o.Progress) }
		if c.EncryptedNames() {
			rewrapEncryptedThrough(ctx, dir, mountPoint, sc, o, record)
		} else {
			rewrapThrough(ctx, mountPoint, sc.Need, o.Concurrency, func(rel string, err error) { record(rel, "", err) })
		}
		if err := ctx.Err(); err != nil {
			return r, fmt.Errorf("volume: rewrap %s: %w", dir, err)
		}
		if r.FailedFiles > failed {
			break // a rescan would fail them again
		}
	}
	r.Keys, r.Retiring = keyIDs(c.Keys[:n]), keyIDs(c.Keys[n:])
	if err := FinishRewrap(ctx, dir, o.TrustDir, r); err != nil {
		return r, err
	}
	if len(r.Retired) > 0 {
		if err := askMount(mountPoint, volconf.ReloadAttr); err != nil {
			return r, err
		}
		r.reloadMounts(o.Reload)
	}
	return r, nil
}

// reloadMounts asks each read-only mount of points to reload its keys,
// noting those that fail as warnings: they keep reading files under the
// keys they had, and fail on files rewrapped away from them until they
// are remounted.
func (r *RewrapReport) reloadMounts(points []string) {
	for _, p := range points {
		if err := askReadOnlyMount(p); err != nil {
			r.Warnings = append(r.Warnings, err.Error()+"; remount it to read files under the new keys")
		}
	}
}

// askMount sets the Admin attribute attr on the mount's root.
func askMount(mountPoint, attr string) error {
	if err := unix.Setxattr(mountPoint, attr, nil, 0); err != nil {
		return fmt.Errorf("volume: the mount at %s refused %s: %w (its log names the cause; only root and the user the mount runs as may ask)", mountPoint, attr, err)
	}
	return nil
}

// askReadOnlyMount asks the read-only mount at mountPoint to reload its
// keys: such a mount takes no setxattr, so the request is a getxattr.
func askReadOnlyMount(mountPoint string) error {
	if _, err := unix.Getxattr(mountPoint, volconf.ReloadAttr, nil); err != nil {
		return fmt.Errorf("volume: the read-only mount at %s refused to reload: %w (its log names the cause; only root and the user the mount runs as may ask)", mountPoint, err)
	}
	return nil
}

// rewrapThrough asks the mount at mountPoint to rewrap each file of rels
// (paths below the cipher dir, the same below the mount point), several
// at a time, and calls done for each. Every file is reached beneath the
// mount point without following a symbolic link, so a link planted in
// the cipher dir cannot send the request elsewhere.
func rewrapThrough(ctx context.Context, mountPoint string, rels []string, workers int, done func(rel string, err error)) {
	root, err := os.Open(mountPoint)
	if err != nil {
		for _, rel := range rels {
			done(rel, err)
		}
		return
	}
	defer root.Close()
	eachFile(ctx, rels, workers, func(rel string) error { return rewrapAt(int(root.Fd()), rel) }, done)
}

// rewrapEncryptedThrough is rewrapThrough for a volume with encrypted
// names, whose cipher paths are not the mount's: the files of sc.Need
// are found in the mount by their inode numbers (one walk of the mount),
// and kmsfs.names, which the mount hides and never writes, is rewrapped
// here directly. done gets the path a file was found at in the mount,
// its plain path, with each outcome.
func rewrapEncryptedThrough(ctx context.Context, dir, mountPoint string, sc *RewrapScan, o RewrapOptions, done func(rel, plain string, err error)) {
	want := map[uint64]string{}
	for _, rel := range sc.Need {
		switch ino, ok := sc.ino[rel]; {
		case rel == NamesName:
			done(rel, "", rewrapDirect(ctx, dir, rel, o))
		case !ok:
			done(rel, "", errors.New("could not be opened in the cipher dir"))
		default:
			want[ino] = rel
		}
	}
	found, err := mountPathsOf(ctx, mountPoint, want)
	var rels []string
	byMount := map[string]string{}
	for ino, rel := range want {
		mp, ok := found[ino]
		switch {
		case ok:
			rels = append(rels, mp)
			byMount[mp] = rel
		case err != nil:
			done(rel, "", fmt.Errorf("looking for it through the mount: %w", err))
		default:
			done(rel, "", errors.New("not found through the mount (removed, or a file the mount does not show)"))
		}
	}
	rewrapThrough(ctx, mountPoint, rels, o.Concurrency, func(mp string, err error) { done(byMount[mp], mp, err) })
}

// rewrapDirect rewraps the cipher file rel of the mounted volume in dir
// itself, with the volume opened read-only: for kmsfs's own files, which
// the mount neither shows nor writes.
func rewrapDirect(ctx context.Context, dir, rel string, o RewrapOptions) error {
	v, err := Open(ctx, dir, Options{TrustDir: o.TrustDir, Secrets: o.Secrets, ReadOnly: true})
	if err != nil {
		return err
	}
	defer v.Close()
	return v.rewrapPath(ctx, rel)
}

// mountPathsOf walks the mount at mountPoint, never through a symbolic
// link, and returns the path below it of each regular file whose inode
// number is a key of want.
func mountPathsOf(ctx context.Context, mountPoint string, want map[uint64]string) (map[uint64]string, error) {
	found := map[uint64]string{}
	fd, err := unix.Open(mountPoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return found, err
	}
	var walk func(dfd int, rel string) error
	walk = func(dfd int, rel string) error {
		defer unix.Close(dfd)
		ents, err := direntries(dfd)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			p := path.Join(rel, e.name)
			switch e.typ {
			case unix.DT_REG:
				if _, ok := want[e.ino]; ok {
					found[e.ino] = p
				}
			case unix.DT_DIR:
				sub, _, err := safeopen.OpenAt(dfd, e.name, unix.O_RDONLY|unix.O_DIRECTORY, unix.S_IFDIR)
				if err != nil {
					continue // gone since the listing
				}
				if err := walk(sub, p); err != nil {
					return err
				}
			}
			if len(found) == len(want) {
				return nil
			}
		}
		return nil
	}
	return found, walk(fd, "")
}

// rewrapAt asks the mount to rewrap the regular file rel beneath the
// mount's root directory rootfd.
func rewrapAt(rootfd int, rel string) error {
	fd, err := safeopen.OpenBeneath(rootfd, rel, unix.O_PATH, unix.S_IFREG)
	if errors.Is(err, unix.ENOENT) {
		return nil // removed since the scan
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Setxattr(fmt.Sprintf("/proc/self/fd/%d", fd), volconf.RewrapAttr, nil, 0); err != nil {
		return fmt.Errorf("the mount refused to rewrap it: %w (its log names the cause)", err)
	}
	return nil
}
