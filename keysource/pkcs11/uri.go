package pkcs11

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/kmsfs/kmsfs/keysource"
)

// ErrKeyMissing means the token has no key object as the URI names it:
// the key was deleted, or the URI is wrong.
var ErrKeyMissing = errors.New("the key object is not on the token")

// Environment variables read when the URI leaves a setting out. Options
// .LookupEnv replaces the process environment for tests.
const (
	// EnvModule names the PKCS#11 module when the URI has no module-path.
	EnvModule = "KMSFS_PKCS11_MODULE"
	// EnvPIN holds the user PIN when the URI has no pin-source.
	EnvPIN = "KMSFS_PKCS11_PIN"
)

// Values of URI.ObjectType, the RFC 7512 "type" attribute.
const (
	TypeSecretKey = "secret-key" // an AES key on the token
	TypePrivate   = "private"    // the private half of an RSA key pair
	TypePublic    = "public"     // names an RSA key pair by its public half
)

// maxPINFile bounds the size of a PIN file read.
const maxPINFile = 1024

// URI is a PKCS#11 URI (RFC 7512) as kmsfs takes it:
//
//	pkcs11:token=<label>;object=<key label>[;id=<%XX…>][;type=secret-key|private|public]
//	      [;serial=<s>][;model=<m>][;manufacturer=<m>][;slot-id=<n>]
//	      [?module-path=<path>][&pin-source=file:<path>|env:<NAME>]
//	      [&wrap=gcm|kwp][&max-sessions=<n>]
//
// The token is the one whose every given token attribute (token label,
// serial, model, manufacturer, slot-id) matches; at least one is needed.
//
// Values are percent-decoded; a literal "+" stays "+". A URI never carries
// a PIN: pin-value is refused, and pin-source names a file or an
// environment variable. A URI holds no secret and may be logged.
type URI struct {
	Token string // token label (path attribute "token")
	// Serial, Model and Manufacturer select the token by its serial
	// number, model and manufacturer ID; SlotID (path attribute
	// "slot-id", decimal) by its slot. Empty or nil: any.
	Serial       string
	Model        string
	Manufacturer string
	SlotID       *uint
	Object       string // key label (path attribute "object"), required
	ID           []byte // CKA_ID (path attribute "id"), nil when absent
	ObjectType   string // "type": TypeSecretKey, TypePrivate, TypePublic or "" for any
	// ModulePath is the PKCS#11 module to load (query attribute
	// "module-path"); "" means the EnvModule environment variable.
	ModulePath string
	// PINSource is where the user PIN comes from (query attribute
	// "pin-source"): "file:/abs/path" or "env:NAME"; "" means EnvPIN.
	PINSource string
	// Wrap chooses how an AES key wraps new data keys (query attribute
	// "wrap"): WrapGCM, WrapKWP, or "" for AES-GCM where the token
	// offers it, else RFC 5649 key wrap. Unwrap reads both either way.
	Wrap string
	// MaxSessions caps the sessions the key holds open (query attribute
	// "max-sessions"); 0 means the Options' or the default.
	MaxSessions int
}

// Values of URI.Wrap.
const (
	WrapGCM = "gcm" // AES-GCM on the token (CKM_AES_GCM)
	WrapKWP = "kwp" // RFC 5649 key wrap on the token
)

// maxSessionsCap bounds max-sessions.
const maxSessionsCap = 1024

