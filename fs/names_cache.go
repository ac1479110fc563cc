package fs

import (
	"sync"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// maxCachedNames bounds each generation of the name cache: two
// generations hold at most twice as many names, a few hundred bytes each.
const maxCachedNames = 1 << 14

// nameCache remembers the backing names of plaintext names, by directory
// ID: every by-name operation on a node (stat, open, extended attributes)
// names it again, and a READDIRPLUS looks up every name it has just
// decrypted. A backing name is a function of the ID and the name alone,
// so an entry never goes stale. It keeps two generations: a name found in
// the old one moves to the new one, and the old one is dropped when the
// new one is full, so the names in use stay. It is safe for concurrent
// use.
type nameCache struct {
	mu       sync.Mutex
	cur, old map[nameKey]names.Name
}

type nameKey struct {
	dir  names.DirID
	name string
}

// get returns the cached backing name of name in the directory of ID dir.
func (c *nameCache) get(dir names.DirID, name string) (names.Name, bool) {
	k := nameKey{dir, name}
	c.mu.Lock()
	defer c.mu.Unlock()
	if nm, ok := c.cur[k]; ok {
		return nm, true
	}
	nm, ok := c.old[k]
	if ok {
		c.putLocked(k, nm)
	}
	return nm, ok
}

// put remembers that nm is the backing name of name in the directory of
// ID dir.
func (c *nameCache) put(dir names.DirID, name string, nm names.Name) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(nameKey{dir, name}, nm)
}

func (c *nameCache) putLocked(k nameKey, nm names.Name) {
	if len(c.cur) >= maxCachedNames || c.cur == nil {
		c.old, c.cur = c.cur, make(map[nameKey]names.Name)
	}
	c.cur[k] = nm
}
