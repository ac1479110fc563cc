// Package names encrypts the names in a kmsfs cipher dir: the entries of
// a directory and the targets of symbolic links. docs/FORMAT.md
// ("Encrypted names") is the specification.
//
// An entry name is sealed with AES-SIV (RFC 5297), deterministic
// authenticated encryption, under a sub-key of the volume's name key, with
// the identity of its parent directory (a DirID) as associated data. The
// same name in the same directory always gives the same backing name, so
// a lookup needs no listing; a backing name moved into another directory
// fails authentication; renaming a directory changes nothing below it,
// because its children are bound to its DirID and not to its name.
//
//	short backing name (plaintext name of 1..160 bytes):
//	    base64url( SIV (16) | AES-CTR(name | NUL padding to a multiple of 16) )
//	long backing name (161..255 bytes):
//	    "kmsfs.L" + base64url( SHA-256(sealed) )   the directory entry
//	    "kmsfs.L" + base64url( SHA-256(sealed) ) + ".name"
//	                                             side file, holding sealed
//	symlink target:
//	    base64url( nonce (16) | SIV (16) | AES-CTR(target) )
//
// A short backing name never contains '.', so every other file of the
// cipher dir (kmsfs.conf, kmsfs.dirid, long names and their side files)
// is told apart by containing one (IsSpecial).
//
// The package does no I/O: the caller stores DirIDs, side files and
// targets. It never logs and never imports go-fuse.
package names
