package fs

import "golang.org/x/sys/unix"

// MaxListings is maxListings, for the tests.
const MaxListings = maxListings

// ForceOpendir makes mounts made until the test ends take OPENDIR (as over
// a cipher dir whose directory offsets are positions), or decline it.
func ForceOpendir(t interface{ Cleanup(func()) }, opendir bool) {
	old := stableDirOffsets
	stableDirOffsets = func(int) bool { return !opendir }
	t.Cleanup(func() { stableDirOffsets = old })
}

// StableDirOffsets is stableDirOffsets of the directory dir.
func StableDirOffsets(dir string) (bool, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	return stableDirOffsets(fd), nil
}
