package integration_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
)

// trConf is kmsfs.conf as a JSON object, for edits as an attacker on
// the storage makes them.
type trConf map[string]any

// trReadConf reads cipher's kmsfs.conf.
func trReadConf(t testing.TB, cipher string) trConf {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var c trConf
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatalf("kmsfs.conf: %v", err)
	}
	return c
}

// trWriteConf replaces cipher's kmsfs.conf with c.
func trWriteConf(t testing.TB, cipher string, c trConf) {
	t.Helper()
	raw, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(cipher, "kmsfs.conf")
	os.Remove(p) // it may be a symlink or FIFO a case planted
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// keys returns the conf's key entries.
func (c trConf) keys() []any { return c["keys"].([]any) }

// key returns key entry i.
func (c trConf) key(i int) map[string]any { return c.keys()[i].(map[string]any) }

// trTrustDir returns the trust dir the harness gave v's commands.
func trTrustDir(t testing.TB, env []string) string {
	t.Helper()
	for _, e := range env {
		if d, ok := strings.CutPrefix(e, fusetest.TrustDirEnv+"="); ok {
			return d
		}
	}
	t.Fatal("bad test: the volume has no trust dir")
	return ""
}

// trAnchor returns the path of v's trust anchor.
func trAnchor(t testing.TB, v *fusetest.CLIVolume) string {
	t.Helper()
	return filepath.Join(trTrustDir(t, v.Env), trReadConf(t, v.Cipher)["volume_id"].(string)+".anchor")
}

// trKeyFileID returns the key ID kmsfs gives the local key file at path.
func trKeyFileID(t testing.TB, path string) string {
	t.Helper()
	src, err := local.Open(t.Context(), keysource.Spec{Type: local.Type, Value: path}, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	return src.KeyID()
}

// trStanzaKeyIDs returns the key IDs of the stanzas in the header of v's
// cipher file at path (read from the cipher dir, not the mount).
func trStanzaKeyIDs(t testing.TB, v *fusetest.CLIVolume, path string) []string {
	t.Helper()
	c := trReadConf(t, v.Cipher)
	l, err := envelope.NewLayout(int(c["block_size"].(float64)), int(c["header_slot_size"].(float64)))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	slot := l.SlotSize()
	for s := 0; s < 2 && len(raw) >= (s+1)*slot; s++ {
		h, err := envelope.ParseHeaderSlot(l, raw[s*slot:(s+1)*slot])
		if err != nil {
			continue
		}
		var ids []string
		for _, st := range h.Stanzas {
			ids = append(ids, st.KeyID)
		}
		return ids
	}
	t.Fatalf("%s: no header slot parses", path)
	return nil
}

// trWrappedFiles returns the cipher file cp of v and, if v encrypts names,
// its kmsfs.names: files whose stanzas must be for the approved keys only.
func trWrappedFiles(v *fusetest.CLIVolume, cp string, encNames bool) []string {
	if encNames {
		return []string{cp, filepath.Join(v.Cipher, volconf.NamesName)}
	}
	return []string{cp}
}

// trRunDetached runs kmsfs for v without a controlling terminal, as a
// script or a service would.
func trRunDetached(v *fusetest.CLIVolume, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	cmd := v.Command(ctx, env, args...)
	cmd.SysProcAttr.Setsid = true
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// trTrust runs `kmsfs trust --yes` on v with extra flags and fails t if
// it fails.
func trTrust(t testing.TB, v *fusetest.CLIVolume, env []string, flags ...string) string {
	t.Helper()
	args := append(append([]string{"trust", "--yes"}, flags...), v.Cipher)
	out, err := trRunDetached(v, env, args...)
	if err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// trCheckWorks mounts v, writes and reads back a file, and unmounts: the
// owner's data stays usable once the attack is undone. It returns the
// file's cipher file, found while mounted (names may be encrypted).
func trCheckWorks(t *testing.T, v *fusetest.CLIVolume, name string) string {
	t.Helper()
	v.Mount(t)
	mntWriteFile(t, v.Path(name), []byte("still the owner's volume"))
	mntCheckFile(t, v.Path(name), []byte("still the owner's volume"))
	cp := mntCipherOf(t, v, name)
	v.Unmount(t)
	return cp
}

// TestTrustConfAttack edits kmsfs.conf as whoever controls the storage
// could, and checks that mount refuses, mounts nothing, says what is
// wrong and how to approve it, and that with the original conf back the
// volume mounts and no file carries a stanza for the attacker's key. Every
// attack runs on a volume with encrypted names and one with plaintext
// names; turning name encryption off is an attack of its own.
func TestTrustConfAttack(t *testing.T) {
	attacker := fusetest.KeyFile(t, t.TempDir(), nil) // a key file the attacker knows
	attackerID := trKeyFileID(t, attacker)
	hostFile := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(hostFile, []byte(`{"secret": "host-only-content-3f9a"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		attack func(t *testing.T, v *fusetest.CLIVolume, orig trConf)
		want   []string // patterns mount's message must match
		never  []string // patterns it must not
		names  string   // the one name mode (sxNameModes) it applies to; "": both
	}{
		{"attack=add-attacker-key", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			c["keys"] = append(c.keys(), map[string]any{"spec": "local:" + attacker, "key_id": attackerID})
			trWriteConf(t, v.Cipher, c)
		}, []string{`key added`, regexp.QuoteMeta(attackerID), "`kmsfs trust "}, nil, ""},
		{"attack=replace-primary-key", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			c.key(0)["spec"], c.key(0)["key_id"] = "local:"+attacker, attackerID
			trWriteConf(t, v.Cipher, c)
		}, []string{`key removed`, `key added`, regexp.QuoteMeta(attackerID), "`kmsfs trust "}, nil, ""},
		{"attack=drop-key-id", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			delete(c.key(0), "key_id")
			trWriteConf(t, v.Cipher, c)
		}, []string{`no key_id`, `kmsfs\.conf`}, nil, ""},
		{"attack=policy-per-file-to-batched", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			c["data_key_policy"] = "batched:max-files=1000000,max-age=8760h"
			trWriteConf(t, v.Cipher, c)
		}, []string{`data-key policy`, "`kmsfs trust "}, nil, ""},
		{"attack=layout", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			c["block_size"] = 8192
			trWriteConf(t, v.Cipher, c)
		}, []string{`block size: approved 4096, kmsfs\.conf has 8192`}, nil, ""},
		{"attack=other-volume-conf", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			other := suite.InitVolume(t, fusetest.CLIOptions{})
			trWriteConf(t, v.Cipher, trReadConf(t, other.Cipher))
		}, []string{`volume [0-9a-f]{32} in .* is not trusted on this host`, "approve with `kmsfs trust ", `this host approved volume [0-9a-f]{32} there`}, nil, ""},
		{"attack=symlink-to-host-file", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			p := filepath.Join(v.Cipher, "kmsfs.conf")
			os.Remove(p)
			if err := os.Symlink(hostFile, p); err != nil {
				t.Fatal(err)
			}
		}, []string{`kmsfs\.conf is a symbolic link: refused`}, []string{`host-only-content`, `secret`}, ""},
		{"attack=fifo", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			p := filepath.Join(v.Cipher, "kmsfs.conf")
			os.Remove(p)
			if err := syscall.Mkfifo(p, 0o644); err != nil {
				t.Fatal(err)
			}
		}, []string{`kmsfs\.conf is not a regular file`}, nil, ""},
		// New files would get their names in the clear, and the stored
		// encrypted names would show as they are.
		{"attack=names-off", func(t *testing.T, v *fusetest.CLIVolume, orig trConf) {
			c := trReadConf(t, v.Cipher)
			c["features"] = []any{}
			delete(c, "name_key_id")
			trWriteConf(t, v.Cipher, c)
		}, []string{`features: approved \["encrypted-names"\], kmsfs\.conf has \[\]`, `name key ID: approved "[0-9a-f]{32}", kmsfs\.conf has ""`, "`kmsfs trust "}, nil, "encrypted"},
	}
	for _, nm := range sxNameModes {
		for _, c := range cases {
			if c.names != "" && c.names != nm.name {
				continue
			}
			t.Run(fmt.Sprintf("names=%s,%s", nm.name, c.name), func(t *testing.T) {
				v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: append([]string{"--data-key-policy", "per-file"}, mntNamesArgs(nm.encrypted)...)})
				orig := trReadConf(t, v.Cipher)
				c.attack(t, v, orig)
				out := v.MountRefused(t, v.Cipher, v.Mnt, c.want...)
				for _, n := range c.never {
					if regexp.MustCompile(n).MatchString(out) {
						t.Errorf("message %q matches %q", strings.TrimSpace(out), n)
					}
				}
				trWriteConf(t, v.Cipher, orig)
				for _, f := range trWrappedFiles(v, trCheckWorks(t, v, "after"), nm.encrypted) {
					if ids := trStanzaKeyIDs(t, v, f); len(ids) != 1 || ids[0] == attackerID {
						t.Errorf("%s: stanzas for keys %q, want only the volume's own key", f, ids)
					}
				}
			})
		}
	}
}

