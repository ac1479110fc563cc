package volume_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/mountinfo"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/volume"
)

// rewrapFiles writes n files of random content through a read-write
// volume, as a mount would (data keys from the manager, shared under the
// batched policy), and returns their contents by name.
func rewrapFiles(t *testing.T, tv testVolume, n int) map[string][]byte {
	t.Helper()
	v, err := tv.open(t, volume.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer v.Close()
	files := map[string][]byte{}
	for i := range n {
		name := fmt.Sprintf("d%d/f%03d", i%3, i)
		plain := make([]byte, 100+i*37)
		rand.Read(plain)
		p := filepath.Join(tv.dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		b, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		dk, sts, err := v.Keys.NewDataKey(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		f, err := v.Format.Create(b, dk, sts)
		clear(dk)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(plain, 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		b.Close()
		files[name] = plain
	}
	return files
}

// checkFiles opens the volume as this host approved it and checks that
// every file reads back as written and its header holds stanzas of
// exactly the key IDs want (in order).
func checkFiles(t *testing.T, tv testVolume, files map[string][]byte, want []string) {
	t.Helper()
	v, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open after rewrap: %v", err)
	}
	defer v.Close()
	for name, plain := range files {
		p := filepath.Join(tv.dir, name)
		fi, err := volume.Info(p)
		if err != nil {
			t.Fatalf("Info %s: %v", name, err)
		}
		var ids []string
		for _, s := range fi.Stanzas {
			ids = append(ids, s.KeyID)
		}
		if strings.Join(ids, ",") != strings.Join(want, ",") {
			t.Errorf("%s: stanzas of %v, want %v", name, ids, want)
		}
		f, err := volume.OpenCipherFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		_, err = v.Decrypt(ctx(t), &got, f, p)
		f.Close()
		if err != nil {
			t.Fatalf("decrypt %s: %v", name, err)
		}
		if !bytes.Equal(got.Bytes(), plain) {
			t.Fatalf("%s: content changed by the rewrap", name)
		}
	}
}

func keyIDOf(t *testing.T, tv testVolume, path string) string {
	t.Helper()
	c, err := volconf.Load(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	vid, _ := c.ID()
	id, err := volume.KeyFileID(path, vid)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func confKeys(t *testing.T, tv testVolume) []volconf.Key {
	t.Helper()
	c, err := volconf.Load(tv.dir)
	if err != nil {
		t.Fatal(err)
	}
	return c.Keys
}

// TestRewrapTo rotates a volume from one local key to another: every
// file ends under the new key alone, content untouched, kmsfs.conf and
// the host's approval follow, and the old key is no longer needed.
func TestRewrapTo(t *testing.T) {
	tv := initVolume(t)
	files := rewrapFiles(t, tv, 40)
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if !r.Done() || r.Rewrapped != 40 || r.Files != 40 || len(r.Retired) != 1 {
		t.Fatalf("report %+v, want 40 files rewrapped and the old key retired", r)
	}
	if r.DataKeys < 1 || r.DataKeys > 2 {
		t.Errorf("%d distinct data keys rewrapped, want 1 or 2 (batched policy)", r.DataKeys)
	}
	newID := keyIDOf(t, tv, newKey)
	if ks := confKeys(t, tv); len(ks) != 1 || ks[0].KeyID != newID {
		t.Fatalf("kmsfs.conf keys %+v, want the new key alone", ks)
	}
	if err := os.Remove(tv.key); err != nil {
		t.Fatal(err)
	}
	tv.key = newKey
	checkFiles(t, tv, files, []string{newID})

	// A second run has nothing to do.
	r, err = volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{TrustDir: tv.trust})
	if err != nil || r.Rewrapped != 0 || r.Current != 40 || !r.Done() {
		t.Fatalf("rerun: %+v, %v; want 40 current files and nothing done", r, err)
	}
}

// TestRewrapAddRemove adds an escrow key to every file, then removes the
// primary: files end under the escrow key alone, which becomes primary.
func TestRewrapAddRemove(t *testing.T) {
	tv := initVolume(t)
	files := rewrapFiles(t, tv, 12)
	oldID := keyIDOf(t, tv, tv.key)
	escrow := filepath.Join(filepath.Dir(tv.key), "escrow")
	newKeyFile(t, escrow)
	if _, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{Add: "local:" + escrow, TrustDir: tv.trust}); err != nil {
		t.Fatalf("Rewrap --add: %v", err)
	}
	escrowID := keyIDOf(t, tv, escrow)
	checkFiles(t, tv, files, []string{oldID, escrowID})

	if _, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{Add: "local:" + escrow, TrustDir: tv.trust}); err == nil {
		t.Fatal("adding a key the volume has: no error")
	}
	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{Remove: "local:" + tv.key, TrustDir: tv.trust})
	if err != nil || !r.Done() {
		t.Fatalf("Rewrap --remove: %+v, %v", r, err)
	}
	if ks := confKeys(t, tv); len(ks) != 1 || ks[0].KeyID != escrowID {
		t.Fatalf("kmsfs.conf keys %+v, want the escrow key alone", ks)
	}
	checkFiles(t, tv, files, []string{escrowID})

	_, err = volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{Remove: escrowID, TrustDir: tv.trust})
	if err == nil || !strings.Contains(err.Error(), "only key") {
		t.Fatalf("removing the only key: %v, want a refusal", err)
	}
}

