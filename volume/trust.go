package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kmsfs/kmsfs/internal/volconf"
)

// OpenStore returns the trust store in dir, else the one the environment
// and the user name (volconf.DefaultTrustDir).
func OpenStore(dir string) (*volconf.Store, error) {
	if dir == "" {
		var err error
		if dir, err = volconf.DefaultTrustDir(os.Geteuid(), os.LookupEnv); err != nil {
			return nil, err
		}
	}
	return volconf.NewStore(dir, os.Geteuid()), nil
}

// LoadTrusted reads cipherDir's kmsfs.conf and checks it against this
// host's trust anchor in trustDir ("" for the default). It returns the
// anchor: a volume takes its layout, policy and keys from there, never
// from the cipher dir.
func LoadTrusted(cipherDir, trustDir string) (*volconf.Anchor, error) {
	conf, err := volconf.Load(cipherDir)
	if err != nil {
		return nil, err
	}
	store, err := OpenStore(trustDir)
	if err != nil {
		return nil, err
	}
	a, err := store.Load(conf.VolumeID)
	if errors.Is(err, volconf.ErrNotTrusted) {
		msg := fmt.Sprintf("volume %s in %s is not trusted on this host; review it and approve with `kmsfs trust %s`", conf.VolumeID, cipherDir, cipherDir)
		if ids := store.ApprovedAt(AbsPath(cipherDir)); len(ids) > 0 {
			msg += fmt.Sprintf(" (this host approved volume %s there: was kmsfs.conf replaced?)", strings.Join(ids, ", "))
		}
		return nil, errors.New(msg)
	}
	if err != nil {
		return nil, err
	}
	m, d := a.Match(conf)
	if m == nil {
		return nil, fmt.Errorf("%s in %s differs from what this host approved for volume %s (%s):\n  - %s\nif you made this change, review and approve it with `kmsfs trust %s`",
			ConfName, cipherDir, conf.VolumeID, store.Path(conf.VolumeID), strings.Join(d, "\n  - "), cipherDir)
	}
	return m, nil
}

// AbsPath returns p made absolute, or p if that fails.
func AbsPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
