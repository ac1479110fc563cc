// Package awskms is the kmsfs key source for AWS KMS keys, built on
// aws-sdk-go-v2 and its standard configuration chain (environment, shared
// config and credentials files, profile, SSO, instance role;
// AWS_ENDPOINT_URL_KMS points it at an emulator).
//
// A source is made by Open(ctx, spec, Options), as every kmsfs key source
// is, and is bound to one KMS key and one volume. It accepts two kinds of
// key, both with key usage ENCRYPT_DECRYPT:
//
//   - a symmetric key (SYMMETRIC_DEFAULT): data keys come from
//     GenerateDataKey (AES_256) or are wrapped with Encrypt, and unwrapped
//     with Decrypt, always under the encryption context
//     {"kmsfs:volume": "<volume ID, 32 lowercase hex digits>"} and with the
//     key ARN as KeyId, so KMS refuses a ciphertext of another volume or key;
//   - an RSA key (RSA_2048, RSA_3072, RSA_4096): the public key is fetched
//     once with GetPublicKey, data keys are wrapped locally with
//     RSAES_OAEP_SHA_256 and unwrapped with KMS Decrypt. RSA takes no
//     encryption context, so the volume is bound by wrapping
//     volumeID‖dataKey and checking the volume ID on unwrap. A host holding
//     only the public key (Options.PublicKeyFile) can write files it
//     cannot read.
//
// Stanzas have Type "awskms", KeyID the key ARN (an alias is resolved when
// the source is built and never stored) and a Body whose first byte says
// which kind of key wrapped it:
//
//	symmetric:  +------+---------------------------------------------+
//	            | 0x01 | KMS CiphertextBlob (Encrypt/GenerateDataKey)|
//	            +------+---------------------------------------------+
//	RSA:        +------+---------------------------------------------+
//	            | 0x02 | RSAES-OAEP-SHA-256(volumeID[16] ‖ key[32])  |
//	            |      | empty label, modulus-sized (256..512 bytes) |
//	            +------+---------------------------------------------+
//
// Errors name the key ARN, the KMS operation and what the user can do, and
// wrap keysource.ErrDenied (access denied, key disabled or pending deletion,
// no credentials), keysource.ErrInvalid (unknown key or alias, wrong key
// usage or spec, wrong region, ciphertext that fails to authenticate),
// keysource.ErrUnavailable (endpoint unreachable, throttled after retries,
// KMS internal errors) or keysource.ErrNotMine (a stanza of another type or
// key). They never contain key material.
//
// RSA Decrypt takes no encryption context, so the CloudTrail event of an
// RSA unwrap names the key but not the volume; KMS offers no request field
// that would carry it (the volume binding lives inside the ciphertext,
// where only kmsfs sees it). Audit RSA keys per key, or give each volume
// its own key.
//
// A multi-Region key (key ID mrk-…) is one key in every Region that holds
// a replica: a stanza written through any replica opens through the
// replica in the client's Region, and a spec naming another Region's
// replica opens the local one (SameKey).
//
// Every KMS request is bounded: at most Options.MaxConcurrent in flight
// per source, each attempt cut off after Options.RequestTimeout, retried
// by the SDK's retryer in the configured mode (AWS_RETRY_MODE,
// AWS_MAX_ATTEMPTS, the profile's retry_mode and max_attempts) without its
// client-wide retry quota; see Options.
//
// The caller needs kms:DescribeKey on the key, plus kms:GenerateDataKey
// and kms:Decrypt (symmetric primary; kms:Encrypt too for a symmetric
// escrow key) or kms:GetPublicKey and kms:Decrypt (RSA), granted by the
// key policy (and, for a caller of another account, by its IAM policy
// too). Options.GrantTokens pass grant tokens with every request.
//
// Both kinds implement keysource.ReEncrypter: a rewrap moves a stanza to
// another key of the same kind, volume and Region with one KMS ReEncrypt,
// which needs kms:ReEncryptFrom on the old key and kms:ReEncryptTo on the
// new one. A symmetric stanza and an RSA one hold different plaintexts
// (the data key; volume ID and data key), so between kinds the caller
// unwraps and wraps instead.
package awskms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go/middleware"

	"github.com/kmsfs/kmsfs/keysource"
)

// Type is the stanza type of this source.
const Type = "awskms"

// ContextKey is the encryption-context key that carries the volume ID (as
// 32 lowercase hex digits) in every symmetric Encrypt, GenerateDataKey and
// Decrypt. KMS logs the context in CloudTrail, so each unwrap in the audit
// trail names its volume.
const ContextKey = "kmsfs:volume"

// VolumeIDSize is the length in bytes of a volume ID.
const VolumeIDSize = 16

