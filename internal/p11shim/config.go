package p11shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/internal/hsmtest"
)

// EnvConfig names the environment variable the shim reads, at
// C_Initialize, for the path of its configuration file. Each process that
// loads the shim reads its own.
const EnvConfig = "KMSFS_P11SHIM_CONFIG"

// DefaultModule is the module the shim forwards to when Config.Module is
// empty: SoftHSM2 from the Debian package softhsm2.
const DefaultModule = hsmtest.DefaultModule

// Mechanism numbers under which profiles offer RFC 5649 key wrap in place
// of SoftHSM's CKM_AES_KEY_WRAP_PAD (0x210A).
const (
	// MechAESKeyWrapKWP is CKM_AES_KEY_WRAP_KWP of PKCS#11 3.0.
	MechAESKeyWrapKWP = 0x0000210B
	// MechCloudHSMKeyWrapZeroPad is AWS CloudHSM's
	// CKM_CLOUDHSM_AES_KEY_WRAP_ZERO_PAD (CKM_VENDOR_DEFINED | 0x216F),
	// which Client SDK 5 offers where SDK 3 had CKM_AES_KEY_WRAP_PAD.
	MechCloudHSMKeyWrapZeroPad = 0x8000216F
	// MechLunaAESKWP is Thales Luna's CKM_AES_KWP
	// (CKM_VENDOR_DEFINED + 0x171).
	MechLunaAESKWP = 0x80000171
)

// IVMode says who chooses the IV of an AES-GCM encryption.
type IVMode int

const (
	// IVCaller passes the caller's IV through, as SoftHSM does.
	IVCaller IVMode = iota
	// IVWriteBack refuses a caller's IV (any non-zero byte in the IV
	// buffer gives CKR_MECHANISM_PARAM_INVALID), draws one on the token
	// and writes it into the caller's CK_GCM_PARAMS.pIv buffer when the
	// encryption ends, as AWS CloudHSM does. The buffer must be
	// Config.GCMIVLen bytes.
	IVWriteBack
	// IVAppend refuses a caller's IV likewise, draws one of
	// Config.GCMIVLen bytes and appends it to the ciphertext, after the
	// tag, as Thales Luna does in FIPS mode.
	IVAppend
)

// GCMStruct says which layout of CK_GCM_PARAMS the shim accepts.
type GCMStruct int

const (
	// GCMStructPass leaves the parameters to the module underneath
	// (SoftHSM takes only the layout with ulIvBits).
	GCMStructPass GCMStruct = iota
	// GCMStructWithIVBits accepts only the six-field layout of the
	// PKCS#11 2.40 header and 3.0, with ulIvBits.
	GCMStructWithIVBits
	// GCMStructWithoutIVBits accepts only the five-field layout of the
	// PKCS#11 2.40 specification text, without ulIvBits.
	GCMStructWithoutIVBits
)

// Config is one set of behaviours. The zero Config (with Module set or
// defaulted) forwards every call unchanged.
type Config struct {
	// Module is the PKCS#11 module the shim forwards to; "" means
	// DefaultModule.
	Module string
	// RefuseReadOnlySessions makes C_OpenSession without CKF_RW_SESSION
	// fail with CKR_FUNCTION_FAILED.
	RefuseReadOnlySessions bool
	// GCMIV says who chooses AES-GCM encryption IVs.
	GCMIV IVMode
	// GCMIVLen is the length of a token-generated IV; 0 means 12.
	GCMIVLen int
	// GCMStruct says which CK_GCM_PARAMS layout is accepted.
	GCMStruct GCMStruct
	// KWPMechanism, when not 0, hides CKM_AES_KEY_WRAP_PAD and offers
	// RFC 5649 key wrap under this number instead, in the mechanism list
	// and info and in every call that takes a mechanism.
	KWPMechanism uint
	// HideMechanisms are absent from the mechanism list and refused with
	// CKR_MECHANISM_INVALID (at most 16).
	HideMechanisms []uint
	// SensitiveKeys makes every secret key sensitive by policy: reading
	// CKA_VALUE of one gives CKR_ATTRIBUTE_SENSITIVE, and a template that
	// creates a secret key with CKA_SENSITIVE false is refused with
	// CKR_ATTRIBUTE_VALUE_INVALID.
	SensitiveKeys bool
	// MaxSessions caps the sessions open at once on one slot; the next
	// C_OpenSession fails with CKR_SESSION_COUNT. 0 means no cap.
	MaxSessions int
	// DropEvery, when not 0, closes every session underneath after each
	// DropEvery forwarded calls, which also ends the login: later calls
	// on the old handles fail with CKR_SESSION_HANDLE_INVALID, as after
	// an HSM failover.
	DropEvery int
}

