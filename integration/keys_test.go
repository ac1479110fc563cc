package integration_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"

	"github.com/kmsfs/kmsfs/keysource"
)

// The key-source tests run the data-key manager over the real sources:
// local-kms for AWS KMS, SoftHSM2 for PKCS#11, a key file for local. Calls
// are counted at each source's client boundary (see ksSource).

// Sizes of the unwrap-coalescing and reuse-policy tests.
const (
	ksFiles    = 1000 // headers opened, or files created
	ksDataKeys = 10   // data keys the opened headers share
	ksWorkers  = 64   // goroutines opening them
)

// TestKeysRoundTrip takes a data key for a new file from a Manager and
// unwraps its stanza through that Manager and through a fresh one (a
// remount), each with one unwrap call at the client boundary.
func TestKeysRoundTrip(t *testing.T) {
	env := newKSEnv(t)
	for _, c := range ksCases() {
		t.Run("source="+c.name, func(t *testing.T) {
			src := env.open(t, c, "")
			ctx := ksContext(t)
			w := ksManager(t, keysource.Options{Primary: src.ks})
			dk, stanzas, err := w.NewDataKey(ctx)
			if err != nil {
				t.Fatalf("NewDataKey: %v", err)
			}
			if len(dk) != keysource.DataKeySize || len(stanzas) != 1 {
				t.Fatalf("NewDataKey gave a %d-byte key and %d stanzas, want %d bytes and 1",
					len(dk), len(stanzas), keysource.DataKeySize)
			}
			st := stanzas[0]
			if st.Type != c.kind || st.KeyID != src.ks.KeyID() {
				t.Errorf("stanza is %s, want type %s and key ID %s", st, c.kind, src.ks.KeyID())
			}
			if c.keyID != nil && st.KeyID != c.keyID(env.kms) {
				t.Errorf("stanza key ID = %s, want the resolved key ARN %s", st.KeyID, c.keyID(env.kms))
			}
			for _, r := range []struct {
				name    string
				m       *keysource.Manager
				unwraps int
			}{
				// The writer cached the key when it handed it out: files it
				// created reopen without the key service.
				{"writer", w, 0},
				{"remount", ksManager(t, keysource.Options{Primary: src.ks, DeferPool: true}), 1},
			} {
				src.resetCalls()
				got, err := r.m.UnwrapKey(ctx, stanzas)
				if err != nil {
					t.Fatalf("%s: UnwrapKey: %v", r.name, err)
				}
				if !bytes.Equal(got, dk) {
					t.Fatalf("%s: UnwrapKey returned another data key", r.name)
				}
				if n := src.unwraps(); n != r.unwraps {
					t.Errorf("%s: %d unwrap calls at the client boundary, want %d", r.name, n, r.unwraps)
				}
			}
		})
	}
}