// TestTrustKDFPinned changes the scrypt parameters of a passphrase volume
// in its kmsfs.conf within what the floor allows (a salt the attacker
// precomputed guesses for, another cost): the parameters are pinned, so
// the mount refuses it as a change. (Parameters below the floor are
// refused before that: TestKDFWeakened.)
func TestTrustKDFPinned(t *testing.T) {
	env := []string{"KMSFS_PASSPHRASE=correct horse battery staple"}
	for _, c := range []struct {
		name string
		edit func(kdf map[string]any)
	}{
		{"log_n=18", func(kdf map[string]any) { kdf["log_n"] = 18 }},
		{"salt=attackers", func(kdf map[string]any) { kdf["salt"] = "YXR0YWNrZXJzLXNhbHQtMTIzNDU2" }},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"local:passphrase"}, Env: env})
			orig := trReadConf(t, v.Cipher)
			conf := trReadConf(t, v.Cipher)
			c.edit(conf.key(0)["kdf"].(map[string]any))
			trWriteConf(t, v.Cipher, conf)
			v.MountRefused(t, v.Cipher, v.Mnt, `KDF parameters approved scrypt N=2\^\d+`, `kmsfs\.conf has scrypt`, "`kmsfs trust ")
			trWriteConf(t, v.Cipher, orig)
			trCheckWorks(t, v, "after")
		})
	}
}

