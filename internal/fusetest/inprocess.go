package fusetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/names"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/envelopetest"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// MountTimeout bounds one in-process mount or unmount: a kernel or
// filesystem that never answers fails the test instead of hanging it.
const MountTimeout = 30 * time.Second

// logTail is how much of a mount's log a failed test prints.
const logTail = 4 << 10

// Keys is an in-memory fs.Keys for mounts without a key service: each new
// data key is random and travels in the clear in a "test" stanza, which
// the embedded envelopetest.Keys unwraps (and counts). It is safe for
// concurrent use. It protects nothing: for tests only.
type Keys struct{ envelopetest.Keys }

// NewDataKey returns a new random data key and its clear stanza. The
// stanza holds its own copy: the caller may clear the key.
func (k *Keys) NewDataKey(context.Context) ([]byte, []keysource.Stanza, error) {
	dk := make([]byte, keysource.DataKeySize)
	if _, err := rand.Read(dk); err != nil {
		return nil, nil, fmt.Errorf("fusetest: new data key: %w", err)
	}
	return dk, []keysource.Stanza{envelopetest.Stanza(bytes.Clone(dk))}, nil
}

// InProcess is a kmsfs filesystem that this process serves (fs.Mount) at
// Dir over the cipher dir Cipher. MountFS and MountVolume return one
// mounted; Unmount, Mount and Remount cycle it, and every mount assembles
// its volume afresh, as a new kmsfs mount would. A cleanup of the test
// unmounts it (bounded by MountTimeout) and, when the test failed, logs
// the end of its log. Call its methods from the test's goroutine.
type InProcess struct {
	// Dir is the mount point.
	Dir string
	// Cipher is the cipher dir.
	Cipher string
	// KeyFile is the volume's local key file (MountVolume; "" for
	// MountFS).
	KeyFile string
	// TrustDir is the trust dir that approved the volume (MountVolume;
	// "" for MountFS).
	TrustDir string
	// Log receives the filesystem's log, across remounts.
	Log *LogBuffer

	t        testing.TB
	opts     kfs.Options                              // the caller's flags and keys
	assemble func(context.Context) (assembled, error) // what one mount needs
	srv      *kfs.Server                              // nil while unmounted
	release  func() error                             // closes what srv's assembly opened
}

// assembled is what one mount is made of.
type assembled struct {
	vol     *envelope.Volume
	keys    kfs.Keys     // nil: the caller's
	names   *names.Codec // nil: the caller's (MountFS) or names in the clear
	rootDir names.DirID  // the root's ID when names is set
	release func() error
}

// MountFS mounts a fresh cipher dir in process, over the fs package alone:
// an envelope volume of blockSize with a write journal (as kmsfs mount
// has), no kmsfs.conf but a placeholder that fs must hide, and o.Keys (nil:
// a new Keys). o gives the flags (ReadOnly, Xattr, KeyTimeout) and, for
// encrypted names, Names and RootDirID (names.RootDirID of
// envelopetest.VolumeID); MountFS sets CipherDir, Volume and Log, which
// must be unset.
func MountFS(t testing.TB, blockSize int, o kfs.Options) *InProcess {
	t.Helper()
	NeedFUSE(t)
	if o.CipherDir != "" || o.Volume != nil || o.Log != nil {
		t.Fatal("fusetest: MountFS makes the cipher dir, the volume and the log itself")
	}
	layout, err := envelope.NewLayout(blockSize, envelope.DefaultSlotSize)
	if err != nil {
		t.Fatalf("fusetest: %v", err)
	}
	if o.Keys == nil {
		o.Keys = &Keys{}
	}
	m := newInProcess(t, o)
	if err := os.WriteFile(filepath.Join(m.Cipher, volume.ConfName), []byte("{}\n"), 0o600); err != nil {
		t.Fatalf("fusetest: %v", err)
	}
	m.assemble = func(context.Context) (assembled, error) {
		root, err := os.OpenRoot(m.Cipher)
		if err != nil {
			return assembled{}, err
		}
		j, err := journal.Open(root, volume.JournalName, 0)
		root.Close()
		if err != nil {
			return assembled{}, err
		}
		vol, err := envelope.NewVolume(envelope.Options{Layout: layout, Volume: envelopetest.VolumeID, Journal: j})
		if err != nil {
			j.Close()
			return assembled{}, err
		}
		return assembled{vol: vol, release: j.Close}, nil
	}
	m.Mount()
	return m
}