// ParseURI parses a PKCS#11 URI. Its errors wrap keysource.ErrInvalid and
// name attributes, never their values, since a mistyped URI may hold a PIN.
func ParseURI(s string) (URI, error) {
	var u URI
	if len(s) < len("pkcs11:") || !strings.EqualFold(s[:len("pkcs11:")], "pkcs11:") {
		return u, invalidURI("want a URI starting with pkcs11:")
	}
	rest := s[len("pkcs11:"):]
	if strings.Contains(rest, "#") {
		return u, invalidURI("a fragment (#) is not allowed")
	}
	path, query, _ := strings.Cut(rest, "?")
	seen := map[string]bool{}
	err := eachAttr(path, ";", "path", seen, func(name, v string) error {
		switch name {
		case "token":
			u.Token = v
		case "object":
			u.Object = v
		case "id":
			u.ID = []byte(v)
		case "serial":
			u.Serial = v
		case "model":
			u.Model = v
		case "manufacturer":
			u.Manufacturer = v
		case "slot-id":
			n, err := strconv.ParseUint(v, 10, 0)
			if err != nil {
				return invalidURI("slot-id must be a decimal number")
			}
			id := uint(n)
			u.SlotID = &id
		case "type":
			switch v {
			case TypeSecretKey, TypePrivate, TypePublic:
				u.ObjectType = v
			default:
				return invalidURI("type must be secret-key, private or public")
			}
		default:
			return invalidURI(fmt.Sprintf("path attribute %q is not supported (kmsfs takes token, serial, model, manufacturer, slot-id, object, id, type)", name))
		}
		return nil
	})
	if err != nil {
		return URI{}, err
	}
	err = eachAttr(query, "&", "query", seen, func(name, v string) error {
		switch name {
		case "module-path":
			u.ModulePath = v
		case "pin-source":
			if err := checkPINSource(v); err != nil {
				return err
			}
			u.PINSource = v
		case "wrap":
			if v != WrapGCM && v != WrapKWP {
				return invalidURI("wrap must be gcm or kwp")
			}
			u.Wrap = v
		case "max-sessions":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxSessionsCap {
				return invalidURI(fmt.Sprintf("max-sessions must be a number from 1 to %d", maxSessionsCap))
			}
			u.MaxSessions = n
		case "pin-value":
			return invalidURI("pin-value is refused: a PIN never goes in a key spec; use pin-source=file:/PATH or env:NAME, or " + EnvPIN)
		case "module-name":
			return invalidURI("module-name is not supported; give module-path=/path/to/module.so")
		default:
			return invalidURI(fmt.Sprintf("query attribute %q is not supported (kmsfs takes module-path, pin-source, wrap, max-sessions)", name))
		}
		return nil
	})
	if err != nil {
		return URI{}, err
	}
	switch {
	case u.Token == "" && u.Serial == "" && u.Model == "" && u.Manufacturer == "" && u.SlotID == nil:
		return URI{}, invalidURI("token=<label> (or serial, model, manufacturer, slot-id) is required")
	case u.Object == "":
		return URI{}, invalidURI("object=<key label> is required")
	case seen["module-path"] && u.ModulePath == "":
		return URI{}, invalidURI("module-path is empty")
	}
	return u, nil
}

func invalidURI(msg string) error {
	return fmt.Errorf("pkcs11: key URI: %s: %w", msg, keysource.ErrInvalid)
}

// eachAttr splits list at sep into name=value pairs, decodes each value
// and hands it to f. seen catches repeated names across path and query.
func eachAttr(list, sep, where string, seen map[string]bool, f func(name, value string) error) error {
	if list == "" {
		return nil
	}
	for i, a := range strings.Split(list, sep) {
		name, raw, ok := strings.Cut(a, "=")
		if !ok || !validName(name) {
			return invalidURI(fmt.Sprintf("%s attribute %d is not name=value", where, i+1))
		}
		if seen[name] {
			return invalidURI(fmt.Sprintf("attribute %q appears twice", name))
		}
		seen[name] = true
		v, err := pctDecode(raw)
		if err != nil {
			return invalidURI(fmt.Sprintf("attribute %q: %v", name, err))
		}
		if err := f(name, v); err != nil {
			return err
		}
	}
	return nil
}

