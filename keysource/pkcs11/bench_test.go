//go:build cgo

package pkcs11_test

import "testing"

func BenchmarkWrap(b *testing.B) {
	h := needHSM(b)
	for _, kc := range keyCases(h) {
		b.Run("key="+kc.name, func(b *testing.B) {
			s := open(b, kc.spec, volA, kc.opts)
			dk := newDataKey()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Wrap(b.Context(), dk); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkUnwrap(b *testing.B) {
	h := needHSM(b)
	for _, kc := range keyCases(h) {
		for _, mode := range []string{"serial", "parallel"} {
			b.Run("key="+kc.name+",mode="+mode, func(b *testing.B) {
				s := open(b, kc.spec, volA, kc.opts)
				st, err := s.Wrap(b.Context(), newDataKey())
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				if mode == "serial" {
					for b.Loop() {
						if _, err := s.Unwrap(b.Context(), st); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.Unwrap(b.Context(), st); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// BenchmarkOpen measures opening a Source while another keeps the module
// and login alive: key lookup and mechanism checks.
func BenchmarkOpen(b *testing.B) {
	h := needHSM(b)
	for _, kc := range keyCases(h) {
		b.Run("key="+kc.name, func(b *testing.B) {
			open(b, kc.spec, volA, kc.opts)
			b.ReportAllocs()
			for b.Loop() {
				s, err := tryOpen(b, kc.spec, volA, kc.opts)
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
	}
}
