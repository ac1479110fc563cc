package integration_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/volume"
)

// lcExitAtRisk is kmsfs status's documented exit code for a volume with
// files that no usable key opens.
const lcExitAtRisk = 3

// The name key file kmsfs.names of a volume with encrypted names (what
// kmsfs init makes by default) is a cipher file under the volume's keys:
// status, fsck and rewrap count it beside the files a test writes, and
// losing a key puts it at risk with them.
const (
	lcNameKeyFiles = 1
	lcNameKeyBytes = names.KeySize
)

// lcStatus runs `kmsfs status --json` and returns the report and the exit
// code.
func lcStatus(t *testing.T, v *fusetest.CLIVolume) (*volume.StatusReport, int) {
	t.Helper()
	out, code := lcRun(t, v, "status", "--json", v.Cipher)
	var r volume.StatusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("kmsfs status --json (exit %d): %v\n%s", code, err, out)
	}
	return &r, code
}

// lcRun runs the volume's kmsfs with args and returns its output and exit
// code (-1 when killed); a kmsfs that cannot start fails t.
func lcRun(t *testing.T, v *fusetest.CLIVolume, args ...string) (string, int) {
	t.Helper()
	out, err := v.Run(args...)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out, ee.ExitCode()
	case err != nil:
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out, 0
}

// lcKey returns the report's entry of key id.
func lcKey(t *testing.T, r *volume.StatusReport, id string) volume.KeyStatus {
	t.Helper()
	if k, ok := r.Key(id); ok {
		return k
	}
	t.Fatalf("key %s not in the report: %+v", id, r.Keys)
	return volume.KeyStatus{}
}

// TestStatusKMSKeyLifecycle is the attack (or accident) kmsfs status
// exists for: the KMS key that a volume's files depend on is disabled, or
// scheduled for deletion, by whoever administers KMS. The mount must log
// it (at its first key check, then at every interval), and `kmsfs status`
// must show the key's state, with the deletion date, and exit with the
// at-risk code; before the change it reports the volume healthy.
func TestStatusKMSKeyLifecycle(t *testing.T) {
	tests := []struct {
		name   string
		change func(ctx context.Context, c *kms.Client, arn string) error
		state  string
	}{
		{name: "change=disable", state: volume.StateDisabled, change: func(ctx context.Context, c *kms.Client, arn string) error {
			_, err := c.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(arn)})
			return err
		}},
		{name: "change=schedule-deletion", state: volume.StatePendingDeletion, change: func(ctx context.Context, c *kms.Client, arn string) error {
			_, err := c.ScheduleKeyDeletion(ctx, &kms.ScheduleKeyDeletionInput{KeyId: aws.String(arn), PendingWindowInDays: aws.Int32(7)})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := fusetest.KMS(t) // an emulator of the test's own: its key is changed
			arn := e.Symmetric.ARN
			v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + arn}, Env: fusetest.AWSEnv(e)})
			mark := v.LogMark()
			v.Mount(t, "--key-check-interval", "1s")
			files := map[string]int{"a": 1000, "b": 70000}
			for name, n := range files {
				if err := os.WriteFile(v.Path(name), make([]byte, n), 0o644); err != nil {
					t.Fatalf("write %s: %v", name, err)
				}
			}
			fusetest.Eventually(t, "the mount's first key check", time.Minute, func() bool {
				return v.LogHas(mark, func(l fusetest.LogLine) bool { return strings.Contains(l.Raw, "every file opens under a usable key") })
			})
			r, code := lcStatus(t, v)
			wantFiles, wantBytes := int64(len(files)+lcNameKeyFiles), int64(71000+lcNameKeyBytes)
			if k := lcKey(t, r, arn); code != 0 || !r.Healthy() || k.State != volume.StateEnabled || k.Files != wantFiles || k.Bytes != wantBytes || k.SoleFiles != wantFiles {
				t.Fatalf("before the change: exit %d, key %+v; want exit 0, enabled, %d files (kmsfs.names included) of %d bytes under it alone", code, k, wantFiles, wantBytes)
			}

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := tt.change(ctx, e.Client(), arn); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			var deletes *time.Time
			if tt.state == volume.StatePendingDeletion {
				md, err := e.Client().DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(arn)})
				if err != nil || md.KeyMetadata.DeletionDate == nil {
					t.Fatalf("DescribeKey after scheduling deletion: %v", err)
				}
				d := md.KeyMetadata.DeletionDate.UTC()
				deletes = &d
			}
			fusetest.Eventually(t, "the mount's warning of the "+tt.state+" key", time.Minute, func() bool {
				return v.LogHas(mark, func(l fusetest.LogLine) bool {
					return l.F["level"] == "warning" && l.F["key"] == arn && l.F["state"] == tt.state && l.F["files"] == strconv.FormatInt(wantFiles, 10)
				})
			})
			v.Unmount(t)

			r, code = lcStatus(t, v)
			k := lcKey(t, r, arn)
			if code != lcExitAtRisk || r.Healthy() || r.AtRiskFiles != wantFiles || k.State != tt.state || k.Usable {
				t.Errorf("after the change: exit %d, %d files at risk, key %+v; want exit %d, %d files, %s", code, r.AtRiskFiles, k, lcExitAtRisk, wantFiles, tt.state)
			}
			switch {
			case deletes == nil && k.Deletes != nil:
				t.Errorf("key reported to be deleted on %v", k.Deletes)
			case deletes != nil && (k.Deletes == nil || !k.Deletes.Equal(*deletes)):
				t.Errorf("key to be deleted on %v, KMS says %v", k.Deletes, *deletes)
			}
			// The human table says the same, with the date.
			out, _ := v.Run("status", v.Cipher)
			if !strings.Contains(out, tt.state) || !strings.Contains(out, fmt.Sprintf("AT RISK: %d files", wantFiles)) ||
				(deletes != nil && !strings.Contains(out, deletes.Format(time.RFC3339))) {
				t.Errorf("kmsfs status:\n%s", out)
			}
		})
	}
}

