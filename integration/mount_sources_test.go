package integration_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/internal/p11shim"
)

// mntSourceCase is one key source a volume is made with.
type mntSourceCase struct {
	name string
	// keys returns the --key specs, the environment and the key ID that
	// kmsfs.conf must record ("" checks none).
	keys func(t *testing.T) (specs, env []string, keyID string)
}

// TestMountKeySources writes files through a mount of each key source,
// remounts, reads them back, and checks that the cipher dir never holds
// the plaintext.
func TestMountKeySources(t *testing.T) {
	// One emulator, started here so that it outlives the subtests.
	e := fusetest.KMS(t)
	cases := []mntSourceCase{
		{"source=local", func(t *testing.T) ([]string, []string, string) {
			return []string{"local:" + fusetest.KeyFile(t, t.TempDir(), nil)}, nil, ""
		}},
		{"source=awskms/alias", func(t *testing.T) ([]string, []string, string) {
			// The alias resolves to the key's ARN, which the volume records.
			return []string{"awskms:" + kmstest.Alias}, fusetest.AWSEnv(e), e.Symmetric.ARN
		}},
		{"source=awskms/rsa-arn", func(t *testing.T) ([]string, []string, string) {
			return []string{"awskms:" + e.RSAEncrypt.ARN}, fusetest.AWSEnv(e), e.RSAEncrypt.ARN
		}},
		{"source=pkcs11/aes", func(t *testing.T) ([]string, []string, string) {
			h := suite.HSM(t)
			return []string{h.Token("main").AESSpec()}, nil, ""
		}},
		{"source=pkcs11/rsa", func(t *testing.T) ([]string, []string, string) {
			h := suite.HSM(t)
			return []string{h.Token("main").RSASpec()}, nil, ""
		}},
	}
	// The same token behind the PKCS#11 shim, behaving as vendor HSMs do
	// (internal/p11shim): read-only sessions refused, IVs made by the
	// token, renamed key-wrap mechanisms, sensitive-only keys.
	for _, p := range []p11shim.Profile{p11shim.CloudHSM, p11shim.LunaFIPS} {
		for _, key := range []string{"aes", "rsa"} {
			cases = append(cases, mntSourceCase{"source=pkcs11/" + key + ",hsm=" + string(p), func(t *testing.T) ([]string, []string, string) {
				tok := suite.HSM(t).Token("main")
				spec, env := mntShimSpec(t, tok, p, 0, map[string]string{"aes": tok.AESLabel, "rsa": tok.RSALabel}[key])
				return []string{spec}, env, ""
			}})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			specs, env, keyID := c.keys(t)
			v := suite.StartVolume(t, fusetest.CLIOptions{Keys: specs, Env: env})
			if keyID != "" {
				mntCheckConfKeyID(t, v.Cipher, keyID)
			}
			files := mntSourceFiles()
			for name, data := range files {
				p := v.Path(name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatalf("write %s: %v", name, err)
				}
			}
			v.Remount(t)
			for name, data := range files {
				got, err := os.ReadFile(v.Path(name))
				if err != nil {
					t.Fatalf("read %s after remount: %v", name, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("%s after remount: %d bytes differ from the %d written", name, len(got), len(data))
				}
			}
			// Every file but the empty one carries the marker.
			if leaks := mntCipherLeaks(t, v.Cipher, mntMarker(files)); len(leaks) > 0 {
				t.Fatalf("cipher files hold plaintext: %v", leaks)
			}
		})
	}
}

