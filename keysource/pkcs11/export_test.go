//go:build cgo

package pkcs11

// LoaderOf returns the Loader s was opened through, so tests can tell a
// Loader of the Source's own from a shared one.
func LoaderOf(s *Source) *Loader { return s.loader }

// Modules returns how many modules l holds loaded.
func Modules(l *Loader) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.mods)
}
