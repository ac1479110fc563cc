package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

// rwExitIncomplete is kmsfs rewrap's documented exit code when some files
// could not be rewrapped.
const rwExitIncomplete = 4

// rwRewrap runs `kmsfs rewrap --json` with args and returns its report
// and exit code.
func rwRewrap(t *testing.T, v *fusetest.CLIVolume, args ...string) (*volume.RewrapReport, int) {
	t.Helper()
	out, code := lcRun(t, v, append(append([]string{"rewrap", "--json"}, args...), v.Cipher)...)
	var r volume.RewrapReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("kmsfs rewrap %s (exit %d): %v\n%s", strings.Join(args, " "), code, err, out)
	}
	return &r, code
}

// rwWrite writes n files of random content under dir (created) through
// the mount and returns their contents by name.
func rwWrite(t *testing.T, v *fusetest.CLIVolume, dir string, n int) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	if err := os.MkdirAll(v.Path(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		name := fmt.Sprintf("%s/f%04d", dir, i)
		b := make([]byte, 1+(i*977)%20000)
		rand.Read(b)
		if err := os.WriteFile(v.Path(name), b, 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		files[name] = b
	}
	return files
}

// rwCipherFiles returns, by name, the cipher file of each of files and of
// the volume's name key file kmsfs.names (a cipher file under the volume's
// keys, which a rewrap moves with the others). The volume must be
// mounted: the volumes encrypt names, so a file's cipher file is found
// through the mount.
func rwCipherFiles(t *testing.T, v *fusetest.CLIVolume, files map[string][]byte) map[string]string {
	t.Helper()
	cipher := map[string]string{volume.NamesName: v.CipherPath(volume.NamesName)}
	for name := range files {
		cipher[name] = rwCipherFile(t, v, name)
	}
	return cipher
}

// rwCipherFile returns the cipher file behind name in v's mount. A mount
// of another user refuses the test (root included: it is not
// allow-other), so there kmsfs info, run as that user, finds it.
func rwCipherFile(t *testing.T, v *fusetest.CLIVolume, name string) string {
	t.Helper()
	if v.Cred() == nil {
		p, err := v.MountedCipherPath(name)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	out, err := v.Run("info", "--json", v.Path(name))
	if err != nil {
		t.Fatalf("kmsfs info %s: %v\n%s", name, err, out)
	}
	var fi volume.FileInfo
	if err := json.Unmarshal([]byte(out), &fi); err != nil {
		t.Fatalf("kmsfs info --json %s: %v\n%s", name, err, out)
	}
	return fi.CipherPath
}

// rwStanzas returns the key IDs of the stanzas of the cipher file path
// (kmsfs info's view, no key needed).
func rwStanzas(t *testing.T, path string) []string {
	t.Helper()
	fi, err := volume.Info(path)
	if err != nil {
		t.Fatalf("info %s: %v", path, err)
	}
	var ids []string
	for _, s := range fi.Stanzas {
		ids = append(ids, s.KeyID)
	}
	return ids
}

// rwCheckCipherStanzas fails t unless every cipher file (rwCipherFiles)
// holds stanzas of exactly want.
func rwCheckCipherStanzas(t *testing.T, cipher map[string]string, want ...string) {
	t.Helper()
	for name, path := range cipher {
		if got := rwStanzas(t, path); !slices.Equal(got, want) {
			t.Fatalf("%s: stanzas of %v, want %v", name, got, want)
		}
	}
}

// rwCheckStanzas is rwCheckCipherStanzas of files stored under their own
// names (a volume with plaintext names).
func rwCheckStanzas(t *testing.T, v *fusetest.CLIVolume, files map[string][]byte, want ...string) {
	t.Helper()
	cipher := map[string]string{}
	for name := range files {
		cipher[name] = v.CipherPath(name)
	}
	rwCheckCipherStanzas(t, cipher, want...)
}

// rwCheckContent mounts v and reads every file back.
func rwCheckContent(t *testing.T, v *fusetest.CLIVolume, files map[string][]byte) {
	t.Helper()
	v.Mount(t)
	defer v.Unmount(t)
	for name, want := range files {
		got, err := os.ReadFile(v.Path(name))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s after the rewrap: %d bytes, %v; want the %d written", name, len(got), err, len(want))
		}
	}
}

// rwConf returns the volume's kmsfs.conf.
func rwConf(t *testing.T, v *fusetest.CLIVolume) *volconf.Conf {
	t.Helper()
	c, err := volconf.Load(v.Cipher)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRewrapAWSAliasMoved is the rotation recipe of the README against
// the KMS emulator: the alias the volume was made with is pointed at a
// new key, which the mount refuses until the volume is rewrapped; then
// `kmsfs rewrap --to awskms:alias/NAME` moves every file to the new key
// through ReEncrypt, asking KMS once per distinct data key (plus one
// Decrypt each, which re-authenticating the header needs), and the old
// key can be disabled without a file lost.
func TestRewrapAWSAliasMoved(t *testing.T) {
	e := fusetest.KMS(t) // the alias is moved: the test's own emulator
	p := kmstest.NewProxy(t, e.Endpoint)
	v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + kmstest.Alias}, Env: fusetest.AWSEnvAt(e, p.URL)})
	v.Mount(t)
	files := rwWrite(t, v, "docs", 60)
	cipher := rwCipherFiles(t, v, files)
	v.Unmount(t)
	rwCheckCipherStanzas(t, cipher, e.Symmetric.ARN)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.Client().UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(kmstest.Alias), TargetKeyId: aws.String(e.Symmetric2.ARN)}); err != nil {
		t.Fatalf("UpdateAlias: %v", err)
	}
	v.MountRefused(t, v.Cipher, v.Mnt, "alias")

	calls := func() map[string]int {
		m := map[string]int{}
		for _, op := range []string{"ReEncrypt", "Decrypt", "Encrypt", "GenerateDataKey"} {
			m[op] = p.Requests(op)
		}
		return m
	}
	// A key policy short of kms:ReEncrypt and kms:Encrypt: every file
	// fails, named with the cause; the volume keeps working under the
	// retiring key, and nothing is lost.
	p.SetPermissions(&kmstest.Permissions{Allow: []string{"GenerateDataKey", "Decrypt", "DescribeKey"}})
	r, code := rwRewrap(t, v, "--to", "awskms:"+kmstest.Alias)
	if code != rwExitIncomplete || r.FailedFiles != int64(len(cipher)) || !slices.Equal(r.Retiring, []string{e.Symmetric.ARN}) ||
		!strings.Contains(r.Failed[0].Error, "kms:Encrypt") {
		t.Fatalf("rewrap denied: exit %d, %+v; want exit %d, %d files (kmsfs.names included) failed naming kms:Encrypt, the old key retiring", code, r, rwExitIncomplete, len(cipher))
	}
	rwCheckContent(t, v, files)
	p.SetPermissions(nil)

	before := calls()
	r, code = rwRewrap(t, v, "--to", "awskms:"+kmstest.Alias)
	after := calls()
	if code != 0 || !r.Done() || r.Rewrapped != int64(len(cipher)) || !slices.Equal(r.Retired, []string{e.Symmetric.ARN}) || !slices.Equal(r.Keys, []string{e.Symmetric2.ARN}) {
		t.Fatalf("rewrap: exit %d, %+v; want %d files moved to %s and %s retired", code, r, len(cipher), e.Symmetric2.ARN, e.Symmetric.ARN)
	}
	reenc, dec := after["ReEncrypt"]-before["ReEncrypt"], after["Decrypt"]-before["Decrypt"]
	t.Logf("rewrap of %d files: %d distinct data keys, %d ReEncrypt, %d Decrypt, %d Encrypt", len(cipher), r.DataKeys, reenc, dec, after["Encrypt"]-before["Encrypt"])
	if reenc != r.DataKeys || dec > r.DataKeys+2 || after["Encrypt"] != before["Encrypt"] {
		t.Errorf("KMS calls: %d ReEncrypt, %d Decrypt, %d Encrypt for %d distinct data keys; want one ReEncrypt and at most one Decrypt each, no Encrypt",
			reenc, dec, after["Encrypt"]-before["Encrypt"], r.DataKeys)
	}
	rwCheckCipherStanzas(t, cipher, e.Symmetric2.ARN)
	if ks := rwConf(t, v).Keys; len(ks) != 1 || ks[0].KeyID != e.Symmetric2.ARN || ks[0].Spec != "awskms:"+kmstest.Alias {
		t.Fatalf("kmsfs.conf keys %+v, want the alias, pinned to %s", ks, e.Symmetric2.ARN)
	}
	// The old key goes away: nothing depends on it.
	if _, err := e.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(e.Symmetric.ARN)}); err != nil {
		t.Fatal(err)
	}
	rwCheckContent(t, v, files)
	if st, code := lcStatus(t, v); code != 0 || !st.Healthy() {
		t.Errorf("status after the rewrap: exit %d, %+v", code, st)
	}
}