// MountVolume makes a volume as kmsfs init does (volume.Init, block size
// blockSize, a fresh local key file, a trust dir of the test's own) and
// mounts it in process; each mount opens it with volume.Open, so a
// Remount brings a new data-key Manager and journal. o gives the flags
// (ReadOnly, Xattr, KeyTimeout); CipherDir, Volume, Keys, Log, Names and
// RootDirID must be unset. Its names are in the clear; MountVolumeWith
// makes one that encrypts them.
func MountVolume(t testing.TB, blockSize int, o kfs.Options) *InProcess {
	t.Helper()
	return mountVolume(t, blockSize, o, false)
}

// MountVolumeWith is MountVolume, for a volume with encrypted names (as
// kmsfs init --encrypted-names makes it) when encNames is set: each mount
// then takes the name codec and root directory ID from the opened volume,
// as kmsfs mount does.
func MountVolumeWith(t testing.TB, blockSize int, o kfs.Options, encNames bool) *InProcess {
	t.Helper()
	return mountVolume(t, blockSize, o, encNames)
}

func mountVolume(t testing.TB, blockSize int, o kfs.Options, encNames bool) *InProcess {
	t.Helper()
	NeedFUSE(t)
	if o.CipherDir != "" || o.Volume != nil || o.Keys != nil || o.Log != nil || o.Names != nil {
		t.Fatal("fusetest: MountVolume makes the cipher dir, the volume, the keys, the names and the log itself")
	}
	m := newInProcess(t, o)
	keys := t.TempDir()
	m.KeyFile, m.TrustDir = KeyFile(t, keys, nil), filepath.Join(keys, "trust")
	ctx, cancel := context.WithTimeout(context.Background(), MountTimeout)
	defer cancel()
	if _, _, err := volume.Init(ctx, m.Cipher, volume.InitOptions{Keys: []string{"local:" + m.KeyFile},
		BlockSize: blockSize, TrustDir: m.TrustDir, EncryptedNames: encNames}); err != nil {
		t.Fatalf("fusetest: init %s: %v", m.Cipher, err)
	}
	m.assemble = func(ctx context.Context) (assembled, error) {
		v, err := volume.Open(ctx, m.Cipher, volume.Options{TrustDir: m.TrustDir, ReadOnly: o.ReadOnly})
		if err != nil {
			return assembled{}, err
		}
		codec, rootDir, err := v.NameCodec()
		if err != nil {
			v.Close()
			return assembled{}, err
		}
		// Reported as kmsfs mount reports them, for the log a failed test prints.
		log := m.logger()
		for _, w := range v.Warnings {
			log.WithFields(w.Fields).Warn(w.Msg)
		}
		if r := v.Recovery; r.Pending > 0 || r.Err != nil {
			log.WithError(r.Err).WithFields(logrus.Fields{"pending": r.Pending, "recovered": r.Recovered}).Info("journal recovery")
		}
		return assembled{vol: v.Format, keys: v.Keys, names: codec, rootDir: rootDir, release: v.Close}, nil
	}
	m.Mount()
	return m
}

