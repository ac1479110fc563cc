package awskms_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kmsfs/kmsfs/internal/fusetest"
	"github.com/kmsfs/kmsfs/internal/kmstest"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/keysourcetest"
)

// createRSAKey adds an RSA_2048 ENCRYPT_DECRYPT key to e and returns it:
// the seeded set has one, and RSA to RSA needs two.
func createRSAKey(t testing.TB, e *kmstest.Emulator) kmstest.Key {
	t.Helper()
	out, err := e.Client().CreateKey(testContext(t), &kms.CreateKeyInput{
		KeySpec:  types.KeySpecRsa2048,
		KeyUsage: types.KeyUsageTypeEncryptDecrypt,
	})
	if err != nil {
		t.Fatalf("create RSA key: %v", err)
	}
	return kmstest.Key{ID: aws.ToString(out.KeyMetadata.KeyId), ARN: aws.ToString(out.KeyMetadata.Arn)}
}

func reEncrypter(t testing.TB, ks keysource.KeySource) keysource.ReEncrypter {
	t.Helper()
	re, ok := ks.(keysource.ReEncrypter)
	if !ok {
		t.Fatalf("%s is not a keysource.ReEncrypter", ks.KeyID())
	}
	return re
}

// TestReEncrypt moves a data key between two KMS keys in one ReEncrypt
// request, and the destination opens the result as its own stanza. RSA
// ReEncrypt runs on the proxy's emulation (local-kms lacks it); a pair of
// different kinds is refused without a request, for Unwrap and Wrap.
func TestReEncrypt(t *testing.T) {
	e := fusetest.KMS(t)
	rsa2 := createRSAKey(t, e)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	proxy.EmulateRSAReEncrypt()
	publicOnly := func(key kmstest.Key) awskms.Options {
		return awskms.Options{PublicKeyFile: writePublicKey(t, e, key, false)}
	}
	tests := []struct {
		from, to string
		toOpts   awskms.Options
		kind     byte // body kind of the result; 0: refused (ErrNotMine)
	}{
		{from: e.Symmetric.ARN, to: e.Symmetric2.ARN, kind: 0x01},
		{from: kmstest.Alias, to: e.Symmetric2.ID, kind: 0x01},
		{from: e.Symmetric.ARN, to: e.Symmetric.ARN, kind: 0x01}, // same key: a fresh wrap
		{from: e.RSAEncrypt.ARN, to: rsa2.ARN, kind: 0x02},
		{from: rsa2.ARN, to: e.RSAEncrypt.ARN, kind: 0x02},
		{from: e.RSAEncrypt.ARN, to: rsa2.ARN, toOpts: publicOnly(rsa2), kind: 0x02},
		{from: e.Symmetric.ARN, to: e.RSAEncrypt.ARN},
		{from: e.RSAEncrypt.ARN, to: e.Symmetric.ARN},
	}
	for _, tt := range tests {
		name := "from=" + tt.from + ",to=" + tt.to
		if tt.toOpts.PublicKeyFile != "" {
			name += ",public-key-only"
		}
		t.Run(name, func(t *testing.T) {
			c := kmstest.NewCounter()
			src := mustSource(t, e, tt.from, volume1, c, awskms.Options{Endpoint: proxy.URL})
			tt.toOpts.Endpoint = proxy.URL
			dst := mustSource(t, e, tt.to, volume1, nil, tt.toOpts)
			reader := dst
			if tt.toOpts.PublicKeyFile != "" {
				reader = mustSource(t, e, tt.to, volume1, nil, awskms.Options{})
			}
			dk := newDataKey()
			st := mustWrap(t, src, dk)
			c.Reset()
			before := proxy.Requests("ReEncrypt")

			got, err := reEncrypter(t, src).ReEncrypt(testContext(t), st, dst)
			if tt.kind == 0 {
				wantErr(t, err, keysource.ErrNotMine, src.KeyID(), dst.KeyID(), "cannot become")
				if n := c.Total(); n != 0 {
					t.Fatalf("refused ReEncrypt made %d KMS calls", n)
				}
				// The caller's fallback: unwrap once, wrap with the new key.
				mustUnwrap(t, reader, mustWrap(t, dst, dk), dk)
				return
			}
			if err != nil {
				t.Fatalf("ReEncrypt: %v", err)
			}
			if got.Type != awskms.Type || got.KeyID != dst.KeyID() || got.Body[0] != tt.kind {
				t.Fatalf("stanza %v kind %#x, want %s:%s kind %#x", got, got.Body[0], awskms.Type, dst.KeyID(), tt.kind)
			}
			if calls := c.Snapshot(); len(calls) != 1 || calls["ReEncrypt"] != 1 || proxy.Requests("ReEncrypt")-before != 1 {
				t.Fatalf("calls %v, %d ReEncrypt requests; want one ReEncrypt and nothing else", calls, proxy.Requests("ReEncrypt")-before)
			}
			if bytes.Contains(got.Body, dk) {
				t.Fatal("stanza holds the data key in the clear")
			}
			mustUnwrap(t, reader, got, dk)
		})
	}
}

