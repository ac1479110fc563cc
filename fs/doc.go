// Package fs is the kmsfs FUSE filesystem: go-fuse nodes over a cipher dir.
// Directories, names, links and attributes pass through to the cipher dir;
// regular files are kmsfs cipher files (package envelope), read and written
// through one shared open-file state per inode.
//
// Every operation works relative to directory file descriptors (the openat
// family), never on absolute paths, so deep trees are not limited by
// PATH_MAX. Only this package turns errors into errno values, and only it
// and cmd log.
package fs
