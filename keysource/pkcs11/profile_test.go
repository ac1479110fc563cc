//go:build cgo

package pkcs11_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/kmsfs/kmsfs/internal/p11shim"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

func profileConfig(t *testing.T, p p11shim.Profile) p11shim.Config {
	t.Helper()
	cfg, err := p.Config()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// shimCase is a token behaviour kmsfs must work with.
type shimCase struct {
	name string
	cfg  p11shim.Config
}

func shimCases(t *testing.T) []shimCase {
	cs := []shimCase{}
	for _, p := range p11shim.Profiles() {
		cs = append(cs, shimCase{"profile=" + string(p), profileConfig(t, p)})
	}
	return append(cs,
		// A module that takes only the five-field CK_GCM_PARAMS.
		shimCase{"gcm=5-field", p11shim.Config{GCMStruct: p11shim.GCMStructWithoutIVBits}},
		// The same, drawing the IV itself and writing it back.
		shimCase{"gcm=5-field,iv=write-back", p11shim.Config{GCMStruct: p11shim.GCMStructWithoutIVBits, GCMIV: p11shim.IVWriteBack, GCMIVLen: 12}},
		// PKCS#11 3.0's number for RFC 5649 and no GCM at all.
		shimCase{"kwp=0x210B,gcm=none", p11shim.Config{KWPMechanism: p11shim.MechAESKeyWrapKWP, HideMechanisms: []uint{0x1087}, SensitiveKeys: true}},
	)
}

// TestProfiles wraps and unwraps with each key behind each behaviour, in
// a child process, and then opens the stanzas through SoftHSM directly,
// as a later mount on a plain token would: the stanza alone says how to
// open it, whoever drew the IV and wherever the token put it.
func TestProfiles(t *testing.T) {
	type keyCase struct {
		name, object, query string
		kind                byte // body kind written; 0: Open must fail
		ivLen               int  // AES-GCM IV length in the body
		fail                string
	}
	wants := map[string][]keyCase{
		"profile=softhsm": {{"aes", aesLabel, "", 1, 12, ""}, {"aes,wrap=kwp", aesLabel, "wrap=kwp", 2, 0, ""}, {"rsa", rsaLabel, "", 3, 0, ""}},
		// Read-write sessions only; the token's 12-byte IV written back.
		"profile=cloudhsm": {{"aes", aesLabel, "", 1, 12, ""}, {"aes,wrap=kwp", aesLabel, "wrap=kwp", 2, 0, ""}, {"rsa", rsaLabel, "", 3, 0, ""}},
		// The token's 16-byte IV appended after the tag.
		"profile=luna-fips": {{"aes", aesLabel, "", 1, 16, ""}, {"aes,wrap=kwp", aesLabel, "wrap=kwp", 2, 0, ""}, {"rsa", rsaLabel, "", 3, 0, ""}},
		// Neither AES-GCM nor RFC 5649: refused with what to do.
		"profile=yubihsm2":          {{"aes", aesLabel, "", 0, 0, "offers neither AES-GCM"}, {"aes,wrap=kwp", aesLabel, "wrap=kwp", 0, 0, "offers no RFC 5649 key wrap"}, {"rsa", rsaLabel, "", 3, 0, ""}},
		"gcm=5-field":               {{"aes", aesLabel, "", 1, 12, ""}},
		"gcm=5-field,iv=write-back": {{"aes", aesLabel, "", 1, 12, ""}},
		"kwp=0x210B,gcm=none":       {{"aes", aesLabel, "", 2, 0, ""}, {"aes,wrap=gcm", aesLabel, "wrap=gcm", 0, 0, "wrap=gcm asked for"}},
	}
	for _, sc := range shimCases(t) {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			tok := underShim(t, sc.cfg)
			if tok == nil {
				return
			}
			for _, kc := range wants[sc.name] {
				var q []string
				if kc.query != "" {
					q = append(q, kc.query)
				}
				s, err := openShim(t, tok.spec(kc.object, q...))
				if kc.kind == 0 {
					if err == nil || !errors.Is(err, keysource.ErrInvalid) || !strings.Contains(err.Error(), kc.fail) {
						t.Errorf("key=%s: open gave %v, want ErrInvalid saying %q", kc.name, err, kc.fail)
					}
					continue
				}
				if err != nil {
					t.Fatalf("key=%s: open: %v", kc.name, err)
				}
				dk := newDataKey()
				st, err := s.Wrap(t.Context(), dk)
				if err != nil {
					t.Fatalf("key=%s: wrap: %v", kc.name, err)
				}
				if st.Body[0] != 2 || st.Body[1] != kc.kind {
					t.Errorf("key=%s: body version %d kind %d, want 2, %d", kc.name, st.Body[0], st.Body[1], kc.kind)
				}
				if kc.kind == 1 {
					if n := int(st.Body[2+1+int(st.Body[2])]); n != kc.ivLen {
						t.Errorf("key=%s: body records a %d-byte IV, want %d", kc.name, n, kc.ivLen)
					}
				}
				// Twice, so that a second wrap uses what the first learnt.
				for i := range 2 {
					again, err := s.Wrap(t.Context(), dk)
					if err != nil {
						t.Fatalf("key=%s: wrap %d: %v", kc.name, i+2, err)
					}
					got, err := s.Unwrap(t.Context(), again)
					if err != nil || !bytes.Equal(got, dk) {
						t.Fatalf("key=%s: unwrap %d: %v", kc.name, i+2, err)
					}
				}
				// Another Source, as after a remount in this process.
				s2, err := openShim(t, tok.spec(kc.object, q...))
				if err != nil {
					t.Fatalf("key=%s: second open: %v", kc.name, err)
				}
				if got, err := s2.Unwrap(t.Context(), st); err != nil || !bytes.Equal(got, dk) {
					t.Fatalf("key=%s: unwrap by a second source: %v", kc.name, err)
				}
				// SoftHSM itself, without the shim.
				plain, err := openShim(t, tok.direct(kc.object))
				if err != nil {
					t.Fatalf("key=%s: open on SoftHSM: %v", kc.name, err)
				}
				if got, err := plain.Unwrap(t.Context(), st); err != nil || !bytes.Equal(got, dk) {
					t.Fatalf("key=%s: unwrap on SoftHSM: %v", kc.name, err)
				}
			}
		})
	}
}

