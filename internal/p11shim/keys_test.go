//go:build cgo

package p11shim_test

import (
	"bytes"
	"crypto/aes"
	"fmt"
	"slices"
	"testing"

	"github.com/kmsfs/kmsfs/internal/p11shim"
	p11 "github.com/miekg/pkcs11"
)

const ckmAESKeyWrapPad = 0x210A

// TestKeyWrapMechanism looks for RFC 5649 key wrap, wraps a key with it
// and unwraps it again. SoftHSM offers it as CKM_AES_KEY_WRAP_PAD
// (0x210A); PKCS#11 3.0 names it CKM_AES_KEY_WRAP_KWP (0x210B), CloudHSM
// and Luna give it vendor numbers, and there 0x210A is unknown.
func TestKeyWrapMechanism(t *testing.T) {
	for _, tt := range []struct {
		name string
		mech uint
	}{
		{"softhsm", ckmAESKeyWrapPad},
		{"pkcs11-3.0", p11shim.MechAESKeyWrapKWP},
		{"cloudhsm", p11shim.MechCloudHSMKeyWrapZeroPad},
		{"luna", p11shim.MechLunaAESKWP},
	} {
		t.Run(fmt.Sprintf("profile=%s,mechanism=%#x", tt.name, tt.mech), func(t *testing.T) {
			cfg := p11shim.Config{}
			if tt.mech != ckmAESKeyWrapPad {
				cfg.KWPMechanism = tt.mech
			}
			s := load(t, cfg)
			ms, err := s.c.GetMechanismList(s.slot)
			if err != nil {
				t.Fatal(err)
			}
			has := func(m uint) bool {
				return slices.ContainsFunc(ms, func(x *p11.Mechanism) bool { return x.Mechanism == m })
			}
			if !has(tt.mech) || has(ckmAESKeyWrapPad) != (tt.mech == ckmAESKeyWrapPad) {
				t.Fatalf("mechanism list: %#x listed %v, 0x210A listed %v", tt.mech, has(tt.mech), has(ckmAESKeyWrapPad))
			}
			if info, err := s.c.GetMechanismInfo(s.slot, []*p11.Mechanism{p11.NewMechanism(tt.mech, nil)}); err != nil || info.Flags&p11.CKF_WRAP == 0 {
				t.Fatalf("mechanism info %#x: %+v, %v; want wrap", tt.mech, info, err)
			}
			sh := s.login(t)
			key := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			if tt.mech != ckmAESKeyWrapPad {
				_, err := s.c.GetMechanismInfo(s.slot, []*p11.Mechanism{p11.NewMechanism(ckmAESKeyWrapPad, nil)})
				if got := ckr(t, err); got != p11.CKR_MECHANISM_INVALID {
					t.Fatalf("mechanism info 0x210A: %s, want CKR_MECHANISM_INVALID", name(got))
				}
				_, err = s.c.WrapKey(sh, []*p11.Mechanism{p11.NewMechanism(ckmAESKeyWrapPad, nil)}, key, key)
				if got := ckr(t, err); got != p11.CKR_MECHANISM_INVALID {
					t.Fatalf("wrap with 0x210A: %s, want CKR_MECHANISM_INVALID", name(got))
				}
			}
			value := []byte("a 40-byte secret: V and K, for example.!")
			extractable := p11.NewAttribute(p11.CKA_EXTRACTABLE, true)
			obj, err := s.c.CreateObject(sh, secretTemplate(value, extractable))
			if err != nil {
				t.Fatal(err)
			}
			m := []*p11.Mechanism{p11.NewMechanism(tt.mech, nil)}
			wrapped, err := s.c.WrapKey(sh, m, key, obj)
			if err != nil {
				t.Fatalf("wrap with %#x: %v", tt.mech, err)
			}
			back, err := s.c.UnwrapKey(sh, m, key, wrapped, secretTemplate(nil, extractable))
			if err != nil {
				t.Fatalf("unwrap with %#x: %v", tt.mech, err)
			}
			a, err := s.c.GetAttributeValue(sh, back, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			if err != nil || !bytes.Equal(a[0].Value, value) {
				t.Fatalf("unwrapped value: %v", err)
			}
		})
	}
}

// TestHiddenMechanisms: the YubiHSM 2 has neither AES-GCM nor RFC 5649
// key wrap; both are missing from its list and refused.
func TestHiddenMechanisms(t *testing.T) {
	for _, p := range []p11shim.Profile{p11shim.SoftHSM, p11shim.YubiHSM2} {
		t.Run("profile="+string(p), func(t *testing.T) {
			s := load(t, profile(t, p))
			ms, err := s.c.GetMechanismList(s.slot)
			if err != nil {
				t.Fatal(err)
			}
			sh := s.login(t)
			key := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			want := uint(p11.CKR_OK)
			if p == p11shim.YubiHSM2 {
				want = p11.CKR_MECHANISM_INVALID
			}
			for _, m := range []uint{p11.CKM_AES_GCM, ckmAESKeyWrapPad} {
				listed := slices.ContainsFunc(ms, func(x *p11.Mechanism) bool { return x.Mechanism == m })
				_, err := s.c.GetMechanismInfo(s.slot, []*p11.Mechanism{p11.NewMechanism(m, nil)})
				if listed != (want == p11.CKR_OK) || ckr(t, err) != want {
					t.Errorf("mechanism %#x: listed %v, info %v; want %s", m, listed, err, name(want))
				}
			}
			gp := p11.NewGCMParams(make([]byte, 12), nil, 128)
			defer gp.Free()
			err = s.c.EncryptInit(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, gp)}, key)
			if got := ckr(t, err); got != want {
				t.Fatalf("AES-GCM encrypt init: %s, want %s", name(got), name(want))
			}
		})
	}
}

