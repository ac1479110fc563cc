package volume_test

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/volume"
)

// initTwoKeys makes a volume with a primary and an escrow local key file;
// it returns the volume and the escrow key's path.
func initTwoKeys(t *testing.T) (testVolume, string) {
	t.Helper()
	d := t.TempDir()
	v := testVolume{dir: filepath.Join(d, "cipher"), trust: filepath.Join(d, "trust"), key: filepath.Join(d, "key")}
	escrow := filepath.Join(d, "escrow")
	newKeyFile(t, v.key)
	newKeyFile(t, escrow)
	if _, _, err := volume.Init(ctx(t), v.dir, volume.InitOptions{Keys: []string{"local:" + v.key, "local:" + escrow}, TrustDir: v.trust}); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return v, escrow
}

// writeFile writes a kmsfs file of size plaintext bytes at name whose data
// key is wrapped by the sources given (by index in vol.Sources).
func writeFile(t *testing.T, vol *volume.Volume, name string, size int, srcs ...int) {
	t.Helper()
	dk := make([]byte, keysource.DataKeySize)
	rand.Read(dk)
	var sts []keysource.Stanza
	for _, i := range srcs {
		st, err := vol.Sources[i].Wrap(ctx(t), dk)
		if err != nil {
			t.Fatal(err)
		}
		sts = append(sts, st)
	}
	createFile(t, vol, name, size, dk, sts)
}

// createFile writes a kmsfs file of size plaintext bytes at name, with
// data key dk wrapped as sts.
func createFile(t *testing.T, vol *volume.Volume, name string, size int, dk []byte, sts []keysource.Stanza) {
	t.Helper()
	p := filepath.Join(vol.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f, err := vol.Format.Create(b, dk, sts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, size), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func keyOf(t *testing.T, r *volume.StatusReport, id string) volume.KeyStatus {
	t.Helper()
	if k, ok := r.Key(id); ok {
		return k
	}
	t.Fatalf("key %s not in the report: %+v", id, r.Keys)
	return volume.KeyStatus{}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name          string
		deleteEscrow  bool
		wantEscrow    string
		wantHealthy   bool
		wantAtRisk    int64
		wantEscrowUse bool
	}{
		{name: "keys=present", wantEscrow: volume.StateEnabled, wantHealthy: true, wantEscrowUse: true},
		// The escrow key file is deleted: the files under it alone can
		// no longer be opened.
		{name: "keys=escrow-deleted", deleteEscrow: true, wantEscrow: volume.StateMissing, wantAtRisk: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, escrow := initTwoKeys(t)
			vol, err := v.open(t, volume.Options{})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			primary, escrowID := vol.Sources[0].KeyID(), vol.Sources[1].KeyID()
			writeFile(t, vol, "a", 1000, 0)
			writeFile(t, vol, "dir/b", 5000, 0)
			writeFile(t, vol, "dir/both", 300, 0, 1)
			writeFile(t, vol, "escrow-only", 70, 1)
			if err := vol.Close(); err != nil {
				t.Fatal(err)
			}
			if tt.deleteEscrow {
				if err := os.Remove(escrow); err != nil {
					t.Fatal(err)
				}
			}
			r, err := volume.Status(ctx(t), v.dir, volume.Options{TrustDir: v.trust})
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if r.Files != 4 || r.Bytes != 6370 {
				t.Errorf("report counts %d files, %d bytes; want 4, 6370", r.Files, r.Bytes)
			}
			p := keyOf(t, r, primary)
			if p.State != volume.StateEnabled || !p.Usable || p.Files != 3 || p.Bytes != 6300 || p.SoleFiles != 2 || p.SoleBytes != 6000 {
				t.Errorf("primary key: %+v", p)
			}
			e := keyOf(t, r, escrowID)
			if e.State != tt.wantEscrow || e.Usable != tt.wantEscrowUse || e.Files != 2 || e.Bytes != 370 || e.SoleFiles != 1 || e.SoleBytes != 70 {
				t.Errorf("escrow key: %+v, want state %s", e, tt.wantEscrow)
			}
			if r.Healthy() != tt.wantHealthy || r.AtRiskFiles != tt.wantAtRisk {
				t.Errorf("healthy %v, %d files at risk (%+v); want %v, %d", r.Healthy(), r.AtRiskFiles, r.AtRisk, tt.wantHealthy, tt.wantAtRisk)
			}
			if tt.wantAtRisk > 0 && (len(r.AtRisk) != 1 || r.AtRisk[0].Path != "escrow-only") {
				t.Errorf("files at risk %+v, want escrow-only", r.AtRisk)
			}
			if got := len(r.Warnings()); got != int(tt.wantAtRisk) {
				t.Errorf("%d warnings, want %d: %+v", got, tt.wantAtRisk, r.Warnings())
			}
		})
	}
}

