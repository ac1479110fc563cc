package main

import (
	"github.com/sirupsen/logrus"

	"github.com/kmsfs/kmsfs/envelope"
)

// checkGCM settles, before the mount opens anything, which AES-GCM
// implementation seals and opens blocks, and logs it once. A vaesgcm that
// failed its known-answer self-test is a warning, not a stop: crypto/cipher
// produces the same format. The error is Go refusing AES-GCM with 16-byte
// nonces (FIPS 140-only mode), under which no file could be read or
// written.
func checkGCM(log *logrus.Entry) error {
	st, err := envelope.GCM()
	if err != nil {
		return err
	}
	if st.SelfTest != nil {
		log.WithField("gcm", "crypto/cipher").WithError(st.SelfTest).Warn("vaesgcm failed its self-test against crypto/cipher: sealing and opening with crypto/cipher instead")
		return nil
	}
	if st.Wide {
		log.WithField("gcm", "vaesgcm").Info("AES-GCM implementation")
		return nil
	}
	log.WithFields(logrus.Fields{"gcm": "crypto/cipher", "reason": st.Reason}).Info("AES-GCM implementation")
	return nil
}
