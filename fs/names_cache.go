package fs

import (
	"sync"

	"github.com/kmsfs/kmsfs/envelope/names"
)

// maxCachedNames bounds each generation of the name caches: two
// generations hold at most twice as many names, a few hundred bytes each.
const maxCachedNames = 1 << 14

// nameCache remembers the backing names of plaintext names and the
// plaintext names of short backing names, by directory ID: every by-name
// operation on a node (stat, open, extended attributes) names it again, a
// READDIRPLUS looks up every name it has just decrypted, and a listing
// decrypts every name of the directory again (an AES-SIV open each). A
// short backing name and its plaintext name are functions of each other
// and the ID alone (Encrypt is deterministic and Decrypt refuses any form
// Encrypt does not write), so an entry never goes stale, and the ID in the
// key keeps a backing name moved from another directory from being read
// as its name there. A long name's plaintext is not kept by its backing
// name: listing it reads and checks its side file every time. It is safe
// for concurrent use.
type nameCache struct {
	mu      sync.Mutex
	backing genCache[nameKey, names.Name] // by plaintext name
	plain   genCache[nameKey, string]     // by short backing name
}

type nameKey struct {
	dir  names.DirID
	name string
}

// get returns the cached backing name of name in the directory of ID dir.
func (c *nameCache) get(dir names.DirID, name string) (names.Name, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.backing.get(nameKey{dir, name})
}

// plainName returns the cached plaintext name of the short backing name
// backing in the directory of ID dir.
func (c *nameCache) plainName(dir names.DirID, backing string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.plain.get(nameKey{dir, backing})
}

// put remembers that nm is the backing name of name in the directory of
// ID dir, and the reverse for a short name.
func (c *nameCache) put(dir names.DirID, name string, nm names.Name) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backing.put(nameKey{dir, name}, nm)
	if nm.Side == nil {
		c.plain.put(nameKey{dir, nm.Backing}, name)
	}
}

// genCache is a map of two generations: a key found in the old one moves
// to the new one, and the old one is dropped when the new one is full, so
// the keys in use stay. Its user locks it.
type genCache[K comparable, V any] struct {
	cur, old map[K]V
}

func (g *genCache[K, V]) get(k K) (V, bool) {
	if v, ok := g.cur[k]; ok {
		return v, true
	}
	v, ok := g.old[k]
	if ok {
		g.put(k, v)
	}
	return v, ok
}

func (g *genCache[K, V]) put(k K, v V) {
	if len(g.cur) >= maxCachedNames || g.cur == nil {
		g.old, g.cur = g.cur, make(map[K]V)
	}
	g.cur[k] = v
}
