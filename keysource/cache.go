package keysource

import (
	"crypto/sha256"
	"encoding/binary"
	"time"

	"github.com/kmsfs/kmsfs/internal/secmem"
)

// Cache defaults: a thousand data keys is far more than the files a mount
// keeps open under the batched policy (256 files share one key), and an
// hour bounds how long a key that KMS has since disabled keeps opening
// files on this host.
const (
	DefaultCacheEntries = 1024
	DefaultCacheMaxAge  = time.Hour
)

// digest identifies a stanza in the cache: SHA-256 over its type, key ID
// and body, each length-prefixed, so distinct stanzas never share an entry.
type digest [sha256.Size]byte

// stanzaDigest hashes s: each field with a 32-bit length prefix (header
// fields are far shorter), in a stack buffer when the stanza is small.
func stanzaDigest(s Stanza) digest {
	n := 12 + len(s.Type) + len(s.KeyID) + len(s.Body)
	var buf [512]byte
	if n <= len(buf) {
		b := binary.BigEndian.AppendUint32(buf[:0], uint32(len(s.Type)))
		b = append(b, s.Type...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.KeyID)))
		b = append(b, s.KeyID...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.Body)))
		b = append(b, s.Body...)
		return sha256.Sum256(b)
	}
	h := sha256.New()
	for _, f := range [][]byte{[]byte(s.Type), []byte(s.KeyID), s.Body} {
		h.Write(binary.BigEndian.AppendUint32(buf[:0], uint32(len(f))))
		h.Write(f)
	}
	var d digest
	h.Sum(d[:0])
	return d
}

// keyCache holds unwrapped data keys by stanza digest, bounded in count
// (least recently used goes first) and in age (counted from when the key
// was unwrapped, so a hot key is still fetched again every maxAge). It owns
// the keys put into it (cells of mem) and frees, so zeroes, each one when it
// leaves. It is not safe for concurrent use: the Manager's mutex guards it.
type keyCache struct {
	max    int // < 0: cache nothing
	maxAge time.Duration
	mem    *secmem.Arena
	obs    Observer // told of evictions; nil: nobody
	m      map[digest]*cacheEntry
	lru    cacheEntry // sentinel: lru.next is the least recently used
}

type cacheEntry struct {
	d          digest
	key        []byte
	added      time.Time
	prev, next *cacheEntry
}

func newKeyCache(max int, maxAge time.Duration, mem *secmem.Arena, obs Observer) *keyCache {
	c := &keyCache{max: max, maxAge: maxAge, mem: mem, obs: obs, m: make(map[digest]*cacheEntry)}
	c.lru.prev, c.lru.next = &c.lru, &c.lru
	return c
}

func (c *keyCache) expired(e *cacheEntry, now time.Time) bool {
	return now.Sub(e.added) >= c.maxAge
}

// get returns the key cached for d, or nil. The key stays the cache's: the
// caller copies it before releasing the lock.
func (c *keyCache) get(d digest, now time.Time) []byte {
	e := c.m[d]
	if e == nil {
		return nil
	}
	if c.expired(e, now) {
		c.evict(e)
		return nil
	}
	c.unlink(e)
	c.pushBack(e)
	return e.key
}

// put caches key (a cell of c.mem) for d and takes ownership of it.
func (c *keyCache) put(d digest, key []byte, now time.Time) {
	if c.max < 0 {
		c.mem.Free(key)
		return
	}
	if old := c.m[d]; old != nil {
		c.remove(old)
	}
	for len(c.m) >= c.max && c.lru.next != &c.lru {
		c.evict(c.lru.next)
	}
	e := &cacheEntry{d: d, key: key, added: now}
	c.m[d] = e
	c.pushBack(e)
}

// sweep removes every entry older than maxAge.
func (c *keyCache) sweep(now time.Time) {
	for e := c.lru.next; e != &c.lru; {
		next := e.next
		if c.expired(e, now) {
			c.evict(e)
		}
		e = next
	}
}

// purge removes every entry.
func (c *keyCache) purge() {
	for c.lru.next != &c.lru {
		c.remove(c.lru.next)
	}
}

// evict removes e for room or age, and reports it.
func (c *keyCache) evict(e *cacheEntry) {
	c.remove(e)
	if c.obs != nil {
		c.obs.CacheEvict()
	}
}

func (c *keyCache) remove(e *cacheEntry) {
	c.unlink(e)
	delete(c.m, e.d)
	c.mem.Free(e.key)
	e.key = nil
}

func (c *keyCache) unlink(e *cacheEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *keyCache) pushBack(e *cacheEntry) {
	e.prev, e.next = c.lru.prev, &c.lru
	c.lru.prev.next = e
	c.lru.prev = e
}
