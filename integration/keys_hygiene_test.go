package integration_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
)

// TestDaemonNotDumpable is the attack of another process of the mounting
// user reading the daemon's memory or environment: as nobody, mount a
// volume, then as nobody again read the daemon's /proc/PID/environ and
// /proc/PID/mem. Both are refused because the daemon made itself
// non-dumpable (a dumpable daemon lets its own user read its environ; mem
// needs ptrace rights, which Yama may also withhold).
func TestDaemonNotDumpable(t *testing.T) {
	fusetest.NeedFUSEForUsers(t)
	dir := fusetest.SharedDir(t)
	v := suite.StartVolume(t, fusetest.CLIOptions{Dir: dir, Cred: fusetest.NobodyCred()})
	h := suite.User(t, fusetest.NobodyCred())
	h.MustInput(t, []byte("data"), "create", v.Path("f"), "600", "-")
	if uid := fusetest.ProcUID(t, v.PID()); uid != fusetest.Nobody {
		t.Fatalf("daemon runs as uid %d, want nobody", uid)
	}
	for _, file := range []string{"environ", "mem", "maps"} {
		t.Run("file="+file, func(t *testing.T) {
			out, errno := h.Do(t, "read", fmt.Sprintf("/proc/%d/%s", v.PID(), file))
			if errno != syscall.EACCES {
				t.Fatalf("nobody reads the nobody daemon's /proc/%d/%s: errno %v (%d bytes), want EACCES", v.PID(), file, errno, len(out))
			}
		})
	}
	if got := h.Must(t, "read", v.Path("f")); got != "data" {
		t.Fatalf("read back %q", got)
	}
}

// TestEnvSecretsNotInDaemon is the attack of reading a secret that was
// given in the environment out of the running daemon's /proc/PID/environ
// (or its command line): for a passphrase in KMSFS_PASSPHRASE and a PKCS#11
// PIN in KMSFS_PKCS11_PIN or a pin-source=env: variable, mounted in the
// background and with -f, the daemon's environment and arguments do not
// hold the secret, and the volume works across a remount.
func TestEnvSecretsNotInDaemon(t *testing.T) {
	const pass = "hygiene-passphrase-7f3a"
	for _, src := range []string{"passphrase", "pkcs11-pin-env", "pkcs11-pin-source-env"} {
		for _, mode := range []string{"background", "foreground"} {
			t.Run(fmt.Sprintf("source=%s,mode=%s", src, mode), func(t *testing.T) {
				var specs, env []string
				secret := pass
				switch src {
				case "passphrase":
					specs, env = []string{"local:passphrase"}, []string{"KMSFS_PASSPHRASE=" + pass}
				default:
					tok := suite.HSM(t).Token("main")
					secret = tok.PIN
					spec, _, ok := strings.Cut(tok.AESSpec(), "&pin-source=")
					if !ok {
						t.Fatalf("spec %s has no pin-source", tok.AESSpec())
					}
					if src == "pkcs11-pin-env" {
						env = []string{"KMSFS_PKCS11_PIN=" + tok.PIN}
					} else {
						spec += "&pin-source=env:KMSFS_TEST_TOKEN_PIN"
						env = []string{"KMSFS_TEST_TOKEN_PIN=" + tok.PIN}
					}
					specs = []string{spec}
				}
				v := suite.InitVolume(t, fusetest.CLIOptions{Keys: specs, Env: env})
				for round := range 2 {
					if mode == "background" {
						v.Mount(t)
					} else {
						v.MountForeground(t)
					}
					pid := v.PID()
					for _, file := range []string{"environ", "cmdline"} {
						raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
						if err != nil {
							t.Fatal(err)
						}
						if bytes.Contains(raw, []byte(secret)) {
							t.Fatalf("round %d: the daemon's /proc/%d/%s holds the secret", round, pid, file)
						}
					}
					name := fmt.Sprintf("f%d", round)
					mntWriteFile(t, v.Path(name), []byte("hygiene "+name))
					for r := range round + 1 {
						mntCheckFile(t, v.Path(fmt.Sprintf("f%d", r)), []byte(fmt.Sprintf("hygiene f%d", r)))
					}
					if mode == "background" {
						v.Unmount(t)
					} else if err := v.Stop(t, fusetest.ExitTimeout); err != nil {
						t.Fatalf("kmsfs mount -f after SIGTERM: %v\n%s", err, v.LogText())
					}
				}
			})
		}
	}
}

// TestKDFWeakened is the attack of an edited kmsfs.conf that lowers the
// scrypt cost of a passphrase volume, so that the next mount's stanzas are
// cheap to brute-force: the mount is refused with a message naming the
// floor, and the volume still mounts once the parameters are restored.
func TestKDFWeakened(t *testing.T) {
	env := []string{"KMSFS_PASSPHRASE=weakened-kdf-passphrase"}
	v := suite.StartVolume(t, fusetest.CLIOptions{Keys: []string{"local:passphrase"}, Env: env})
	mntWriteFile(t, v.Path("f"), []byte("before the edit"))
	v.Unmount(t)
	confPath := filepath.Join(v.Cipher, "kmsfs.conf")
	orig, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		field string
		value float64
	}{{"log_n", 10}, {"log_n", 15}, {"r", 1}} {
		t.Run(fmt.Sprintf("%s=%v", c.field, c.value), func(t *testing.T) {
			var conf map[string]any
			if err := json.Unmarshal(orig, &conf); err != nil {
				t.Fatal(err)
			}
			kdf, ok := conf["keys"].([]any)[0].(map[string]any)["kdf"].(map[string]any)
			if !ok {
				t.Fatalf("kmsfs.conf has no kdf for its passphrase key: %s", orig)
			}
			kdf[c.field] = c.value
			raw, err := json.Marshal(conf)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(confPath, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			v.MountRefused(t, v.Cipher, v.Mnt, `below the minimum log_n=16 r=8`, `kmsfs\.conf`)
		})
	}
	if err := os.WriteFile(confPath, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	v.Mount(t)
	mntCheckFile(t, v.Path("f"), []byte("before the edit"))
}