// Stanza body kinds: the first byte of every Body.
const (
	kindSymmetric byte = 0x01 // KMS CiphertextBlob follows
	kindRSA       byte = 0x02 // RSA-OAEP-SHA-256 of volumeID‖dataKey follows

	rsaPlaintextSize = VolumeIDSize + keysource.DataKeySize
	minRSABits       = 2048
	// maxCiphertext is the longest CiphertextBlob KMS Decrypt accepts.
	maxCiphertext = 6144
)

// Defaults of the Options that bound KMS calls.
const (
	// DefaultMaxAttempts is the number of attempts of a call, counting
	// the first, when neither Options, AWS_MAX_ATTEMPTS nor the profile's
	// max_attempts says: more than the SDK's 3, because a filesystem
	// call that fails costs the user an error where a wait would not.
	DefaultMaxAttempts = 6
	// DefaultMaxConcurrent bounds the KMS requests one source has in
	// flight at once.
	DefaultMaxConcurrent = 16
	// DefaultRequestTimeout bounds one attempt (one HTTP request and its
	// answer), so that a half-open connection fails over to a retry.
	DefaultRequestTimeout = 10 * time.Second
	// GrantTokensEnv names the environment variable that, when
	// Options.GrantTokens is nil, gives grant tokens, separated by commas.
	GrantTokensEnv = "KMSFS_AWS_GRANT_TOKENS"
	// maxGrantTokens is the most grant tokens a KMS request accepts.
	maxGrantTokens = 10
)

// Options configure a source (see Open). The zero value uses the
// standard configuration chain, the SDK's retry mode and backoff, the
// defaults above, and binds the source to the all-zero volume ID.
type Options struct {
	// VolumeID is the volume's 128-bit ID, bound into every wrap (the
	// encryption context of a symmetric key, the plaintext of an RSA
	// wrap) and checked on every unwrap.
	VolumeID [VolumeIDSize]byte
	// Config, when set, is used instead of loading the standard
	// configuration chain. Open copies it; its Retryer is replaced by
	// one built from its RetryMode and RetryMaxAttempts and the fields
	// below.
	Config *aws.Config
	// Endpoint, when set, receives every KMS request (an emulator in
	// tests) instead of the endpoint the configuration resolves.
	Endpoint string
	// APIOptions add SDK middleware to every KMS operation (call counting
	// in tests, tracing).
	APIOptions []func(*middleware.Stack) error
	// MaxAttempts bounds the attempts of a call that is throttled or
	// fails transiently, counting the first: 1 (or a negative value)
	// disables retries. 0 means AWS_MAX_ATTEMPTS (max_attempts in the
	// profile) if set, else DefaultMaxAttempts.
	MaxAttempts int
	// RetryMode is the SDK's retry mode, aws.RetryModeStandard or
	// aws.RetryModeAdaptive (which also paces requests after
	// throttling); "" means AWS_RETRY_MODE (retry_mode in the profile) if
	// set, else standard.
	RetryMode aws.RetryMode
	// BaseDelay and MaxBackoff, when either is set, replace the SDK's
	// backoff: the wait before retry n is drawn uniformly from
	// [0, min(MaxBackoff, BaseDelay·2^(n-1))) (full jitter); an unset one
	// is 100 ms or 5 s. When both are 0 the SDK's own backoff applies
	// (full jitter from 1 s after throttling, from 50 ms after other
	// transient errors, capped at 20 s).
	BaseDelay, MaxBackoff time.Duration
	// MaxConcurrent bounds the KMS requests this source has in flight;
	// more wait, as long as their context allows. KMS quotas are per
	// account and Region (RSA Decrypt shares a much lower one than
	// symmetric calls) or per custom key store: lower it where several
	// hosts share a quota. 0 means DefaultMaxConcurrent; negative means
	// no bound.
	MaxConcurrent int
	// RequestTimeout bounds each attempt; an attempt cut short is retried
	// like a connection failure. 0 means DefaultRequestTimeout; negative
	// means no bound but the caller's context.
	RequestTimeout time.Duration
	// GrantTokens are sent with every request that accepts them
	// (DescribeKey, GetPublicKey, GenerateDataKey, Encrypt, Decrypt), for
	// a caller whose permission comes from a grant that may not have
	// reached every KMS host yet. nil means the comma-separated list in
	// the environment variable GrantTokensEnv, if set; at most 10.
	GrantTokens []string
	// LookupEnv reads GrantTokensEnv; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// PublicKeyFile, when set, builds a public-key-only source from the
	// RSA public key in that file: SubjectPublicKeyInfo DER, as
	// `aws kms get-public-key --key-id ARN --output text --query PublicKey | base64 -d`
	// writes it (PEM is accepted too). The source makes no KMS call and
	// needs no credentials: it wraps, and Unwrap fails with ErrDenied.
	// The spec must then hold the key ARN, since no alias can be resolved.
	PublicKeyFile string
	// PublicKeySHA256 is the fingerprint of the RSA key's public key
	// (PublicKeyFingerprint) recorded when the volume was made. When set,
	// Open refuses a public key that differs: from PublicKeyFile, a wrong
	// or signing key's public key would make every file written
	// unrecoverable; from GetPublicKey, a key that is not the one recorded.
	PublicKeySHA256 string
	// DescribeOnly opens the key whatever its state (disabled, pending
	// deletion) for its Describe alone: a status report must reach the
	// keys a mount refuses. Wrap and Unwrap of such a source are not for
	// use.
	DescribeOnly bool
	// Rand supplies the randomness for RSA-OAEP padding and retry jitter;
	// nil means crypto/rand.Reader. It must be safe for concurrent use.
	Rand io.Reader
}

