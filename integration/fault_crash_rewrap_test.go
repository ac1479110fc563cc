package integration_test

import (
	"bytes"
	"context"
	"errors"
	"maps"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/volume"
)

// TestCrashRewrap SIGKILLs `kmsfs rewrap` at a random moment, round after
// round, each round rotating the volume to the other of two keys: after
// every kill the volume opens on this host and every file reads back as
// written (under its old or its new key), and at the end a rerun without
// options finishes the job, leaving every file under the last key alone
// and kmsfs.conf without a retiring key. Zero files lost. The volume
// encrypts names, so its name key file (kmsfs.names) is rewrapped with
// the rest and must open after every kill as well.
func TestCrashRewrap(t *testing.T) {
	rounds := 10
	if ftSoak() {
		rounds = 100
	}
	seed := envSeed(t)
	rng := mrand.New(mrand.NewPCG(seed, seed^0x5eed))
	v := suite.InitVolume(t, fusetest.CLIOptions{InitArgs: []string{"--data-key-policy", "batched:max-files=8"}})
	v.Mount(t)
	files := rwWrite(t, v, "x", 150)
	for k, b := range rwWrite(t, v, "y/z", 150) {
		files[k] = b
	}
	// The offline checks go by backing file, found while mounted: the
	// cipher dir's names are encrypted.
	stored := map[string][]byte{}
	for name, b := range files {
		rel, err := filepath.Rel(v.Cipher, v.BackingPath(t, name))
		if err != nil {
			t.Fatal(err)
		}
		stored[rel] = b
	}
	v.Unmount(t)
	keys := []string{v.Key, fusetest.KeyFile(t, t.TempDir(), nil)}
	trust := ""
	for _, e := range v.Env {
		if d, ok := strings.CutPrefix(e, fusetest.TrustDirEnv+"="); ok {
			trust = d
		}
	}

	// The kill lands uniformly within the time a whole rewrap took.
	start := time.Now()
	if _, code := rwRewrap(t, v, "--to", "local:"+keys[1]); code != 0 {
		t.Fatalf("first rewrap: exit %d", code)
	}
	full := time.Since(start)
	// A round whose kill comes after the rewrap ended does not count:
	// rounds go on until rounds kills landed mid-run, bounded.
	killed, round := 0, 0
	for ; killed < rounds && round < 5*rounds; round++ {
		to := keys[round%2]
		delay := time.Duration(rng.Int64N(int64(full)))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := v.Command(ctx, nil, "rewrap", "--to", "local:"+to, v.Cipher)
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		timer := time.AfterFunc(delay, func() { cmd.Process.Signal(syscall.SIGKILL) })
		err := cmd.Wait()
		timer.Stop()
		cancel()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
			killed++
		} else if err != nil {
			t.Fatalf("round %d: rewrap --to %s: %v", round, filepath.Base(to), err)
		}
		rwCheckOffline(t, v.Cipher, trust, stored, round)
	}
	t.Logf("seed %d: %d rounds, %d killed mid-run (a whole rewrap takes %v)", seed, round, killed, full.Round(time.Millisecond))
	if killed < rounds {
		t.Fatalf("only %d of %d rounds were killed before the rewrap ended", killed, round)
	}

	r, code := rwRewrap(t, v)
	if code != 0 || !r.Done() || len(r.Keys) != 1 {
		t.Fatalf("rerun after the last kill: exit %d, %+v; want the job finished", code, r)
	}
	if ks := rwConf(t, v).Keys; len(ks) != 1 || ks[0].Retiring {
		t.Fatalf("kmsfs.conf keys %+v, want one key, not retiring", ks)
	}
	// The name key too is under the last key alone.
	keyed := maps.Clone(stored)
	keyed[volconf.NamesName] = nil
	rwCheckStanzas(t, v, keyed, r.Keys[0])
	// The key the rerun finished with (the last round's, or the one
	// before if the last kill came before kmsfs.conf changed) alone opens
	// everything.
	vid, err := rwConf(t, v).ID()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		id, err := volume.KeyFileID(k, vid)
		if err != nil {
			t.Fatal(err)
		}
		if id != r.Keys[0] {
			if err := os.Remove(k); err != nil {
				t.Fatal(err)
			}
		}
	}
	if out, err := v.TryMount(t); err != nil {
		t.Fatalf("mount with the last key alone: %v\n%s", err, out)
	}
	v.Unmount(t)
	rwCheckContent(t, v, files)
}

// rwCheckOffline opens the volume in dir as the host approved it (trust
// dir trust), with its name key, and reads every file back, files named
// by their backing path below dir.
func rwCheckOffline(t *testing.T, dir, trust string, files map[string][]byte, round int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := volume.Open(ctx, dir, volume.Options{TrustDir: trust, ReadOnly: true})
	if err != nil {
		t.Fatalf("round %d: the volume does not open after the kill: %v", round, err)
	}
	defer v.Close()
	if v.NameKey() == nil {
		t.Fatalf("round %d: the volume opened without its name key", round)
	}
	var buf bytes.Buffer
	for name, want := range files {
		p := filepath.Join(dir, name)
		f, err := volume.OpenCipherFile(p)
		if err != nil {
			t.Fatal(err)
		}
		buf.Reset()
		_, err = v.Decrypt(ctx, &buf, f, p)
		f.Close()
		if err != nil || !bytes.Equal(buf.Bytes(), want) {
			t.Fatalf("round %d: %s after the kill: %v (%d bytes, want %d)", round, name, err, buf.Len(), len(want))
		}
	}
}
