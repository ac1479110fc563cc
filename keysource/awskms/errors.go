package awskms

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/arn"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials/ssocreds"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kmsfs/kmsfs/keysource"
)

// opError is a failed KMS operation, explained for the user. It unwraps to
// its sentinel (keysource.ErrDenied, …), to the SDK error (for errors.As on
// smithy.APIError), and to the context's error if the call was cut short.
type opError struct {
	op     string // KMS operation: "Decrypt", "DescribeKey", …
	key    string // key ARN, or the key as given before it was resolved
	msg    string // what happened and what the user can do about it
	detail string // KMS error code and message, or the transport error
	kind   error
	errs   []error
}

func (e *opError) Error() string {
	s := "awskms: " + e.op + " " + e.key + ": " + e.msg
	if e.detail != "" {
		s += " [" + e.detail + "]"
	}
	return s
}

func (e *opError) Unwrap() []error { return append([]error{e.kind}, e.errs...) }

// fail explains err, returned by KMS operation op on key.
func (s *source) fail(ctx context.Context, op, key string, err error) error {
	e := &opError{op: op, key: key, errs: []error{err}}
	if ctxErr := ctx.Err(); ctxErr != nil {
		e.kind, e.msg, e.detail = keysource.ErrUnavailable, "no answer from KMS before the context ended", ctxErr.Error()
		e.errs = append(e.errs, ctxErr)
		return e
	}
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		var credErr *credentialsError
		var signErr *v4.SigningError
		var ssoErr *ssocreds.InvalidTokenError
		switch {
		// A profile of an sso-session reports its token only as text
		// ("failed to read cached SSO token file", "cached SSO token is
		// expired, or not present, …").
		case errors.As(err, &ssoErr) || (errors.As(err, &credErr) && strings.Contains(err.Error(), "SSO token")):
			e.kind = keysource.ErrDenied
			e.msg = "the AWS SSO session has expired or was never started: run `" + s.ssoLogin() + "` and retry"
		case errors.As(err, &credErr) || errors.As(err, &signErr):
			e.kind = keysource.ErrDenied
			e.msg = "no usable AWS credentials (environment, shared config or profile, SSO, instance or task role)"
		default:
			e.kind = keysource.ErrUnavailable
			e.msg = fmt.Sprintf("cannot reach KMS%s; check the endpoint, network and proxy settings", afterAttempts(err))
		}
		e.detail = err.Error()
		return e
	}
	e.detail = apiErr.ErrorCode()
	if m := apiErr.ErrorMessage(); m != "" {
		e.detail += ": " + m
	}
	e.msg, e.kind = s.explain(ctx, op, key, apiErr, err)
	return e
}

