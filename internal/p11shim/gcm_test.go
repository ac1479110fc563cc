//go:build cgo

package p11shim_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"
	"unsafe"

	"github.com/kmsfs/kmsfs/internal/p11shim"
	p11 "github.com/miekg/pkcs11"
	"golang.org/x/sys/unix"
)

var (
	plaintext = []byte("a 32-byte data key, for example.")
	aad       = []byte("volume id")
)

// TestGCMTokenIV encrypts with AES-GCM under the caller's IV and under a
// zero IV buffer, as kmsfs wraps data keys. HSMs in FIPS mode refuse the
// caller's IV and draw their own: AWS CloudHSM writes its 12-byte IV into
// the caller's pIv buffer, Thales Luna appends its 16-byte IV to the
// ciphertext. SoftHSM uses whatever IV it is given. In every case the
// ciphertext must open under the IV the token reports.
func TestGCMTokenIV(t *testing.T) {
	for _, tt := range []struct {
		cfg   string
		ivLen int
		zero  bool
		want  uint
		where string // where the IV used is found: "caller", "pIv", "appended"
	}{
		{"softhsm", 12, false, p11.CKR_OK, "caller"},
		{"softhsm", 12, true, p11.CKR_OK, "caller"},
		{"cloudhsm", 12, false, p11.CKR_MECHANISM_PARAM_INVALID, ""},
		{"cloudhsm", 12, true, p11.CKR_OK, "pIv"},
		{"cloudhsm", 16, true, p11.CKR_MECHANISM_PARAM_INVALID, ""},
		{"luna-fips", 12, false, p11.CKR_MECHANISM_PARAM_INVALID, ""},
		{"luna-fips", 12, true, p11.CKR_OK, "appended"},
	} {
		t.Run(fmt.Sprintf("profile=%s,iv=%d,zero=%v", tt.cfg, tt.ivLen, tt.zero), func(t *testing.T) {
			s := load(t, profile(t, p11shim.Profile(tt.cfg)))
			sh := s.login(t)
			key := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			iv := make([]byte, tt.ivLen)
			if !tt.zero {
				copy(iv, "caller's IV, not zero")
			}
			gp := p11.NewGCMParams(iv, aad, 128)
			defer gp.Free()
			ct := s.encrypt(t, sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, gp)}, key, tt.want)
			if ct == nil {
				return
			}
			back := gp.IV()
			used := iv
			switch tt.where {
			case "pIv":
				used = back
				if bytes.Equal(back, iv) || len(back) != 12 {
					t.Fatalf("IV written back %x: want 12 bytes from the token", back)
				}
			case "appended":
				if len(ct) != len(plaintext)+16+16 {
					t.Fatalf("%d bytes out, want ciphertext, tag and a 16-byte IV", len(ct))
				}
				ct, used = ct[:len(ct)-16], ct[len(ct)-16:]
				if !bytes.Equal(back, iv) || bytes.Equal(used, make([]byte, 16)) {
					t.Fatalf("IV %x appended, %x written back: want a token IV appended only", used, back)
				}
			default:
				if !bytes.Equal(back, iv) {
					t.Fatalf("IV %x written back, want the caller's %x kept", back, iv)
				}
			}
			if len(ct) != len(plaintext)+16 {
				t.Fatalf("%d bytes of ciphertext and tag, want %d", len(ct), len(plaintext)+16)
			}
			dp := p11.NewGCMParams(used, aad, 128)
			defer dp.Free()
			s.decrypt(t, sh, []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, dp)}, key, ct)
		})
	}
}

// gcmParams lays out CK_GCM_PARAMS with or without ulIvBits (the header's
// and the 2.40 text's layouts), pointing into mem, which the Go runtime
// does not manage, so the module may keep the pointers.
func gcmParams(mem []byte, iv, aad []byte, ivBits bool) []byte {
	copy(mem, iv)
	copy(mem[64:], aad)
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	fields := []uint64{base, uint64(len(iv))}
	if ivBits {
		fields = append(fields, uint64(8*len(iv)))
	}
	fields = append(fields, base+64, uint64(len(aad)), 128)
	b := make([]byte, 0, 8*len(fields))
	for _, f := range fields {
		b = binary.NativeEndian.AppendUint64(b, f)
	}
	return b
}

// TestGCMStructLayout encrypts and decrypts with each CK_GCM_PARAMS
// layout. A module that takes one layout refuses the other with
// CKR_MECHANISM_PARAM_INVALID (Luna wants ulIvBits); SoftHSM takes only
// the layout with ulIvBits.
func TestGCMStructLayout(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("the layouts below are those of 64-bit platforms")
	}
	mem, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	for _, tt := range []struct {
		accept string
		cfg    p11shim.GCMStruct
		ivBits bool
		want   uint
	}{
		{"pass", p11shim.GCMStructPass, true, p11.CKR_OK},
		{"pass", p11shim.GCMStructPass, false, p11.CKR_ARGUMENTS_BAD},
		{"with-ivbits", p11shim.GCMStructWithIVBits, true, p11.CKR_OK},
		{"with-ivbits", p11shim.GCMStructWithIVBits, false, p11.CKR_MECHANISM_PARAM_INVALID},
		{"without-ivbits", p11shim.GCMStructWithoutIVBits, true, p11.CKR_MECHANISM_PARAM_INVALID},
		{"without-ivbits", p11shim.GCMStructWithoutIVBits, false, p11.CKR_OK},
	} {
		t.Run(fmt.Sprintf("accept=%s,ivbits=%v", tt.accept, tt.ivBits), func(t *testing.T) {
			s := load(t, p11shim.Config{GCMStruct: tt.cfg})
			sh := s.login(t)
			key := s.object(t, sh, p11.CKO_SECRET_KEY, aesLabel)
			m := []*p11.Mechanism{p11.NewMechanism(p11.CKM_AES_GCM, gcmParams(mem, []byte("twelve bytes"), aad, tt.ivBits))}
			if ct := s.encrypt(t, sh, m, key, tt.want); ct != nil {
				s.decrypt(t, sh, m, key, ct)
			}
		})
	}
}

// encrypt starts an encryption with m, checks that C_EncryptInit gives
// want and, if it gave CKR_OK, returns plaintext encrypted; else nil.
func (s *shim) encrypt(t *testing.T, sh p11.SessionHandle, m []*p11.Mechanism, key p11.ObjectHandle, want uint) []byte {
	t.Helper()
	err := s.c.EncryptInit(sh, m, key)
	if got := ckr(t, err); got != want {
		t.Fatalf("encrypt init: %s, want %s", name(got), name(want))
	}
	if err != nil {
		return nil
	}
	ct, err := s.c.Encrypt(sh, plaintext)
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	return ct
}

// decrypt checks that ct decrypts with m to plaintext.
func (s *shim) decrypt(t *testing.T, sh p11.SessionHandle, m []*p11.Mechanism, key p11.ObjectHandle, ct []byte) {
	t.Helper()
	if err := s.c.DecryptInit(sh, m, key); err != nil {
		t.Fatalf("decrypt init: %v", err)
	}
	if pt, err := s.c.Decrypt(sh, ct); err != nil || !bytes.Equal(pt, plaintext) {
		t.Fatalf("decrypt: %q, %v", pt, err)
	}
}