// TestRewrapMounted rewraps a mounted volume: a file held open for
// writing across the rewrap keeps working, a file created after it is
// under the new key, and once unmounted every file is under the new key
// alone, which opens them without the old key file.
func TestRewrapMounted(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.Mount(t)
	files := rwWrite(t, v, "a", 40)
	held, err := os.OpenFile(v.Path("held"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	first := bytes.Repeat([]byte("before "), 1000)
	if _, err := held.Write(first); err != nil {
		t.Fatal(err)
	}

	newKey := fusetest.KeyFile(t, t.TempDir(), nil)
	r, code := rwRewrap(t, v, "--to", "local:"+newKey)
	if want := int64(len(files) + 1 + lcNameKeyFiles); code != 0 || !r.Done() || r.Rewrapped != want {
		t.Fatalf("rewrap of the mounted volume: exit %d, %+v; want %d files (held and kmsfs.names included) rewrapped", code, r, want)
	}
	newID := rwConf(t, v).Keys[0].KeyID
	second := bytes.Repeat([]byte("after "), 1000)
	if _, err := held.Write(second); err != nil {
		t.Fatalf("write to the file held open across the rewrap: %v", err)
	}
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	files["held"] = append(first, second...)
	if err := os.WriteFile(v.Path("new"), []byte("made after the rewrap"), 0o644); err != nil {
		t.Fatal(err)
	}
	files["new"] = []byte("made after the rewrap")
	for name, want := range files {
		if got, err := os.ReadFile(v.Path(name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s through the mount after the rewrap: %v", name, err)
		}
	}
	cipher := rwCipherFiles(t, v, files)
	v.Unmount(t)
	rwCheckCipherStanzas(t, cipher, newID)
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	rwCheckContent(t, v, files)
}

// TestRewrapMountRefusesOtherUsers is the attack on the mount's rewrap
// requests: another local user, who can reach the files of an
// allow-other mount, asks the daemon to reload or rewrap. Refused, and
// nothing changes.
func TestRewrapMountRefusesOtherUsers(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{Dir: fusetest.SharedDir(t)})
	v.Mount(t, "--allow-other")
	if err := os.WriteFile(v.Path("f"), []byte("x"), 0o666); err != nil {
		t.Fatal(err)
	}
	// Writable for everyone, so the kernel lets the request through to
	// the daemon, whose own check is what is tested.
	for _, p := range []string{v.Mnt, v.Path("f")} {
		if err := os.Chmod(p, 0o777); err != nil {
			t.Fatal(err)
		}
	}
	u := suite.User(t, fusetest.NobodyCred())
	for _, c := range []struct{ path, attr string }{{v.Mnt, volconf.ReloadAttr}, {v.Path("f"), volconf.RewrapAttr}} {
		if _, errno := u.Do(t, "setxattr", c.path, c.attr); errno == 0 {
			t.Errorf("another user set %s on %s: accepted", c.attr, c.path)
		}
	}
	if !strings.Contains(v.LogText(), "only root and the user the mount runs as") {
		t.Errorf("the mount's log does not name the refusal:\n%s", v.LogText())
	}
}

// TestRewrapHSMEscrow adds a PKCS#11 escrow key to every file of a
// mounted volume (the mount opens the token key itself; a file created
// after gets both stanzas), then takes the local key out offline: the
// files open with the token key alone.
func TestRewrapHSMEscrow(t *testing.T) {
	tok := suite.HSM(t).Token("main")
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.Mount(t)
	files := rwWrite(t, v, "b", 20)
	localID := rwConf(t, v).Keys[0].KeyID

	r, code := rwRewrap(t, v, "--add", tok.AESSpec())
	if want := int64(len(files) + lcNameKeyFiles); code != 0 || !r.Done() || r.Rewrapped != want || len(r.Keys) != 2 {
		t.Fatalf("rewrap --add: exit %d, %+v; want %d files (kmsfs.names included) rewrapped", code, r, want)
	}
	for k, b := range rwWrite(t, v, "after", 3) {
		files[k] = b
	}
	cipher := rwCipherFiles(t, v, files)
	v.Unmount(t)
	hsmID := r.Keys[1]
	rwCheckCipherStanzas(t, cipher, localID, hsmID)

	r, code = rwRewrap(t, v, "--remove", "local:"+v.Key)
	if code != 0 || !r.Done() || r.Rewrapped != int64(len(cipher)) || !slices.Equal(r.Keys, []string{hsmID}) || !slices.Equal(r.Retired, []string{localID}) {
		t.Fatalf("rewrap --remove: exit %d, %+v; want %d files (kmsfs.names included) rewrapped", code, r, len(cipher))
	}
	rwCheckCipherStanzas(t, cipher, hsmID)
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	rwCheckContent(t, v, files)

	// The only key left cannot go.
	out, code := lcRun(t, v, "rewrap", "--remove", hsmID, v.Cipher)
	if code != 1 || !strings.Contains(out, "only key") {
		t.Errorf("removing the only key: exit %d\n%s", code, out)
	}
}

// TestRewrapReadOnlyMount rewraps a volume offline while a read-only
// mount of it runs: the mount is asked to reload its keys, and keeps
// reading every file once they are all under the new key and the old
// key file is gone.
func TestRewrapReadOnlyMount(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	v.Mount(t)
	files := rwWrite(t, v, "c", 30)
	v.Unmount(t)
	v.Mount(t, "--ro")
	newKey := fusetest.KeyFile(t, t.TempDir(), nil)
	r, code := rwRewrap(t, v, "--to", "local:"+newKey)
	if want := int64(len(files) + lcNameKeyFiles); code != 0 || !r.Done() || r.Rewrapped != want || len(r.Warnings) != 0 {
		t.Fatalf("rewrap beside a read-only mount: exit %d, %+v; want %d files (kmsfs.names included) rewrapped", code, r, want)
	}
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	for name, want := range files {
		if got, err := os.ReadFile(v.Path(name)); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %s through the read-only mount after the rewrap: %v", name, err)
		}
	}
	if !strings.Contains(v.LogText(), "reloaded the volume's keys") {
		t.Errorf("the read-only mount did not log a reload:\n%s", v.LogText())
	}
}

// TestRewrapUnreadableFileKeepsKey is the accident that would lose a
// file: the user who owns the volume and runs the rewrap (not root) cannot
// read one cipher file (made mode 000). The rewrap cannot know which keys
// that file depends on, so it must not take the old key out of kmsfs.conf
// (where deleting it would then lose the file); once the file is readable
// again, a rerun finishes and every file reads back under the new key.
func TestRewrapUnreadableFileKeepsKey(t *testing.T) {
	fusetest.NeedFUSEForUsers(t)
	dir := fusetest.SharedDir(t)
	nobody := fusetest.NobodyCred()
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, Cred: nobody})
	u := suite.User(t, nobody)
	files := map[string][]byte{"readable": []byte("read by its owner"), "locked": []byte("mode 000 in the cipher dir")}
	for name, data := range files {
		u.MustInput(t, data, "create", v.Path(name), "600", "-")
	}
	cipher := rwCipherFiles(t, v, files)
	v.Unmount(t)
	oldID := rwConf(t, v).Keys[0].KeyID
	locked := cipher["locked"]
	lockedRel, err := filepath.Rel(v.Cipher, locked)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(locked, 0); err != nil {
		t.Fatal(err)
	}

	newKey := fusetest.KeyFile(t, dir, nobody)
	r, code := rwRewrap(t, v, "--to", "local:"+newKey)
	if code != rwExitIncomplete || r.Done() || len(r.Retired) != 0 || !slices.Equal(r.Retiring, []string{oldID}) ||
		r.FailedFiles != 1 || r.Failed[0].Path != lockedRel {
		t.Fatalf("rewrap with an unreadable file: exit %d, %+v; want locked (%s) failed and key %s still retiring", code, r, lockedRel, oldID)
	}
	if ks := rwConf(t, v).Keys; len(ks) != 2 || ks[1].KeyID != oldID || !ks[1].Retiring {
		t.Fatalf("kmsfs.conf keys %+v; want the old key kept as retiring", ks)
	}

	if err := os.Chmod(locked, 0o600); err != nil {
		t.Fatal(err)
	}
	r, code = rwRewrap(t, v)
	if code != 0 || !r.Done() || r.Rewrapped != 1 || !slices.Equal(r.Retired, []string{oldID}) {
		t.Fatalf("rerun once the file is readable: exit %d, %+v; want it rewrapped and key %s retired", code, r, oldID)
	}
	rwCheckCipherStanzas(t, cipher, r.Keys[0])
	if err := os.Remove(v.Key); err != nil {
		t.Fatal(err)
	}
	v.Mount(t)
	for name, want := range files {
		if got := u.Must(t, "read", v.Path(name)); got != string(want) {
			t.Fatalf("read %s after the rewrap: %q, want %q", name, got, want)
		}
	}
	v.Unmount(t)
}
