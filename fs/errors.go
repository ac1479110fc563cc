package fs

import (
	"errors"
	"syscall"

	"github.com/kmsfs/kmsfs/keysource"
)

func isKeyErr(err error) bool {
	return errors.Is(err, keysource.ErrNotMine) || errors.Is(err, keysource.ErrDenied) ||
		errors.Is(err, keysource.ErrUnavailable) || errors.Is(err, keysource.ErrInvalid)
}

// keyErrno maps key-source failures: no usable key (ENOKEY), refused by
// key policy or key state (EACCES), service unreachable (EIO).
func keyErrno(err error) syscall.Errno {
	switch {
	case errors.Is(err, keysource.ErrNotMine):
		return syscall.ENOKEY
	case errors.Is(err, keysource.ErrDenied):
		return syscall.EACCES
	}
	return syscall.EIO
}