// TestSensitiveKeys tries what kmsfs's key-wrap path did: create or
// unwrap a secret key that is not sensitive, and read a secret key's
// value. An HSM that keeps secret keys sensitive by policy refuses both;
// SoftHSM allows both.
func TestSensitiveKeys(t *testing.T) {
	for _, cfgName := range []string{"softhsm", "sensitive-keys", "cloudhsm", "luna-fips", "yubihsm2"} {
		t.Run("config="+cfgName, func(t *testing.T) {
			cfg := p11shim.Config{SensitiveKeys: true}
			if cfgName != "sensitive-keys" {
				cfg = profile(t, p11shim.Profile(cfgName))
			}
			strict := cfg.SensitiveKeys
			s := load(t, cfg)
			sh := s.login(t)
			value := []byte("0123456789abcdef0123456789abcdef")
			nonSensitive := p11.NewAttribute(p11.CKA_SENSITIVE, false)
			extractable := p11.NewAttribute(p11.CKA_EXTRACTABLE, true)

			_, err := s.c.CreateObject(sh, secretTemplate(value, nonSensitive, extractable))
			want := uint(p11.CKR_OK)
			if strict {
				want = p11.CKR_ATTRIBUTE_VALUE_INVALID
			}
			if got := ckr(t, err); got != want {
				t.Errorf("create a non-sensitive secret key: %s, want %s", name(got), name(want))
			}
			_, err = s.c.GenerateKey(sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_KEY_GEN, nil)}, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_TOKEN, false), p11.NewAttribute(p11.CKA_VALUE_LEN, 32), nonSensitive, extractable,
			})
			if got := ckr(t, err); got != want {
				t.Errorf("generate a non-sensitive AES key: %s, want %s", name(got), name(want))
			}

			// A key created without CKA_SENSITIVE: its value is readable
			// on SoftHSM only; its other attributes everywhere.
			obj, err := s.c.CreateObject(sh, secretTemplate(value, extractable))
			if err != nil {
				t.Fatal(err)
			}
			a, err := s.c.GetAttributeValue(sh, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE, nil)})
			want = p11.CKR_OK
			if strict {
				want = p11.CKR_ATTRIBUTE_SENSITIVE
			}
			if got := ckr(t, err); got != want || (err == nil && !bytes.Equal(a[0].Value, value)) {
				t.Errorf("read the value: %s, want %s", name(got), name(want))
			}
			a, err = s.c.GetAttributeValue(sh, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_VALUE_LEN, nil)})
			if err != nil || len(a[0].Value) == 0 {
				t.Errorf("read the value length: %v", err)
			}
			_, err = s.c.CopyObject(sh, obj, []*p11.Attribute{nonSensitive})
			want = p11.CKR_OK
			if strict {
				want = p11.CKR_ATTRIBUTE_VALUE_INVALID
			}
			if got := ckr(t, err); got != want {
				t.Errorf("copy into a non-sensitive key: %s, want %s", name(got), name(want))
			}

			// kmsfs's unwrap template, with a sensitive key wrapped first.
			kwp := uint(ckmAESKeyWrapPad)
			if cfg.KWPMechanism != 0 {
				kwp = cfg.KWPMechanism
			}
			if slices.Contains(cfg.HideMechanisms, kwp) {
				return
			}
			key := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			sensitive, err := s.c.CreateObject(sh, secretTemplate(value, p11.NewAttribute(p11.CKA_SENSITIVE, true), extractable))
			if err != nil {
				t.Fatal(err)
			}
			m := []*p11.Mechanism{p11.NewMechanism(kwp, nil)}
			wrapped, err := s.c.WrapKey(sh, m, key, sensitive)
			if err != nil {
				t.Fatalf("wrap: %v", err)
			}
			_, err = s.c.UnwrapKey(sh, m, key, wrapped, secretTemplate(nil, nonSensitive, extractable))
			want = p11.CKR_OK
			if strict {
				want = p11.CKR_ATTRIBUTE_VALUE_INVALID
			}
			if got := ckr(t, err); got != want {
				t.Errorf("unwrap into a non-sensitive key: %s, want %s", name(got), name(want))
			}
		})
	}
}

