package names_test

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
)

func TestNewKeySize(t *testing.T) {
	for _, n := range []int{0, 32, nameKeySize - 1, nameKeySize + 1} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			if _, err := names.New(make([]byte, n)); err == nil {
				t.Fatal("New accepted a name key of the wrong size")
			}
		})
	}
}

func TestNewKeepsNoReference(t *testing.T) {
	key := testKey(1)
	c, err := names.New(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := dirID(1)
	before, err := c.Encrypt(dir, "report.txt")
	if err != nil {
		t.Fatal(err)
	}
	clear(key)
	after, err := c.Encrypt(dir, "report.txt")
	if err != nil {
		t.Fatal(err)
	}
	if before.Backing != after.Backing {
		t.Fatal("wiping the caller's key changed the codec")
	}
}

// checkStored checks the promises about the form of a stored name.
func checkStored(t *testing.T, name string, n names.Name) {
	t.Helper()
	if len(n.Backing) > names.MaxNameLen || len(n.Backing)+len(names.LongSuffix) > names.MaxNameLen {
		t.Fatalf("backing name (and side file name) of %d bytes is too long", len(n.Backing))
	}
	long := len(name) > maxShortName
	if names.IsLong(n.Backing) != long || (n.Side != nil) != long {
		t.Fatalf("name of %d bytes: long backing %v, side file %v", len(name), names.IsLong(n.Backing), n.Side != nil)
	}
	if !long && names.IsSpecial(n.Backing) {
		t.Fatalf("short backing name %q contains '.'", n.Backing)
	}
	if long && names.IsLong(n.Backing+names.LongSuffix) {
		t.Fatalf("side file %q taken for a long name", n.Backing+names.LongSuffix)
	}
	if len(name) >= 4 && strings.Contains(n.Backing, name) {
		t.Fatalf("backing name %q shows the name", n.Backing)
	}
}

func roundTrip(t *testing.T, c *names.Codec, dir names.DirID, name string) {
	t.Helper()
	n, err := c.Encrypt(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	checkStored(t, name, n)
	got, err := decryptAny(c, dir, n)
	if err != nil || got != name {
		t.Fatalf("decrypt: %q, %v; want %q", got, err, name)
	}
}

func TestRoundTripEveryByte(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for _, b := range allowed() {
		t.Run(fmt.Sprintf("byte=%#02x", b), func(t *testing.T) {
			if b != '.' {
				roundTrip(t, c, dir, string([]byte{b}))
			}
			roundTrip(t, c, dir, string([]byte{'a', b, b, 'z'}))
			roundTrip(t, c, dir, strings.Repeat(string([]byte{b}), names.MaxNameLen))
		})
	}
}

func TestRoundTripEveryLength(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for n := 1; n <= names.MaxNameLen; n++ {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			roundTrip(t, c, dir, nameOfLen(n, n))
			roundTrip(t, c, dir, strings.Repeat("a", n))
		})
	}
}

func TestRoundTripUnicode(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for _, name := range []string{
		"Gehälter-2026.xlsx", "日本語のファイル名", "ملف", "emoji-😀-🎉", "\u200bzero-width",
		"e\u0301", "é", "…", "ℌ𝔢𝔩𝔩𝔬", "\u202eevil.exe", ".hidden", "..x", "...",
		strings.Repeat("ü", 80), strings.Repeat("日", 85), strings.Repeat("😀", 63),
	} {
		t.Run(fmt.Sprintf("name=%q", name), func(t *testing.T) { roundTrip(t, c, dir, name) })
	}
}

func TestDeterministicPerDirectory(t *testing.T) {
	c := newCodec(t, 1)
	for _, n := range []int{1, 15, 16, 17, maxShortName, maxShortName + 1, names.MaxNameLen} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			name := nameOfLen(n, 3)
			a1, err := c.Encrypt(dirID(1), name)
			if err != nil {
				t.Fatal(err)
			}
			a2, err := c.Encrypt(dirID(1), name)
			if err != nil {
				t.Fatal(err)
			}
			if a1.Backing != a2.Backing || !bytes.Equal(a1.Side, a2.Side) {
				t.Fatal("the same name in the same directory encrypted differently")
			}
			b, err := c.Encrypt(dirID(2), name)
			if err != nil {
				t.Fatal(err)
			}
			if a1.Backing == b.Backing {
				t.Fatal("the same name in two directories has one backing name")
			}
			other, err := newCodec(t, 2).Encrypt(dirID(1), name)
			if err != nil {
				t.Fatal(err)
			}
			if a1.Backing == other.Backing {
				t.Fatal("two name keys give one backing name")
			}
		})
	}
}

