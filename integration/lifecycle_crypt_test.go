package integration_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// crySize spans several blocks and ends in a partial one.
const crySize = 200<<10 + 3

// cryRun runs the volume's kmsfs (CLIVolume.Command) with stdin and env,
// bounded by fusetest.CmdTimeout, and returns stdout and stderr apart (the
// cipher text or plaintext of a pipe is on stdout).
func cryRun(t *testing.T, v *fusetest.CLIVolume, stdin []byte, env []string, args ...string) (stdout []byte, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), fusetest.CmdTimeout)
	defer cancel()
	cmd := v.Command(ctx, env, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = fusetest.CmdTimeout
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("kmsfs %s did not finish within %v", strings.Join(args, " "), fusetest.CmdTimeout)
	}
	return out.Bytes(), errb.String(), err
}

// cryMust is cryRun that fails t when kmsfs fails.
func cryMust(t *testing.T, v *fusetest.CLIVolume, stdin []byte, env []string, args ...string) []byte {
	t.Helper()
	out, stderr, err := cryRun(t, v, stdin, env, args...)
	if err != nil {
		t.Fatalf("kmsfs %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return out
}

func cryPlain(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// cryTampered checks the attacker who edits a block of a cipher file
// before it is restored: decrypt -o fails naming the file and the block,
// and leaves no file (nor a temporary one) behind.
func cryTampered(t *testing.T, v *fusetest.CLIVolume, cipherFile string) {
	t.Helper()
	raw, err := os.ReadFile(cipherFile)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0x01
	dir := t.TempDir()
	bad := filepath.Join(dir, "tampered")
	if err := os.WriteFile(bad, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "restored")
	_, stderr, err := cryRun(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "-o", out, bad)
	if err == nil {
		t.Fatal("decrypt of a tampered cipher file succeeded")
	}
	if !strings.Contains(stderr, bad) || !strings.Contains(stderr, "block ") || !strings.Contains(stderr, "authentication failed") {
		t.Errorf("decrypt's error does not name the file and the block:\n%s", stderr)
	}
	es, _ := os.ReadDir(dir)
	if len(es) != 1 {
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		t.Errorf("decrypt of a tampered file left files behind: %v", names)
	}
}

// cryPlaces returns where in the cipher dir encrypt -o must write each of
// files for the mount to show it under that name. With plaintext names
// that is the name itself. With encrypted names only the name key makes
// the backing entry of a name, so the mount makes each file and encrypt
// replaces its backing entry. (Not empty: a cipher file of 0 bytes has no
// header, which MountedCipherPath reads.)
func cryPlaces(t *testing.T, v *fusetest.CLIVolume, encrypted bool, files ...string) map[string]string {
	t.Helper()
	places := map[string]string{}
	if !encrypted {
		for _, f := range files {
			places[f] = v.CipherPath(f)
		}
		return places
	}
	v.Mount(t)
	for _, f := range files {
		if err := os.WriteFile(v.Path(f), []byte("placeholder"), 0o600); err != nil {
			t.Fatal(err)
		}
		p, err := v.MountedCipherPath(f)
		if err != nil {
			t.Fatal(err)
		}
		places[f] = p
	}
	v.Unmount(t)
	return places
}

// TestCryptKeySources encrypts and decrypts without a mount with each key
// source, from paths and through pipes, and checks that what encrypt puts
// in the cipher dir reads back through a mount and what the mount writes
// decrypts (with the mount running: encrypt and decrypt take no lock), on
// a volume of each name mode.
func TestCryptKeySources(t *testing.T) {
	e := fusetest.KMS(t)
	cases := []struct {
		name string
		keys func(t *testing.T) ([]string, []string)
	}{
		{"source=local", func(t *testing.T) ([]string, []string) {
			return []string{"local:" + fusetest.KeyFile(t, t.TempDir(), nil)}, nil
		}},
		{"source=awskms/alias", func(t *testing.T) ([]string, []string) {
			return []string{"awskms:" + kmstest.Alias}, fusetest.AWSEnv(e)
		}},
		{"source=awskms/rsa", func(t *testing.T) ([]string, []string) {
			return []string{"awskms:" + e.RSAEncrypt.ARN}, fusetest.AWSEnv(e)
		}},
		{"source=pkcs11/aes", func(t *testing.T) ([]string, []string) {
			return []string{suite.HSM(t).Token("main").AESSpec()}, nil
		}},
		{"source=pkcs11/rsa", func(t *testing.T) ([]string, []string) {
			return []string{suite.HSM(t).Token("main").RSASpec()}, nil
		}},
	}
	for _, c := range cases {
		for _, nm := range sxNameModes {
			t.Run(c.name+",names="+nm.name, func(t *testing.T) { cryKeySource(t, c.keys, nm.encrypted) })
		}
	}
}

// cryKeySource is TestCryptKeySources of one key source and name mode.
func cryKeySource(t *testing.T, keys func(t *testing.T) ([]string, []string), encrypted bool) {
	specs, env := keys(t)
	v := suite.InitVolume(t, fusetest.CLIOptions{Keys: specs, Env: env, InitArgs: lcNameArgs(encrypted)})
	place := cryPlaces(t, v, encrypted, "byname", "piped")
	plain := cryPlain(t, crySize)
	src := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(src, plain, 0o640); err != nil {
		t.Fatal(err)
	}
	cryMust(t, v, nil, nil, "encrypt", "--volume", v.Cipher, "-o", place["byname"], src)
	if fi, err := os.Stat(place["byname"]); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("encrypted file %v, %v: want the source's mode 0640", fi, err)
	}
	// Pipes: stdin to stdout both ways.
	cipherText := cryMust(t, v, plain, nil, "encrypt", "--volume", v.Cipher)
	if bytes.Contains(cipherText, plain[:64]) {
		t.Fatal("encrypt's output holds plaintext")
	}
	if got := cryMust(t, v, cipherText, nil, "decrypt", "--volume", v.Cipher); !bytes.Equal(got, plain) {
		t.Fatalf("decrypt from stdin gave %d bytes, not the %d encrypted", len(got), len(plain))
	}
	if err := os.WriteFile(place["piped"], cipherText, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "restored")
	cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, "-o", out, place["byname"])
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("decrypt -o gave %d bytes (%v), not the %d encrypted", len(got), err, len(plain))
	}

	v.Mount(t)
	for _, name := range []string{"byname", "piped"} {
		got, err := os.ReadFile(v.Path(name))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("read %s through the mount: %d bytes, %v; want the %d encrypted", name, len(got), err, len(plain))
		}
	}
	if err := os.WriteFile(v.Path("mounted"), plain, 0o600); err != nil {
		t.Fatal(err)
	}
	mounted, err := v.MountedCipherPath("mounted")
	if err != nil {
		t.Fatal(err)
	}
	if got := cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, mounted); !bytes.Equal(got, plain) {
		t.Fatalf("decrypt of the mount's file gave %d bytes, not the %d written", len(got), len(plain))
	}
	cryTampered(t, v, place["byname"])
}

