package local

// WrapKey returns the cell holding s's wrapping key (not a copy), so tests
// can watch Close zero it.
func WrapKey(s *Source) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.wrapKey
}
