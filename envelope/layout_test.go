package envelope_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/kmsfs/kmsfs/envelope"
)

func TestNewLayoutRejects(t *testing.T) {
	for _, c := range []struct{ bs, ss int }{
		{0, 1024}, {2048, 1024}, {4095, 1024}, {6144, 1024}, {2 << 20, 1024},
		{4096, 0}, {4096, 256}, {4096, 1000}, {4096, 64 << 10},
	} {
		t.Run(fmt.Sprintf("bs=%d,slot=%d", c.bs, c.ss), func(t *testing.T) {
			if _, err := envelope.NewLayout(c.bs, c.ss); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestSizes(t *testing.T) {
	for _, bs := range []int{4096, 65536, 1 << 20} {
		l, err := envelope.NewLayout(bs, 1024)
		if err != nil {
			t.Fatal(err)
		}
		b := int64(bs)
		for _, plain := range []int64{0, 1, b - 1, b, b + 1, 2*b + 7, 1000 * b, 1000*b + 1} {
			t.Run(fmt.Sprintf("bs=%d,size=%d", bs, plain), func(t *testing.T) {
				c := l.CipherSize(plain)
				if got := l.PlainSize(c); got != plain {
					t.Fatalf("PlainSize(CipherSize(%d)=%d) = %d", plain, c, got)
				}
				full, r := plain/b, plain%b
				want := l.HeaderSize() + full*(b+envelope.BlockOverhead)
				if r > 0 {
					want += r + envelope.BlockOverhead
				}
				if c != want {
					t.Fatalf("CipherSize(%d) = %d, want %d", plain, c, want)
				}
			})
		}
	}
	l := envelope.DefaultLayout()
	h := l.HeaderSize()
	for _, c := range []struct{ cipher, plain int64 }{
		{0, 0}, {1, 0}, {h - 1, 0}, {h, 0}, {h + 1, 0}, {h + envelope.BlockOverhead, 0},
		{h + envelope.BlockOverhead + 1, 1},
	} {
		if got := l.PlainSize(c.cipher); got != c.plain {
			t.Errorf("PlainSize(%d) = %d, want %d", c.cipher, got, c.plain)
		}
	}
}

func TestDeclaredLayout(t *testing.T) {
	l, err := envelope.NewLayout(65536, 1024)
	if err != nil {
		t.Fatal(err)
	}
	prefix := []byte("KMFS\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x04\x00")
	got, err := envelope.DeclaredLayout(prefix)
	if err != nil || got != l {
		t.Fatalf("DeclaredLayout = %v, %v; want %v", got, err, l)
	}
	for name, p := range map[string][]byte{
		"short":          prefix[:15],
		"magic":          append([]byte("XXXX"), prefix[4:]...),
		"block-size-bad": []byte("KMFS\x00\x02\x00\x00\x00\x00\x03\xe8\x00\x00\x04\x00"),
	} {
		if _, err := envelope.DeclaredLayout(p); !errors.Is(err, envelope.ErrFormat) {
			t.Errorf("%s: DeclaredLayout error %v, want ErrFormat", name, err)
		}
	}
}
