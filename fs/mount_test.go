package fs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/kmsfs/kmsfs/envelope"
	kfs "github.com/kmsfs/kmsfs/fs"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/keysource"
)

// fakeKeys is an in-memory key source for the fs unit tests: the stanza
// body is the data key itself. It counts calls.
type fakeKeys struct{ unwraps, creates atomic.Int64 }

func (k *fakeKeys) UnwrapKey(_ context.Context, ss []keysource.Stanza) ([]byte, error) {
	k.unwraps.Add(1)
	for _, s := range ss {
		if s.Type == "test" {
			return bytes.Clone(s.Body), nil
		}
	}
	return nil, keysource.ErrNotMine
}

func (k *fakeKeys) NewDataKey(context.Context) ([]byte, []keysource.Stanza, error) {
	k.creates.Add(1)
	dk := make([]byte, keysource.DataKeySize)
	rand.Read(dk)
	return dk, []keysource.Stanza{{Type: "test", KeyID: "fake", Body: bytes.Clone(dk)}}, nil
}

type mounted struct {
	mnt, cipher string
	keys        *fakeKeys
	srv         *kfs.Server
	log         *syncBuffer
	unmounted   bool
}

// syncBuffer is a log sink that tests read while the mount writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// mount mounts a fresh volume in a temporary directory for the test, with
// extended attributes on (posixtest covers them).
func mount(t testing.TB, blockSize int) *mounted {
	t.Helper()
	return mountWith(t, blockSize, kfs.Options{Xattr: true})
}

// mountWith mounts a fresh volume with o's flags (ReadOnly, Xattr,
// KeyTimeout); mountWith fills in the rest.
func mountWith(t testing.TB, blockSize int, o kfs.Options) *mounted {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no /dev/fuse under CI: %v", err)
		}
		t.Skip("no /dev/fuse")
	}
	m := &mounted{mnt: t.TempDir(), cipher: t.TempDir(), keys: &fakeKeys{}, log: &syncBuffer{}}
	logger := logrus.New()
	logger.Out = m.log
	l, err := envelope.NewLayout(blockSize, envelope.DefaultSlotSize)
	if err != nil {
		t.Fatal(err)
	}
	// As kmsfs mount does, with a write journal.
	root, err := os.OpenRoot(m.cipher)
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(root, volconf.JournalName, 0)
	root.Close()
	if err != nil {
		t.Fatal(err)
	}
	vol, err := envelope.NewVolume(envelope.Options{Layout: l, Volume: envelope.VolumeID{1}, Journal: j})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.cipher+"/"+volconf.Name, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mo := kfs.MountOptions("kmsfs-test", []string{"default_permissions"}, true)
	o.CipherDir, o.Volume, o.Keys, o.Log = m.cipher, vol, m.keys, logrus.NewEntry(logger)
	m.srv, err = kfs.Mount(m.mnt, o, mo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !m.unmounted {
			m.unmount(t)
		}
		j.Close()
	})
	return m
}

// unmount unmounts m and waits until the filesystem has let go of the
// cipher dir.
func (m *mounted) unmount(t testing.TB) {
	t.Helper()
	if err := m.srv.Unmount(); err != nil {
		t.Errorf("unmount: %v", err)
	}
	m.srv.Wait()
	m.unmounted = true
}