// TestRewrapInterrupted stops a rewrap at each point where kmsfs.conf
// and the host's approval change, and between files: the volume opens,
// every file reads, and a rerun without options finishes the job.
func TestRewrapInterrupted(t *testing.T) {
	tv := initVolume(t)
	files := rewrapFiles(t, tv, 20)
	oldID := keyIDOf(t, tv, tv.key)
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	plan, err := volume.PrepareRewrap(ctx(t), tv.dir, volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust})
	if err != nil {
		t.Fatalf("PrepareRewrap: %v", err)
	}
	newID := keyIDOf(t, tv, newKey)
	if ks := confKeys(t, tv); len(ks) != 2 || ks[0].KeyID != newID || !ks[1].Retiring || ks[1].KeyID != oldID {
		t.Fatalf("kmsfs.conf keys %+v during the rewrap, want the new key then the old one retiring", ks)
	}
	if len(plan.Changes) == 0 {
		t.Error("plan lists no change")
	}
	// Stopped before any file: all still open under the old key.
	checkFiles(t, tv, files, []string{oldID})

	// The stop between approving and writing kmsfs.conf: the anchor holds
	// the next configuration beside the one in force.
	store := volconf.NewStore(tv.trust, os.Geteuid())
	c, _ := volconf.Load(tv.dir)
	a, err := store.Load(c.VolumeID)
	if err != nil {
		t.Fatal(err)
	}
	if err := volconf.Save(tv.dir, &volconf.Conf{}); err == nil {
		t.Fatal("saving an empty conf: no error")
	}
	next := *a
	prev := *a
	prev.Conf.Keys = []volconf.Key{{Spec: volconf.KeyFileSpec, KeyID: oldID}}
	prev.Host = a.Host[1:]
	next.Conf, next.Host = prev.Conf, prev.Host
	next.Next = &volconf.Approval{Conf: a.Conf, Host: a.Host}
	if err := store.Save(&next); err != nil {
		t.Fatal(err)
	}
	// kmsfs.conf still says the new configuration: it matches Next.
	checkFiles(t, tv, files, []string{oldID})

	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{TrustDir: tv.trust})
	if err != nil || !r.Done() || r.Rewrapped != 20 {
		t.Fatalf("rerun: %+v, %v; want the job finished", r, err)
	}
	if a, err := store.Load(c.VolumeID); err != nil || a.Next != nil || len(a.Conf.Keys) != 1 {
		t.Fatalf("anchor after the rerun: %+v, %v; want the new key alone and no Next", a, err)
	}
	checkFiles(t, tv, files, []string{newID})
}

