//go:build cgo

package pkcs11

import (
	"errors"
	"fmt"

	"github.com/kmsfs/kmsfs/keysource"
	p11 "github.com/miekg/pkcs11"
)

// errClosed is returned by a Source used after Close.
var errClosed = errors.New("pkcs11: key source is closed")

// ckr returns the PKCS#11 return value carried by err, or CKR_OK.
func ckr(err error) uint {
	var e p11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return p11.CKR_OK
}

// classify returns the keysource sentinel for a PKCS#11 failure that is
// not about a particular stanza, or nil when none fits.
func classify(err error) error {
	switch ckr(err) {
	case p11.CKR_DEVICE_ERROR, p11.CKR_DEVICE_MEMORY, p11.CKR_DEVICE_REMOVED,
		p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_TOKEN_NOT_RECOGNIZED, p11.CKR_SLOT_ID_INVALID,
		p11.CKR_SESSION_CLOSED, p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_COUNT,
		p11.CKR_CRYPTOKI_NOT_INITIALIZED, p11.CKR_HOST_MEMORY, p11.CKR_FUNCTION_CANCELED:
		return keysource.ErrUnavailable
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE, p11.CKR_PIN_EXPIRED,
		p11.CKR_PIN_LOCKED, p11.CKR_USER_NOT_LOGGED_IN, p11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID:
		return keysource.ErrDenied
	}
	return nil
}

// tokenErr wraps a failed PKCS#11 call on token label with its sentinel.
func tokenErr(op, label string, err error) error {
	if s := classify(err); s != nil {
		return fmt.Errorf("pkcs11: %s on token %q: %w: %w", op, label, s, err)
	}
	return fmt.Errorf("pkcs11: %s on token %q: %w", op, label, err)
}

// unwrapErr wraps a failed decrypt or unwrap call. SoftHSM reports a
// failed GCM tag, a bad RFC 5649 integrity check and bad OAEP padding all
// as CKR_GENERAL_ERROR, so that counts as an invalid stanza here.
func unwrapErr(label string, err error) error {
	switch ckr(err) {
	case p11.CKR_ENCRYPTED_DATA_INVALID, p11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		p11.CKR_WRAPPED_KEY_INVALID, p11.CKR_WRAPPED_KEY_LEN_RANGE,
		p11.CKR_GENERAL_ERROR, p11.CKR_FUNCTION_FAILED:
		return errNoAuth(label)
	}
	return tokenErr("unwrap", label, err)
}

// errNoAuth says a stanza did not open under this key and volume, and
// never which check failed.
func errNoAuth(label string) error {
	return fmt.Errorf("pkcs11: stanza does not open under this key on token %q and this volume: %w", label, keysource.ErrInvalid)
}

// pinErr turns a refused login into ErrDenied. It names where the PIN came
// from, never the PIN.
func pinErr(u URI, err error) error {
	switch ckr(err) {
	case p11.CKR_PIN_INCORRECT, p11.CKR_PIN_INVALID, p11.CKR_PIN_LEN_RANGE:
		return fmt.Errorf("pkcs11: token %q refused the PIN from %s: %w", u.Token, u.pinSourceName(), keysource.ErrDenied)
	case p11.CKR_PIN_LOCKED:
		return fmt.Errorf("pkcs11: token %q: the user PIN is locked; the security officer must reset it: %w", u.Token, keysource.ErrDenied)
	case p11.CKR_PIN_EXPIRED:
		return fmt.Errorf("pkcs11: token %q: the user PIN has expired and must be changed: %w", u.Token, keysource.ErrDenied)
	}
	return tokenErr("login", u.Token, err)
}

// lost reports whether err says the session, the login or the key handle
// is gone while the token may still be there: after a failover, a device
// removed and put back, or the last session closed by someone else. The
// call is worth repeating after recover.
func lost(err error) bool {
	switch ckr(err) {
	case p11.CKR_SESSION_HANDLE_INVALID, p11.CKR_SESSION_CLOSED, p11.CKR_USER_NOT_LOGGED_IN,
		p11.CKR_DEVICE_REMOVED, p11.CKR_TOKEN_NOT_PRESENT, p11.CKR_DEVICE_ERROR,
		p11.CKR_KEY_HANDLE_INVALID, p11.CKR_OBJECT_HANDLE_INVALID,
		p11.CKR_WRAPPING_KEY_HANDLE_INVALID, p11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// paramRefused reports whether err is a definite "these mechanism
// parameters are not taken" answer, after which other parameters may be
// tried; anything else (a transient failure above all) is not.
func paramRefused(err error) bool {
	switch ckr(err) {
	case p11.CKR_MECHANISM_PARAM_INVALID, p11.CKR_ARGUMENTS_BAD, p11.CKR_MECHANISM_INVALID:
		return true
	}
	return false
}