// TestCheckValue reads CKA_CHECK_VALUE of an AES key of known value
// behind every profile: the first three bytes of AES-ECB of a zero block,
// so a key can later be told apart by fingerprint rather than by label.
func TestCheckValue(t *testing.T) {
	value := []byte("AES-256 key of a known value....")
	c, err := aes.NewCipher(value)
	if err != nil {
		t.Fatal(err)
	}
	kcv := make([]byte, 16)
	c.Encrypt(kcv, kcv)
	for _, p := range p11shim.Profiles() {
		t.Run("profile="+string(p), func(t *testing.T) {
			s := load(t, profile(t, p))
			sh := s.login(t)
			obj, err := s.c.CreateObject(sh, []*p11.Attribute{
				p11.NewAttribute(p11.CKA_CLASS, p11.CKO_SECRET_KEY),
				p11.NewAttribute(p11.CKA_KEY_TYPE, p11.CKK_AES),
				p11.NewAttribute(p11.CKA_TOKEN, false),
				p11.NewAttribute(p11.CKA_SENSITIVE, true),
				p11.NewAttribute(p11.CKA_VALUE, value),
			})
			if err != nil {
				t.Fatal(err)
			}
			a, err := s.c.GetAttributeValue(sh, obj, []*p11.Attribute{p11.NewAttribute(p11.CKA_CHECK_VALUE, nil)})
			if err != nil || !bytes.Equal(a[0].Value, kcv[:3]) {
				t.Fatalf("CKA_CHECK_VALUE: %v; want %x", err, kcv[:3])
			}
			tok := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			if a, err := s.c.GetAttributeValue(sh, tok, []*p11.Attribute{p11.NewAttribute(p11.CKA_CHECK_VALUE, nil)}); err != nil || len(a[0].Value) != 3 {
				t.Fatalf("CKA_CHECK_VALUE of the token's key: %v", err)
			}
		})
	}
}