// validName reports whether s looks like an attribute name, and so may be
// echoed in an error.
func validName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// checkPINSource accepts "file:/abs/path", "file:///abs/path" and
// "env:NAME". Anything else may be a PIN typed in by mistake, so the
// error never echoes it.
func checkPINSource(v string) error {
	switch {
	case strings.HasPrefix(v, "file:"):
		if p := pinFilePath(v); p == "" || p[0] != '/' {
			return invalidURI("pin-source file: needs an absolute path (file:/PATH)")
		}
	case strings.HasPrefix(v, "env:"):
		if !validEnvName(v[len("env:"):]) {
			return invalidURI("pin-source env: needs a variable name (env:NAME)")
		}
	default:
		return invalidURI("pin-source must be file:/PATH or env:NAME; a PIN itself is never accepted")
	}
	return nil
}

func pinFilePath(v string) string {
	p := strings.TrimPrefix(v, "file:")
	if rest, ok := strings.CutPrefix(p, "//"); ok {
		// file://host/path: only the local host is meaningful.
		host, path, _ := strings.Cut(rest, "/")
		if host != "" && host != "localhost" {
			return ""
		}
		p = "/" + path
	}
	return p
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		letter := c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// pctDecode undoes RFC 3986 percent-encoding. Unlike form decoding, "+"
// stays "+".
func pctDecode(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b = append(b, s[i])
			continue
		}
		if i+2 >= len(s) || unhex(s[i+1]) < 0 || unhex(s[i+2]) < 0 {
			return "", errors.New("bad percent-encoding")
		}
		b = append(b, byte(unhex(s[i+1])<<4|unhex(s[i+2])))
		i += 2
	}
	return string(b), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// pctEncode percent-encodes every byte of s except RFC 3986 unreserved