// TestDroppedSessions is a cluster failing over under load: the token
// closes every session, and so the login, every 100 calls. Each unwrap
// must still succeed: the Source logs in again and repeats the call.
func TestDroppedSessions(t *testing.T) {
	const every = 100
	cases := []struct {
		profile    p11shim.Profile
		object     string
		query      string
		unwraps    int
		goroutines int
	}{
		{p11shim.CloudHSM, aesLabel, "", 10000, 4},
		{p11shim.LunaFIPS, aesLabel, "", 10000, 4},
		{p11shim.CloudHSM, aesLabel, "wrap=kwp", 1000, 4},
		{p11shim.SoftHSM, rsaLabel, "", 1000, 4},
	}
	for _, tc := range cases {
		name := fmt.Sprintf("profile=%s,key=%s,drop-every=%d,unwraps=%d", tc.profile, strings.ReplaceAll(tc.object, " ", "-"), every, tc.unwraps)
		if tc.query != "" {
			name += "," + tc.query
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := profileConfig(t, tc.profile)
			cfg.DropEvery = every
			tok := underShim(t, cfg)
			if tok == nil {
				return
			}
			var q []string
			if tc.query != "" {
				q = append(q, tc.query)
			}
			s, err := openShim(t, tok.spec(tc.object, q...))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			const keys = 8
			sts := make([]keysource.Stanza, keys)
			dks := make([][]byte, keys)
			for i := range keys {
				dks[i] = newDataKey()
				if sts[i], err = s.Wrap(t.Context(), dks[i]); err != nil {
					t.Fatalf("wrap %d: %v", i, err)
				}
			}
			inParallel(t, tc.goroutines, func(g int) error {
				for i := g; i < tc.unwraps; i += tc.goroutines {
					got, err := s.Unwrap(t.Context(), sts[i%keys])
					if err != nil || !bytes.Equal(got, dks[i%keys]) {
						return fmt.Errorf("unwrap %d: key %v, %w", i, got != nil, err)
					}
				}
				return nil
			})
		})
	}
}

// TestSessionCap runs more operations at once than the token has
// sessions: two Sources that would hold 24 sessions each on a YubiHSM 2
// that allows 16. A call that meets CKR_SESSION_COUNT waits for a session
// instead of failing.
func TestSessionCap(t *testing.T) {
	const goroutines, rounds = 64, 10
	t.Run(fmt.Sprintf("profile=yubihsm2,sources=2,sessions=24,goroutines=%d", goroutines), func(t *testing.T) {
		tok := underShim(t, profileConfig(t, p11shim.YubiHSM2))
		if tok == nil {
			return
		}
		var srcs []*pkcs11.Source
		for range 2 {
			s, err := openShim(t, tok.spec(rsaLabel, "max-sessions=24"))
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			srcs = append(srcs, s)
		}
		dk := newDataKey()
		st, err := srcs[0].Wrap(t.Context(), dk)
		if err != nil {
			t.Fatal(err)
		}
		inParallel(t, goroutines, func(g int) error {
			for range rounds {
				got, err := srcs[g%2].Unwrap(t.Context(), st)
				if err != nil || !bytes.Equal(got, dk) {
					return fmt.Errorf("unwrap: key %v, %w", got != nil, err)
				}
			}
			return nil
		})
	})
}

// inParallel runs f(0) … f(n-1) at once and reports their errors.
func inParallel(t *testing.T, n int, f func(g int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for g := range n {
		wg.Go(func() {
			if err := f(g); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
