// Package kmstest runs the local-kms emulator for tests and benchmarks, and
// provides the instruments tests put in front of it: a per-operation call
// counter at the SDK client boundary and a loopback HTTP proxy that adds
// latency or answers with injected errors.
//
// Every helper takes a testing.TB and registers its own cleanup; nothing
// outlives the test that started it. The emulator listens on all interfaces
// whatever it is told; the harness only ever talks to it on 127.0.0.1.
//
// Under CI=true a test that cannot find the emulator binary fails; elsewhere
// it is skipped with a message saying how to install it (`make tools`).
package kmstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
)

// Emulator identity and the names of the seeded keys.
const (
	Region  = "eu-west-2"
	Account = "111122223333"
	// Alias names the first symmetric key.
	Alias = "alias/kmsfs-test"

	startTimeout = 30 * time.Second // binary start to accepted connection
	logTailBytes = 64 << 10         // emulator output kept for failure reports
)

// Key is one seeded key.
type Key struct {
	ID  string // key ID (a UUID)
	ARN string // arn:aws:kms:REGION:ACCOUNT:key/ID
}

// Emulator is a running local-kms, seeded with the keys below. Its fields
// are read-only after Start.
type Emulator struct {
	Endpoint string // "http://127.0.0.1:PORT"
	Region   string
	Account  string

	Symmetric  Key // AES key, target of Alias
	Symmetric2 Key // a second AES key
	RSAEncrypt Key // RSA_2048, ENCRYPT_DECRYPT
	RSASign    Key // RSA_2048, SIGN_VERIFY
	Disabled   Key // AES key, disabled through DisableKey after start
	// MultiRegion is an AES key with a multi-Region key ID (mrk-…): the
	// emulator has one Region, so a test plays its replica in another
	// Region by rewriting the Region of its ARN.
	MultiRegion Key

	logs *tailBuffer
}

// AliasARN returns the ARN of Alias in this emulator.
func (e *Emulator) AliasARN() string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:%s", e.Region, e.Account, Alias)
}

// Config returns an aws.Config for the emulator: its region, static dummy
// credentials (local-kms checks no signature) and its endpoint as
// BaseEndpoint. Each call returns a fresh value the caller may change.
func (e *Emulator) Config() aws.Config {
	return aws.Config{
		Region:       e.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDKMSFSTEST", "kmsfs-test-secret", ""),
		BaseEndpoint: aws.String(e.Endpoint),
	}
}

// Client returns an SDK client for the emulator, for test set-up (disable a
// key, schedule its deletion). The client is safe for concurrent use.
func (e *Emulator) Client(optFns ...func(*kms.Options)) *kms.Client {
	return kms.NewFromConfig(e.Config(), optFns...)
}

// Logs returns what the emulator has written so far (its last 64 KiB).
func (e *Emulator) Logs() string { return e.logs.String() }

// LocalKMSPath locates the local-kms binary: $KMSFS_LOCAL_KMS if set, else
// bin/local-kms in the repository holding the working directory (the one
// `make tools` fills), else local-kms on $PATH.
func LocalKMSPath() (string, error) {
	if p := os.Getenv("KMSFS_LOCAL_KMS"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("kmstest: KMSFS_LOCAL_KMS: %w", err)
		}
		return p, nil
	}
	if dir, err := os.Getwd(); err == nil {
		for {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, "bin", "local-kms")
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
				break
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	p, err := exec.LookPath("local-kms")
	if err != nil {
		return "", fmt.Errorf("kmstest: local-kms not in $KMSFS_LOCAL_KMS, <repo>/bin or $PATH: %w", err)
	}
	return p, nil
}

// RequireBinary returns the local-kms path, or ends the test: fails it under
// CI=true, skips it elsewhere.
func RequireBinary(t testing.TB) string {
	t.Helper()
	p, err := LocalKMSPath()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v (CI=true: the emulator is required; run `make tools`)", err)
		}
		t.Skipf("%v; run `make tools` or set KMSFS_LOCAL_KMS", err)
	}
	return p
}