// TestMountWarnsAtStart mounts a volume holding a file that only a key
// no longer in the volume's configuration opens (an older key, from
// before the volume changed keys): the mount's first key check, with the
// default daily interval, logs it; status exits with the at-risk code.
func TestMountWarnsAtStart(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	old := lcPlantOldKeyFile(t, v, "old")
	mark := v.LogMark()
	v.Mount(t)
	fusetest.Eventually(t, "the mount's warning of the old key", time.Minute, func() bool {
		return v.LogHas(mark, func(l fusetest.LogLine) bool {
			return l.F["level"] == "warning" && l.F["key"] == old && l.F["state"] == volume.StateNotConfigured && l.F["files"] == "1"
		})
	})
	if r, code := lcStatus(t, v); code != lcExitAtRisk || r.AtRiskFiles != 1 || lcKey(t, r, old).State != volume.StateNotConfigured {
		t.Errorf("status: exit %d, %+v; want exit %d, old at risk", code, r, lcExitAtRisk)
	}
}

// lcPlantOldKeyFile writes into v's cipher dir a file of v's volume whose
// data key only a key file the configuration does not list opens, and
// returns that key's ID.
func lcPlantOldKeyFile(t *testing.T, v *fusetest.CLIVolume, name string) string {
	t.Helper()
	var trust string
	for _, kv := range v.Env {
		if d, ok := strings.CutPrefix(kv, fusetest.TrustDirEnv+"="); ok {
			trust = d
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vol, err := volume.Open(ctx, v.Cipher, volume.Options{TrustDir: trust, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close()
	vid, err := vol.Conf().ID()
	if err != nil {
		t.Fatal(err)
	}
	src, err := local.Open(ctx, keysource.Spec{Type: local.Type, Value: fusetest.KeyFile(t, t.TempDir(), nil)}, local.Options{VolumeID: vid})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dk := make([]byte, keysource.DataKeySize)
	rand.Read(dk)
	st, err := src.Wrap(ctx, dk)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.OpenFile(v.CipherPath(name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	f, err := vol.Format.Create(b, dk, []keysource.Stanza{st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("old data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return src.KeyID()
}

// TestStatusKeyFileDeleted deletes the key file of a local-key volume:
// status reports the key missing and the files at risk (the file written
// and kmsfs.names, whose name key the lost key wraps too: every name is
// lost with it), and does not fail.
func TestStatusKeyFileDeleted(t *testing.T) {
	v := suite.StartVolume(t, fusetest.CLIOptions{})
	if err := os.WriteFile(v.Path("f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	v.Unmount(t)
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	r, code := lcStatus(t, v)
	want := int64(1 + lcNameKeyFiles)
	if len(r.Keys) != 1 || r.Keys[0].State != volume.StateMissing || code != lcExitAtRisk || r.AtRiskFiles != want {
		t.Errorf("exit %d, keys %+v, %d at risk; want exit %d, the key missing, %d files at risk (kmsfs.names included)", code, r.Keys, r.AtRiskFiles, lcExitAtRisk, want)
	}
}

// TestStatusPKCS11KeyDeleted deletes the token key a volume's files
// depend on (a key of the test's own on the suite's token): status must
// report it missing with the files at risk, not fail.
func TestStatusPKCS11KeyDeleted(t *testing.T) {
	h := suite.HSM(t)
	tok := h.Token("main")
	label := "status-" + rand.Text()[:8]
	if err := h.AddAESKey(tok, label); err != nil {
		t.Fatal(err)
	}
	v := suite.StartVolume(t, fusetest.CLIOptions{Keys: []string{tok.URI(label)}})
	if err := os.WriteFile(v.Path("f"), make([]byte, 5000), 0o644); err != nil {
		t.Fatal(err)
	}
	v.Unmount(t)
	r, code := lcStatus(t, v)
	wantFiles, wantBytes := int64(1+lcNameKeyFiles), int64(5000+lcNameKeyBytes)
	if len(r.Keys) != 1 || r.Keys[0].State != volume.StateEnabled || code != 0 || r.Keys[0].Files != wantFiles || r.Keys[0].Bytes != wantBytes {
		t.Fatalf("before the deletion: exit %d, keys %+v; want exit 0, the key enabled with %d files (kmsfs.names included) of %d bytes", code, r.Keys, wantFiles, wantBytes)
	}
	if err := h.DeleteKey(tok, label); err != nil {
		t.Fatal(err)
	}
	r, code = lcStatus(t, v)
	if len(r.Keys) != 1 || r.Keys[0].State != volume.StateMissing || code != lcExitAtRisk || r.AtRiskFiles != wantFiles {
		t.Errorf("after the deletion: exit %d, keys %+v, %d at risk; want exit %d, the key missing, %d files at risk", code, r.Keys, r.AtRiskFiles, lcExitAtRisk, wantFiles)
	}
}

// TestInfo reads a file's header with kmsfs info, given its cipher file
// and given its path through the mount: both name the same cipher file
// and report its key, sizes and slots, without a key. The volume encrypts
// names, so the cipher file is found the way an operator without the key
// would find it: the one entry of the cipher dir that is not kmsfs's own,
// and below it the same.
func TestInfo(t *testing.T) {
	e := fusetest.KMS(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + kmstest.Alias}, Env: fusetest.AWSEnv(e)})
	if err := os.MkdirAll(v.Path("dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 100000)
	if err := os.WriteFile(v.Path("dir/f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(v.Cipher, lcOnlyEntry(t, v.Cipher))
	cipherFile := filepath.Join(dir, lcOnlyEntry(t, dir))
	if cipherFile == v.CipherPath("dir/f") {
		t.Fatalf("the cipher file of dir/f is %s: names stored in clear", cipherFile)
	}
	st, err := os.Stat(cipherFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, path string }{
		{"path=cipher", cipherFile},
		{"path=mount", v.Path("dir/f")},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := v.Run("info", "--json", c.path)
			if err != nil {
				t.Fatalf("kmsfs info %s: %v\n%s", c.path, err, out)
			}
			var fi volume.FileInfo
			if err := json.Unmarshal([]byte(out), &fi); err != nil {
				t.Fatalf("kmsfs info --json: %v\n%s", err, out)
			}
			if fi.CipherPath != cipherFile || fi.PlainSize != int64(len(data)) || fi.CipherSize != st.Size() ||
				fi.Version != 2 || len(fi.FileID) != 32 || fi.Current < 0 || fi.Slots[fi.Current].Seq == 0 {
				t.Errorf("info: %+v; want the cipher file %s", fi, cipherFile)
			}
			if len(fi.Stanzas) != 1 || fi.Stanzas[0].Type != "awskms" || fi.Stanzas[0].KeyID != e.Symmetric.ARN {
				t.Errorf("stanzas %+v, want one awskms stanza of %s", fi.Stanzas, e.Symmetric.ARN)
			}
			if strings.Contains(out, "body") {
				t.Errorf("info prints stanza bodies:\n%s", out)
			}
		})
	}
}

// lcOnlyEntry returns the one entry of the cipher directory dir that holds
// a file or directory of the volume, not one of kmsfs's own (kmsfs.conf,
// kmsfs.names, kmsfs.dirid, ...: names.IsSpecial).
func lcOnlyEntry(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range ents {
		if !names.IsSpecial(e.Name()) {
			found = append(found, e.Name())
		}
	}
	if len(found) != 1 {
		t.Fatalf("cipher directory %s holds %q, want one entry besides kmsfs's own", dir, found)
	}
	return found[0]
}

// lcNameArgs returns the kmsfs init flags of a volume that encrypts names
// (the default: none) or stores them in clear.
func lcNameArgs(encrypted bool) []string {
	if encrypted {
		return nil
	}
	return []string{"--plaintext-names"}
}

// TestInfoPlantedSymlink is the attack on kmsfs info through a mount:
// whoever controls the cipher dir replaces a directory with a symbolic
// link to a directory outside it holding a copy of the directory's
// entries (with encrypted names, its kmsfs.dirid link too, so the names
// there still decrypt). info of the path through the mount must never
// follow the link and report the outside file: it refuses the link, or
// (finding the cipher file by the inode the mount still shows) reports the
// owner's file where it now is. Volumes with plaintext names are attacked
// by the directory's own name, those with encrypted names by its backing
// entry.
func TestInfoPlantedSymlink(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) {
			v := suite.StartVolume(t, fusetest.CLIOptions{InitArgs: lcNameArgs(nm.encrypted)})
			if err := os.MkdirAll(v.Path("dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(v.Path("dir/f"), []byte("the owner's file"), 0o644); err != nil {
				t.Fatal(err)
			}
			f, err := v.MountedCipherPath("dir/f")
			if err != nil {
				t.Fatal(err)
			}
			dir := filepath.Dir(f)
			outside := t.TempDir()
			lcCopyEntries(t, dir, outside)
			if err := os.Rename(dir, dir+".moved"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, dir); err != nil {
				t.Fatal(err)
			}
			out, err := v.Run("info", "--json", v.Path("dir/f"))
			if err == nil {
				want := filepath.Join(dir+".moved", filepath.Base(f))
				var fi volume.FileInfo
				if jerr := json.Unmarshal([]byte(out), &fi); jerr != nil || fi.CipherPath != want {
					t.Fatalf("kmsfs info reported another file than the mount's %s (%v):\n%s", want, jerr, out)
				}
				return
			}
			if !strings.Contains(out, "symbolic link") && !strings.Contains(out, "symlink") {
				t.Errorf("kmsfs info does not say it refused a symlink:\n%s", out)
			}
		})
	}
}

// lcCopyEntries copies the regular files and symbolic links of the
// directory from into the directory to, as an attacker copies a cipher
// directory.
func lcCopyEntries(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		src, dst := filepath.Join(from, e.Name()), filepath.Join(to, e.Name())
		switch e.Type() {
		case 0:
			raw, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, raw, 0o644); err != nil {
				t.Fatal(err)
			}
		case os.ModeSymlink:
			target, err := os.Readlink(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, dst); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("copy %s: not a file or a symbolic link", src)
		}
	}
}
