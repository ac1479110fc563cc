package secmem

// SetLockFunc makes a lock its chunks with f, so tests can play a system
// that refuses to lock memory.
func SetLockFunc(a *Arena, f func([]byte) error) { a.lock = f }
