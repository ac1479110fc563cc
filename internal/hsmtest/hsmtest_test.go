//go:build cgo

package hsmtest_test

import (
	"os"
	"strings"
	"testing"

	p11 "github.com/miekg/pkcs11"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/hsmtest"
)

// TestStart makes a token store and checks what it promises through the
// PKCS#11 API: the tokens, the user PIN, the keys and their IDs, the PIN
// file's mode, and that Close removes it all.
func TestStart(t *testing.T) {
	h, err := hsmtest.Start(hsmtest.Options{Tokens: []hsmtest.TokenOptions{
		{Name: "a", AESLabel: "aes", RSALabel: "rsa"},
		{Name: "b", AESLabel: "only-aes"},
	}})
	if err != nil {
		fusetest.Unavailable(t, "SoftHSM token store: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Error(err)
		}
		if _, err := os.Stat(h.Dir); !os.IsNotExist(err) {
			t.Errorf("token store %s left behind: %v", h.Dir, err)
		}
	})
	a, b := h.Token("a"), h.Token("b")
	if a.Label == b.Label || !strings.HasSuffix(a.Label, "-a") || len(a.Label) > 32 {
		t.Errorf("labels %q, %q", a.Label, b.Label)
	}
	fi, err := os.Stat(a.PINFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("PIN file %s: %v, mode %v", a.PINFile, err, fi.Mode())
	}
	if spec := a.AESSpec(); !strings.Contains(spec, "pin-source=file:"+a.PINFile) || strings.Contains(spec, a.PIN) {
		t.Errorf("spec %q: want pin-source=file: and no PIN", spec)
	}

	c := p11.New(h.Module)
	if err := c.Initialize(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Finalize()
		c.Destroy()
	})
	for _, tt := range []struct {
		tok     *hsmtest.Token
		objects map[uint][]string // class: labels
	}{
		{a, map[uint][]string{p11.CKO_SECRET_KEY: {"aes"}, p11.CKO_PRIVATE_KEY: {"rsa"}, p11.CKO_PUBLIC_KEY: {"rsa"}}},
		{b, map[uint][]string{p11.CKO_SECRET_KEY: {"only-aes"}, p11.CKO_PRIVATE_KEY: nil}},
	} {
		t.Run("token="+tt.tok.Name, func(t *testing.T) {
			sh := login(t, c, tt.tok)
			for class, labels := range tt.objects {
				if err := c.FindObjectsInit(sh, []*p11.Attribute{p11.NewAttribute(p11.CKA_CLASS, class)}); err != nil {
					t.Fatal(err)
				}
				objs, _, err := c.FindObjects(sh, 10)
				c.FindObjectsFinal(sh)
				if err != nil || len(objs) != len(labels) {
					t.Fatalf("class %d: %d objects, %v; want %d", class, len(objs), err, len(labels))
				}
				for i, o := range objs {
					attrs, err := c.GetAttributeValue(sh, o, []*p11.Attribute{p11.NewAttribute(p11.CKA_LABEL, nil), p11.NewAttribute(p11.CKA_ID, nil)})
					if err != nil {
						t.Fatal(err)
					}
					id := hsmtest.AESID
					if class != p11.CKO_SECRET_KEY {
						id = hsmtest.RSAID
					}
					if string(attrs[0].Value) != labels[i] || string(attrs[1].Value) != id {
						t.Errorf("class %d: label %q id %x, want %q %x", class, attrs[0].Value, attrs[1].Value, labels[i], id)
					}
				}
			}
		})
	}
}

func login(t *testing.T, c *p11.Ctx, tok *hsmtest.Token) p11.SessionHandle {
	t.Helper()
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || strings.TrimRight(ti.Label, " ") != tok.Label {
			continue
		}
		sh, err := c.OpenSession(s, p11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseSession(sh) })
		if err := c.Login(sh, p11.CKU_USER, tok.PIN); err != nil {
			t.Fatalf("login with the harness PIN: %v", err)
		}
		return sh
	}
	t.Fatalf("no token %s", tok.Label)
	return 0
}