// TestKeysUnwrapCoalesces opens 1,000 headers whose stanzas share 10 data
// keys (100 files per key, as 1,000 creates under batched:max-files=100
// write them) from 64 goroutines through a fresh Manager, and counts the
// unwrap calls at the source's client boundary: exactly one per data key,
// however the opens interleave.
func TestKeysUnwrapCoalesces(t *testing.T) {
	env := newKSEnv(t)
	for _, c := range ksCases() {
		name := fmt.Sprintf("source=%s,headers=%d,keys=%d,goroutines=%d", c.name, ksFiles, ksDataKeys, ksWorkers)
		t.Run(name, func(t *testing.T) {
			src := env.open(t, c, "")
			ctx := ksContext(t)

			w := ksManager(t, keysource.Options{Primary: src.ks, Policy: keysource.Policy{MaxFiles: ksFiles / ksDataKeys}})
			headers := make([][]keysource.Stanza, ksFiles)
			want := make([][]byte, ksFiles)
			distinct := map[string]bool{}
			for i := range headers {
				dk, stanzas, err := w.NewDataKey(ctx)
				if err != nil {
					t.Fatalf("create %d: NewDataKey: %v", i, err)
				}
				headers[i], want[i] = stanzas, dk
				distinct[string(dk)] = true
			}
			w.Close() // no refill call may run into the count below
			if len(distinct) != ksDataKeys {
				t.Fatalf("%d creates under max-files=%d gave %d data keys, want %d",
					ksFiles, ksFiles/ksDataKeys, len(distinct), ksDataKeys)
			}
			// Open in a fixed shuffled order, so the goroutines meet every
			// data key at once rather than one after another.
			r := rand.New(rand.NewPCG(1, 2))
			r.Shuffle(ksFiles, func(i, j int) {
				headers[i], headers[j] = headers[j], headers[i]
				want[i], want[j] = want[j], want[i]
			})

			m := ksManager(t, keysource.Options{Primary: src.ks, DeferPool: true})
			src.resetCalls()
			var next atomic.Int64
			errs := make(chan error, ksWorkers)
			var wg sync.WaitGroup
			for range ksWorkers {
				wg.Go(func() {
					for i := int(next.Add(1) - 1); i < ksFiles; i = int(next.Add(1) - 1) {
						got, err := m.UnwrapKey(ctx, headers[i])
						if err != nil {
							errs <- fmt.Errorf("header %d: UnwrapKey: %w", i, err)
							return
						}
						if !bytes.Equal(got, want[i]) {
							errs <- fmt.Errorf("header %d: UnwrapKey returned another data key", i)
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if n := src.unwraps(); n != ksDataKeys {
				t.Errorf("%d unwrap calls at the client boundary, want %d", n, ksDataKeys)
			}
			if n := src.calls(); n != ksDataKeys {
				t.Errorf("%d calls in all at the client boundary, want only the %d unwraps", n, ksDataKeys)
			}
		})
	}
}

// TestKeysEscrow writes a file's stanzas with each source as primary and
// the four others as escrow, and opens every stanza alone with its own key
// alone, as after the loss of all the others; another key refuses it as
// not its own.
func TestKeysEscrow(t *testing.T) {
	env := newKSEnv(t)
	cases := ksCases()
	for p := range cases {
		t.Run("primary="+cases[p].name, func(t *testing.T) {
			order := append(append([]ksCase{cases[p]}, cases[:p]...), cases[p+1:]...)
			keys := make([]keysource.KeySource, len(order))
			for i, c := range order {
				keys[i] = env.open(t, c, "").ks
			}
			ctx := ksContext(t)
			w := ksManager(t, keysource.Options{Primary: keys[0], Escrow: keys[1:]})
			dk, stanzas, err := w.NewDataKey(ctx)
			if err != nil {
				t.Fatalf("NewDataKey: %v", err)
			}
			if len(stanzas) != len(keys) {
				t.Fatalf("NewDataKey gave %d stanzas, want %d", len(stanzas), len(keys))
			}
			for i, st := range stanzas {
				t.Run("stanza="+order[i].name, func(t *testing.T) {
					if st.Type != keys[i].Type() || st.KeyID != keys[i].KeyID() {
						t.Fatalf("stanza %d is %s, want %s:%s", i, st, keys[i].Type(), keys[i].KeyID())
					}
					own := ksManager(t, keysource.Options{Primary: keys[i], DeferPool: true})
					got, err := own.UnwrapKey(ctx, []keysource.Stanza{st})
					if err != nil {
						t.Fatalf("UnwrapKey with its own key: %v", err)
					}
					if !bytes.Equal(got, dk) {
						t.Fatal("UnwrapKey with its own key returned another data key")
					}
					other := keys[(i+1)%len(keys)]
					m := ksManager(t, keysource.Options{Primary: other, DeferPool: true})
					if _, err := m.UnwrapKey(ctx, []keysource.Stanza{st}); !errors.Is(err, keysource.ErrNotMine) {
						t.Errorf("UnwrapKey with %s:%s: err = %v, want ErrNotMine", other.Type(), other.KeyID(), err)
					}
				})
			}
		})
	}
}

// TestKeysDataKeyPolicy makes 1,000 creates from a warm pool over AWS KMS
// and counts GenerateDataKey operations on the SDK client once the refill
// has settled: at most 1000/max-files + 2 under a batched policy (here
// exactly one per data key used), exactly 1,000 under per-file, and no
// other KMS call.
func TestKeysDataKeyPolicy(t *testing.T) {
	env := newKSEnv(t)
	sym := ksCaseNamed(t, "awskms-symmetric")
	for _, policy := range []string{"per-file", "batched:max-files=10", "batched:max-files=100", "batched"} {
		t.Run("source="+sym.name+",policy="+policy, func(t *testing.T) {
			pol, err := keysource.ParsePolicy(policy)
			if err != nil {
				t.Fatal(err)
			}
			maxFiles := pol.MaxFiles
			if maxFiles == 0 {
				maxFiles = keysource.DefaultMaxFiles
			}
			src := env.open(t, sym, "")
			ctx := ksContext(t)
			m := ksManager(t, keysource.Options{Primary: src.ks, Policy: pol})
			if err := m.WaitReady(ctx); err != nil {
				t.Fatalf("warming the pool: %v", err)
			}
			src.resetCalls()

			var mu sync.Mutex
			uses := map[string]int{} // data key -> files it serves
			var next atomic.Int64
			errs := make(chan error, 8)
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for next.Add(1) <= ksFiles {
						dk, _, err := m.NewDataKey(ctx)
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						uses[string(dk)]++
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("NewDataKey: %v", err)
			}
			if err := m.WaitReady(ctx); err != nil {
				t.Fatalf("refilling the pool: %v", err)
			}
			gen := src.kms.Calls("GenerateDataKey")
			t.Logf("%d creates: %d data keys, %d GenerateDataKey calls", ksFiles, len(uses), gen)

			want := ksFiles/maxFiles + 2
			if maxFiles == 1 && gen != ksFiles {
				t.Errorf("%d GenerateDataKey calls, want exactly %d", gen, ksFiles)
			} else if gen > want {
				t.Errorf("%d GenerateDataKey calls, want at most %d", gen, want)
			}
			if n := src.kms.Total(); n != gen {
				t.Errorf("KMS calls %v, want GenerateDataKey only", src.kms.Snapshot())
			}
			if wantKeys := (ksFiles + maxFiles - 1) / maxFiles; len(uses) != wantKeys {
				t.Errorf("%d data keys served %d files, want %d", len(uses), ksFiles, wantKeys)
			}
			for _, n := range uses {
				if n > maxFiles {
					t.Errorf("a data key served %d files, policy allows %d", n, maxFiles)
					break
				}
			}
		})
	}
}

// TestKeysErrors checks that the errors a user meets when mounting with, or
// being served by, an unusable AWS key name the cause: at open (what init
// and mount do before any Manager exists) for a disabled key, an unknown
// alias and a SIGN_VERIFY key; and through the Manager for a key disabled
// after the mount opened it, on unwrap and on generate. The awskms unit
// tests cover every error in detail.
func TestKeysErrors(t *testing.T) {
	env := newKSEnv(t)
	e := env.emulator(t)
	admin := e.Client()
	const unknown = "alias/kmsfs-no-such-key"
	for _, tc := range []struct {
		key, at  string // at: open, unwrap or generate
		arn      string
		sentinel error
		words    []string
	}{
		{"disabled", "open", e.Disabled.ARN, keysource.ErrDenied, []string{"disabled", "enable-key"}},
		{"disabled", "unwrap", e.Disabled.ARN, keysource.ErrDenied, []string{"Decrypt", "disabled", "enable-key"}},
		{"disabled", "generate", e.Disabled.ARN, keysource.ErrDenied, []string{"GenerateDataKey", "disabled", "enable-key"}},
		{"unknown-alias", "open", unknown, keysource.ErrInvalid, []string{"no such key or alias"}},
		{"sign-verify", "open", e.RSASign.ARN, keysource.ErrInvalid, []string{"SIGN_VERIFY", "ENCRYPT_DECRYPT"}},
	} {
		t.Run("key="+tc.key+",at="+tc.at, func(t *testing.T) {
			ctx := ksContext(t)
			var err error
			switch tc.at {
			case "open":
				_, _, err = env.openAWS(t, tc.arn, "")
			case "unwrap", "generate":
				setEnabled(t, admin, tc.arn, true)
				t.Cleanup(func() { setEnabled(t, admin, tc.arn, false) })
				ks, _, oerr := env.openAWS(t, tc.arn, "")
				if oerr != nil {
					t.Fatalf("open while enabled: %v", oerr)
				}
				var stanzas []keysource.Stanza
				if tc.at == "unwrap" {
					w := ksManager(t, keysource.Options{Primary: ks})
					if _, stanzas, err = w.NewDataKey(ctx); err != nil {
						t.Fatalf("NewDataKey while enabled: %v", err)
					}
					w.Close()
				}
				setEnabled(t, admin, tc.arn, false)
				m := ksManager(t, keysource.Options{Primary: ks, DeferPool: tc.at == "unwrap"})
				if tc.at == "unwrap" {
					_, err = m.UnwrapKey(ctx, stanzas)
				} else {
					err = m.WaitReady(ctx)
					if _, _, nerr := m.NewDataKey(ctx); !errors.Is(nerr, tc.sentinel) || !strings.Contains(nerr.Error(), "disabled") {
						t.Errorf("NewDataKey: err = %v, want %v naming the disabled key", nerr, tc.sentinel)
					}
				}
			}
			if err == nil {
				t.Fatalf("err = nil, want %v", tc.sentinel)
			}
			if !errors.Is(err, tc.sentinel) {
				t.Errorf("err = %v\nwant it to wrap %v", err, tc.sentinel)
			}
			for _, w := range append([]string{tc.arn}, tc.words...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("err = %v\nwant it to name %q", err, w)
				}
			}
		})
	}
}

// setEnabled enables or disables key on the emulator. It may run in a
// cleanup, when t's context has ended, so it bounds its own.
func setEnabled(t testing.TB, admin *kms.Client, key string, on bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ksTimeout)
	defer cancel()
	var err error
	if on {
		_, err = admin.EnableKey(ctx, &kms.EnableKeyInput{KeyId: aws.String(key)})
	} else {
		_, err = admin.DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(key)})
	}
	if err != nil {
		t.Fatalf("enabled=%v %s: %v", on, key, err)
	}
}

// ksCaseNamed returns the case of ksCases called name.
func ksCaseNamed(t testing.TB, name string) ksCase {
	t.Helper()
	for _, c := range ksCases() {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no key-source case %q", name)
	return ksCase{}
}
