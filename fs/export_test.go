package fs

// MaxListings is maxListings, for the tests.
const MaxListings = maxListings