// withDefaults returns o with its zero fields set to the defaults;
// MaxAttempts and RetryMode stay unset until the configuration is known.
func (o Options) withDefaults() (Options, error) {
	if o.BaseDelay != 0 || o.MaxBackoff != 0 {
		if o.BaseDelay == 0 {
			o.BaseDelay = 100 * time.Millisecond
		}
		if o.MaxBackoff == 0 {
			o.MaxBackoff = 5 * time.Second
		}
	}
	if o.MaxConcurrent == 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.GrantTokens == nil {
		if v, ok := o.LookupEnv(GrantTokensEnv); ok && strings.TrimSpace(v) != "" {
			for _, t := range strings.Split(v, ",") {
				if t = strings.TrimSpace(t); t != "" {
					o.GrantTokens = append(o.GrantTokens, t)
				}
			}
		}
	}
	if len(o.GrantTokens) > maxGrantTokens {
		return o, fmt.Errorf("awskms: %d grant tokens (Options.GrantTokens or %s): KMS accepts at most %d: %w",
			len(o.GrantTokens), GrantTokensEnv, maxGrantTokens, keysource.ErrInvalid)
	}
	return o, nil
}

// Open returns a source for the KMS key that spec (of type "awskms")
// names in its Value: a key ID, key ARN, alias/NAME or alias ARN. The
// source is bound to o.VolumeID. Open resolves the key with DescribeKey,
// refuses keys that cannot wrap data keys (SIGN_VERIFY,
// GENERATE_VERIFY_MAC, ECC, HMAC) and keys that are disabled or pending
// deletion, and for an RSA key fetches its public key.
//
// The result implements keysource.Describer, and keysource.Generator when
// the key is symmetric. It is safe for concurrent use and holds no
// resources that need closing.
func Open(ctx context.Context, spec keysource.Spec, o Options) (keysource.KeySource, error) {
	if spec.Type != Type {
		return nil, fmt.Errorf("awskms: key spec %v is not awskms: %w", spec, keysource.ErrInvalid)
	}
	key := spec.Value
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	ref, err := parseKeyRef(key)
	if err != nil {
		return nil, err
	}
	if o.PublicKeyFile != "" {
		return newPublicOnly(ref, o)
	}

	cfg, err := loadConfig(ctx, o)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("awskms: key %s: no AWS region configured (set AWS_REGION or a profile region): %w", key, keysource.ErrInvalid)
	}
	// A multi-Region key is the same key (ID, material) in every Region
	// holding a replica: open the replica in the client's Region.
	if r, ok := ref.inRegion(cfg.Region); ok {
		ref, key = r, r.raw
	}
	if err := ref.checkRegion(cfg.Region); err != nil {
		return nil, err
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = DefaultMaxAttempts
		if cfg.RetryMaxAttempts > 0 {
			o.MaxAttempts = cfg.RetryMaxAttempts
		}
	}
	if o.RetryMode == "" {
		o.RetryMode = cfg.RetryMode
	}
	s := &source{region: cfg.Region, rand: o.Rand, grants: o.GrantTokens, profile: profileOf(cfg)}
	s.setVolume(o.VolumeID)
	var sem chan struct{}
	if o.MaxConcurrent > 0 {
		sem = make(chan struct{}, o.MaxConcurrent)
	}
	s.client = kms.NewFromConfig(cfg, func(ko *kms.Options) {
		if o.Endpoint != "" {
			ko.BaseEndpoint = aws.String(o.Endpoint)
		}
		ko.APIOptions = append(ko.APIOptions, o.APIOptions...)
		ko.APIOptions = append(ko.APIOptions, attemptLimits(sem, o.RequestTimeout))
		ko.Retryer = newRetryer(o, s.inCustomStore)
		ko.RetryMaxAttempts = 0 // the retryer above has the say
		ko.RetryMode = o.RetryMode
		if ko.Credentials != nil && !aws.IsCredentialsProvider(ko.Credentials, (*aws.AnonymousCredentials)(nil)) {
			ko.Credentials = markCredentials{ko.Credentials}
		}
	})

	md, err := s.describe(ctx, key)
	if err != nil {
		return nil, err
	}
	s.arn = aws.ToString(md.Arn)
	s.store = aws.ToString(md.CustomKeyStoreId)
	if o.DescribeOnly {
		s.forDescribe = true
		return &symmetric{s}, nil
	}
	if err := s.checkKey(key, md); err != nil {
		return nil, err
	}
	if md.KeySpec == types.KeySpecSymmetricDefault {
		return &symmetric{s}, nil
	}
	pub, err := s.publicKey(ctx)
	if err != nil {
		return nil, err
	}
	a := &asymmetric{source: s, pub: pub, spec: string(md.KeySpec)}
	if err := a.checkFingerprint(o.PublicKeySHA256, "KMS GetPublicKey"); err != nil {
		return nil, err
	}
	return a, nil
}

