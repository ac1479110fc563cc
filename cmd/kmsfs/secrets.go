package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource/local"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
	"github.com/kmsfs/kmsfs/volume"
)

// maxSecrets bounds what goes through a secrets pipe: the -f re-exec
// writes it all before exec, so it must fit the pipe's 64 KiB buffer.
const maxSecrets = 60 << 10

// setNonDumpable stops core dumps of this process and ptrace and
// /proc/PID/mem access by other processes of the same user: every kmsfs
// command may hold a passphrase, PIN or key.
func setNonDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("cannot make the process non-dumpable: %w", err)
	}
	return nil
}

// secretEnvNames lists the environment variables that may hold a secret of
// the volume anchor a approved: the passphrase, the PKCS#11 PIN, and the
// variables that the host's approved PIN sources (env:NAME) name. The PIN
// sources come from the trust anchor, never from the cipher dir; with no
// anchor (a is nil: the mount fails anyway) the default names still go.
func secretEnvNames(a *volconf.Anchor) []string {
	names := []string{local.PassphraseEnv, pkcs11.EnvPIN}
	if a == nil {
		return names
	}
	for _, h := range a.Host {
		if name, ok := strings.CutPrefix(h.PKCS11PINSource, "env:"); ok && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// trustedOrNil is loadTrusted for deciding where secrets go before the
// mount proper: a volume that does not load yields nil, and the mount
// itself then says why.
func trustedOrNil(dir, trustDir string) *volconf.Anchor {
	a, err := volume.LoadTrusted(dir, trustDir)
	if err != nil {
		return nil
	}
	return a
}

// takeSecrets splits env into the secrets it holds under names (values
// copied into byte slices the caller clears) and the rest.
func takeSecrets(env, names []string) (map[string][]byte, []string) {
	secrets := map[string][]byte{}
	rest := make([]string, 0, len(env))
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		isSecret := false
		for _, n := range names {
			isSecret = isSecret || k == n
		}
		if !isSecret {
			rest = append(rest, kv)
		} else if v != "" {
			secrets[k] = []byte(v)
		}
	}
	return secrets, rest
}

// clearSecrets zeroes every value of secrets.
func clearSecrets(secrets map[string][]byte) {
	for _, v := range secrets {
		clear(v)
	}
}

// encodeSecrets lays secrets out for a pipe: per entry the name's and the
// value's lengths (32-bit big-endian), then the name and the value. The
// caller clears the result.
func encodeSecrets(secrets map[string][]byte) ([]byte, error) {
	var b []byte
	for k, v := range secrets {
		b = binary.BigEndian.AppendUint32(b, uint32(len(k)))
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(append(b, k...), v...)
	}
	if len(b) > maxSecrets {
		clear(b)
		return nil, fmt.Errorf("secrets in the environment exceed %d bytes", maxSecrets)
	}
	return b, nil
}

// readSecrets reads the secrets the parent (or the -f process before its
// re-exec) wrote to fd, and closes fd. The caller clears the values.
func readSecrets(fd int) (map[string][]byte, error) {
	f := os.NewFile(uintptr(fd), "secrets")
	if f == nil {
		return nil, fmt.Errorf("--secrets-fd=%d: not a descriptor", fd)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxSecrets+1))
	defer clear(raw)
	if err != nil {
		return nil, fmt.Errorf("reading secrets from the parent: %w", err)
	}
	secrets := map[string][]byte{}
	for b := raw; len(b) > 0; {
		if len(b) < 8 {
			clearSecrets(secrets)
			return nil, errors.New("reading secrets from the parent: truncated")
		}
		nk, nv := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
		b = b[8:]
		if uint64(nk)+uint64(nv) > uint64(len(b)) {
			clearSecrets(secrets)
			return nil, errors.New("reading secrets from the parent: truncated")
		}
		secrets[string(b[:nk])] = append([]byte(nil), b[nk:nk+nv]...)
		b = b[nk+nv:]
	}
	return secrets, nil
}

// secretsPipe returns the read end of a pipe whose write end a goroutine
// fills with secrets and closes. The pipe's descriptors are close-on-exec
// (os.Pipe); exec.Cmd.ExtraFiles hands the read end on.
func secretsPipe(secrets map[string][]byte) (*os.File, error) {
	b, err := encodeSecrets(secrets)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		clear(b)
		return nil, err
	}
	go func() {
		w.Write(b)
		clear(b)
		w.Close()
	}()
	return r, nil
}

// reexecWithoutSecrets moves the secrets of this process's environment to a
// pipe and replaces the process with the same program, same PID (systemd
// tracks it), with the secrets left out of the environment and
// --secrets-fd added. Go cannot scrub the initial environment block that
// /proc/PID/environ shows, so only a new exec removes them. It returns
// only on failure, or with nil if the environment holds no secret.
func reexecWithoutSecrets(cipherDir, trustDir string) error {
	secrets, env := takeSecrets(os.Environ(), secretEnvNames(trustedOrNil(cipherDir, trustDir)))
	defer clearSecrets(secrets)
	if len(secrets) == 0 {
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	b, err := encodeSecrets(secrets)
	if err != nil {
		return err
	}
	defer clear(b)
	// Not close-on-exec: the read end must survive the exec. Nothing else
	// runs yet that could fork and inherit it.
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		return err
	}
	_, werr := syscall.Write(p[1], b)
	syscall.Close(p[1])
	if werr != nil {
		syscall.Close(p[0])
		return fmt.Errorf("handing secrets over: %w", werr)
	}
	args := append(append([]string{os.Args[0]}, os.Args[1:]...), "--secrets-fd="+strconv.Itoa(p[0]))
	err = syscall.Exec(self, args, env)
	syscall.Close(p[0])
	return fmt.Errorf("re-executing %s without secrets in its environment: %w", self, err)
}

// secretLookup returns a LookupEnv for key sources: handed-over secrets
// first, then the process environment.
func secretLookup(secrets map[string][]byte) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if v, ok := secrets[name]; ok {
			return string(v), true
		}
		return os.LookupEnv(name)
	}
}

// mountSecrets gathers where a mount's secrets come from: the file named
// by --passphrase-file, the secrets the parent handed over on
// --secrets-fd, else (in the foreground, on a terminal) a prompt. The
// returned func clears the handed-over secrets once the keys are open.
func mountSecrets(f *mountFlags) (volume.Secrets, func(), error) {
	sec := volume.Secrets{PassphraseFile: f.passphraseFile}
	if f.secretsFD < 0 {
		if f.readyFD < 0 {
			sec.Prompt = promptPassphrase
		}
		return sec, func() {}, nil
	}
	secrets, err := readSecrets(f.secretsFD)
	if err != nil {
		return sec, nil, err
	}
	pp := secrets[local.PassphraseEnv]
	delete(secrets, local.PassphraseEnv)
	sec.Passphrase = pp
	sec.LookupEnv = secretLookup(secrets)
	return sec, func() { clear(pp); clearSecrets(secrets) }, nil
}