// TestStatusForeignEntries plants what a cipher dir should not hold: a
// garbage file, a truncated header, another volume's file, a symbolic
// link to a kmsfs file elsewhere, and a FIFO. Status must report the files
// as foreign, never follow the link, never block on the FIFO, and count
// only the volume's own file.
func TestStatusForeignEntries(t *testing.T) {
	tests := []struct {
		name  string
		plant func(t *testing.T, dir, other string)
		// foreign says the entry is reported as not a file of the volume
		// (else it is skipped unopened).
		foreign bool
	}{
		{name: "entry=garbage", foreign: true, plant: func(t *testing.T, dir, _ string) {
			b := make([]byte, 200000)
			rand.Read(b)
			write(t, filepath.Join(dir, "planted"), b)
		}},
		{name: "entry=short", foreign: true, plant: func(t *testing.T, dir, _ string) {
			write(t, filepath.Join(dir, "planted"), []byte("KMFS"))
		}},
		{name: "entry=other-volume", foreign: true, plant: func(t *testing.T, dir, other string) {
			b, err := os.ReadFile(filepath.Join(other, "x"))
			if err != nil {
				t.Fatal(err)
			}
			write(t, filepath.Join(dir, "planted"), b)
		}},
		{name: "entry=symlink", plant: func(t *testing.T, dir, other string) {
			if err := os.Symlink(other, filepath.Join(dir, "planted")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "entry=fifo", plant: func(t *testing.T, dir, _ string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "planted"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := initVolume(t)
			other := initVolume(t)
			for _, tv := range []testVolume{v, other} {
				vol, err := tv.open(t, volume.Options{})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				writeFile(t, vol, "x", 10, 0)
				vol.Close()
			}
			tt.plant(t, v.dir, other.dir)
			r, err := volume.Status(ctx(t), v.dir, volume.Options{TrustDir: v.trust})
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if r.Files != 1 || r.Bytes != 10 || !r.Healthy() {
				t.Errorf("report: %d files, %d bytes, healthy %v; want the volume's one file of 10 bytes, healthy", r.Files, r.Bytes, r.Healthy())
			}
			if len(r.Keys) != 1 {
				t.Errorf("keys %+v: want the volume's one key", r.Keys)
			}
			switch {
			case tt.foreign && (r.ForeignFiles != 1 || len(r.Foreign) != 1 || r.Foreign[0].Path != "planted" || r.Foreign[0].Reason == ""):
				t.Errorf("foreign %+v (%d), want planted with a reason", r.Foreign, r.ForeignFiles)
			case !tt.foreign && (r.ForeignFiles != 0 || r.Skipped != 1):
				t.Errorf("foreign %+v, skipped %d; want planted skipped unopened", r.Foreign, r.Skipped)
			}
		})
	}
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeUnknownKeyFile writes a file of this volume whose only stanza is
// wrapped by a key file that the volume's configuration does not list (an
// older key, say); it returns that key's ID.
func writeUnknownKeyFile(t *testing.T, vol *volume.Volume, name string, size int) string {
	t.Helper()
	vid, err := vol.Conf().ID()
	if err != nil {
		t.Fatal(err)
	}
	kp := filepath.Join(t.TempDir(), "old.key")
	newKeyFile(t, kp)
	src, err := local.Open(ctx(t), keysource.Spec{Type: local.Type, Value: kp}, local.Options{VolumeID: vid})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dk := make([]byte, keysource.DataKeySize)
	rand.Read(dk)
	st, err := src.Wrap(ctx(t), dk)
	if err != nil {
		t.Fatal(err)
	}
	createFile(t, vol, name, size, dk, []keysource.Stanza{st})
	return src.KeyID()
}

// TestStatusUnknownKey: a file whose only key is not in the volume's
// configuration is reported under that key, not-in-configuration, and at
// risk; the opened volume's Status (what a mount runs) says the same.
func TestStatusUnknownKey(t *testing.T) {
	v := initVolume(t)
	vol, err := v.open(t, volume.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	writeFile(t, vol, "new", 10, 0)
	old := writeUnknownKeyFile(t, vol, "old", 20)
	for _, c := range []struct {
		name   string
		status func() (*volume.StatusReport, error)
	}{
		{"via=Status", func() (*volume.StatusReport, error) {
			return volume.Status(ctx(t), v.dir, volume.Options{TrustDir: v.trust})
		}},
		{"via=Volume.Status", func() (*volume.StatusReport, error) { return vol.Status(ctx(t)) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, err := c.status()
			if err != nil {
				t.Fatal(err)
			}
			k := keyOf(t, r, old)
			if k.State != volume.StateNotConfigured || k.Usable || k.Files != 1 || k.SoleBytes != 20 || k.Type != local.Type {
				t.Errorf("unknown key: %+v", k)
			}
			if r.Healthy() || r.AtRiskFiles != 1 || r.AtRisk[0].Path != "old" || len(r.Warnings()) != 1 {
				t.Errorf("at risk %+v (%d), warnings %+v; want old alone, one warning", r.AtRisk, r.AtRiskFiles, r.Warnings())
			}
		})
	}
}

// TestInfo reads a cipher file's header; it refuses a symbolic link to
// one (never followed) and a file that is no kmsfs file.
func TestInfo(t *testing.T) {
	v := initVolume(t)
	vol, err := v.open(t, volume.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	writeFile(t, vol, "f", 10000, 0)
	cipher := filepath.Join(v.dir, "f")
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(cipher, link); err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage")
	write(t, garbage, []byte("not a kmsfs file at all, but long enough to hold a header's fixed part"))
	st, err := os.Stat(cipher)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path string
		ok         bool
	}{
		{"path=cipher", cipher, true},
		{"path=symlink", link, false},
		{"path=garbage", garbage, false},
		{"path=dir", v.dir, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fi, err := volume.Info(tt.path)
			if !tt.ok {
				if err == nil {
					t.Fatalf("Info(%s) = %+v, want an error", tt.path, fi)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			vid := vol.Conf().VolumeID
			if fi.CipherPath != cipher || fi.PlainSize != 10000 || fi.CipherSize != st.Size() || fi.VolumeID != vid ||
				fi.BlockSize != vol.Conf().BlockSize || len(fi.Stanzas) != 1 || fi.Stanzas[0].KeyID != vol.Sources[0].KeyID() {
				t.Errorf("Info: %+v (volume %s)", fi, vid)
			}
		})
	}
}