// TestRewrapUnknownKeyFile: a file that no key of the volume opens (its
// only stanza is of a key kmsfs.conf does not list) cannot be rewrapped
// and is reported, but does not hold the old key in the volume: every
// other file moves, and the old key is retired.
func TestRewrapUnknownKeyFile(t *testing.T) {
	tv := initVolume(t)
	files := rewrapFiles(t, tv, 5)
	v, err := tv.open(t, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	writeUnknownKeyFile(t, v, "orphan", 100)
	v.Close()
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if r.Done() || r.FailedFiles != 1 || len(r.Failed) != 1 || r.Failed[0].Path != "orphan" || r.Rewrapped != 5 || len(r.Retired) != 1 {
		t.Fatalf("report %+v; want 5 files rewrapped, orphan failed, the old key retired", r)
	}
	if !strings.Contains(r.Failed[0].Error, "no configured key") {
		t.Errorf("orphan's failure %q does not say no key of the volume opens it", r.Failed[0].Error)
	}
	tv.key = newKey
	checkFiles(t, tv, files, []string{keyIDOf(t, tv, newKey)})
}

// TestStatusDuringReload is a mount's periodic key check running while a
// rewrap asks the mount to reload its keys, once as the key list grows
// (the new key and the retiring one) and once as it shrinks: Status must
// see a key list and its sources that belong together (under -race: no
// data race; otherwise no index past the sources).
func TestStatusDuringReload(t *testing.T) {
	tv := initVolume(t)
	rewrapFiles(t, tv, 3)
	v, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	c := ctx(t)
	o := volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust}
	for _, step := range []struct {
		name   string
		change func() error
	}{
		{"grow", func() error { _, err := volume.PrepareRewrap(c, tv.dir, o); return err }},
		{"shrink", func() error {
			w, err := tv.open(t, volume.Options{})
			if err != nil {
				return err
			}
			_, err = w.RewrapFiles(c, o)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			return volume.FinishRewrap(c, tv.dir, tv.trust, nil)
		}},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := step.change(); err != nil {
				t.Fatalf("changing the keys: %v", err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := v.Status(c)
				done <- err
			}()
			if err := v.Reload(c); err != nil {
				t.Errorf("Reload: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Status during Reload: %v", err)
			}
			if _, err := v.Status(c); err != nil {
				t.Fatalf("Status after Reload: %v", err)
			}
		})
	}
}

// flakySource is a key source whose first fail calls to Wrap fail, as a
// key service throttling or a request's deadline would.
type flakySource struct {
	id    string
	fail  int
	calls int
}

func (s *flakySource) Type() string  { return "test" }
func (s *flakySource) KeyID() string { return s.id }
func (s *flakySource) Wrap(_ context.Context, dk []byte) (keysource.Stanza, error) {
	s.calls++
	if s.calls <= s.fail {
		return keysource.Stanza{}, errors.New("throttled")
	}
	return keysource.Stanza{Type: s.Type(), KeyID: s.id, Body: bytes.Clone(dk)}, nil
}
func (s *flakySource) Unwrap(context.Context, keysource.Stanza) ([]byte, error) {
	return nil, keysource.ErrNotMine
}

// TestRewrapTargetRetriesFailure: the new stanzas of files that share a
// data key are made once, but a failure to make them is not kept: the
// next file with those stanzas tries again, rather than every file of
// the data key failing for one throttled call.
func TestRewrapTargetRetriesFailure(t *testing.T) {
	for _, fail := range []int{1, 2} {
		t.Run(fmt.Sprintf("fail=%d", fail), func(t *testing.T) {
			src := &flakySource{id: "new", fail: fail}
			c := &volconf.Conf{Keys: []volconf.Key{{KeyID: "new"}, {KeyID: "old", Retiring: true}}}
			target := volume.RewrapTarget(c, []keysource.KeySource{src, nil})
			old := []keysource.Stanza{{Type: "test", KeyID: "old", Body: []byte("wrapped")}}
			dk := bytes.Repeat([]byte{7}, keysource.DataKeySize)
			for i := range fail {
				if _, err := target(ctx(t), old, dk); err == nil {
					t.Fatalf("file %d: made stanzas while the key service failed", i+1)
				}
			}
			for i := range 2 {
				st, err := target(ctx(t), old, dk)
				if err != nil || len(st) != 1 || st[0].KeyID != "new" {
					t.Fatalf("file %d after the failures: %+v, %v; want a stanza of the new key", fail+i+1, st, err)
				}
			}
			if src.calls != fail+1 {
				t.Errorf("%d calls to Wrap, want %d: one per failure, then one for every file", src.calls, fail+1)
			}
		})
	}
}

