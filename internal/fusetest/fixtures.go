package fusetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
)

// SuiteOptions say what Setup prepares, once, for a test binary.
type SuiteOptions struct {
	// Kmsfs builds cmd/kmsfs for InitVolume and Kmsfs, and points
	// TrustDirEnv at a trust dir of the run's own, so that no kmsfs
	// command of a test writes the host's.
	Kmsfs bool
	// Tokens are the SoftHSM tokens to make (hsmtest.Start); none makes
	// no token store. SOFTHSM2_CONF stays set while the tests run, so
	// kmsfs processes they start see the same tokens.
	Tokens []hsmtest.TokenOptions
	// Steps are what User runs in a new process of this test binary.
	Steps Steps
}

// Suite is what Setup made for the tests of one binary. Its methods are
// safe for concurrent use by parallel tests.
type Suite struct {
	steps Steps

	kmsfs    string
	kmsfsErr error
	hsm      *hsmtest.HSM
	hsmErr   error
	trustDir string

	// self is a copy of the test binary other users may run, made once
	// by the first User with a credential.
	selfOnce sync.Once
	self     string
	selfDir  string
	selfErr  error
}

// Setup prepares what o asks for, recording failures for the tests that
// need the part to report (Kmsfs, HSM). It must be called first thing in
// TestMain, before anything loads the PKCS#11 module:
//
//	var suite *fusetest.Suite
//
//	func TestMain(m *testing.M) {
//		suite = fusetest.Setup(fusetest.SuiteOptions{Kmsfs: true, Steps: steps})
//		os.Exit(suite.Run(m))
//	}
//
// In a process that User started to run a step, Setup runs that step and
// exits instead of returning.
func Setup(o SuiteOptions) *Suite {
	runStepIfAsked(o.Steps)
	s := &Suite{steps: o.Steps, kmsfsErr: errors.New("fusetest: Setup was asked for no kmsfs binary"),
		hsmErr: errors.New("fusetest: Setup was asked for no SoftHSM tokens")}
	if len(o.Tokens) > 0 {
		s.hsm, s.hsmErr = hsmtest.Start(hsmtest.Options{Tokens: o.Tokens})
	}
	if o.Kmsfs {
		s.kmsfs, s.kmsfsErr = BuildKmsfs()
		td, err := os.MkdirTemp("", "kmsfs-fusetest-trust-")
		if err == nil {
			s.trustDir = td
			err = os.Setenv(TrustDirEnv, td)
		}
		if err != nil && s.kmsfsErr == nil {
			s.kmsfsErr = fmt.Errorf("fusetest: trust dir: %w", err)
		}
	}
	return s
}

// Run runs the tests, then removes what Setup made, and returns the exit
// code for os.Exit.
func (s *Suite) Run(m *testing.M) int {
	code := m.Run()
	if err := s.hsm.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = max(code, 1)
	}
	for _, d := range []string{s.trustDir, s.selfDir} {
		if d != "" {
			os.RemoveAll(d)
		}
	}
	if s.kmsfs != "" {
		os.RemoveAll(filepath.Dir(s.kmsfs))
	}
	return code
}

// Kmsfs returns the kmsfs binary Setup built, or fails t.
func (s *Suite) Kmsfs(t testing.TB) string {
	t.Helper()
	if s.kmsfsErr != nil {
		t.Fatal(s.kmsfsErr)
	}
	return s.kmsfs
}

// InitVolume inits a volume with the kmsfs binary; it does not mount it.
func (s *Suite) InitVolume(t testing.TB, o CLIOptions) *CLIVolume {
	t.Helper()
	return newCLIVolume(t, s.Kmsfs(t), o)
}

// StartVolume inits a volume and mounts it in the background (Mount).
func (s *Suite) StartVolume(t testing.TB, o CLIOptions) *CLIVolume {
	t.Helper()
	v := s.InitVolume(t, o)
	v.Mount(t)
	return v
}

// HSM returns the run's SoftHSM token store, or stops t (Unavailable) if
// Setup could not make it.
func (s *Suite) HSM(t testing.TB) *hsmtest.HSM {
	t.Helper()
	return NeedHSM(t, s.hsm, s.hsmErr)
}

// NeedHSM returns h, or stops t (Unavailable) if err says the token store
// could not be made: for a TestMain that starts its own token stores
// (hsmtest.Start) instead of Setup's.
func NeedHSM(t testing.TB, h *hsmtest.HSM, err error) *hsmtest.HSM {
	t.Helper()
	if err != nil {
		Unavailable(t, "SoftHSM token store: %v", err)
	}
	return h
}

// KMSAvailable returns nil when the local-kms emulator is installed, else
// why not; a test that runs without it where it may looks here first.
func KMSAvailable() error {
	_, err := kmstest.LocalKMSPath()
	return err
}

// KMS starts a local-kms emulator for t, stopped when t ends (see
// kmstest.Start). Without the emulator binary t stops (Unavailable).
func KMS(t testing.TB) *kmstest.Emulator {
	t.Helper()
	if err := KMSAvailable(); err != nil {
		Unavailable(t, "%v; run `make tools` or set KMSFS_LOCAL_KMS", err)
	}
	return kmstest.Start(t)
}

// AWSEnv is the environment that points a kmsfs process at e, with dummy
// credentials and no profile or instance metadata of the host.
func AWSEnv(e *kmstest.Emulator) []string { return AWSEnvAt(e, e.Endpoint) }

// AWSEnvAt is AWSEnv with KMS at endpoint (a kmstest.Proxy in front of e).
func AWSEnvAt(e *kmstest.Emulator, endpoint string) []string { return e.Env(endpoint) }
