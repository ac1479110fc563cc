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

// CachedKey returns the cell in which m's cache holds the key of s (not a
// copy), or nil, so tests can watch it being zeroed when it leaves.
func CachedKey(m *Manager, s Stanza) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.cache.m[stanzaDigest(s)]; e != nil {
		return e.key
	}
	return nil
}

// PoolKeys returns the cells of the data keys in m's pool: the batch being
// handed out, then the ready ones.
func PoolKeys(m *Manager) [][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	var keys [][]byte
	if m.pool.cur != nil {
		keys = append(keys, m.pool.cur.key)
	}
	for _, b := range m.pool.ready {
		keys = append(keys, b.key)
	}
	return keys
}
