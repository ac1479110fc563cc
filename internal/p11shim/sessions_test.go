//go:build cgo

package p11shim_test

import (
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/internal/p11shim"
	p11 "github.com/miekg/pkcs11"
)

// TestReadOnlySessions opens read-only and read-write sessions: AWS
// CloudHSM (Client SDK 5) refuses read-only ones with CKR_FUNCTION_FAILED,
// SoftHSM opens both.
func TestReadOnlySessions(t *testing.T) {
	for _, tt := range []struct {
		cfg  string
		rw   bool
		want uint
	}{
		{"softhsm", false, p11.CKR_OK},
		{"softhsm", true, p11.CKR_OK},
		{"cloudhsm", false, p11.CKR_FUNCTION_FAILED},
		{"cloudhsm", true, p11.CKR_OK},
		{"refuse-read-only", false, p11.CKR_FUNCTION_FAILED},
		{"refuse-read-only", true, p11.CKR_OK},
	} {
		t.Run(fmt.Sprintf("config=%s,rw=%v", tt.cfg, tt.rw), func(t *testing.T) {
			cfg := p11shim.Config{RefuseReadOnlySessions: true}
			if tt.cfg != "refuse-read-only" {
				cfg = profile(t, p11shim.Profile(tt.cfg))
			}
			s := load(t, cfg)
			flags := uint(p11.CKF_SERIAL_SESSION)
			if tt.rw {
				flags |= p11.CKF_RW_SESSION
			}
			_, err := s.open(t, flags)
			if got := ckr(t, err); got != tt.want {
				t.Fatalf("open session: %s, want %s", name(got), name(tt.want))
			}
		})
	}
}