func loadConfig(ctx context.Context, o Options) (aws.Config, error) {
	if o.Config != nil {
		return o.Config.Copy(), nil
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("awskms: load AWS configuration: %w: %w", keysource.ErrInvalid, err)
	}
	return cfg, nil
}

// markCredentials tags a failure to obtain credentials, which the SDK
// otherwise reports only as text.
type markCredentials struct{ aws.CredentialsProvider }

func (m markCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := m.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return c, &credentialsError{err}
	}
	return c, nil
}

type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// source is what both kinds of key share: the client, the key ARN and the
// volume binding. Its fields do not change after Open.
type source struct {
	client  *kms.Client // nil in public-key-only mode
	arn     string
	region  string
	store   string   // custom key store ID, "" for the default key store
	grants  []string // grant tokens sent with every request; read-only
	profile string   // shared config profile, when known, for advice
	volume  [VolumeIDSize]byte
	encCtx  map[string]string // read-only after Open; the SDK only reads it
	rand    io.Reader
	// forDescribe marks a source opened for Describe alone, whatever its
	// key's kind: it is never the source or target of a ReEncrypt.
	forDescribe bool
}

func (s *source) setVolume(id [VolumeIDSize]byte) {
	s.volume = id
	s.encCtx = map[string]string{ContextKey: hex.EncodeToString(id[:])}
}

// Type returns "awskms".
func (s *source) Type() string { return Type }

// KeyID returns the key ARN.
func (s *source) KeyID() string { return s.arn }

// checkStanza returns an ErrNotMine error if st is not of this source and
// key, and an ErrInvalid error if its body is not of the wanted kind.
func (s *source) checkStanza(st keysource.Stanza, kind byte) ([]byte, error) {
	if st.Type != Type {
		return nil, fmt.Errorf("awskms: stanza type %q: %w", st.Type, keysource.ErrNotMine)
	}
	if st.KeyID != s.arn && !SameKey(st.KeyID, s.arn) {
		return nil, fmt.Errorf("awskms: stanza for key %s, this source has %s: %w", st.KeyID, s.arn, keysource.ErrNotMine)
	}
	if len(st.Body) < 2 || st.Body[0] != kind {
		return nil, fmt.Errorf("awskms: stanza for %s: body is not a %s wrap: %w", s.arn, kindName(kind), keysource.ErrInvalid)
	}
	// A body read from the cipher dir is bounded before KMS sees it: a
	// planted oversized one costs no request (and no CloudTrail event).
	if len(st.Body)-1 > maxCiphertext {
		return nil, fmt.Errorf("awskms: stanza for %s: wrapped key is %d bytes, KMS takes at most %d: %w",
			s.arn, len(st.Body)-1, maxCiphertext, keysource.ErrInvalid)
	}
	return st.Body[1:], nil
}

func kindName(kind byte) string {
	if kind == kindRSA {
		return "RSA"
	}
	return "symmetric"
}

func checkDataKey(arn string, dataKey []byte) error {
	if len(dataKey) != keysource.DataKeySize {
		return fmt.Errorf("awskms: wrap with %s: data key is %d bytes, want %d: %w", arn, len(dataKey), keysource.DataKeySize, keysource.ErrInvalid)
	}
	return nil
}

func body(kind byte, wrapped []byte) []byte {
	b := make([]byte, 0, 1+len(wrapped))
	return append(append(b, kind), wrapped...)
}

func zero(b []byte) { clear(b) }
