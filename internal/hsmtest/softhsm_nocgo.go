//go:build !cgo

package hsmtest

import "errors"

// Start fails in a build without cgo, which cannot load the SoftHSM2
// module; fusetest.Suite.HSM then skips the test, or fails it under CI=true.
func Start(Options) (*HSM, error) {
	return nil, errors.New("hsmtest: built without cgo (CGO_ENABLED=0): SoftHSM2 needs cgo")
}

// AddAESKey fails without cgo (Start never returns an HSM there).
func (h *HSM) AddAESKey(*Token, string) error { return errors.New("hsmtest: built without cgo") }

// AddAlwaysAuthRSAKey fails without cgo (Start never returns an HSM there).
func (h *HSM) AddAlwaysAuthRSAKey(*Token, string) error {
	return errors.New("hsmtest: built without cgo")
}

// DeleteKey fails without cgo (Start never returns an HSM there).
func (h *HSM) DeleteKey(*Token, string) error { return errors.New("hsmtest: built without cgo") }