// TestPKCS11SessionsDropped mounts a volume on a token that closes every
// session and ends the login every 100 calls, as an HSM does on
// failover: with one data key per file, writing files, remounting and
// reading them all back (10,000 opens, each unwrapping its own key, for
// the AES key; 1,000 for the slower RSA one) makes each file's key go
// through the token, over many drops, and every call must succeed.
func TestPKCS11SessionsDropped(t *testing.T) {
	for _, c := range []struct {
		key         string
		drop, files int
	}{{"aes", 100, 10000}, {"rsa", 100, 1000}} {
		key, drop, files := c.key, c.drop, c.files
		t.Run(fmt.Sprintf("key=%s,drop-every=%d,files=%d", key, drop, files), func(t *testing.T) {
			tok := suite.HSM(t).Token("main")
			spec, env := mntShimSpec(t, tok, p11shim.CloudHSM, drop, map[string]string{"aes": tok.AESLabel, "rsa": tok.RSALabel}[key])
			v := suite.StartVolume(t, fusetest.CLIOptions{Keys: []string{spec}, Env: env, InitArgs: []string{"--data-key-policy", "per-file"}})
			for i := range files {
				if err := os.WriteFile(v.Path(fmt.Sprintf("f%03d", i)), []byte(fmt.Sprintf("file %d\n", i)), 0o644); err != nil {
					t.Fatalf("write f%03d: %v", i, err)
				}
			}
			v.Remount(t)
			for i := range files {
				got, err := os.ReadFile(v.Path(fmt.Sprintf("f%03d", i)))
				if err != nil || string(got) != fmt.Sprintf("file %d\n", i) {
					t.Fatalf("read f%03d after remount: %q, %v", i, got, err)
				}
			}
		})
	}
}

// mntShimSpec returns the key spec of object on tok reached through the
// PKCS#11 shim in profile p (dropping sessions every drop calls, if not
// 0), and the environment that gives kmsfs the shim's configuration.
func mntShimSpec(t *testing.T, tok *hsmtest.Token, p p11shim.Profile, drop int, object string) (string, []string) {
	t.Helper()
	shim := p11shim.Need(t, t.TempDir())
	cfg, err := p.Config()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Module, cfg.DropEvery = suite.HSM(t).Module, drop
	path := filepath.Join(t.TempDir(), "p11shim.conf")
	if err := cfg.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	spec := tok.URI(object)
	i := strings.Index(spec, "module-path=")
	j := strings.IndexByte(spec[i:], '&')
	if i < 0 || j < 0 {
		t.Fatalf("bad test: no module-path in %s", spec)
	}
	return spec[:i] + "module-path=" + shim + spec[i+j:], []string{p11shim.EnvConfig + "=" + path}
}

// mntSourceFiles returns files of boundary sizes around the 4 KiB block,
// each filled with a random marker that must never reach the cipher dir.
func mntSourceFiles() map[string][]byte {
	marker := make([]byte, 16)
	rand.Read(marker)
	m := []byte("secret-" + hex.EncodeToString(marker) + "\n")
	files := map[string][]byte{}
	for _, size := range []int{0, len(m), 4095, 4096, 4097, 2*4096 + 100, 1<<20 + 3} {
		files[fmt.Sprintf("dir/size-%d", size)] = bytes.Repeat(m, size/len(m)+1)[:size]
	}
	return files
}

// mntMarker returns the marker line of mntSourceFiles' files.
func mntMarker(files map[string][]byte) []byte {
	for _, data := range files {
		if i := bytes.IndexByte(data, '\n'); i > 0 {
			return data[:i]
		}
	}
	panic("mntMarker: no file holds a marker")
}

// mntCheckConfKeyID checks that kmsfs.conf records want as the volume's
// first key ID (for AWS the resolved ARN, never only an alias).
func mntCheckConfKeyID(t *testing.T, cipher, want string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(cipher, "kmsfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Keys []struct {
			KeyID string `json:"key_id"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(raw, &conf); err != nil {
		t.Fatalf("kmsfs.conf: %v", err)
	}
	if len(conf.Keys) == 0 || conf.Keys[0].KeyID != want {
		t.Fatalf("kmsfs.conf keys %+v, want key_id %s", conf.Keys, want)
	}
	if strings.Contains(want, "alias/") {
		t.Fatalf("bad test: %s is an alias", want)
	}
}
