package awskms_test

import (
	"bytes"
	"encoding/hex"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

func TestRoundTrip(t *testing.T) {
	e := fusetest.KMS(t)
	tests := []struct {
		key      string
		wantARN  string
		kind     byte
		wrapOp   string // KMS operation Wrap calls, "" for none
		generate bool   // the source implements keysource.Generator
	}{
		{kmstest.Alias, e.Symmetric.ARN, 0x01, "Encrypt", true},
		{e.AliasARN(), e.Symmetric.ARN, 0x01, "Encrypt", true},
		{e.Symmetric.ARN, e.Symmetric.ARN, 0x01, "Encrypt", true},
		{e.Symmetric2.ID, e.Symmetric2.ARN, 0x01, "Encrypt", true},
		{e.RSAEncrypt.ARN, e.RSAEncrypt.ARN, 0x02, "", false},
		{e.RSAEncrypt.ID, e.RSAEncrypt.ARN, 0x02, "", false},
	}
	for _, tt := range tests {
		t.Run("key="+tt.key, func(t *testing.T) {
			c := kmstest.NewCounter()
			ks := mustSource(t, e, tt.key, volume1, c, awskms.Options{})
			if ks.Type() != awskms.Type || ks.KeyID() != tt.wantARN {
				t.Fatalf("source = %s:%s, want %s:%s", ks.Type(), ks.KeyID(), awskms.Type, tt.wantARN)
			}
			if _, ok := ks.(keysource.Describer); !ok {
				t.Error("source is not a keysource.Describer")
			}
			gen, ok := ks.(keysource.Generator)
			if ok != tt.generate {
				t.Fatalf("source is a keysource.Generator: %v, want %v", ok, tt.generate)
			}
			c.Reset()

			t.Run("op=wrap", func(t *testing.T) {
				dk := newDataKey()
				orig := bytes.Clone(dk)
				st := mustWrap(t, ks, dk)
				if !bytes.Equal(dk, orig) {
					t.Fatal("Wrap changed the caller's data key")
				}
				if st.Type != awskms.Type || st.KeyID != tt.wantARN {
					t.Fatalf("stanza = %v, want %s:%s", st, awskms.Type, tt.wantARN)
				}
				if st.Body[0] != tt.kind {
					t.Fatalf("body kind = %#x, want %#x", st.Body[0], tt.kind)
				}
				if bytes.Contains(st.Body, dk) || strings.Contains(st.String(), hex.EncodeToString(dk)) {
					t.Fatal("stanza holds the data key in the clear")
				}
				wantCalls := 0
				if tt.wrapOp != "" {
					wantCalls = 1
				}
				if got := c.Calls(tt.wrapOp); tt.wrapOp != "" && got != wantCalls {
					t.Errorf("%s calls = %d, want %d", tt.wrapOp, got, wantCalls)
				}
				if tt.wrapOp == "" && c.Total() != 0 {
					t.Errorf("local wrap made KMS calls: %v", c.Snapshot())
				}
				c.Reset()
				mustUnwrap(t, ks, st, dk)
				if got := c.Snapshot(); len(got) != 1 || got["Decrypt"] != 1 {
					t.Errorf("unwrap calls = %v, want one Decrypt", got)
				}
			})
			if gen == nil {
				return
			}
			t.Run("op=generate", func(t *testing.T) {
				c.Reset()
				dk, st, err := gen.GenerateDataKey(testContext(t))
				if err != nil {
					t.Fatal(err)
				}
				if len(dk) != keysource.DataKeySize || st.KeyID != tt.wantARN || st.Body[0] != 0x01 {
					t.Fatalf("GenerateDataKey = %d-byte key, stanza %v", len(dk), st)
				}
				if got := c.Snapshot(); len(got) != 1 || got["GenerateDataKey"] != 1 {
					t.Errorf("calls = %v, want one GenerateDataKey", got)
				}
				mustUnwrap(t, ks, st, dk)
			})
		})
	}
}

// The volume is bound: a source of another volume cannot unwrap.
func TestWrongVolume(t *testing.T) {
	e := fusetest.KMS(t)
	for _, key := range []string{kmstest.Alias, e.RSAEncrypt.ARN} {
		t.Run("key="+key, func(t *testing.T) {
			st := mustWrap(t, mustSource(t, e, key, volume1, nil, awskms.Options{}), newDataKey())
			other := mustSource(t, e, key, volume2, nil, awskms.Options{})
			_, err := other.Unwrap(testContext(t), st)
			wantErr(t, err, keysource.ErrInvalid, other.KeyID(), "volume")
		})
	}
}

// The encryption context is exactly {"kmsfs:volume": hex(volumeID)}: a
// plain SDK Decrypt under that context opens a stanza's ciphertext.
func TestEncryptionContext(t *testing.T) {
	e := fusetest.KMS(t)
	ks := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{})
	dk := newDataKey()
	st := mustWrap(t, ks, dk)
	out, err := e.Client().Decrypt(testContext(t), &kms.DecryptInput{
		CiphertextBlob:    st.Body[1:],
		KeyId:             aws.String(e.Symmetric.ARN),
		EncryptionContext: map[string]string{"kmsfs:volume": hex.EncodeToString(volume1[:])},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Plaintext, dk) {
		t.Fatal("Decrypt under the documented context returned another key")
	}
}

func TestNotMine(t *testing.T) {
	e := fusetest.KMS(t)
	c := kmstest.NewCounter()
	sym := mustSource(t, e, e.Symmetric.ARN, volume1, c, awskms.Options{})
	rsa := mustSource(t, e, e.RSAEncrypt.ARN, volume1, c, awskms.Options{})
	sym2 := mustSource(t, e, e.Symmetric2.ARN, volume1, nil, awskms.Options{})
	dk := newDataKey()
	fromSym2 := mustWrap(t, sym2, dk)
	fromRSA := mustWrap(t, rsa, dk)
	fromSym := mustWrap(t, sym, dk)

	tests := []struct {
		name string
		ks   keysource.KeySource
		st   keysource.Stanza
	}{
		{"source=sym,stanza=sym2", sym, fromSym2},
		{"source=sym,stanza=rsa", sym, fromRSA},
		{"source=rsa,stanza=sym", rsa, fromSym},
		{"source=sym,stanza=pkcs11", sym, keysource.Stanza{Type: "pkcs11", KeyID: e.Symmetric.ARN, Body: fromSym.Body}},
		{"source=sym,stanza=alias", sym, keysource.Stanza{Type: awskms.Type, KeyID: kmstest.Alias, Body: fromSym.Body}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Reset()
			_, err := tt.ks.Unwrap(testContext(t), tt.st)
			wantErr(t, err, keysource.ErrNotMine)
			if c.Total() != 0 {
				t.Errorf("a stanza not mine made KMS calls: %v", c.Snapshot())
			}
		})
	}
}