// explain maps a KMS error code to a sentence and a sentinel, following
// the KMS API reference. It may make one DescribeKey attempt, without
// retries, to learn the key state when KMS only says the state is wrong
// (never when the failed call was DescribeKey itself).
func (s *source) explain(ctx context.Context, op, key string, apiErr smithy.APIError, err error) (string, error) {
	switch code := apiErr.ErrorCode(); code {
	case "AccessDeniedException":
		if op == "ReEncrypt" {
			// KMS did not say which half was refused.
			return "access denied: ReEncrypt needs kms:ReEncryptFrom on the old key and kms:ReEncryptTo on the new one, " +
				"both allowed by the key policies", keysource.ErrDenied
		}
		// The key at fault: for ReEncryptTo the destination, not s.
		keyAccount, caller := accountOf(key), callerAccount(apiErr.ErrorMessage())
		if keyAccount == "" {
			keyAccount = accountOf(s.arn)
		}
		if keyAccount != "" && caller != "" && keyAccount != caller {
			return fmt.Sprintf("access denied across accounts: the key is in account %s and the caller in account %s, so BOTH must allow kms:%s: "+
				"the key policy (in %s) must allow the caller's role or account, AND an IAM policy of the caller (in %s) must allow kms:%s on the key ARN",
				keyAccount, caller, op, keyAccount, caller, op), keysource.ErrDenied
		}
		return fmt.Sprintf("access denied: the key policy must allow this caller kms:%s on the key; "+
			"an IAM policy alone is not enough unless the key policy delegates to IAM", op), keysource.ErrDenied
	case "DisabledException", "KMSInvalidStateException":
		// Both codes only say the state is wrong: a key pending deletion
		// can answer DisabledException, and a key in a custom key store
		// answers KMSInvalidStateException while it stays Enabled when the
		// store cannot reach its CloudHSM cluster or external proxy.
		// DescribeKey says which state, until when, and which store.
		// One attempt: the failure it explains was already retried, and
		// the user is waiting for the error.
		var md *types.KeyMetadata
		if op != "DescribeKey" {
			md, _ = s.describeOnly(ctx, key, func(o *kms.Options) { o.Retryer = retry.AddWithMaxAttempts(o.Retryer, 1) })
		}
		if md != nil {
			if msg, kind := stateProblem(key, md); kind != nil {
				return msg, kind
			}
			if md.CustomKeyStoreId != nil {
				return fmt.Sprintf("the key is enabled, but its custom key store %s cannot use it now%s (CloudHSM cluster or external key store proxy "+
					"unreachable or disconnected); check `aws kms describe-custom-key-stores --custom-key-store-id %s` and retry later",
					aws.ToString(md.CustomKeyStoreId), afterAttempts(err), aws.ToString(md.CustomKeyStoreId)), keysource.ErrUnavailable
			}
		}
		if code == "DisabledException" {
			return disabledMsg(key), keysource.ErrDenied
		}
		return "the key's state does not allow " + op + " (disabled, pending deletion or pending import)", keysource.ErrDenied
	case "NotFoundException":
		return fmt.Sprintf("no such key or alias in region %s; check its name, region and account", s.region), keysource.ErrInvalid
	case "InvalidCiphertextException":
		return "the wrapped data key does not authenticate under this key and volume: " +
			"it belongs to another volume, or it is corrupt", keysource.ErrInvalid
	case "IncorrectKeyException":
		return "the wrapped data key was made under another KMS key than its stanza names", keysource.ErrInvalid
	case "InvalidKeyUsageException", "UnsupportedOperationException":
		return "the key cannot do " + op + "; kmsfs needs a symmetric or RSA key with usage ENCRYPT_DECRYPT", keysource.ErrInvalid
	case "ThrottlingException", "LimitExceededException":
		return "throttled by KMS" + afterAttempts(err) + "; the account's KMS request quota " +
			"is shared by Encrypt, Decrypt and GenerateDataKey: retry later, lower the call rate or raise the quota", keysource.ErrUnavailable
	case "KeyUnavailableException":
		return "the key material is unavailable right now (custom key store?); retry later", keysource.ErrUnavailable
	case "DependencyTimeoutException", "KMSInternalException", "InternalFailureException", "ServiceUnavailableException":
		return "KMS failed" + afterAttempts(err) + "; retry later", keysource.ErrUnavailable
	case "InvalidGrantTokenException":
		return "KMS refused a grant token (Options.GrantTokens or " + GrantTokensEnv + "): it is malformed, or its grant was retired or revoked", keysource.ErrDenied
	case "ExpiredTokenException":
		return "the AWS session credentials have expired: renew them (for an SSO profile run `" + s.ssoLogin() +
			"`; otherwise get new temporary credentials) and retry", keysource.ErrDenied
	case "UnrecognizedClientException", "InvalidSignatureException", "IncompleteSignature",
		"InvalidClientTokenId", "MissingAuthenticationToken":
		return "KMS refused the AWS credentials; check the credential chain (environment, profile, SSO session, role)", keysource.ErrDenied
	}
	var status interface{ HTTPStatusCode() int }
	if errors.As(err, &status) && status.HTTPStatusCode() >= 500 {
		return "KMS failed" + afterAttempts(err) + "; retry later", keysource.ErrUnavailable
	}
	return "KMS refused the request", keysource.ErrInvalid
}

// afterAttempts says how many attempts were made, when the retryer gave up.
func afterAttempts(err error) string {
	var maxErr *retry.MaxAttemptsError
	if errors.As(err, &maxErr) {
		return fmt.Sprintf(" after %d attempts", maxErr.Attempt)
	}
	return ""
}

// stateProblem returns a sentence and a sentinel for a key state that
// forbids use, or "" and nil if the key is enabled.
func stateProblem(key string, md *types.KeyMetadata) (string, error) {
	switch md.KeyState {
	case types.KeyStateEnabled, types.KeyStateUpdating:
		// AWS: a key in Updating (its key material or store being
		// changed) still encrypts and decrypts.
		return "", nil
	case types.KeyStateDisabled:
		return disabledMsg(key), keysource.ErrDenied
	case types.KeyStatePendingDeletion, types.KeyStatePendingReplicaDeletion:
		when := "on a date KMS did not give"
		if md.DeletionDate != nil {
			when = "on " + md.DeletionDate.UTC().Format(time.RFC3339)
		}
		return fmt.Sprintf("key is pending deletion, to be deleted %s; "+
			"cancel with `aws kms cancel-key-deletion --key-id %s` and then enable it", when, key), keysource.ErrDenied
	case types.KeyStatePendingImport:
		return "key has no key material yet (PendingImport); import it first", keysource.ErrDenied
	case types.KeyStateUnavailable, types.KeyStateCreating:
		return fmt.Sprintf("key is %s (custom key store disconnected, or being created); retry later", md.KeyState), keysource.ErrUnavailable
	}
	return fmt.Sprintf("key is in state %s", md.KeyState), keysource.ErrDenied
}

// ssoLogin returns the command that renews the SSO session of the
// source's profile.
func (s *source) ssoLogin() string {
	if s.profile != "" {
		return "aws sso login --profile " + s.profile
	}
	return "aws sso login"
}

// accountOf returns the account of an ARN, or "".
func accountOf(s string) string {
	a, err := arn.Parse(s)
	if err != nil {
		return ""
	}
	return a.AccountID
}

// callerAccount returns the account of the principal an AccessDenied text
// of AWS names ("User: arn:aws:sts::ACCOUNT:assumed-role/… is not
// authorized to perform: …"), or "".
func callerAccount(msg string) string {
	_, rest, ok := strings.Cut(msg, "User: ")
	if !ok {
		return ""
	}
	principal, _, _ := strings.Cut(rest, " ")
	return accountOf(principal)
}

func disabledMsg(key string) string {
	return fmt.Sprintf("key is disabled; enable it with `aws kms enable-key --key-id %s`", key)
}
