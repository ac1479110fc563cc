package keysource

// SetJoinHook makes m call f (without holding its lock) each time a caller
// starts waiting for an unwrap in flight, so tests can release a held-back
// key source once every caller has joined, without sleeping.
func SetJoinHook(m *Manager, f func()) {
	m.mu.Lock()
	m.onJoin = f
	m.mu.Unlock()
}

// Sweep runs one pass of m's background sweep now.
func Sweep(m *Manager) { m.sweepOnce() }
