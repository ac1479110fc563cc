package kmstest

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
)

// The seeded keys, by fixed IDs so that emulator logs read easily. Each
// emulator has its own data directory, so IDs never clash.
const (
	seedSymmetric  = "6b6d7366-0000-4000-8000-000000000001"
	seedSymmetric2 = "6b6d7366-0000-4000-8000-000000000002"
	seedRSAEncrypt = "6b6d7366-0000-4000-8000-000000000003"
	seedRSASign    = "6b6d7366-0000-4000-8000-000000000004"
	seedDisabled   = "6b6d7366-0000-4000-8000-000000000005"
	// A multi-Region key ID: "mrk-" and 32 hex digits, the same in every
	// Region that holds a replica.
	seedMultiRegion = "mrk-6b6d7366000040008000000000000006"

	seedRSABits = 2048
)

// seed is the emulator's start-up key set: fresh AES backing keys and RSA
// private keys for every emulator.
type seed struct {
	aes map[string][]byte // key ID -> 32-byte backing key
	rsa map[string]string // key ID -> PKCS#8 PEM
}

func newSeed() (*seed, error) {
	s := &seed{aes: map[string][]byte{}, rsa: map[string]string{}}
	for _, id := range []string{seedSymmetric, seedSymmetric2, seedDisabled, seedMultiRegion} {
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
		s.aes[id] = k
	}
	type result struct {
		id, pem string
		err     error
	}
	ids := []string{seedRSAEncrypt, seedRSASign}
	results := make(chan result, len(ids))
	for _, id := range ids { // RSA key generation dominates start-up; use both cores
		go func() {
			p, err := rsaPEM()
			results <- result{id, p, err}
		}()
	}
	for range ids {
		r := <-results
		if r.err != nil {
			return nil, r.err
		}
		s.rsa[r.id] = r.pem
	}
	return s, nil
}

// rsaPEM returns a fresh RSA private key as PKCS#8 PEM, the form local-kms
// seeds asymmetric keys from (it derives the key spec from the modulus).
func rsaPEM() (string, error) {
	k, err := rsa.GenerateKey(rand.Reader, seedRSABits)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})), nil
}

func (s *seed) key(id string) Key {
	return Key{ID: id, ARN: fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", Region, Account, id)}
}

// yaml renders the seed in local-kms's format (see its README, "Seeding
// file format"). The format has no way to seed a disabled key: the seeder
// forces Enabled, so Start disables that key through the API.
func (s *seed) yaml() []byte {
	var b bytes.Buffer
	b.WriteString("Keys:\n  Symmetric:\n    Aes:\n")
	for _, id := range []string{seedSymmetric, seedSymmetric2, seedDisabled, seedMultiRegion} {
		fmt.Fprintf(&b, "      - Metadata:\n          KeyId: %s\n          Description: kmsfs test key\n", id)
		fmt.Fprintf(&b, "        BackingKeys:\n          - %s\n", hex.EncodeToString(s.aes[id]))
	}
	b.WriteString("  Asymmetric:\n    Rsa:\n")
	for _, k := range []struct{ id, usage string }{
		{seedRSAEncrypt, "ENCRYPT_DECRYPT"},
		{seedRSASign, "SIGN_VERIFY"},
	} {
		fmt.Fprintf(&b, "      - Metadata:\n          KeyId: %s\n          KeyUsage: %s\n", k.id, k.usage)
		b.WriteString("        PrivateKeyPem: |\n")
		for _, line := range strings.Split(strings.TrimSpace(s.rsa[k.id]), "\n") {
			fmt.Fprintf(&b, "          %s\n", line)
		}
	}
	fmt.Fprintf(&b, "Aliases:\n  - AliasName: %s\n    TargetKeyId: %s\n", Alias, seedSymmetric)
	return b.Bytes()
}