// TestSessionCap opens sessions up to the cap and one more: the one more
// fails with CKR_SESSION_COUNT, and succeeds once another closes. A
// YubiHSM 2 allows 16 sessions; SoftHSM has no cap.
func TestSessionCap(t *testing.T) {
	for _, tt := range []struct {
		cfg string
		cap int // 0: none, checked up to 20 sessions
	}{
		{"softhsm", 0},
		{"yubihsm2", 16},
		{"max-sessions=3", 3},
	} {
		t.Run("config="+tt.cfg, func(t *testing.T) {
			cfg := p11shim.Config{MaxSessions: 3}
			if tt.cfg != "max-sessions=3" {
				cfg = profile(t, p11shim.Profile(tt.cfg))
			}
			s := load(t, cfg)
			n := tt.cap
			if n == 0 {
				n = 20
			}
			var first p11.SessionHandle
			for i := range n {
				sh, err := s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
				if err != nil {
					t.Fatalf("session %d of %d: %v", i+1, n, err)
				}
				if i == 0 {
					first = sh
				}
			}
			_, err := s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			want := uint(p11.CKR_SESSION_COUNT)
			if tt.cap == 0 {
				want = p11.CKR_OK
			}
			if got := ckr(t, err); got != want {
				t.Fatalf("session %d: %s, want %s", n+1, name(got), name(want))
			}
			if err := s.c.CloseSession(first); err != nil {
				t.Fatal(err)
			}
			if _, err := s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
				t.Fatalf("a session after one closed: %v", err)
			}
			if err := s.c.CloseAllSessions(s.slot); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSessionsDropped logs in and then makes call after call, as kmsfs
// does between HSM failovers: with a drop every N calls, a call finds its
// session handle invalid, a new session is not logged in (creating a private
// object gives CKR_USER_NOT_LOGGED_IN), a new login works again, and the next drop
// comes N calls after the first. SoftHSM never drops.
func TestSessionsDropped(t *testing.T) {
	for _, every := range []int{0, 5, 100} {
		t.Run(fmt.Sprintf("drop-every=%d", every), func(t *testing.T) {
			s := load(t, p11shim.Config{DropEvery: every})
			sh := s.login(t)
			limit := 3 * every
			if every == 0 {
				limit = 300
			}
			// until counts the calls up to the first that fails, at most
			// limit.
			until := func(sh p11.SessionHandle) (int, error) {
				for n := 1; ; n++ {
					_, err := s.c.GetSessionInfo(sh)
					if err != nil || n == limit {
						return n, err
					}
				}
			}
			n, err := until(sh)
			if every == 0 {
				if err != nil {
					t.Fatalf("call %d: %v", n, err)
				}
				info, err := s.c.GetSessionInfo(sh)
				if err != nil || info.State != p11.CKS_RW_USER_FUNCTIONS {
					t.Fatalf("after %d calls: state %d, %v; want logged in", n, info.State, err)
				}
				return
			}
			if got := ckr(t, err); got != p11.CKR_SESSION_HANDLE_INVALID || n > every+1 {
				t.Fatalf("call %d: %s; want CKR_SESSION_HANDLE_INVALID by call %d", n, name(got), every+1)
			}
			// The failed call was the first of the next N; four more follow.
			sh2, err := s.open(t, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			if err != nil {
				t.Fatalf("open a session after the drop: %v", err)
			}
			if info, err := s.c.GetSessionInfo(sh2); err != nil || info.State != p11.CKS_RW_PUBLIC_SESSION {
				t.Fatalf("new session: state %d, %v; want CKS_RW_PUBLIC_SESSION", info.State, err)
			}
			_, err = s.c.CreateObject(sh2, secretTemplate([]byte("0123456789abcdef"), p11.NewAttribute(p11.CKA_PRIVATE, true)))
			if got := ckr(t, err); got != p11.CKR_USER_NOT_LOGGED_IN {
				t.Fatalf("create a private object after the drop: %s, want CKR_USER_NOT_LOGGED_IN", name(got))
			}
			if err := s.c.Login(sh2, p11.CKU_USER, s.tok.PIN); err != nil {
				t.Fatalf("login after the drop: %v", err)
			}
			n, err = until(sh2)
			if got := ckr(t, err); got != p11.CKR_SESSION_HANDLE_INVALID || 5+n-1 != every {
				t.Fatalf("after the login, call %d: %s; want the next drop %d calls after the first", 5+n, name(got), every)
			}
			if got := ckr(t, s.c.CloseSession(sh)); got != p11.CKR_SESSION_HANDLE_INVALID {
				t.Fatalf("close the dropped session: %s, want CKR_SESSION_HANDLE_INVALID", name(got))
			}
		})
	}
}

// TestConcurrentDrops has goroutines open, use and close sessions while
// the shim drops them all every few calls, as kmsfs's session pool does
// during failovers: every call either works or finds its session gone
// (CKR_SESSION_HANDLE_INVALID), and the module still works afterwards.
func TestConcurrentDrops(t *testing.T) {
	const (
		workers = 8
		rounds  = 200
		every   = 37
	)
	s := load(t, p11shim.Config{DropEvery: every})
	errs := make(chan error, workers)
	dropped := make(chan int, workers)
	for range workers {
		go func() {
			gone := 0
			sh, err := s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
			for i := 0; i < rounds && err == nil; i++ {
				switch i % 4 {
				case 0:
					err = s.c.Login(sh, p11.CKU_USER, s.tok.PIN)
					if e, ok := err.(p11.Error); ok && e == p11.CKR_USER_ALREADY_LOGGED_IN {
						err = nil
					}
				case 1:
					_, err = s.c.GenerateRandom(sh, 16)
				case 2:
					_, err = s.c.GetSessionInfo(sh)
				case 3:
					err = s.c.CloseSession(sh)
					if err == nil {
						sh, err = s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
					}
				}
				if e, ok := err.(p11.Error); ok && e == p11.CKR_SESSION_HANDLE_INVALID {
					gone++
					sh, err = s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION)
				}
			}
			if err == nil {
				err = s.c.CloseSession(sh)
				if e, ok := err.(p11.Error); ok && e == p11.CKR_SESSION_HANDLE_INVALID {
					err = nil
				}
			}
			errs <- err
			dropped <- gone
		}()
	}
	total := 0
	for range workers {
		if err := <-errs; err != nil {
			t.Errorf("worker: %v", err)
		}
		total += <-dropped
	}
	if total == 0 {
		t.Errorf("%d workers of %d rounds saw no session dropped every %d calls", workers, rounds, every)
	}
	// Three calls fit between two drops, so one of two tries has none.
	var err error
	for try := 0; try < 2; try++ {
		var sh p11.SessionHandle
		if sh, err = s.c.OpenSession(s.slot, p11.CKF_SERIAL_SESSION|p11.CKF_RW_SESSION); err != nil {
			continue
		}
		if err = s.c.Login(sh, p11.CKU_USER, s.tok.PIN); err == nil {
			_, err = s.c.GenerateRandom(sh, 16)
		}
		s.c.CloseSession(sh)
		if err == nil {
			return
		}
	}
	t.Fatalf("after the drops: %v", err)
}