// Start runs a fresh local-kms with its own seed file and data directory,
// waits until it accepts connections on 127.0.0.1, disables the Disabled
// key, and registers a cleanup that kills the emulator's process group and
// waits for it. It fails the test if the emulator cannot start (and, under
// CI=true, if the binary is missing).
func Start(t testing.TB) *Emulator {
	t.Helper()
	bin := RequireBinary(t)

	seedDir, dataDir := t.TempDir(), t.TempDir() // removed after the kill below
	seed, err := newSeed()
	if err != nil {
		t.Fatalf("kmstest: seed: %v", err)
	}
	seedPath := filepath.Join(seedDir, "seed.yaml")
	if err := os.WriteFile(seedPath, seed.yaml(), 0o600); err != nil {
		t.Fatalf("kmstest: %v", err)
	}

	e := &Emulator{
		Region: Region, Account: Account,
		Symmetric: seed.key(seedSymmetric), Symmetric2: seed.key(seedSymmetric2),
		RSAEncrypt: seed.key(seedRSAEncrypt), RSASign: seed.key(seedRSASign),
		Disabled:    seed.key(seedDisabled),
		MultiRegion: seed.key(seedMultiRegion),
		logs:        newTailBuffer(logTailBytes),
	}

	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(),
		"PORT=0", // the emulator binds a free port and logs it
		"KMS_REGION="+Region,
		"KMS_ACCOUNT_ID="+Account,
		"KMS_SEED_PATH="+seedPath,
		"KMS_DATA_PATH="+dataDir,
	)
	cmd.Stdout, cmd.Stderr = e.logs, e.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("kmstest: start %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if t.Failed() {
			t.Logf("local-kms output:\n%s", e.logs)
		}
	})

	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	var port string
	select {
	case port = <-e.logs.port:
	case <-exited:
		t.Fatalf("kmstest: local-kms exited before listening:\n%s", e.logs)
	case <-deadline.C:
		t.Fatalf("kmstest: local-kms did not report its port within %v:\n%s", startTimeout, e.logs)
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	if err := waitListening(addr, time.Now().Add(startTimeout)); err != nil {
		t.Fatalf("kmstest: %v:\n%s", err, e.logs)
	}
	e.Endpoint = "http://" + addr

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if _, err := e.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(e.Disabled.ID)}); err != nil {
		t.Fatalf("kmstest: disable seeded key: %v\n%s", err, e.logs)
	}
	return e
}

// waitListening dials addr until it accepts a connection or the deadline
// passes, with a short pause between attempts.
func waitListening(addr string, deadline time.Time) error {
	const pause = 10 * time.Millisecond
	var err error
	for time.Now().Before(deadline) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			return c.Close()
		}
		time.Sleep(pause) // between bounded dial attempts, not synchronisation
	}
	return fmt.Errorf("local-kms not accepting on %s: %w", addr, err)
}

// ClosedEndpoint returns an http://127.0.0.1:PORT URL on which nothing
// listens: a port the kernel handed out and that was closed at once.
func ClosedEndpoint(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	return "http://" + addr
}

// portLine matches the emulator's "Local KMS started on 0.0.0.0:PORT".
var portLine = regexp.MustCompile(`started on [^\s:]*:(\d+)`)

// ansiColour matches the colour codes of the emulator's logger.
var ansiColour = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// tailBuffer keeps the last max bytes written to it and reports, once, the
// port from the emulator's start line. It is safe for concurrent use.
type tailBuffer struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	max   int
	found bool
	port  chan string
}

func newTailBuffer(max int) *tailBuffer {
	return &tailBuffer{max: max, port: make(chan string, 1)}
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if !b.found {
		if m := portLine.FindSubmatch(b.buf.Bytes()); m != nil {
			b.found = true
			b.port <- string(m[1])
		}
	}
	if n := b.buf.Len() - b.max; n > 0 {
		b.buf.Next(n)
	}
	return len(p), nil
}

// String returns the output kept, without terminal colour codes.
func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(ansiColour.ReplaceAllString(b.buf.String(), ""))
}

// Env returns the environment, as KEY=VALUE, that points a process's AWS
// SDK at endpoint (the emulator's, or a Proxy's): the emulator's region,
// its test credentials, no profile, no config or credentials file and
// no instance metadata.
func (e *Emulator) Env(endpoint string) []string {
	return []string{
		"AWS_ENDPOINT_URL_KMS=" + endpoint,
		"AWS_REGION=" + e.Region,
		"AWS_ACCESS_KEY_ID=AKIDKMSFSTEST",
		"AWS_SECRET_ACCESS_KEY=kmsfs-test-secret",
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_EC2_METADATA_DISABLED=true",
		// The host's ~/.aws must not reach a test's kmsfs process.
		"AWS_CONFIG_FILE=" + os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE=" + os.DevNull,
	}
}

// SetAWSEnv points the AWS SDK's standard configuration chain of the
// test's process at endpoint: Env, and besides the SDK's retry settings
// and generic endpoint unset. t.Setenv restores everything when the test ends.
func (e *Emulator) SetAWSEnv(t testing.TB, endpoint string) {
	t.Helper()
	env := append(e.Env(endpoint), "AWS_ENDPOINT_URL=", "AWS_MAX_ATTEMPTS=", "AWS_RETRY_MODE=")
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