// Profile names a set of behaviours of one HSM; README.md says what each
// does and which vendor documentation it follows.
type Profile string

// The profiles.
const (
	SoftHSM  Profile = "softhsm"
	CloudHSM Profile = "cloudhsm"
	LunaFIPS Profile = "luna-fips"
	YubiHSM2 Profile = "yubihsm2"
)

// Profiles lists every profile.
func Profiles() []Profile { return []Profile{SoftHSM, CloudHSM, LunaFIPS, YubiHSM2} }

// Config returns the behaviours of profile p, forwarding to DefaultModule.
func (p Profile) Config() (Config, error) {
	switch p {
	case SoftHSM:
		return Config{}, nil
	case CloudHSM:
		return Config{
			RefuseReadOnlySessions: true,
			GCMIV:                  IVWriteBack,
			GCMIVLen:               12,
			KWPMechanism:           MechCloudHSMKeyWrapZeroPad,
			SensitiveKeys:          true,
		}, nil
	case LunaFIPS:
		return Config{
			GCMIV:         IVAppend,
			GCMIVLen:      16,
			GCMStruct:     GCMStructWithIVBits,
			KWPMechanism:  MechLunaAESKWP,
			SensitiveKeys: true,
		}, nil
	case YubiHSM2:
		return Config{
			HideMechanisms: []uint{ckmAESGCM, ckmAESKeyWrapPad},
			SensitiveKeys:  true,
			MaxSessions:    16,
		}, nil
	}
	return Config{}, fmt.Errorf("p11shim: unknown profile %q (want one of %v)", string(p), Profiles())
}

const (
	ckmAESGCM        = 0x1087
	ckmAESKeyWrapPad = 0x210A
)

// text renders c in the shim's key=value format.
func (c Config) text() (string, error) {
	mod := c.Module
	if mod == "" {
		mod = DefaultModule
	}
	if strings.ContainsAny(mod, "\n\x00") || !filepath.IsAbs(mod) {
		return "", fmt.Errorf("p11shim: module path %q: want an absolute path on one line", mod)
	}
	if len(c.HideMechanisms) > 16 {
		return "", fmt.Errorf("p11shim: %d mechanisms to hide, at most 16", len(c.HideMechanisms))
	}
	ivLen := c.GCMIVLen
	if ivLen == 0 {
		ivLen = 12
	}
	if ivLen < 1 || ivLen > 16 || c.MaxSessions < 0 || c.DropEvery < 0 {
		return "", fmt.Errorf("p11shim: IV length %d (want 1 to 16), session cap %d, drop interval %d (want >= 0)",
			ivLen, c.MaxSessions, c.DropEvery)
	}
	iv := map[IVMode]string{IVCaller: "caller", IVWriteBack: "write-back", IVAppend: "append"}[c.GCMIV]
	gs := map[GCMStruct]string{GCMStructPass: "pass", GCMStructWithIVBits: "with-ivbits", GCMStructWithoutIVBits: "without-ivbits"}[c.GCMStruct]
	if iv == "" || gs == "" {
		return "", fmt.Errorf("p11shim: IV mode %d or GCM layout %d unknown", c.GCMIV, c.GCMStruct)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "module=%s\n", mod)
	fmt.Fprintf(&b, "refuse_read_only_sessions=%d\n", bit(c.RefuseReadOnlySessions))
	fmt.Fprintf(&b, "gcm_iv=%s\ngcm_iv_len=%d\ngcm_struct=%s\n", iv, ivLen, gs)
	fmt.Fprintf(&b, "kwp_mechanism=%#x\n", c.KWPMechanism)
	for _, m := range c.HideMechanisms {
		fmt.Fprintf(&b, "hide_mechanism=%#x\n", m)
	}
	fmt.Fprintf(&b, "sensitive_keys=%d\n", bit(c.SensitiveKeys))
	fmt.Fprintf(&b, "max_sessions=%d\ndrop_every=%d\n", c.MaxSessions, c.DropEvery)
	return b.String(), nil
}

func bit(b bool) int {
	if b {
		return 1
	}
	return 0
}

// WriteFile writes c to path (mode 0600) for the shim to read; point
// EnvConfig at path before the process initialises the shim.
func (c Config) WriteFile(path string) error {
	text, err := c.text()
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("p11shim: config: %w", err)
	}
	return nil
}