// TestPaddingHidesLength: names in the same 16-byte bucket have backing
// names of one length.
func TestPaddingHidesLength(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for _, bucket := range [][2]int{{1, 16}, {17, 32}, {145, 160}, {161, 176}, {241, 255}} {
		t.Run(fmt.Sprintf("len=%d..%d", bucket[0], bucket[1]), func(t *testing.T) {
			lo, err := c.Encrypt(dir, nameOfLen(bucket[0], 0))
			if err != nil {
				t.Fatal(err)
			}
			hi, err := c.Encrypt(dir, nameOfLen(bucket[1], 0))
			if err != nil {
				t.Fatal(err)
			}
			if len(lo.Backing) != len(hi.Backing) || len(lo.Side) != len(hi.Side) {
				t.Fatalf("lengths %d and %d stored as %d and %d bytes", bucket[0], bucket[1], len(lo.Backing), len(hi.Backing))
			}
		})
	}
}

func TestEncryptRejectsInvalidNames(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for _, name := range []string{"", ".", "..", "a/b", "/", "a\x00b", "\x00", strings.Repeat("a", names.MaxNameLen+1)} {
		t.Run(fmt.Sprintf("name=%.20q", name), func(t *testing.T) {
			n, err := c.Encrypt(dir, name)
			wantRejected(t, n.Backing, err, names.ErrInvalidName)
			if len(name) >= 3 && len(name) < 10 && strings.Contains(err.Error(), name) {
				t.Fatalf("error %q shows the plaintext name", err)
			}
		})
	}
}

// TestTamperedShortName flips every bit of every byte of a stored name, as
// someone editing the cipher dir would.
func TestTamperedShortName(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	for _, n := range []int{1, 16, 17, maxShortName} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			stored, err := c.Encrypt(dir, nameOfLen(n, 5))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := base64.RawURLEncoding.DecodeString(stored.Backing)
			if err != nil {
				t.Fatal(err)
			}
			for i := range raw {
				for bit := range 8 {
					bad := bytes.Clone(raw)
					bad[i] ^= 1 << bit
					got, err := c.Decrypt(dir, base64.RawURLEncoding.EncodeToString(bad))
					wantRejected(t, got, err, names.ErrAuth)
				}
			}
		})
	}
}

// TestEditedBackingName changes each character of a stored name to every
// other base64url character: never a name, and ErrInvalidName only where
// the edit left stray bits in the last character.
func TestEditedBackingName(t *testing.T) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	c, dir := newCodec(t, 1), dirID(1)
	stored, err := c.Encrypt(dir, "salaries-2026.xlsx")
	if err != nil {
		t.Fatal(err)
	}
	for i := range len(stored.Backing) {
		t.Run(fmt.Sprintf("pos=%d", i), func(t *testing.T) {
			for _, ch := range []byte(alphabet) {
				if ch == stored.Backing[i] {
					continue
				}
				bad := []byte(stored.Backing)
				bad[i] = ch
				got, err := c.Decrypt(dir, string(bad))
				want := names.ErrAuth
				if i == len(bad)-1 {
					if _, derr := base64.RawURLEncoding.Strict().DecodeString(string(bad)); derr != nil {
						want = names.ErrInvalidName
					}
				}
				wantRejected(t, got, err, want)
			}
		})
	}
}

// TestNameMovedToAnotherDirectory: a backing name (and side file) moved
// into another directory of the cipher dir fails authentication there.
func TestNameMovedToAnotherDirectory(t *testing.T) {
	c := newCodec(t, 1)
	for _, n := range []int{1, maxShortName, maxShortName + 1, names.MaxNameLen} {
		t.Run(fmt.Sprintf("len=%d", n), func(t *testing.T) {
			stored, err := c.Encrypt(dirID(1), nameOfLen(n, 9))
			if err != nil {
				t.Fatal(err)
			}
			got, err := decryptAny(c, dirID(2), stored)
			wantRejected(t, got, err, names.ErrAuth)
			got, err = decryptAny(newCodec(t, 2), dirID(1), stored)
			wantRejected(t, got, err, names.ErrAuth)
		})
	}
}

func TestLongNames(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	a, err := c.Encrypt(dir, nameOfLen(200, 1))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Encrypt(dir, nameOfLen(200, 2))
	if err != nil {
		t.Fatal(err)
	}
	short, err := c.Encrypt(dir, "short")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("decrypt=short", func(t *testing.T) {
		got, err := c.Decrypt(dir, a.Backing)
		wantRejected(t, got, err, names.ErrLong)
	})
	for _, tc := range []struct {
		name    string
		backing string
		side    []byte
		want    error
	}{
		{"side=other", a.Backing, b.Side, names.ErrAuth},
		{"side=empty", a.Backing, nil, names.ErrInvalidName},
		{"side=cut", a.Backing, a.Side[:len(a.Side)-1], names.ErrInvalidName},
		{"side=cut-block", a.Backing, a.Side[:len(a.Side)-16], names.ErrAuth},
		{"side=grown", a.Backing, append(bytes.Clone(a.Side), make([]byte, 16)...), names.ErrAuth},
		{"side=short-name", a.Backing, mustDecode(t, short.Backing), names.ErrInvalidName},
		{"backing=short", short.Backing, a.Side, names.ErrInvalidName},
		{"backing=side-file", a.Backing + names.LongSuffix, a.Side, names.ErrInvalidName},
		{"backing=cut", a.Backing[:len(a.Backing)-1], a.Side, names.ErrInvalidName},
		{"backing=prefix", names.LongPrefix, a.Side, names.ErrInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.DecryptLong(dir, tc.backing, tc.side)
			wantRejected(t, got, err, tc.want)
		})
	}
	t.Run("side=flipped", func(t *testing.T) {
		for i := range a.Side {
			bad := bytes.Clone(a.Side)
			bad[i] ^= 0x01
			got, err := c.DecryptLong(dir, a.Backing, bad)
			wantRejected(t, got, err, names.ErrAuth)
			// Even with a backing name that matches the edited side file,
			// the edit fails authentication.
			got, err = c.DecryptLong(dir, names.LongBacking(bad), bad)
			wantRejected(t, got, err, names.ErrAuth)
		}
	})
}

