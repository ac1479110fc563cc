package envelope

// SetWideGCM makes codecs created from now on use vaesgcm (where the
// processor supports it) or crypto/cipher, and returns the way back.
func SetWideGCM(on bool) (restore func()) {
	was := wideGCM
	wideGCM = on
	return func() { wideGCM = was }
}
