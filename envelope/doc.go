// Package envelope is the kmsfs file format: the header (two slots, each
// authenticated under a key derived from the file's data key), the
// AES-256-GCM content blocks at fixed offsets, the layout that maps
// plaintext offsets to cipher offsets, and File, the random-access
// plaintext view of one cipher file over a Backing. docs/FORMAT.md is the
// byte-level specification.
//
// It does no I/O of its own beyond the Backing it is given and nothing
// specific to an operating system, so it builds for any GOOS and GOARCH.
// What a File needs from elsewhere it declares as small interfaces: the
// data key (KeyUnwrapper, implemented by keysource's Manager), the write
// journal (Journal, implemented by package journal), and the optional
// capabilities of a Backing (Reserver, HoleLister, Puncher). Large
// requests are sealed and opened in parallel by internal/parallel.
//
// The package never logs and never imports go-fuse.
package envelope
