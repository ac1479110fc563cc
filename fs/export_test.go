package fs

import "golang.org/x/sys/unix"

// MaxListings is maxListings, for the tests.
const MaxListings = maxListings

// ForceOpendir makes mounts made until the test ends take OPENDIR, as over
// a cipher dir whose directory offsets are positions; without force they
// decide as always (declining it over ext4, XFS, btrfs, recent tmpfs).
func ForceOpendir(t interface{ Cleanup(func()) }, force bool) {
	if !force {
		return
	}
	old := stableDirOffsets
	stableDirOffsets = func(int) bool { return false }
	t.Cleanup(func() { stableDirOffsets = old })
}

// ReleaseAtLeast is releaseAtLeast, for the tests.
var ReleaseAtLeast = releaseAtLeast

// StableDirOffsets is stableDirOffsets of the directory dir.
func StableDirOffsets(dir string) (bool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	return stableDirOffsets(fd), nil
}
