package sdnotify_test

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsfs/kmsfs/internal/sdnotify"
)

// recvTimeout bounds waiting for a datagram that was sent already.
const recvTimeout = 10 * time.Second

// listen returns a datagram socket at addr, closed when the test ends.
func listen(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(recvTimeout)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func TestSend(t *testing.T) {
	cases := []struct {
		kind   string
		assign []string
		want   string
	}{
		{"path", []string{sdnotify.Ready}, "READY=1"},
		{"path", []string{sdnotify.Ready, sdnotify.Status("serving /a at /b")}, "READY=1\nSTATUS=serving /a at /b"},
		{"abstract", []string{sdnotify.Stopping}, "STOPPING=1"},
		{"abstract", []string{sdnotify.Stopping, sdnotify.Status("two\nlines")}, "STOPPING=1\nSTATUS=two lines"},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("addr=%s,n=%d,case=%d", c.kind, len(c.assign), i), func(t *testing.T) {
			addr := filepath.Join(t.TempDir(), "notify")
			if c.kind == "abstract" {
				addr = "@kmsfs-sdnotify-test-" + rand.Text()
			}
			l := listen(t, addr)
			n, err := sdnotify.New(addr)
			if err != nil || n == nil {
				t.Fatalf("New(%q) = %v, %v", addr, n, err)
			}
			if err := n.Send(c.assign...); err != nil {
				t.Fatal(err)
			}
			if got := recv(t, l); got != c.want {
				t.Fatalf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestNoManager checks that without $NOTIFY_SOCKET nothing is sent and
// nothing fails.
func TestNoManager(t *testing.T) {
	n, err := sdnotify.New("")
	if n != nil || err != nil {
		t.Fatalf("New(\"\") = %v, %v; want nil, nil", n, err)
	}
	if err := n.Send(sdnotify.Ready); err != nil {
		t.Fatalf("Send on a nil Notifier: %v", err)
	}
}

func TestBadAddress(t *testing.T) {
	for _, addr := range []string{"vsock:2:1234", "relative/notify", "notify"} {
		t.Run("addr="+addr, func(t *testing.T) {
			if _, err := sdnotify.New(addr); !errors.Is(err, sdnotify.ErrAddress) {
				t.Fatalf("New(%q): %v, want ErrAddress", addr, err)
			}
		})
	}
}

// TestNobodyListens checks that a socket nobody listens on is an error
// naming the address, not a hang.
func TestNobodyListens(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "gone")
	n, err := sdnotify.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	err = n.Send(sdnotify.Ready)
	if err == nil {
		t.Fatal("Send to a missing socket succeeded")
	}
	if want := "sdnotify: NOTIFY_SOCKET " + addr; !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %q does not start with %q", err, want)
	}
}
