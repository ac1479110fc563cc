package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
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
		rewrapThrough(ctx, mountPoint, sc.Need, o.Concurrency, func(rel string, err error) {
			r.record(rel, err, &done, total, o.Progress)
		})
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