// newInProcess returns an unmounted InProcess over new temporary
// directories, whose cleanup unmounts it.
func newInProcess(t testing.TB, o kfs.Options) *InProcess {
	t.Helper()
	m := &InProcess{Dir: t.TempDir(), Cipher: t.TempDir(), Log: &LogBuffer{}, t: t, opts: o}
	t.Cleanup(func() {
		if m.srv != nil {
			if err := m.unmount(); err != nil {
				t.Errorf("cleanup: %v", err)
				if m.srv != nil {
					// Detached, so that the temporary directories can go.
					unix.Unmount(m.Dir, unix.MNT_DETACH)
				}
			}
		}
		if t.Failed() {
			t.Logf("kmsfs log of %s (last %d bytes):\n%s", m.Dir, logTail, m.Log.Tail(logTail))
		}
	})
	return m
}

// logger returns a logger that writes to m.Log.
func (m *InProcess) logger() *logrus.Entry {
	l := logrus.New()
	l.Out = m.Log
	return logrus.NewEntry(l)
}

// Path returns name under the mount point.
func (m *InProcess) Path(name string) string { return filepath.Join(m.Dir, name) }

// Mount assembles the volume again and mounts it; m must be unmounted.
func (m *InProcess) Mount() {
	m.t.Helper()
	if m.srv != nil {
		m.t.Fatalf("fusetest: %s is mounted already", m.Dir)
	}
	if err := m.mount(); err != nil {
		m.t.Fatal(err)
	}
}

// Unmount unmounts m and waits, bounded by MountTimeout, until the
// filesystem has let go of the cipher dir; then it closes what the mount
// had opened (journal, key sources). Every descriptor into the mount must
// be closed first.
func (m *InProcess) Unmount() {
	m.t.Helper()
	if m.srv == nil {
		m.t.Fatalf("fusetest: %s is not mounted", m.Dir)
	}
	if err := m.unmount(); err != nil {
		m.t.Fatal(err)
	}
}

// Remount unmounts m and mounts it again, with the volume assembled anew.
func (m *InProcess) Remount() {
	m.t.Helper()
	m.Unmount()
	m.Mount()
}

func (m *InProcess) mount() error {
	ctx, cancel := context.WithTimeout(context.Background(), MountTimeout)
	defer cancel()
	a, err := m.assemble(ctx)
	if err != nil {
		return fmt.Errorf("fusetest: open the volume in %s: %w", m.Cipher, err)
	}
	o := m.opts
	o.CipherDir, o.Volume, o.Log = m.Cipher, a.vol, m.logger()
	if a.keys != nil {
		o.Keys = a.keys
	}
	if a.names != nil {
		o.Names, o.RootDirID = a.names, a.rootDir
	}
	type result struct {
		srv *kfs.Server
		err error
	}
	done := make(chan result, 1)
	go func() {
		srv, err := kfs.Mount(m.Dir, o, kfs.MountOptions("kmsfs-test", []string{"default_permissions"}, true))
		done <- result{srv, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			a.release()
			return fmt.Errorf("fusetest: %w", r.err)
		}
		m.srv, m.release = r.srv, a.release
		return nil
	case <-ctx.Done():
		// Tidy up behind the test, which fails now.
		go func() {
			if r := <-done; r.err == nil && r.srv.Unmount() == nil {
				r.srv.Wait()
			}
			a.release()
		}()
		return fmt.Errorf("fusetest: mount %s: not done after %v", m.Dir, MountTimeout)
	}
}

// unmount is Unmount's work. When the kernel refuses (busy), m stays
// mounted; when the unmount does not finish in time, m forgets its server
// and detaches the mount.
func (m *InProcess) unmount() error {
	srv := m.srv
	done := make(chan error, 1)
	go func() {
		err := srv.Unmount()
		if err == nil {
			srv.Wait()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("fusetest: unmount %s: %w", m.Dir, err)
		}
	case <-time.After(MountTimeout):
		m.srv, m.release = nil, nil
		unix.Unmount(m.Dir, unix.MNT_DETACH)
		return fmt.Errorf("fusetest: unmount %s: not done after %v (detached)", m.Dir, MountTimeout)
	}
	release := m.release
	m.srv, m.release = nil, nil
	if err := release(); err != nil {
		return fmt.Errorf("fusetest: close the volume in %s: %w", m.Cipher, err)
	}
	return nil
}
