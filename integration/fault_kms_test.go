package integration_test

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// ftKeyTimeout is the mount's --key-timeout in the KMS fault test; an open
// that needs KMS during an outage must fail within it plus ftKeySlack.
const (
	ftKeyTimeout  = 8 * time.Second
	ftKeySlack    = 1500 * time.Millisecond
	ftOpBound     = 10 * time.Second // any single operation of the test
	ftKMSAttempts = 4
)

// TestKMSFault mounts a volume on awskms:alias through two loopback
// proxies in front of local-kms: kmstest.Proxy (latency, injected KMS
// errors) behind ftProxy (refused connections, hangs). The volume uses
// one data key per file, and files are written by an earlier mount, so
// that every first open in the mount under test needs a KMS Decrypt.
//
// It checks: added latency only slows an open; throttling and HTTP 500
// answers are retried and the open succeeds; throttling without end fails
// the open in bounded time; during an outage (connections refused, or a
// KMS that never answers) a file already open and a file whose key is
// cached keep working, new files can be created (pooled data keys),
// stat and readdir answer, and opening a file whose key is not cached
// fails within --key-timeout with EIO, ETIMEDOUT or EACCES and one log
// line naming the file and the cause; after recovery every file opens;
// after a remount nothing written is lost.
func TestKMSFault(t *testing.T) {
	e := fusetest.KMS(t)
	kp := kmstest.NewProxy(t, e.Endpoint)
	fp := ftNewProxy(t, kp.URL)
	v := suite.InitVolume(t, fusetest.CLIOptions{
		Keys:      []string{"awskms:" + kmstest.Alias},
		InitArgs:  []string{"--data-key-policy", "per-file"},
		MountArgs: []string{"--key-timeout", ftKeyTimeout.String()},
		// Four attempts end before the key timeout (the SDK's backoff
		// waits at most 1+2+4 s after throttling, 0.35 s after a refused
		// connection), so each failure is reported as such.
		Env: append(fusetest.AWSEnvAt(e, fp.URL), "AWS_MAX_ATTEMPTS="+strconv.Itoa(ftKMSAttempts)),
	})
	v.MountForeground(t)
	names := []string{"held", "cached", "latency", "throttled", "http500", "throttled-long",
		"outage-refuse", "outage-hang", "outage-refuse-after", "outage-hang-after"}
	plain := map[string][]byte{}
	for i, name := range names {
		plain[name] = ftBytes(ftRand(uint64(1000+i)), 10000+i)
		if err := os.WriteFile(v.Path(name), plain[name], 0o644); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	v.Remount(t) // nothing cached from here on

	held, err := os.OpenFile(v.Path("held"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	ftCheckRead(t, v, "cached", plain)

	// The cause of what reopen= checks below during outages: the data key
	// of a file this mount created is not cached, so reading it back
	// costs a Decrypt.
	t.Run("reopen-created-file,kms=up", func(t *testing.T) {
		data := ftBytes(ftRand(2000), 3000)
		if err := os.WriteFile(v.Path("created"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		plain["created"] = data
		v.WaitReleased(t, "created") // else the open shares the writer's state
		decrypts := kp.Requests("Decrypt")
		ftCheckRead(t, v, "created", plain)
		if n := kp.Requests("Decrypt") - decrypts; n != 0 {
			t.Errorf("reading back a file this mount created made %d KMS Decrypt calls, want 0 (the mount made its data key)", n)
		}
	})
	t.Run("latency=300ms", func(t *testing.T) {
		kp.SetLatency(300 * time.Millisecond)
		defer kp.SetLatency(0)
		decrypts := kp.Requests("Decrypt")
		ftCheckRead(t, v, "latency", plain)
		if n := kp.Requests("Decrypt") - decrypts; n != 1 {
			t.Errorf("opening a file not cached through a slow KMS made %d Decrypt calls, want 1", n)
		}
	})
	for _, c := range []struct {
		file   string
		n      int
		status int
		code   string
	}{
		{"throttled", 3, 400, "ThrottlingException"},
		{"http500", 2, 500, "KMSInternalException"},
	} {
		t.Run(fmt.Sprintf("fail=%d,status=%d,code=%s", c.n, c.status, c.code), func(t *testing.T) {
			failed, decrypts := kp.Failed(), kp.Requests("Decrypt")
			kp.FailNext(c.n, c.status, c.code)
			ftCheckRead(t, v, c.file, plain)
			if got := kp.Failed() - failed; got != c.n {
				t.Errorf("%d requests answered with %s, want %d", got, c.code, c.n)
			}
			if got := kp.Requests("Decrypt") - decrypts; got != c.n+1 {
				t.Errorf("%d Decrypt requests for one open, want %d (%d retried)", got, c.n+1, c.n)
			}
		})
	}
	t.Run("fail=always,status=400,code=ThrottlingException", func(t *testing.T) {
		kp.FailNext(1000, 400, "ThrottlingException")
		defer kp.FailNext(0, 0, "")
		ftFailingOpen(t, v, "throttled-long", fmt.Sprintf("throttled by KMS after %d attempts", ftKMSAttempts))
	})
	for _, c := range []struct {
		mode  ftProxyMode
		file  string
		cause string
	}{
		{ftRefuse, "outage-refuse", "connection refused"},
		{ftHang, "outage-hang", "deadline exceeded"},
	} {
		t.Run("outage="+c.mode.String(), func(t *testing.T) {
			fp.set(t, c.mode)
			defer fp.set(t, ftPass)
			ftDuringOutage(t, v, held, plain, c.mode.String())
			ftFailingOpen(t, v, c.file, c.cause)
			ftDuringOutage(t, v, held, plain, c.mode.String()+"-2")
		})
		t.Run("recovered="+c.mode.String(), func(t *testing.T) {
			ftCheckRead(t, v, c.file, plain)
			ftCheckRead(t, v, c.file+"-after", plain)
		})
	}
	t.Run("remounted", func(t *testing.T) {
		held.Close()
		v.Remount(t)
		for name := range plain {
			ftCheckRead(t, v, name, plain)
		}
	})
}

// ftDuringOutage checks what must keep working while KMS is out: the held
// file (read and written), the file whose key is cached, a new file, stat
// and readdir. It updates plain with what it writes.
func ftDuringOutage(t *testing.T, v *fusetest.CLIVolume, held *os.File, plain map[string][]byte, tag string) {
	t.Helper()
	ftBounded(t, "write and read the file held open", func() error {
		patch := []byte("written during the outage " + tag)
		if _, err := held.WriteAt(patch, 100); err != nil {
			return err
		}
		copy(plain["held"][100:], patch)
		got := make([]byte, len(plain["held"]))
		if _, err := held.ReadAt(got, 0); err != nil {
			return err
		}
		if !bytes.Equal(got, plain["held"]) {
			return fmt.Errorf("held file: %s", mntDiff(got, plain["held"]))
		}
		return nil
	})
	ftBounded(t, "read the file whose key is cached", func() error { return ftRead(v, "cached", plain) })
	name := "new-" + tag
	data := ftBytes(ftRand(uint64(len(tag))), 5000)
	ftBounded(t, "create and write "+name, func() error {
		err := os.WriteFile(v.Path(name), data, 0o644)
		if err == nil {
			plain[name] = data
		}
		return err
	})
	// The new file's data key came from this mount's pool: this mount
	// holds it, so reading the file back must not need KMS either.
	t.Run("reopen="+name, func(t *testing.T) {
		if plain[name] == nil {
			t.Fatalf("%s was not created (see above)", name)
		}
		v.WaitReleased(t, name) // else the open shares the writer's state
		ftBounded(t, "reopen "+name+", created during the outage", func() error { return ftRead(v, name, plain) })
	})
	ftBounded(t, "stat and readdir", func() error {
		if _, err := os.Stat(v.Path("outage-hang-after")); err != nil {
			return err
		}
		ents, err := os.ReadDir(v.Mnt)
		if err != nil {
			return err
		}
		if len(ents) < len(plain) {
			return fmt.Errorf("readdir: %d entries, want at least %d", len(ents), len(plain))
		}
		return nil
	})
}

// ftFailingOpen opens a file whose key is not cached and expects the open
// to fail in bounded time with a key error, and one log line that names
// the file and says cause.
func ftFailingOpen(t *testing.T, v *fusetest.CLIVolume, name, cause string) {
	t.Helper()
	mark := v.LogMark()
	var openErr error
	// Bounded by the mount's --key-timeout: an open that outlives it
	// waits on KMS past the bound the user set.
	ftBoundedBy(t, "open "+name+" (--key-timeout "+ftKeyTimeout.String()+")", ftKeyTimeout+ftKeySlack, func() error {
		f, err := os.Open(v.Path(name))
		if err == nil {
			f.Close()
		}
		openErr = err
		return nil
	})
	switch mntErrno(openErr) {
	case syscall.EIO, syscall.ETIMEDOUT, syscall.EACCES:
	default:
		t.Errorf("open %s: got %v, want EIO, ETIMEDOUT or EACCES", name, openErr)
	}
	var found []string
	for _, l := range v.LogSince(mark) {
		if l.F["level"] == "error" && l.F["path"] == name && l.F["op"] == "open" {
			found = append(found, l.Raw)
		}
	}
	switch {
	case len(found) != 1:
		t.Errorf("open %s: %d log lines name op=open path=%s, want 1:\n%s", name, len(found), name, strings.Join(found, "\n"))
	case !strings.Contains(fusetest.ParseLogLine(found[0]).F["msg"], cause):
		t.Errorf("open %s: the log line does not say %q:\n%s", name, cause, found[0])
	default:
		t.Logf("open %s: %v; logged: %s", name, openErr, found[0])
	}
}

// ftBounded runs fn, failing the test if it returns an error or does not
// return within ftOpBound (a hung mount).
func ftBounded(t *testing.T, what string, fn func() error) {
	t.Helper()
	ftBoundedBy(t, what, ftOpBound, fn)
}

// ftBoundedBy is ftBounded with the bound given.
func ftBoundedBy(t *testing.T, what string, bound time.Duration, fn func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	case <-time.After(bound):
		t.Fatalf("%s: no answer within %v: the mount hangs", what, bound)
	}
}

// ftRead reads name through the mount and compares it with plain.
func ftRead(v *fusetest.CLIVolume, name string, plain map[string][]byte) error {
	got, err := os.ReadFile(v.Path(name))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, plain[name]) {
		return fmt.Errorf("%s: %s", name, mntDiff(got, plain[name]))
	}
	return nil
}

// ftCheckRead is ftRead, bounded, failing the test.
func ftCheckRead(t *testing.T, v *fusetest.CLIVolume, name string, plain map[string][]byte) {
	t.Helper()
	ftBounded(t, "read "+name, func() error { return ftRead(v, name, plain) })
}