func mustDecode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNonCanonicalPadding forges authentic names of a form Encrypt never
// writes (as someone holding the name key, or a buggy older writer,
// could): each is refused, so every name has exactly one stored form.
func TestNonCanonicalPadding(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	pad := func(s string, n int) []byte { return append([]byte(s), make([]byte, n-len(s))...) }
	for _, tc := range []struct {
		name   string
		padded []byte
	}{
		{"pad=extra-block", pad("a", 32)},
		{"pad=full-block-after-16", pad("abcdefghijklmnop", 32)},
		{"pad=all-zero", make([]byte, 16)},
		{"name=dot", pad(".", 16)},
		{"name=dotdot", pad("..", 16)},
		{"name=slash", pad("a/b", 16)},
		{"name=inner-nul", pad("a\x00b", 16)},
		{"name=leading-nul", pad("\x00ab", 16)},
		{"long=161-as-192", pad(nameOfLen(161, 0), 192)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sealed := names.SealEntry(c, dir, tc.padded)
			var got string
			var err error
			if len(tc.padded) > maxShortName {
				got, err = c.DecryptLong(dir, names.LongBacking(sealed), sealed)
			} else {
				got, err = c.Decrypt(dir, base64.RawURLEncoding.EncodeToString(sealed))
			}
			wantRejected(t, got, err, names.ErrInvalidName)
		})
	}
	t.Run("short-as-long", func(t *testing.T) {
		sealed := names.SealEntry(c, dir, pad("short", 16))
		got, err := c.DecryptLong(dir, names.LongBacking(sealed), sealed)
		wantRejected(t, got, err, names.ErrInvalidName)
	})
}

func TestInvalidEncoding(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	valid, err := c.Encrypt(dir, "x")
	if err != nil {
		t.Fatal(err)
	}
	unpadded := names.SealEntry(c, dir, []byte("seventeen bytes!!"))
	for _, tc := range []struct {
		name    string
		backing string
	}{
		{"empty", ""},
		{"one-char", "A"},
		{"kmsfs.conf", "kmsfs.conf"},
		{"dirid", names.DirIDFile},
		{"std-alphabet", strings.ReplaceAll(strings.ReplaceAll(valid.Backing, "-", "+"), "_", "+") + "+"},
		{"padded", valid.Backing + "=="},
		{"space", " " + valid.Backing[1:]},
		{"siv-only", base64.RawURLEncoding.EncodeToString(make([]byte, 16))},
		{"not-block", base64.RawURLEncoding.EncodeToString(unpadded)},
		{"len=256", strings.Repeat("A", 256)},
		{"len=1000", strings.Repeat("A", 1000)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Decrypt(dir, tc.backing)
			wantRejected(t, got, err, names.ErrInvalidName)
		})
	}
}

func TestIsSpecialIsLong(t *testing.T) {
	for _, tc := range []struct {
		backing       string
		special, long bool
	}{
		{"kmsfs.conf", true, false},
		{"kmsfs.journal", true, false},
		{names.DirIDFile, true, false},
		{names.LongPrefix + "abc", true, true},
		{names.LongPrefix + "abc" + names.LongSuffix, true, false},
		{names.LongPrefix, true, true},
		{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", false, false},
		{"kmsfs", false, false},
	} {
		t.Run("backing="+tc.backing, func(t *testing.T) {
			if names.IsSpecial(tc.backing) != tc.special || names.IsLong(tc.backing) != tc.long {
				t.Fatalf("IsSpecial %v, IsLong %v; want %v, %v", names.IsSpecial(tc.backing), names.IsLong(tc.backing), tc.special, tc.long)
			}
		})
	}
}

// TestConcurrent runs one Codec from several goroutines (under -race in
// make race).
func TestConcurrent(t *testing.T) {
	c, dir := newCodec(t, 1), dirID(1)
	done := make(chan error)
	for g := range 4 {
		go func() {
			for i := range 200 {
				name := nameOfLen(1+(g*200+i)%names.MaxNameLen, i)
				n, err := c.Encrypt(dir, name)
				if err == nil {
					var got string
					got, err = decryptAny(c, dir, n)
					if err == nil && got != name {
						err = fmt.Errorf("got %q, want %q", got, name)
					}
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