// Stanzas of this key that are damaged are invalid, not "not mine".
func TestDamagedStanza(t *testing.T) {
	e := fusetest.KMS(t)
	for _, key := range []string{e.Symmetric.ARN, e.RSAEncrypt.ARN} {
		ks := mustSource(t, e, key, volume1, nil, awskms.Options{})
		st := mustWrap(t, ks, newDataKey())
		flip := func(i int) []byte { b := bytes.Clone(st.Body); b[i] ^= 0x01; return b }
		for _, tc := range []struct {
			name string
			body []byte
		}{
			{"body=empty", nil},
			{"body=kind-only", st.Body[:1]},
			{"body=wrong-kind", flip(0)},
			{"body=flipped-last", flip(len(st.Body) - 1)},
			{"body=truncated", st.Body[:len(st.Body)-1]},
		} {
			t.Run("key="+key+"/"+tc.name, func(t *testing.T) {
				bad := keysource.Stanza{Type: st.Type, KeyID: st.KeyID, Body: tc.body}
				_, err := ks.Unwrap(testContext(t), bad)
				wantErr(t, err, keysource.ErrInvalid, key)
			})
		}
	}
}

// A stanza planted in the cipher dir with a wrapped key longer than KMS
// accepts is refused as invalid without a KMS request.
func TestOversizedStanza(t *testing.T) {
	e := fusetest.KMS(t)
	for _, key := range []string{e.Symmetric.ARN, e.RSAEncrypt.ARN} {
		t.Run("key="+key, func(t *testing.T) {
			c := kmstest.NewCounter()
			ks := mustSource(t, e, key, volume1, c, awskms.Options{})
			st := mustWrap(t, ks, newDataKey())
			planted := keysource.Stanza{Type: st.Type, KeyID: st.KeyID, Body: append(bytes.Clone(st.Body), make([]byte, 8000)...)}
			c.Reset()
			_, err := ks.Unwrap(testContext(t), planted)
			wantErr(t, err, keysource.ErrInvalid, key)
			if n := c.Total(); n != 0 {
				t.Errorf("KMS calls = %v, want none", c.Snapshot())
			}
		})
	}
}

func TestWrapDataKeySize(t *testing.T) {
	e := fusetest.KMS(t)
	for _, key := range []string{e.Symmetric.ARN, e.RSAEncrypt.ARN} {
		ks := mustSource(t, e, key, volume1, nil, awskms.Options{})
		for _, n := range []int{0, 1, keysource.DataKeySize - 1, keysource.DataKeySize + 1} {
			t.Run("key="+key+"/size="+itoa(n), func(t *testing.T) {
				_, err := ks.Wrap(testContext(t), make([]byte, n))
				wantErr(t, err, keysource.ErrInvalid)
			})
		}
	}
}

func TestDescribe(t *testing.T) {
	e := fusetest.KMS(t)
	for _, tc := range []struct {
		key, spec string
	}{
		{kmstest.Alias, "SYMMETRIC_DEFAULT"},
		{e.RSAEncrypt.ARN, "RSA_2048"},
	} {
		t.Run("key="+tc.key, func(t *testing.T) {
			ks := mustSource(t, e, tc.key, volume1, nil, awskms.Options{})
			st, err := ks.(keysource.Describer).Describe(testContext(t))
			if err != nil {
				t.Fatal(err)
			}
			if st.KeyID != ks.KeyID() || st.State != string(types.KeyStateEnabled) || !st.Usable || !st.Deletes.IsZero() {
				t.Errorf("Describe = %+v", st)
			}
			if !strings.Contains(st.Detail, tc.spec) {
				t.Errorf("Detail = %q, want it to name %s", st.Detail, tc.spec)
			}
		})
	}
}

// Sources are safe for concurrent use (run under -race).
func TestConcurrent(t *testing.T) {
	e := fusetest.KMS(t)
	const workers, rounds = 16, 4
	for _, key := range []string{e.Symmetric.ARN, e.RSAEncrypt.ARN} {
		t.Run("key="+key, func(t *testing.T) {
			ks := mustSource(t, e, key, volume1, nil, awskms.Options{})
			ctx := testContext(t)
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for range workers {
				wg.Go(func() {
					for range rounds {
						dk := newDataKey()
						st, err := ks.Wrap(ctx, dk)
						if err == nil {
							var got []byte
							if got, err = ks.Unwrap(ctx, st); err == nil && !bytes.Equal(got, dk) {
								err = errMismatch
							}
						}
						if err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
		})
	}
}
