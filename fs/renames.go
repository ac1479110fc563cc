package fs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// A file, link or special file has no descriptor of its own: kmsfs finds
// it by its parent's descriptor and its name in go-fuse's tree (Node.loc).
// A RENAME is done in the cipher dir first and in go-fuse's tree after, on
// its way out of the node bridge. A request in between that resolves a
// moved node by name finds the old name naming another object (the other
// file of an exchange, the file renamed over it) or nothing: an open would
// give one file's plaintext to the other's reader, and a truncate through
// it would cut the other file. The kernel holds no lock of the file for an
// open, a stat or a readlink, and a LOOKUP that revalidates a cached name
// holds none of the directory's, so these do arrive in the window. A
// LOOKUP there also confuses the tree: the bridge files the other object's
// node under the old name, the exchange's tree move then sees both names
// on one node and does nothing, and the moved node keeps a parent entry
// under a name that is no longer its own.
//
// So renames are gated: a RENAME holds renameGate.mu for writing from
// before renameat2 until the tree has moved (renames wraps the whole raw
// request), and a LOOKUP, and a node's by-name resolution for an open, a
// stat without a handle, a readlink or an extended attribute, hold it for
// reading, never across a key call. What remains, a cipher dir changed
// behind the mount, checkSelf answers with ESTALE.

// renameGate orders by-name resolutions against renames: held for
// writing by a RENAME, for reading by whatever resolves a name, and never
// across a key call (a RENAME would wait for it, and every request after
// the RENAME for both) and, where it can, only around the by-name call
// itself: a descriptor then holds on to what the name named.
type renameGate struct{ mu sync.RWMutex }

// renames is the raw filesystem that closes the rename window (see above)
// around the node bridge.
type renames struct {
	fuse.RawFileSystem
	gate *renameGate
}

func (r *renames) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	r.gate.mu.Lock()
	defer r.gate.mu.Unlock()
	return r.RawFileSystem.Rename(cancel, in, oldName, newName)
}

// Lookup holds the gate for reading. go-fuse answers a LOOKUP of "." or
// ".." (sent only to filesystems exported over NFS, which kmsfs is not)
// with the node's Getattr, which takes it again: were a RENAME waiting in
// between, that would deadlock.
func (r *renames) Lookup(cancel <-chan struct{}, header *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	r.gate.mu.RLock()
	defer r.gate.mu.RUnlock()
	return r.RawFileSystem.Lookup(cancel, header, name, out)
}