// TestCryptPublicKeyOnly is the producer host that holds only the public
// key of the volume's RSA KMS key: it encrypts into the cipher dir with no
// KMS call at all (KMS is unreachable from it), and decrypt is refused
// there with a clear error; the file decrypts where KMS Decrypt is allowed.
func TestCryptPublicKeyOnly(t *testing.T) {
	e := fusetest.KMS(t)
	// Names in clear: a host with only the public key cannot unwrap the
	// name key, and places files by their names (README).
	v := suite.InitVolume(t, fusetest.CLIOptions{Keys: []string{"awskms:" + e.RSAEncrypt.ARN}, Env: fusetest.AWSEnv(e), InitArgs: []string{"--plaintext-names"}})
	pubFile, noKMS := cryPublicKey(t, e)
	plain := cryPlain(t, crySize)
	cryMust(t, v, plain, noKMS, "encrypt", "--volume", v.Cipher, "--public-key-file", pubFile, "-o", v.CipherPath("produced"))

	for _, c := range []struct {
		name string
		args []string
	}{
		{"out=file", []string{"-o", filepath.Join(t.TempDir(), "restored")}},
		{"out=stdout", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"decrypt", "--volume", v.Cipher, "--public-key-file", pubFile}, c.args...)
			got, stderr, err := cryRun(t, v, nil, noKMS, append(args, v.CipherPath("produced"))...)
			if err == nil {
				t.Fatal("decrypt with only the public key succeeded")
			}
			if len(got) > 0 || !strings.Contains(stderr, "public key") || !strings.Contains(stderr, "private key") {
				t.Errorf("decrypt refused with %d bytes out and %q, want no output and a public/private key error", len(got), stderr)
			}
			if len(c.args) > 0 {
				if _, err := os.Stat(c.args[1]); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("decrypt left %s: %v", c.args[1], err)
				}
			}
		})
	}
	if got := cryMust(t, v, nil, nil, "decrypt", "--volume", v.Cipher, v.CipherPath("produced")); !bytes.Equal(got, plain) {
		t.Fatalf("decrypt with KMS gave %d bytes, not the %d encrypted", len(got), len(plain))
	}
}

// cryPublicKey writes the public key of e's RSA key to a file, as a
// producer host holds it, and returns its path and the environment of a
// host that cannot reach KMS: nothing listens at port 9 of the loopback,
// so any KMS call fails.
func cryPublicKey(t *testing.T, e *kmstest.Emulator) (string, []string) {
	t.Helper()
	pub, err := e.Client().GetPublicKey(t.Context(), &kms.GetPublicKeyInput{KeyId: aws.String(e.RSAEncrypt.ARN)})
	if err != nil {
		t.Fatalf("GetPublicKey: %v", err)
	}
	pubFile := filepath.Join(t.TempDir(), "key.pub")
	if err := os.WriteFile(pubFile, pub.PublicKey, 0o644); err != nil {
		t.Fatal(err)
	}
	return pubFile, []string{"AWS_ENDPOINT_URL_KMS=http://127.0.0.1:9"}
}

// TestCryptUsageErrors covers the usage errors a
// script meets first: no --volume, and an unapproved cipher dir.
func TestCryptUsageErrors(t *testing.T) {
	v := suite.InitVolume(t, fusetest.CLIOptions{})
	other := t.TempDir()
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"volume=none", []string{"encrypt"}, `"volume" not set`},
		{"volume=untrusted", []string{"decrypt", "--volume", other}, "kmsfs.conf"},
		{"out=directory", []string{"encrypt", "--volume", v.Cipher, "-o", other}, "is a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, err := cryRun(t, v, []byte("x"), nil, c.args...)
			if err == nil || !strings.Contains(stderr, c.want) {
				t.Errorf("kmsfs %s: %v, %q; want a failure saying %q", strings.Join(c.args, " "), err, stderr, c.want)
			}
		})
	}
}
