// Package sdnotify speaks the service manager's notification protocol
// (systemd's sd_notify(3)): a service tells the manager it is ready, or
// stopping, by sending newline-separated VAR=value assignments in one
// datagram to the unix socket that $NOTIFY_SOCKET names.
//
// The protocol is these few lines; a module for it would bring more than
// it saves. Only unix sockets are supported: a path, or an abstract
// address written with a leading '@'.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// SocketEnv is the environment variable in which the service manager
// names its socket. The variable is not a secret and is left in place:
// under systemd only the main process may notify anyway.
const SocketEnv = "NOTIFY_SOCKET"

// Assignments a service sends.
const (
	// Ready says that the service has finished starting up: for a
	// Type=notify unit, units ordered after it start now.
	Ready = "READY=1"
	// Stopping says that the service is shutting down.
	Stopping = "STOPPING=1"
)

// ErrAddress is wrapped by New for a socket address it cannot use.
var ErrAddress = errors.New("sdnotify: unsupported notify socket address")

// Status returns the STATUS= assignment of s, a line the manager shows
// (systemctl status); newlines, which would end the assignment, become
// spaces.
func Status(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// A Notifier sends assignments to a service manager. A nil *Notifier
// sends nothing, so callers need not check whether one runs. It is safe
// for concurrent use: every Send uses a socket of its own.
type Notifier struct {
	addr *net.UnixAddr
}

// New returns the Notifier for addr, the value of $NOTIFY_SOCKET, or nil
// when addr is empty (no service manager waits for notifications). An
// address that is neither an absolute path nor an abstract '@' name (such
// as systemd's vsock: form) fails with ErrAddress.
func New(addr string) (*Notifier, error) {
	if addr == "" {
		return nil, nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return nil, fmt.Errorf("%w: %s=%q: want an absolute path or an @abstract name", ErrAddress, SocketEnv, addr)
	}
	// Go's net package turns the leading '@' into the NUL byte of an
	// abstract address.
	return &Notifier{addr: &net.UnixAddr{Name: addr, Net: "unixgram"}}, nil
}

// Send sends assignments (Ready, Stopping, Status(…)) in one datagram. On
// a nil Notifier it does nothing and returns nil.
func (n *Notifier) Send(assignments ...string) error {
	if n == nil || len(assignments) == 0 {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %s %s: %w", SocketEnv, n.addr.Name, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(assignments, "\n"))); err != nil {
		return fmt.Errorf("sdnotify: sending to %s: %w", n.addr.Name, err)
	}
	return nil
}
