package local

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/kmsfs/kmsfs/keysource"
)

// openKeyFile returns the Source for the key file at path: exactly 32 bytes,
// as `head -c 32 /dev/urandom > path` writes. Any other size is an error
// wrapping keysource.ErrInvalid that names the path and the size, never the
// content.
//
// A key file that any user may write is refused: whoever can replace it can
// read every file created afterwards. A key file that group or others may
// read, or group may write, is accepted (a shared demo key is a valid use),
// and Describe says so in KeyState.Detail for the CLI to show.
func openKeyFile(path string, o Options) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("local: key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("local: key file: %w", err)
	}
	var detail string
	if fi.Mode().IsRegular() {
		perm := fi.Mode().Perm()
		if perm&0o002 != 0 {
			return nil, fmt.Errorf("local: key file %s is writable by every user (mode %04o); make it private with chmod 600: %w",
				path, perm, keysource.ErrInvalid)
		}
		if perm&0o077 != 0 {
			detail = fmt.Sprintf("key file %s has mode %04o: others may read or change it; chmod 600 is safer", path, perm)
		}
	}

	// Read a little past the key so the error can say what the file looks like.
	var buf [2*masterSize + 2]byte
	defer clear(buf[:])
	n, err := io.ReadFull(f, buf[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("local: key file %s: %w", path, err)
	}
	if n != masterSize || (fi.Mode().IsRegular() && fi.Size() != masterSize) {
		size := int64(n)
		if fi.Mode().IsRegular() {
			size = fi.Size()
		}
		return nil, fmt.Errorf("local: key file %s holds %d bytes, want exactly %d%s (make one with: head -c 32 /dev/urandom > %s): %w",
			path, size, masterSize, sizeHint(buf[:n]), path, keysource.ErrInvalid)
	}
	s, err := newSource(buf[:masterSize], prefixFile, o)
	if err != nil {
		return nil, err
	}
	s.detail = detail
	if s.detail == "" {
		s.detail = "key file " + path
	}
	return s, nil
}

// sizeHint guesses why a key file has the wrong size, without quoting it.
func sizeHint(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	text := true
	for _, c := range b {
		if c != '\n' && c != '\r' && (c < 0x20 || c > 0x7e) {
			text = false
			break
		}
	}
	switch {
	case text:
		return "; it looks like text (hex or base64?), but it must hold the raw bytes"
	case len(b) == masterSize+1 && b[masterSize] == '\n':
		return "; it ends in a newline after 32 bytes"
	}
	return ""
}