// trEvilModule builds a shared library whose constructor writes marker:
// what an attacker plants to run code in a root daemon that dlopens it.
func trEvilModule(t *testing.T, dir, marker string) string {
	t.Helper()
	src := filepath.Join(dir, "evil.c")
	code := fmt.Sprintf(`#include <stdio.h>
__attribute__((constructor)) static void evil(void) {
	FILE *f = fopen(%q, "w");
	if (f) { fputs("loaded", f); fclose(f); }
}
`, marker)
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(dir, "libevil.so")
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cc", "-shared", "-fPIC", "-o", lib, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	return lib
}

// TestTrustPKCS11ModulePlanted names a planted library as the PKCS#11
// module-path of a SoftHSM volume's key in kmsfs.conf. Neither mount nor
// kmsfs trust may load it, whether or not the host approved the volume
// before; the module comes from the host, and the volume still mounts
// with it.
func TestTrustPKCS11ModulePlanted(t *testing.T) {
	h := suite.HSM(t)
	tok := h.Token("main")
	for _, anchored := range []bool{true, false} {
		t.Run(fmt.Sprintf("anchor=%v", anchored), func(t *testing.T) {
			dir := t.TempDir()
			marker := filepath.Join(dir, "evil-was-loaded")
			evil := trEvilModule(t, dir, marker)
			v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{tok.AESSpec()}})
			c := trReadConf(t, v.Cipher)
			if spec := c.key(0)["spec"].(string); strings.Contains(spec, "?") {
				t.Errorf("kmsfs.conf records the host settings of the key: %s", spec)
			}
			base, _, _ := strings.Cut(c.key(0)["spec"].(string), "?")
			c.key(0)["spec"] = base + "?module-path=" + evil + "&pin-source=file:" + tok.PINFile
			trWriteConf(t, v.Cipher, c)
			// The process environment must not name a module either: only
			// the anchor (or the trust command line) may.
			env := []string{"KMSFS_PKCS11_MODULE="}
			v.Env = append(v.Env, env...)
			if !anchored {
				os.Remove(trAnchor(t, v))
				v.MountRefused(t, v.Cipher, v.Mnt, `is not trusted on this host`, "`kmsfs trust ")
				out, err := trRunDetached(v, env, "trust", "--yes", v.Cipher)
				if err == nil || !strings.Contains(out, "--pkcs11-module") {
					t.Errorf("kmsfs trust without a host module: %v, want a failure asking for --pkcs11-module\n%s", err, out)
				}
				if _, err := os.Stat(marker); err == nil {
					t.Fatal("kmsfs loaded the module kmsfs.conf named")
				}
				out = trTrust(t, v, env, "--pkcs11-module", h.Module, "--pkcs11-pin-source", "file:"+tok.PINFile)
				if !strings.Contains(out, "module-path") || !strings.Contains(out, "ignored") {
					t.Errorf("kmsfs trust does not say the conf's module-path is ignored:\n%s", out)
				}
			}
			out, err := v.TryMount(t)
			if _, serr := os.Stat(marker); serr == nil {
				t.Fatal("kmsfs loaded the module kmsfs.conf named")
			}
			if err != nil {
				t.Fatalf("kmsfs mount with the host's module: %v\n%s", err, out)
			}
			mntWriteFile(t, v.Path("f"), []byte("on the token"))
			mntCheckFile(t, v.Path("f"), []byte("on the token"))
		})
	}
}

