//go:build cgo

package p11shim_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
	"github.com/kmsfs/kmsfs/internal/p11shim"
	p11 "github.com/miekg/pkcs11"
)

// The token store of this test run (made before anything loads SoftHSM,
// see hsmtest) and the directory the shim is built into, once per run.
var (
	suite   *fusetest.Suite
	shimDir string
)

const (
	aesLabel = "aes"
	rsaLabel = "rsa"
)

func TestMain(m *testing.M) {
	suite = fusetest.Setup(fusetest.SuiteOptions{Tokens: []hsmtest.TokenOptions{
		{Name: "main", AESLabel: aesLabel, RSALabel: rsaLabel},
	}})
	dir, err := os.MkdirTemp("", "kmsfs-p11shim-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	shimDir = dir
	code := suite.Run(m)
	os.RemoveAll(dir)
	os.Exit(code)
}

// shim is the shim module, initialised under one configuration.
type shim struct {
	c    *p11.Ctx
	slot uint
	tok  *hsmtest.Token
}

// load initialises the shim under cfg (forwarding to the test run's
// SoftHSM) for the rest of the test.
func load(t *testing.T, cfg p11shim.Config) *shim {
	t.Helper()
	h := suite.HSM(t)
	mod := p11shim.Need(t, shimDir)
	cfg.Module = h.Module
	path := filepath.Join(t.TempDir(), "p11shim.conf")
	if err := cfg.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	t.Setenv(p11shim.EnvConfig, path)
	c := p11.New(mod)
	if c == nil {
		t.Fatalf("cannot load %s", mod)
	}
	if err := c.Initialize(); err != nil {
		c.Destroy()
		t.Fatalf("initialise the shim: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Finalize(); err != nil {
			t.Errorf("finalise the shim: %v", err)
		}
		c.Destroy()
	})
	s := &shim{c: c, tok: h.Token("main")}
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, sl := range slots {
		if ti, err := c.GetTokenInfo(sl); err == nil && strings.TrimRight(ti.Label, " ") == s.tok.Label {
			s.slot = sl
			return s
		}
	}
	t.Fatalf("no token %s behind the shim", s.tok.Label)
	return nil
}

func profile(t *testing.T, p p11shim.Profile) p11shim.Config {
	t.Helper()
	cfg, err := p.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// open opens a session, closed when the test ends.
func (s *shim) open(t *testing.T, flags uint) (p11.SessionHandle, error) {
	t.Helper()
	sh, err := s.c.OpenSession(s.slot, flags)
	if err == nil {
		t.Cleanup(func() { s.c.CloseSession(sh) })
	}
	return sh, err
}

// login opens a read-write session and logs the user in.
func (s *shim) login(t *testing.T) p11.SessionHandle {
	t.Helper()
	sh, err := s.open(t, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("open session: %v", err)
	}
	if err := s.c.Login(sh, p11.CKU_USER, s.tok.PIN); err != nil {
		t.Fatalf("login: %v", err)
	}
	return sh
}

// object finds the one object of class and label.
func (s *shim) object(t *testing.T, sh p11.SessionHandle, class uint, label string) p11.ObjectHandle {
	t.Helper()
	if err := s.c.FindObjectsInit(sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, class), p11.NewAttribute(p11.CKA_LABEL, label)}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := s.c.FindObjects(sh, 2)
	if e := s.c.FindObjectsFinal(sh); e != nil && err == nil {
		err = e
	}
	if err != nil || len(objs) != 1 {
		t.Fatalf("find %q: %d objects, %v", label, len(objs), err)
	}
	return objs[0]
}

// ckr returns the PKCS#11 return value err carries, CKR_OK for nil.
func ckr(t *testing.T, err error) uint {
	t.Helper()
	if err == nil {
		return p11.CKR_OK
	}
	var e p11.Error
	if !errors.As(err, &e) {
		t.Fatalf("not a PKCS#11 error: %v", err)
	}
	return uint(e)
}

func name(rv uint) string {
	if rv == p11.CKR_OK {
		return "CKR_OK"
	}
	return p11.Error(rv).Error()
}

// secretTemplate describes a session generic secret holding value.
func secretTemplate(value []byte, attrs ...*p11.Attribute) []*p11.Attribute {
	t := []*p11.Attribute{
		p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
		p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_GENERIC_SECRET),
		p11.NewAttribute(p11.CKA_TOKEN, false),
	}
	if value != nil {
		t = append(t, p11.NewAttribute(p11.CKA_VALUE, value))
	}
	return append(t, attrs...)
}
