// Package volume assembles a kmsfs volume from its cipher dir, the library
// a Go program imports to use one without the CLI: Open reads kmsfs.conf
// and checks it against this host's trust anchor, opens the key sources
// the anchor approved, builds the data-key manager, and (read-write)
// opens the write journal and recovers what a crash interrupted. Init
// makes a new volume and approves it on this host.
//
// Key sources are opened from the trust anchor, never from the cipher dir:
// a PKCS#11 module, a PIN source and a key file's path are host settings,
// and an AWS key is opened by the ARN pinned at approval, not by an alias.
//
// The package does not log; what a caller should report (a moved alias, a
// weak passphrase KDF, journal recovery) comes back in Volume.Warnings and
// Volume.Recovery.
package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/journal"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/local"
)

// ConfName is the volume configuration file at the root of a cipher dir.
const ConfName = volconf.Name

// JournalName is the write journal's directory at the root of a cipher
// dir.
const JournalName = volconf.JournalName

// ErrAliasMoved means an AWS alias of the volume points at another key
// than the one this host approved.
var ErrAliasMoved = errors.New("the alias moved")

// ErrBusy means another process has the volume open read-write.
var ErrBusy = errors.New("volume: the cipher dir is open read-write in another kmsfs process")

// Secrets say where the secrets of a volume's keys come from: never the
// command line.
type Secrets struct {
	// PassphraseFile names a file holding the passphrase of a
	// local:passphrase key.
	PassphraseFile string
	// Passphrase is the passphrase itself, for example handed over by a
	// parent process. Open copies it; the caller clears its own.
	Passphrase []byte
	// Prompt asks for the passphrase when nothing else gives it; confirm
	// asks twice (a new passphrase at Init).
	Prompt func(confirm bool) ([]byte, error)
	// LookupEnv reads KMSFS_PASSPHRASE, the PKCS#11 PIN and the variables
	// a PIN source names; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

// Options say how Open assembles a volume.
type Options struct {
	// TrustDir is the host's trust dir; "" means volconf.DefaultTrustDir
	// (KMSFS_TRUST_DIR, /etc/kmsfs/trust for root, else
	// ~/.config/kmsfs/trust).
	TrustDir string
	// ReadOnly opens no journal and defers the data-key pool: nothing is
	// written to the cipher dir.
	ReadOnly bool
	// CheckKeys proves, before Open returns, that the primary key wraps
	// and unwraps a test key (wraps only, with PublicKeyFile) and that the
	// data-key manager got its first key. Read-only volumes skip it.
	CheckKeys bool
	// PublicKeyFile makes an AWS RSA key wrap-only with this public key
	// (DER): files written cannot be read here.
	PublicKeyFile string
	// Secrets say where passphrases and PINs come from.
	Secrets Secrets
	// Mem holds key material in locked memory; nil keeps it on the heap.
	Mem *secmem.Arena
	// ParallelMin is envelope.Options.ParallelMin.
	ParallelMin int
	// NameKeyMayFail lets Open go on when the name key file of a volume
	// with encrypted names is refused (ErrNameKey): the volume then has no
	// name key, NameKeyErr says why, and no name can be read. Only fsck
	// sets it, to check every file by its cipher path and report the name
	// key file; a mount must refuse such a volume.
	NameKeyMayFail bool
	// KeyObserver is the data-key manager's keysource.Options.Observer
	// (metrics); nil observes nothing.
	KeyObserver keysource.Observer
}

// Warning is something Open noticed that does not stop the volume: the
// caller reports it.
type Warning struct {
	// Msg says what happened and what to do.
	Msg string
	// Fields name what it concerns (key, alias, kdf, error).
	Fields map[string]any
}

// Recovery reports what opening the journal found.
type Recovery struct {
	// Pending counts the journal's records of interrupted writes.
	Pending int
	// Recovered counts the files finished or undone at Open; the others
	// are recovered when they are next opened.
	Recovered int
	// Err is the first error of recovery, if any.
	Err error
	// Dropped lists the entries the journal removed as not its own;
	// nothing was read from them.
	Dropped []error
}

// Volume is an opened volume: what a mount or a command needs.
type Volume struct {
	// Dir is the cipher dir.
	Dir string
	// Anchor is this host's approval of the volume; its Conf is the
	// configuration in force (kmsfs.conf matched it).
	Anchor *volconf.Anchor
	// Sources are the opened key sources, one per key of Conf, primary
	// first; nil for a retiring key that did not open.
	Sources []keysource.KeySource
	// Keys wraps new data keys and unwraps those of existing files.
	Keys *keysource.Manager
	// Format is the envelope volume: layout, volume ID, journal.
	Format *envelope.Volume
	// Journal is the write journal; nil when ReadOnly.
	Journal *journal.Journal
	// Recovery is what the journal held when it was opened.
	Recovery Recovery
	// Warnings are things the caller should report.
	Warnings []Warning

	keys     *keySet
	wrapOnly bool // opened with a public key file: Decrypt refuses
	opts     Options
	encNames bool   // kmsfs.conf has the encrypted-names feature
	nameKey  []byte // the name key in opts.Mem; nil for plaintext names or wrapOnly
	// nameKeyErr is why the name key file was refused, with
	// Options.NameKeyMayFail.
	nameKeyErr error

	mu      sync.Mutex // guards Anchor, Sources, keys and rw after Reload
	rw      *rewrapper
	oldKeys []*keySet // key sets Reload replaced
}

// Conf returns the configuration in force: the approved one.
func (v *Volume) Conf() *volconf.Conf {
	v.mu.Lock()
	defer v.mu.Unlock()
	return &v.Anchor.Conf
}

// Open assembles the volume in cipherDir (see the package doc).
func Open(ctx context.Context, cipherDir string, o Options) (_ *Volume, err error) {
	a, err := LoadTrusted(cipherDir, o.TrustDir)
	if err != nil {
		return nil, err
	}
	conf := &a.Conf
	vid, err := conf.ID()
	if err != nil {
		return nil, err
	}
	layout, err := conf.Layout()
	if err != nil {
		return nil, err
	}
	policy, err := conf.Policy()
	if err != nil {
		return nil, err
	}
	v := &Volume{Dir: cipherDir, Anchor: a, Warnings: weakKDFWarnings(conf), wrapOnly: o.PublicKeyFile != "", opts: o}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	opened := make([]keysource.KeySource, len(conf.Keys))
	if o.PublicKeyFile == "" {
		var ws []Warning
		opened, ws, err = checkAliases(ctx, a, cipherDir)
		v.Warnings = append(v.Warnings, ws...)
		if err != nil {
			return nil, err
		}
	}
	if o.PublicKeyFile != "" && strings.HasPrefix(conf.Keys[0].Spec, "awskms:") && conf.Keys[0].PublicKeySHA256 == "" {
		v.Warnings = append(v.Warnings, Warning{Fields: map[string]any{"key": conf.Keys[0].KeyID, "public_key_file": o.PublicKeyFile},
			Msg: "kmsfs.conf records no fingerprint of the key's public key (a volume made by an older kmsfs): the public key file is used as given; if it is not the key's, files written cannot be read"})
	}
	v.keys, err = openAnchor(ctx, a, o, opened)
	if err != nil {
		return nil, err
	}
	v.Sources = v.keys.list
	v.Warnings = append(v.Warnings, v.keys.warnings...)
	mo := v.keys.managerOptions(conf)
	mo.Policy, mo.DeferPool, mo.Mem, mo.Observer = policy, o.ReadOnly, o.Mem, o.KeyObserver
	v.Keys, err = keysource.NewManager(mo)
	if err != nil {
		return nil, err
	}
	if o.CheckKeys && !o.ReadOnly {
		if err := CheckRoundTrip(ctx, v.Sources[0], o.PublicKeyFile != ""); err != nil {
			return nil, fmt.Errorf("key not usable: %w", err)
		}
		if err := v.Keys.WaitReady(ctx); err != nil {
			return nil, fmt.Errorf("key not usable: %w", err)
		}
	}
	var jr envelope.Journal // an untyped nil for a read-only volume
	if !o.ReadOnly {
		if v.Journal, err = v.openJournal(layout); err != nil {
			return nil, err
		}
		jr = v.Journal
	}
	v.Format, err = envelope.NewVolume(envelope.Options{Layout: layout, Volume: vid, Journal: jr, ParallelMin: o.ParallelMin, Mem: o.Mem})
	if err != nil {
		return nil, err
	}
	v.encNames = conf.EncryptedNames()
	// A public key cannot unwrap the name key: such a volume encrypts
	// files, and whoever needs names learns it from EncryptedNames.
	if v.encNames && !v.wrapOnly {
		err := v.loadNameKey(ctx, conf)
		if o.NameKeyMayFail && errors.Is(err, ErrNameKey) {
			v.nameKeyErr, err = err, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return v, nil
}

// openJournal opens the journal and recovers what it can now. Its entries
// are opened relative to the cipher dir's descriptor, never through a path
// a planted symlink could divert.
func (v *Volume) openJournal(layout envelope.Layout) (*journal.Journal, error) {
	root, err := os.OpenRoot(v.Dir)
	if err != nil {
		return nil, fmt.Errorf("volume: open cipher dir: %w", err)
	}
	defer root.Close()
	j, err := journal.Open(root, JournalName, 0)
	if errors.Is(err, journal.ErrBusy) {
		return nil, fmt.Errorf("%w: %s", ErrBusy, v.Dir)
	}
	if err != nil {
		return nil, err
	}
	v.Recovery = Recovery{Pending: j.Pending(), Dropped: j.Dropped()}
	if v.Recovery.Pending > 0 {
		v.Recovery.Recovered, v.Recovery.Err = j.RecoverFiles(root, layout)
	}
	return j, nil
}

// Close closes the journal, the manager and the key sources. The volume's
// files must be closed first.
func (v *Volume) Close() error {
	var errs []error
	if v.Journal != nil {
		errs = append(errs, v.Journal.Close())
		v.Journal = nil
	}
	if v.Keys != nil {
		v.Keys.Close()
		v.Keys = nil
	}
	if v.keys != nil {
		v.keys.Close()
		v.keys = nil
	}
	for _, ks := range v.oldKeys {
		ks.Close()
	}
	v.oldKeys = nil
	v.opts.Mem.Free(v.nameKey)
	v.nameKey = nil
	return errors.Join(errs...)
}

// weakKDFWarnings warns of every passphrase key whose KDF parameters pass
// the floor but cost less than what new volumes get.
func weakKDFWarnings(c *volconf.Conf) []Warning {
	var ws []Warning
	for i, k := range c.Keys {
		if k.KDF != nil && k.KDF.BelowDefault() {
			ws = append(ws, Warning{
				Msg: fmt.Sprintf("passphrase KDF is below the current default (scrypt N=2^%d, r=%d); re-create the volume to raise it",
					local.DefaultScryptLogN, local.DefaultScryptR),
				Fields: map[string]any{"key": i + 1, "kdf": k.KDF.String()},
			})
		}
	}
	return ws
}