// TestReEncryptRequest pins what a ReEncrypt asks of KMS: the key ARNs on
// both sides, the volume's encryption context on both sides for symmetric
// keys (exactly what Wrap and Unwrap use), none for RSA, and the RSA
// algorithm kmsfs wraps with.
func TestReEncryptRequest(t *testing.T) {
	e := fusetest.KMS(t)
	rsa2 := createRSAKey(t, e)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	proxy.EmulateRSAReEncrypt()
	volCtx := map[string]string{awskms.ContextKey: hexString(volume1[:])}
	tests := []struct {
		from, to string
		alg      string
		ctx      map[string]string
	}{
		{e.Symmetric.ARN, e.Symmetric2.ARN, "SYMMETRIC_DEFAULT", volCtx},
		{e.RSAEncrypt.ARN, rsa2.ARN, "RSAES_OAEP_SHA_256", nil},
	}
	for _, tt := range tests {
		t.Run("from="+tt.from, func(t *testing.T) {
			src := mustSource(t, e, tt.from, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			dst := mustSource(t, e, tt.to, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			if _, err := reEncrypter(t, src).ReEncrypt(testContext(t), mustWrap(t, src, newDataKey()), dst); err != nil {
				t.Fatal(err)
			}
			var in struct {
				SourceKeyId, DestinationKeyId                             string
				SourceEncryptionAlgorithm, DestinationEncryptionAlgorithm string
				SourceEncryptionContext, DestinationEncryptionContext     map[string]string
			}
			if err := json.Unmarshal(proxy.LastRequest("ReEncrypt"), &in); err != nil {
				t.Fatal(err)
			}
			if in.SourceKeyId != tt.from || in.DestinationKeyId != tt.to ||
				in.SourceEncryptionAlgorithm != tt.alg || in.DestinationEncryptionAlgorithm != tt.alg {
				t.Fatalf("request %+v", in)
			}
			if !sameMap(in.SourceEncryptionContext, tt.ctx) || !sameMap(in.DestinationEncryptionContext, tt.ctx) {
				t.Fatalf("encryption contexts %v -> %v, want %v on both sides", in.SourceEncryptionContext, in.DestinationEncryptionContext, tt.ctx)
			}
		})
	}
}

func sameMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestReEncryptRefuses is the planted and the mismatched: a stanza of
// another volume, a stanza whose key ID names this key over another key's
// ciphertext, and destinations ReEncrypt must not serve. None yields a
// stanza; those KMS must judge cost one request, the others none.
func TestReEncryptRefuses(t *testing.T) {
	e := fusetest.KMS(t)
	c := kmstest.NewCounter()
	sym := mustSource(t, e, e.Symmetric.ARN, volume1, c, awskms.Options{})
	sym2 := mustSource(t, e, e.Symmetric2.ARN, volume1, nil, awskms.Options{})
	otherVolume := mustSource(t, e, e.Symmetric.ARN, volume2, nil, awskms.Options{})
	describeOnly := mustSource(t, e, e.Symmetric2.ARN, volume1, nil, awskms.Options{DescribeOnly: true})
	// The RSA key's public key under an ARN of another Region.
	elsewhere := strings.Replace(e.RSAEncrypt.ARN, ":"+e.Region+":", ":eu-north-1:", 1)
	otherRegion := mustSource(t, e, elsewhere, volume1, nil, awskms.Options{PublicKeyFile: writePublicKey(t, e, e.RSAEncrypt, false)})
	dk := newDataKey()
	mine := mustWrap(t, sym, dk)
	lying := mustWrap(t, sym2, dk)
	lying.KeyID = e.Symmetric.ARN

	tests := []struct {
		name     string
		st       keysource.Stanza
		to       keysource.KeySource
		sentinel error
		requests int
		words    []string
	}{
		{"stanza=other-volume", mustWrap(t, otherVolume, dk), sym2, keysource.ErrInvalid, 1, []string{e.Symmetric.ARN, "another volume"}},
		{"stanza=ciphertext-of-another-key", lying, sym2, keysource.ErrInvalid, 1, []string{e.Symmetric.ARN}},
		{"stanza=other-type", keysource.Stanza{Type: "pkcs11", KeyID: "x", Body: []byte{1, 2}}, sym2, keysource.ErrNotMine, 0, nil},
		{"stanza=other-key", mustWrap(t, sym2, dk), sym, keysource.ErrNotMine, 0, nil},
		{"to=other-volume", mine, mustSource(t, e, e.Symmetric2.ARN, volume2, nil, awskms.Options{}), keysource.ErrNotMine, 0, []string{"another volume"}},
		{"to=other-service", mine, keysourcetest.New(keysourcetest.Options{}), keysource.ErrNotMine, 0, []string{"not an AWS KMS key"}},
		{"to=describe-only", mine, describeOnly, keysource.ErrNotMine, 0, []string{"describe"}},
		{"to=other-region", mine, otherRegion, keysource.ErrNotMine, 0, []string{"eu-north-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Reset()
			got, err := reEncrypter(t, sym).ReEncrypt(testContext(t), tt.st, tt.to)
			wantErr(t, err, tt.sentinel, tt.words...)
			if got.Body != nil {
				t.Fatalf("refused ReEncrypt returned a stanza %v", got)
			}
			if n := c.Attempts("ReEncrypt"); n != tt.requests || c.Total() != tt.requests {
				t.Fatalf("%d ReEncrypt requests, %v in all; want %d", n, c.Snapshot(), tt.requests)
			}
		})
	}
}

// A public-key-only source cannot re-encrypt its stanzas, as it cannot
// unwrap them: that needs the KMS key.
func TestReEncryptPublicKeyOnlySource(t *testing.T) {
	e := fusetest.KMS(t)
	ks := mustSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{PublicKeyFile: writePublicKey(t, e, e.RSAEncrypt, false)})
	dst := mustSource(t, e, createRSAKey(t, e).ARN, volume1, nil, awskms.Options{})
	_, err := reEncrypter(t, ks).ReEncrypt(testContext(t), mustWrap(t, ks, newDataKey()), dst)
	wantErr(t, err, keysource.ErrDenied, e.RSAEncrypt.ARN, "only the public key")
}

// A denied ReEncrypt names the key the policy refused and the permission
// it lacks: kms:ReEncryptFrom on the old key, kms:ReEncryptTo on the new
// one (AWS KMS says which in its message); when the message does not say,
// the error names both. A disabled destination is named as such.
func TestReEncryptDenied(t *testing.T) {
	e := fusetest.KMS(t)
	denial := func(perm, key string) string {
		return "User: " + kmstest.DefaultCaller + " is not authorized to perform: kms:" + perm + " on resource: " + key +
			" because no resource-based policy allows the kms:" + perm + " action"
	}
	tests := []struct {
		name     string
		fault    kmstest.Fault
		sentinel error
		words    []string
	}{
		{"denied=ReEncryptFrom", kmstest.Fault{Code: "AccessDeniedException", Message: denial("ReEncryptFrom", e.Symmetric.ARN)},
			keysource.ErrDenied, []string{"ReEncryptFrom " + e.Symmetric.ARN, "kms:ReEncryptFrom on the key"}},
		{"denied=ReEncryptTo", kmstest.Fault{Code: "AccessDeniedException", Message: denial("ReEncryptTo", e.Symmetric2.ARN)},
			keysource.ErrDenied, []string{"ReEncryptTo " + e.Symmetric2.ARN, "kms:ReEncryptTo on the key"}},
		{"denied=unnamed", kmstest.Fault{Code: "AccessDeniedException", Message: "Access denied"},
			keysource.ErrDenied, []string{e.Symmetric.ARN, "kms:ReEncryptFrom", "kms:ReEncryptTo"}},
		{"destination=disabled", kmstest.Fault{}, keysource.ErrDenied, []string{e.Symmetric2.ARN, "disabled", "enable-key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := e
			if tt.fault.Code == "" {
				e = fusetest.KMS(t) // its own emulator: the key is disabled for good
			}
			proxy := kmstest.NewProxy(t, e.Endpoint)
			src := mustSource(t, e, e.Symmetric.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			dst := mustSource(t, e, e.Symmetric2.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
			st := mustWrap(t, src, newDataKey())
			if tt.fault.Code != "" {
				tt.fault.N, tt.fault.Ops = 1, []string{"ReEncrypt"}
				proxy.Inject(tt.fault)
			} else if _, err := e.Client().DisableKey(testContext(t), &kms.DisableKeyInput{KeyId: aws.String(e.Symmetric2.ARN)}); err != nil {
				t.Fatal(err)
			}
			_, err := reEncrypter(t, src).ReEncrypt(testContext(t), st, dst)
			wantErr(t, err, tt.sentinel, tt.words...)
			if errors.Is(err, keysource.ErrNotMine) {
				t.Fatal("a denial must not send the caller to its fallback silently")
			}
		})
	}
}

// An RSA stanza planted from another volume (same key, so its key ID
// matches): RSA takes no encryption context, so KMS re-encrypts it without
// seeing the volume ID inside, but that ID travels along and the
// destination's Unwrap refuses the result. No data key of another volume
// is ever accepted.
func TestReEncryptRSAOtherVolume(t *testing.T) {
	e := fusetest.KMS(t)
	proxy := kmstest.NewProxy(t, e.Endpoint)
	proxy.EmulateRSAReEncrypt()
	rsa2 := createRSAKey(t, e)
	src := mustSource(t, e, e.RSAEncrypt.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
	dst := mustSource(t, e, rsa2.ARN, volume1, nil, awskms.Options{Endpoint: proxy.URL})
	planted := mustWrap(t, mustSource(t, e, e.RSAEncrypt.ARN, volume2, nil, awskms.Options{}), newDataKey())
	got, err := reEncrypter(t, src).ReEncrypt(testContext(t), planted, dst)
	if err != nil {
		t.Fatalf("ReEncrypt: %v", err)
	}
	_, err = dst.Unwrap(testContext(t), got)
	wantErr(t, err, keysource.ErrInvalid, rsa2.ARN, "volume")
}
