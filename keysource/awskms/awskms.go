// Package awskms is the kmsfs key source for AWS KMS keys, built on
// aws-sdk-go-v2 and its standard configuration chain (environment, shared
// config and credentials files, profile, SSO, instance role;
// AWS_ENDPOINT_URL_KMS points it at an emulator).
//
// A source is bound to one KMS key and one volume. It accepts two kinds of
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
//     only the public key (WithPublicKeyFile) can write files it cannot read.
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
// The caller needs kms:DescribeKey on the key, plus kms:GenerateDataKey,
// kms:Encrypt and kms:Decrypt (symmetric) or kms:GetPublicKey and
// kms:Decrypt (RSA), granted by the key policy.
package awskms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
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
)

// Retry defaults: up to 6 attempts, exponential backoff with full jitter
// from 100 ms, capped at 5 s (at most 3.1 s of waiting in all).
const (
	DefaultMaxAttempts = 6
	DefaultBaseDelay   = 100 * time.Millisecond
	DefaultMaxBackoff  = 5 * time.Second
)

// Option configures New.
type Option func(*options)

type options struct {
	cfg         *aws.Config
	loadOpts    []func(*config.LoadOptions) error
	endpoint    string
	httpClient  aws.HTTPClient
	apiOptions  []func(*middleware.Stack) error
	retrySet    bool
	maxAttempts int
	baseDelay   time.Duration
	maxBackoff  time.Duration
	pubKeyFile  string
	rand        io.Reader
}

// WithConfig makes New use cfg instead of loading the standard
// configuration chain. New copies cfg; its Retryer is replaced by the
// source's own (see WithRetry).
func WithConfig(cfg aws.Config) Option { return func(o *options) { o.cfg = &cfg } }

// WithLoadOptions passes options to config.LoadDefaultConfig, for example
// config.WithSharedConfigProfile("backup") or config.WithRegion.
func WithLoadOptions(fns ...func(*config.LoadOptions) error) Option {
	return func(o *options) { o.loadOpts = append(o.loadOpts, fns...) }
}

// WithEndpoint sends every KMS request to url (an emulator in tests)
// instead of the endpoint the configuration resolves.
func WithEndpoint(url string) Option { return func(o *options) { o.endpoint = url } }

// WithHTTPClient makes the KMS client send its requests through c.
func WithHTTPClient(c aws.HTTPClient) Option { return func(o *options) { o.httpClient = c } }

// WithAPIOptions adds SDK middleware to every KMS operation (call counting
// in tests, tracing).
func WithAPIOptions(fns ...func(*middleware.Stack) error) Option {
	return func(o *options) { o.apiOptions = append(o.apiOptions, fns...) }
}

// WithRetry bounds retries of throttled and transient failures:
// maxAttempts counts the first attempt; the wait before retry n is drawn
// uniformly from [0, min(maxBackoff, baseDelay·2^(n-1))) (full jitter).
// maxAttempts 1 (or less) disables retries. Without WithRetry, a source
// makes AWS_MAX_ATTEMPTS (max_attempts in the profile) attempts if set,
// else DefaultMaxAttempts, with DefaultBaseDelay and DefaultMaxBackoff.
func WithRetry(maxAttempts int, baseDelay, maxBackoff time.Duration) Option {
	return func(o *options) {
		o.retrySet = true
		o.maxAttempts, o.baseDelay, o.maxBackoff = maxAttempts, baseDelay, maxBackoff
	}
}

// WithPublicKeyFile builds a public-key-only source from the RSA public key
// in path: SubjectPublicKeyInfo DER, as
// `aws kms get-public-key --key-id ARN --output text --query PublicKey | base64 -d`
// writes it (PEM is accepted too). The source makes no KMS call and needs
// no credentials: it wraps, and Unwrap fails with ErrDenied. The key spec
// must then be the key ARN, since no alias can be resolved.
func WithPublicKeyFile(path string) Option { return func(o *options) { o.pubKeyFile = path } }