// characters and those in keep, with upper-case hex.
func pctEncode(s, keep string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		unreserved := (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
			c == '-' || c == '.' || c == '_' || c == '~'
		if unreserved || (c < 0x80 && strings.IndexByte(keep, c) >= 0) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// KeyID returns the canonical URI that stanzas carry as their key ID:
// token, object and id (when set), in that order, every byte but RFC 3986
// unreserved characters percent-encoded, and id encoded in full. It holds
// no module path and no PIN source.
//
// A URI without a token label names its token by the other token
// attributes it has instead; a Source's key ID always names the label of
// the token it found.
func (u URI) KeyID() string {
	s := "pkcs11:"
	if u.Token != "" {
		s += "token=" + pctEncode(u.Token, "") + ";"
	} else {
		s += u.tokenAttrs()
	}
	s += "object=" + pctEncode(u.Object, "")
	if u.ID != nil {
		s += ";id=" + encodeAll(u.ID)
	}
	return s
}

// tokenAttrs renders the token attributes but the label, each followed by
// ";".
func (u URI) tokenAttrs() string {
	var s string
	for _, a := range [][2]string{{"serial", u.Serial}, {"model", u.Model}, {"manufacturer", u.Manufacturer}} {
		if a[1] != "" {
			s += a[0] + "=" + pctEncode(a[1], "") + ";"
		}
	}
	if u.SlotID != nil {
		s += "slot-id=" + strconv.FormatUint(uint64(*u.SlotID), 10) + ";"
	}
	return s
}

func encodeAll(b []byte) string {
	const hex = "0123456789ABCDEF"
	out := make([]byte, 0, 3*len(b))
	for _, c := range b {
		out = append(out, '%', hex[c>>4], hex[c&15])
	}
	return string(out)
}

// String returns the URI with its type, module path and PIN source; it
// holds no PIN.
func (u URI) String() string {
	s := u.KeyID()
	if u.ObjectType != "" {
		s += ";type=" + u.ObjectType
	}
	if u.Token != "" {
		if a := u.tokenAttrs(); a != "" {
			s += ";" + strings.TrimSuffix(a, ";")
		}
	}
	var q []string
	if u.ModulePath != "" {
		q = append(q, "module-path="+pctEncode(u.ModulePath, "/:"))
	}
	if u.PINSource != "" {
		q = append(q, "pin-source="+pctEncode(u.PINSource, "/:"))
	}
	if u.Wrap != "" {
		q = append(q, "wrap="+u.Wrap)
	}
	if u.MaxSessions != 0 {
		q = append(q, "max-sessions="+strconv.Itoa(u.MaxSessions))
	}
	if len(q) > 0 {
		s += "?" + strings.Join(q, "&")
	}
	return s
}

// sameKey reports whether u and v name the same key: equal token, object
// and id.
func (u URI) sameKey(v URI) bool {
	return u.Token == v.Token && u.Object == v.Object && string(u.ID) == string(v.ID) && (u.ID == nil) == (v.ID == nil)
}

// tokenName describes the token the URI selects, for messages.
func (u URI) tokenName() string {
	var parts []string
	if u.Token != "" {
		parts = append(parts, fmt.Sprintf("labelled %q", u.Token))
	}
	for _, a := range [][2]string{{"serial", u.Serial}, {"model", u.Model}, {"manufacturer", u.Manufacturer}} {
		if a[1] != "" {
			parts = append(parts, fmt.Sprintf("with %s %q", a[0], a[1]))
		}
	}
	if u.SlotID != nil {
		parts = append(parts, fmt.Sprintf("in slot %d", *u.SlotID))
	}
	return strings.Join(parts, " ")
}

// modulePath returns the module to load: module-path, else EnvModule.
func (u URI) modulePath(lookup func(string) (string, bool)) (string, error) {
	if u.ModulePath != "" {
		return u.ModulePath, nil
	}
	if p, ok := lookup(EnvModule); ok && p != "" {
		return p, nil
	}
	return "", fmt.Errorf("pkcs11: no module: add module-path=/path/to/module.so to the key URI or set %s: %w",
		EnvModule, keysource.ErrInvalid)
}

// pinSourceName describes where the PIN comes from, for messages.
func (u URI) pinSourceName() string {
	switch {
	case strings.HasPrefix(u.PINSource, "file:"):
		return "file " + pinFilePath(u.PINSource)
	case strings.HasPrefix(u.PINSource, "env:"):
		return "environment variable " + u.PINSource[len("env:"):]
	}
	return "environment variable " + EnvPIN
}

// readPIN returns the user PIN from pin-source, else from EnvPIN. A PIN
// file loses one trailing newline. The caller clears the result.
func (u URI) readPIN(lookup func(string) (string, bool)) ([]byte, error) {
	var pin []byte
	switch {
	case strings.HasPrefix(u.PINSource, "file:"):
		path := pinFilePath(u.PINSource)
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("pkcs11: PIN file: %w", err)
		}
		defer f.Close()
		pin = make([]byte, maxPINFile+1)
		n, err := io.ReadFull(f, pin)
		switch {
		case err == nil:
			clear(pin)
			return nil, fmt.Errorf("pkcs11: PIN file %s is longer than %d bytes: %w", path, maxPINFile, keysource.ErrInvalid)
		case err != io.EOF && err != io.ErrUnexpectedEOF:
			clear(pin)
			return nil, fmt.Errorf("pkcs11: PIN file %s: %w", path, err)
		}
		pin = trimNewline(pin[:n])
	default:
		name := EnvPIN
		if v, ok := strings.CutPrefix(u.PINSource, "env:"); ok {
			name = v
		}
		v, ok := lookup(name)
		if !ok {
			return nil, fmt.Errorf("pkcs11: no PIN for token %q: environment variable %s is not set (or give pin-source=file:/PATH): %w",
				u.Token, name, keysource.ErrInvalid)
		}
		pin = []byte(v)
	}
	if len(pin) == 0 {
		return nil, fmt.Errorf("pkcs11: PIN from %s is empty: %w", u.pinSourceName(), keysource.ErrInvalid)
	}
	return pin, nil
}

func trimNewline(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
		if n := len(b); n > 0 && b[n-1] == '\r' {
			b = b[:n-1]
		}
	}
	return b
}