// TestRewrapToKeyAlreadyActive: --to names a key the volume already has
// as one of its active keys. The key --from names leaves; the volume's
// other keys keep their order, so the primary stays the primary unless
// it is the key replaced.
func TestRewrapToKeyAlreadyActive(t *testing.T) {
	for _, c := range []struct {
		name     string
		to, from int // indexes into the volume's keys A, B, C
		want     []int
	}{
		{"to=primary,from=last", 0, 2, []int{0, 1}},
		{"to=primary,from=middle", 0, 1, []int{0, 2}},
		{"to=last,from=primary", 2, -1, []int{2, 1}},
		{"to=middle,from=last", 1, 2, []int{0, 1}},
		{"to=last,from=middle", 2, 1, []int{0, 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := t.TempDir()
			tv := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust")}
			var specs, ids []string
			for _, n := range []string{"a", "b", "c"} {
				p := filepath.Join(d, n)
				newKeyFile(t, p)
				specs = append(specs, "local:"+p)
			}
			if _, _, err := volume.Init(ctx(t), tv.dir, volume.InitOptions{Keys: specs, TrustDir: tv.trust}); err != nil {
				t.Fatalf("Init: %v", err)
			}
			tv.key = strings.TrimPrefix(specs[0], "local:")
			for _, s := range specs {
				ids = append(ids, keyIDOf(t, tv, strings.TrimPrefix(s, "local:")))
			}
			files := rewrapFiles(t, tv, 4)
			o := volume.RewrapOptions{To: specs[c.to], TrustDir: tv.trust}
			if c.from >= 0 {
				o.From = specs[c.from]
			}
			r, err := volume.Rewrap(ctx(t), tv.dir, o)
			if err != nil || !r.Done() {
				t.Fatalf("Rewrap: %+v, %v", r, err)
			}
			var want []string
			for _, i := range c.want {
				want = append(want, ids[i])
			}
			var got []string
			for _, k := range confKeys(t, tv) {
				got = append(got, k.KeyID)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("kmsfs.conf keys %v, want %v", got, want)
			}
			tv.key = strings.TrimPrefix(specs[c.want[0]], "local:")
			checkFiles(t, tv, files, want)
		})
	}
}

// TestMountsOfIgnoresOtherUsersMounts is the attack on a rewrap of a
// mounted volume: another user mounts a FUSE file system of their own
// that calls itself kmsfs and names the cipher dir as its source, to
// receive (and stall or fake) the rewrap's requests. Only mounts made by
// root, the caller or the cipher dir's owner count; read-only shows in
// the mount or the super options.
func TestMountsOfIgnoresOtherUsersMounts(t *testing.T) {
	table := mountinfo.Parse(`30 27 0:40 / /mnt/root rw,nosuid - fuse.kmsfs /srv/cipher rw,user_id=0,group_id=0
31 27 0:41 / /mnt/fake rw,nosuid - fuse.kmsfs /srv/cipher rw,user_id=1234,group_id=1234
32 27 0:42 / /mnt/mine ro,nosuid - fuse.kmsfs /srv/cipher rw,user_id=1000,group_id=1000
33 27 0:43 / /mnt/owner rw,nosuid - fuse.kmsfs /srv/cipher ro,user_id=2000,group_id=2000
34 27 0:44 / /mnt/other rw,nosuid - fuse.kmsfs /srv/other rw,user_id=0,group_id=0
35 27 0:45 / /mnt/sshfs rw,nosuid - fuse.sshfs /srv/cipher rw,user_id=0,group_id=0
36 27 0:46 / /mnt/noid rw,nosuid - fuse.kmsfs /srv/cipher rw,group_id=0
`)
	got := volume.KmsfsMounts(table, "/srv/cipher", 1000, 2000)
	want := []volume.Mount{{Point: "/mnt/root"}, {Point: "/mnt/mine", ReadOnly: true}, {Point: "/mnt/owner", ReadOnly: true}}
	if !slices.Equal(got, want) {
		t.Fatalf("mounts %+v, want %+v", got, want)
	}
}