// TestTrustAnchorUnsafe makes the trust dir or anchor file something
// another user could have written, or a symlink: mount refuses and says
// why.
func TestTrustAnchorUnsafe(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, anchor string)
		want   []string
	}{
		{"dir=world-writable", func(t *testing.T, anchor string) {
			if err := os.Chmod(filepath.Dir(anchor), 0o777); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust dir .* is writable by group or others`, `chmod go-w`}},
		{"dir=group-writable", func(t *testing.T, anchor string) {
			if err := os.Chmod(filepath.Dir(anchor), 0o770); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust dir .* is writable by group or others`}},
		{"dir=symlink", func(t *testing.T, anchor string) {
			d := filepath.Dir(anchor)
			if err := os.Rename(d, d+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(d+".real", d); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust dir .* is a symbolic link`}},
		{"file=world-writable", func(t *testing.T, anchor string) {
			if err := os.Chmod(anchor, 0o666); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust anchor .* is writable by group or others`}},
		{"file=symlink", func(t *testing.T, anchor string) {
			if err := os.Rename(anchor, anchor+".real"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(anchor+".real", anchor); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust anchor .* is a symbolic link`}},
		{"file=other-user", func(t *testing.T, anchor string) {
			if err := os.Chown(anchor, fusetest.Nobody, fusetest.Nobody); err != nil {
				t.Fatal(err)
			}
		}, []string{`trust anchor .* belongs to user 65534`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := suite.InitVolume(t, fusetest.CLIOptions{})
			c.attack(t, trAnchor(t, v))
			v.MountRefused(t, v.Cipher, v.Mnt, c.want...)
		})
	}
}

// TestTrustApprove changes a volume on purpose and approves the change
// with kmsfs trust, and approves a volume made before trust anchors
// existed (its kmsfs.conf still names its key file, no anchor).
func TestTrustApprove(t *testing.T) {
	t.Run("change=policy", func(t *testing.T) {
		v := suite.InitVolume(t, fusetest.CLIOptions{})
		trCheckWorks(t, v, "before")
		c := trReadConf(t, v.Cipher)
		c["data_key_policy"] = "per-file"
		trWriteConf(t, v.Cipher, c)
		v.MountRefused(t, v.Cipher, v.Mnt, `data-key policy: approved "batched", kmsfs\.conf has "per-file"`)
		out, err := trRunDetached(v, nil, "trust", v.Cipher)
		if err == nil || !strings.Contains(out, "kmsfs trust --yes") {
			t.Errorf("kmsfs trust without a terminal or --yes: %v, want a failure pointing at --yes\n%s", err, out)
		}
		out = trTrust(t, v, nil)
		if !strings.Contains(out, `data-key policy: approved "batched", kmsfs.conf has "per-file"`) {
			t.Errorf("kmsfs trust does not show the change:\n%s", out)
		}
		trCheckWorks(t, v, "after")
		v.Mount(t)
		mntCheckFile(t, v.Path("before"), []byte("still the owner's volume"))
	})
	t.Run("change=legacy-volume", func(t *testing.T) {
		v := suite.InitVolume(t, fusetest.CLIOptions{})
		trCheckWorks(t, v, "before")
		c := trReadConf(t, v.Cipher)
		c.key(0)["spec"] = "local:" + v.Key // as kmsfs init wrote it before anchors
		trWriteConf(t, v.Cipher, c)
		os.Remove(trAnchor(t, v))
		v.MountRefused(t, v.Cipher, v.Mnt, `is not trusted on this host; review it and approve with `+"`kmsfs trust ")
		out, err := trRunDetached(v, nil, "trust", "--yes", v.Cipher)
		if err == nil || !strings.Contains(out, "--key-file") {
			t.Errorf("kmsfs trust of a key-file volume without --key-file: %v, want a failure asking for it\n%s", err, out)
		}
		trTrust(t, v, nil, "--key-file", v.Key)
		v.Mount(t)
		mntCheckFile(t, v.Path("before"), []byte("still the owner's volume"))
	})
}

// TestTrustAliasMoved moves the AWS alias a volume was made with to
// another key, as anyone allowed kms:UpdateAlias can: the mount refuses
// and names both keys until the host approves the change with kmsfs
// trust; then it mounts, new files stay wrapped for the approved key ARN,
// and the mount logs the alias's target once. It runs with encrypted and
// with plaintext names: the name key was wrapped through the alias too,
// and stays wrapped for the approved key only.
func TestTrustAliasMoved(t *testing.T) {
	for _, nm := range sxNameModes {
		t.Run("names="+nm.name, func(t *testing.T) { trAliasMoved(t, nm.encrypted) })
	}
}

func trAliasMoved(t *testing.T, encNames bool) {
	e := fusetest.KMS(t)
	v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + kmstest.Alias}, Env: fusetest.AWSEnv(e), InitArgs: mntNamesArgs(encNames)})
	trCheckWorks(t, v, "before")
	ctx, cancel := context.WithTimeout(context.Background(), fusetest.CmdTimeout)
	defer cancel()
	if _, err := e.Client().UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(kmstest.Alias), TargetKeyId: aws.String(e.Symmetric2.ID)}); err != nil {
		t.Fatal(err)
	}
	v.MountRefused(t, v.Cipher, v.Mnt,
		regexp.QuoteMeta(fmt.Sprintf("alias %s now points at key %s, not at key %s that this volume was approved with", kmstest.Alias, e.Symmetric2.ARN, e.Symmetric.ARN)),
		"`kmsfs trust "+regexp.QuoteMeta(v.Cipher)+"`",
	)
	out := trTrust(t, v, nil)
	if want := fmt.Sprintf("alias %s now points at key %s; this volume keeps using key %s", kmstest.Alias, e.Symmetric2.ARN, e.Symmetric.ARN); !strings.Contains(out, want) {
		t.Errorf("kmsfs trust does not show the moved alias (%q):\n%s", want, out)
	}
	before := strings.Count(v.LogText(), "points at key")
	for _, f := range trWrappedFiles(v, trCheckWorks(t, v, "after"), encNames) {
		if ids := trStanzaKeyIDs(t, v, f); len(ids) != 1 || ids[0] != e.Symmetric.ARN {
			t.Errorf("%s, after the alias moved, has stanzas for %q, want only the approved %s", f, ids, e.Symmetric.ARN)
		}
	}
	log := v.LogText()
	if n := strings.Count(log, "points at key") - before; n != 1 {
		t.Errorf("the mount logged the alias's target %d times, want once:\n%s", n, log)
	}
	want := fmt.Sprintf("alias %s points at key %s; this volume keeps using key %s, as this host approved", kmstest.Alias, e.Symmetric2.ARN, e.Symmetric.ARN)
	if !strings.Contains(log, want) {
		t.Errorf("log does not say %q:\n%s", want, log)
	}
	// Pointed back at the volume's own key: mounts, with nothing to say.
	if _, err := e.Client().UpdateAlias(ctx, &kms.UpdateAliasInput{AliasName: aws.String(kmstest.Alias), TargetKeyId: aws.String(e.Symmetric.ID)}); err != nil {
		t.Fatal(err)
	}
	before = strings.Count(v.LogText(), "points at key")
	trCheckWorks(t, v, "back")
	if n := strings.Count(v.LogText(), "points at key") - before; n != 0 {
		t.Errorf("the mount logged the alias's target with the alias back on the volume's key:\n%s", v.LogText())
	}
}