// WithRand sets the randomness for RSA-OAEP padding and retry jitter
// (default crypto/rand.Reader). r must be safe for concurrent use.
func WithRand(r io.Reader) Option { return func(o *options) { o.rand = r } }

// New returns a source for the KMS key named by key (a key ID, key ARN,
// alias/NAME or alias ARN) bound to volumeID. It resolves the key with
// DescribeKey, refuses keys that cannot wrap data keys (SIGN_VERIFY,
// GENERATE_VERIFY_MAC, ECC, HMAC) and keys that are disabled or pending
// deletion, and for an RSA key fetches its public key.
//
// The result implements keysource.Describer, and keysource.Generator when
// the key is symmetric. It is safe for concurrent use and holds no
// resources that need closing.
func New(ctx context.Context, key string, volumeID [VolumeIDSize]byte, opts ...Option) (keysource.KeySource, error) {
	o := options{
		maxAttempts: DefaultMaxAttempts,
		baseDelay:   DefaultBaseDelay,
		maxBackoff:  DefaultMaxBackoff,
		rand:        rand.Reader,
	}
	for _, fn := range opts {
		fn(&o)
	}
	ref, err := parseKeyRef(key)
	if err != nil {
		return nil, err
	}
	if o.pubKeyFile != "" {
		return newPublicOnly(ref, volumeID, o)
	}

	cfg, err := loadConfig(ctx, o)
	if err != nil {
		return nil, err
	}
	if cfg.Region == "" {
		return nil, fmt.Errorf("awskms: key %s: no AWS region configured (set AWS_REGION or a profile region): %w", key, keysource.ErrInvalid)
	}
	if err := ref.checkRegion(cfg.Region); err != nil {
		return nil, err
	}
	if !o.retrySet && cfg.RetryMaxAttempts > 0 {
		o.maxAttempts = cfg.RetryMaxAttempts
	}
	client := kms.NewFromConfig(cfg, func(ko *kms.Options) {
		if o.endpoint != "" {
			ko.BaseEndpoint = aws.String(o.endpoint)
		}
		if o.httpClient != nil {
			ko.HTTPClient = o.httpClient
		}
		ko.APIOptions = append(ko.APIOptions, o.apiOptions...)
		ko.Retryer = newRetryer(o)
		ko.RetryMaxAttempts = 0 // the retryer above has the say
		if ko.Credentials != nil && !aws.IsCredentialsProvider(ko.Credentials, (*aws.AnonymousCredentials)(nil)) {
			ko.Credentials = markCredentials{ko.Credentials}
		}
	})

	s := &source{client: client, region: cfg.Region, rand: o.rand}
	s.setVolume(volumeID)
	md, err := s.describe(ctx, key)
	if err != nil {
		return nil, err
	}
	s.arn = aws.ToString(md.Arn)
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
	return &asymmetric{source: s, pub: pub, spec: string(md.KeySpec)}, nil
}

func loadConfig(ctx context.Context, o options) (aws.Config, error) {
	if o.cfg != nil {
		return o.cfg.Copy(), nil
	}
	cfg, err := config.LoadDefaultConfig(ctx, o.loadOpts...)
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
// volume binding. Its fields do not change after New.
type source struct {
	client *kms.Client // nil in public-key-only mode
	arn    string
	region string
	volume [VolumeIDSize]byte
	encCtx map[string]string // read-only after New; the SDK only reads it
	rand   io.Reader
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
	if st.KeyID != s.arn {
		return nil, fmt.Errorf("awskms: stanza for key %s, this source has %s: %w", st.KeyID, s.arn, keysource.ErrNotMine)
	}
	if len(st.Body) < 2 || st.Body[0] != kind {
		return nil, fmt.Errorf("awskms: stanza for %s: body is not a %s wrap: %w", s.arn, kindName(kind), keysource.ErrInvalid)
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
