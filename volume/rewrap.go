package volume

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/safeopen"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
)

// DefaultRewrapConcurrency bounds the files a rewrap works on at once,
// hence its key-service calls in flight.
const DefaultRewrapConcurrency = 16

// RewrapOptions say how a rewrap changes a volume's keys. At most one of
// To, Add and Remove is set; with none, a rewrap finishes an interrupted
// one and brings every file in line with kmsfs.conf.
type RewrapOptions struct {
	// To is the key spec that takes the place of the key From names
	// (the primary if From is ""): new files use it, and every file's
	// stanza of the replaced key is replaced by one of To.
	To string
	// From names the key To replaces: its key ID, its spec, or for a
	// local key file its path.
	From string
	// Add is a key spec added as an escrow key: every file gains a
	// stanza of it.
	Add string
	// Remove names a key (as From does) that leaves the volume; files
	// that only it opened are rewrapped to the remaining keys.
	Remove string
	// TrustDir is the host's trust dir; "" means the default.
	TrustDir string
	// Secrets say where passphrases and PINs come from.
	Secrets Secrets
	// Concurrency bounds the files rewrapped at once; 0 means
	// DefaultRewrapConcurrency.
	Concurrency int
	// Reload lists the mount points of read-only mounts of the volume,
	// asked to reload their keys whenever kmsfs.conf changes, so they
	// read the files rewrapped.
	Reload []string
	// Progress, if set, is called after each file with the files done
	// and the files to do (both counting only files that need work).
	Progress func(done, total int64)
}

// RewrapPlan is the change of keys PrepareRewrap approved and wrote.
type RewrapPlan struct {
	// Anchor is the approval in force now: kmsfs.conf matches its Conf.
	Anchor *volconf.Anchor
	// Changes lists how kmsfs.conf changed (volconf.Diff), empty if the
	// keys stayed as they were.
	Changes []string
}

// RewrapFailure is a file a rewrap could not rewrap.
type RewrapFailure struct {
	// Path is relative to the cipher dir.
	Path string `json:"path"`
	// PlainPath is the file's path as a mount shows it, on a volume with
	// encrypted names: found through the mount, or decrypted with the
	// name key; empty for kmsfs's own files and when NameError says why
	// there is none.
	PlainPath string `json:"plain_path,omitempty"`
	// NameError says why a file of a volume with encrypted names has no
	// plain path (see FsckFile.NameError).
	NameError string `json:"name_error,omitempty"`
	// Error says why it was not rewrapped.
	Error string `json:"error"`
}

// RewrapReport is what a rewrap did.
type RewrapReport struct {
	Dir string `json:"cipher_dir"`
	// Keys are the volume's key IDs after the rewrap, primary first.
	Keys []string `json:"keys"`
	// Retiring are keys still in kmsfs.conf only because some file has
	// not been rewrapped away from them (a rerun finishes the job).
	Retiring []string `json:"retiring,omitempty"`
	// Retired are the keys this run took out of kmsfs.conf.
	Retired []string `json:"retired,omitempty"`
	// Changes lists how kmsfs.conf changed at the start.
	Changes []string `json:"changes,omitempty"`
	// Files counts the regular files of the volume; Rewrapped those
	// rewrapped now, Current those already in line, Empty those without
	// a header, Foreign those that are not files of this volume (left as
	// they are).
	Files     int64 `json:"files"`
	Rewrapped int64 `json:"rewrapped"`
	Current   int64 `json:"current"`
	Empty     int64 `json:"empty"`
	Foreign   int64 `json:"foreign"`
	// DataKeys counts the distinct data keys rewrapped: the key-service
	// work grows with these, not with the files.
	DataKeys int `json:"distinct_data_keys"`
	// Warnings are things the caller should report.
	Warnings []string `json:"warnings,omitempty"`
	// FailedFiles counts the files that could not be rewrapped; Failed
	// lists the first of them.
	FailedFiles int64           `json:"failed_files"`
	Failed      []RewrapFailure `json:"failed,omitempty"`
}

// Done reports whether every file is in line with kmsfs.conf and no key is
// retiring.
func (r *RewrapReport) Done() bool { return r.FailedFiles == 0 && len(r.Retiring) == 0 }

// record notes the outcome err of rewrapping rel, whose plain path is
// plain if known, counts it in *done and reports progress against total.
func (r *RewrapReport) record(rel, plain string, err error, done *int64, total int64, progress func(done, total int64)) {
	if err != nil {
		r.fail(rel, plain, err.Error())
	} else {
		r.Rewrapped++
	}
	*done++
	if progress != nil {
		progress(*done, total)
	}
}

// fail notes that the file rel, whose plain path is plain if known,
// could not be rewrapped.
func (r *RewrapReport) fail(rel, plain, msg string) {
	r.FailedFiles++
	if len(r.Failed) < maxListed {
		r.Failed = append(r.Failed, RewrapFailure{Path: rel, PlainPath: plain, Error: msg})
	}
}

// annotate gives each failure listed whose plain path is not known yet
// its plain path, or the reason it has none, from pp.
func (r *RewrapReport) annotate(pp *plainPaths) {
	for i, f := range r.Failed {
		if f.PlainPath == "" && f.NameError == "" {
			r.Failed[i].PlainPath, r.Failed[i].NameError = pp.annotate(f.Path)
		}
	}
}

// Rewrap changes the keys of the volume in dir as o says and rewraps
// every file to them, rewriting headers only, never content: it approves
// and writes the new kmsfs.conf (PrepareRewrap), opens the volume
// read-write (ErrBusy if a mount has it: ask the mount instead), rewraps
// every file that needs it, and, when no file depends on a retiring key
// any more, takes those keys out of kmsfs.conf (FinishRewrap). A stop at
// any moment leaves every file readable under its old or its new keys;
// running Rewrap again finishes the job.
func Rewrap(ctx context.Context, dir string, o RewrapOptions) (*RewrapReport, error) {
	plan, err := PrepareRewrap(ctx, dir, o)
	if err != nil {
		return nil, err
	}
	// Read-only mounts reload even when this run changed nothing: after
	// an interrupted run they may not know the keys files now use.
	early := &RewrapReport{}
	early.reloadMounts(o.Reload)
	v, err := Open(ctx, dir, Options{TrustDir: o.TrustDir, Secrets: o.Secrets})
	if err != nil {
		return nil, err
	}
	r, err := v.RewrapFiles(ctx, o)
	// The name codec outlives the volume: it holds keys of its own.
	pp := v.plainPaths()
	if cerr := v.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	r.Changes, r.Warnings = plan.Changes, early.Warnings
	// Even after failures: files no key of the volume opens must not
	// keep a retiring key that none of them uses.
	err = FinishRewrap(ctx, dir, o.TrustDir, r)
	r.annotate(pp)
	if err != nil {
		return r, err
	}
	if len(r.Retired) > 0 {
		r.reloadMounts(o.Reload)
	}
	return r, nil
}

// PrepareRewrap approves and writes the kmsfs.conf that o asks for: the
// new key takes its place (opened and proved to wrap and unwrap first),
// and a key that leaves stays as a retiring key, which only unwraps,
// until no file depends on it. The host's trust anchor approves the new
// configuration before kmsfs.conf changes and adopts it after, so a stop
// at any moment leaves a volume this host opens.
func PrepareRewrap(ctx context.Context, dir string, o RewrapOptions) (*RewrapPlan, error) {
	n := 0
	for _, s := range []string{o.To, o.Add, o.Remove} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("volume: rewrap: give one of --to, --add and --remove")
	}
	if o.From != "" && o.To == "" {
		return nil, errors.New("volume: rewrap: --from names the key --to replaces: give --to")
	}
	a, err := LoadTrusted(dir, o.TrustDir)
	if err != nil {
		return nil, err
	}
	store, err := OpenStore(o.TrustDir)
	if err != nil {
		return nil, err
	}
	if err := store.Check(); err != nil {
		return nil, err
	}
	vid, err := a.Conf.ID()
	if err != nil {
		return nil, err
	}
	ks := &keySet{}
	defer ks.Close()
	ch := &keyChange{conf: a.Conf, host: slices.Clone(a.Host), vid: vid}
	ch.conf.Keys = slices.Clone(a.Conf.Keys)
	newKey := func(spec string, primary bool) (int, error) {
		if spec == "local:passphrase" && slices.ContainsFunc(ch.conf.Keys, func(k volconf.Key) bool { return k.Spec == spec }) {
			return 0, errors.New("volume: rewrap: the volume has a passphrase key already; a volume holds one")
		}
		st, k, h, err := ks.initKey(ctx, spec, primary, vid, o.Secrets)
		if err != nil {
			return 0, fmt.Errorf("key %s: %w", RedactSpec(spec), err)
		}
		ch.samples = append(ch.samples, st)
		ch.newIDs = append(ch.newIDs, k.KeyID)
		return ch.put(k, h), nil
	}
	switch {
	case o.To != "":
		err = ch.replace(o.From, func() (int, error) { return newKey(o.To, true) })
	case o.Add != "":
		err = ch.add(func() (int, error) { return newKey(o.Add, false) })
	case o.Remove != "":
		err = ch.remove(o.Remove)
	}
	if err != nil {
		return nil, err
	}
	if err := ch.checkFit(ctx, ks, a); err != nil {
		return nil, err
	}
	plan := &RewrapPlan{Anchor: &volconf.Anchor{Version: a.Version, CipherDir: a.CipherDir, Conf: ch.conf, Host: ch.host}}
	plan.Changes = volconf.Diff(&a.Conf, &ch.conf)
	if len(plan.Changes) == 0 {
		// Nothing changes; an approval LoadTrusted took from the anchor's
		// Next (a stop after kmsfs.conf was written) is adopted now.
		return plan, adopt(store, a)
	}
	if err := approveAndWrite(store, dir, a, plan.Anchor); err != nil {
		return nil, err
	}
	return plan, nil
}

// adopt saves a as the anchor of its volume unless the stored one is
// already a (without a Next).
func adopt(store *volconf.Store, a *volconf.Anchor) error {
	cur, err := store.Load(a.Conf.VolumeID)
	if err != nil {
		return err
	}
	if cur.Next == nil && len(volconf.Diff(&cur.Conf, &a.Conf)) == 0 {
		return nil
	}
	return store.Save(a)
}

// approveAndWrite moves the volume in dir from the approval cur to next:
// the anchor approves next beside cur, kmsfs.conf becomes next.Conf, and
// the anchor keeps next alone. At every stop kmsfs.conf matches an
// approval.
func approveAndWrite(store *volconf.Store, dir string, cur, next *volconf.Anchor) error {
	both := *cur
	both.Next = &volconf.Approval{Conf: next.Conf, Host: next.Host}
	if err := store.Save(&both); err != nil {
		return err
	}
	if err := volconf.Save(dir, &next.Conf); err != nil {
		return err
	}
	return store.Save(next)
}

// keyChange is a volume's key list being changed by a rewrap.
type keyChange struct {
	conf    volconf.Conf
	host    []volconf.HostKey
	vid     envelope.VolumeID
	samples []keysource.Stanza // stanzas of the new keys
	newIDs  []string           // key IDs of the new keys
}

// find returns the index of the key name names among the active keys
// (retiring: among the retiring ones), or -1: name is a key ID, a spec
// as given to init, or "local:PATH" of a key file.
func (c *keyChange) find(name string, retiring bool) int {
	id := name
	if volconf.IsKeyFile(name) && name != volconf.KeyFileSpec {
		if fid, err := KeyFileID(strings.TrimPrefix(name, "local:"), c.vid); err == nil {
			id = fid
		}
	}
	spec := volconf.StorageSpec(name)
	for i, k := range c.conf.Keys {
		if k.Retiring != retiring {
			continue
		}
		if sameKey(k.KeyID, id) || sameKey("awskms:"+k.KeyID, id) || (k.Spec == spec && spec != volconf.KeyFileSpec) {
			return i
		}
	}
	return -1
}

// put adds key k with host settings h: an active key already there (by
// key ID) is updated in place, a retiring one comes back as an escrow
// key, a new one is appended as an escrow key. It returns k's index.
func (c *keyChange) put(k volconf.Key, h volconf.HostKey) int {
	for i, e := range c.conf.Keys {
		if !sameKey(e.KeyID, k.KeyID) {
			continue
		}
		if !e.Retiring {
			c.conf.Keys[i], c.host[i] = k, h
			return i
		}
		c.conf.Keys = slices.Delete(c.conf.Keys, i, i+1)
		c.host = slices.Delete(c.host, i, i+1)
		break
	}
	n := c.conf.ActiveCount()
	c.conf.Keys = slices.Insert(c.conf.Keys, n, k)
	c.host = slices.Insert(c.host, n, h)
	return n
}

// retire marks active key i retiring and moves it behind the active keys.
// An AWS key is then named by its ARN: the alias may have moved on (the
// usual rotation), and a retiring key is the one the files were wrapped
// with.
func (c *keyChange) retire(i int) {
	k, h := c.conf.Keys[i], c.host[i]
	c.conf.Keys = slices.Delete(c.conf.Keys, i, i+1)
	c.host = slices.Delete(c.host, i, i+1)
	k.Retiring = true
	if volconf.IsAWSAlias(k.Spec) {
		k.Spec, h.AliasKey = awskms.Type+":"+k.KeyID, ""
	}
	c.conf.Keys = append(c.conf.Keys, k)
	c.host = append(c.host, h)
}

// replace puts the key open returns in place of the key from names (the
// primary if "").
func (c *keyChange) replace(from string, open func() (int, error)) error {
	i := 0
	if from != "" {
		if i = c.find(from, false); i < 0 {
			return fmt.Errorf("volume: rewrap: --from %s is not one of the volume's keys (%s)", from, c.activeIDs())
		}
	}
	old := c.conf.Keys[i].KeyID
	j, err := open()
	if err != nil {
		return err
	}
	if sameKey(c.conf.Keys[j].KeyID, old) {
		return nil // the same key: nothing moves, files are brought in line
	}
	// open leaves the old key at i: put only adds behind the active keys
	// or updates in place. A new key, or one behind the old, takes the
	// old one's place; an active key ahead of it (the primary replacing
	// an escrow key) keeps its own. Then the old one retires.
	if j > i {
		k, h := c.conf.Keys[j], c.host[j]
		c.conf.Keys = slices.Insert(slices.Delete(c.conf.Keys, j, j+1), i, k)
		c.host = slices.Insert(slices.Delete(c.host, j, j+1), i, h)
		i++
	}
	c.retire(i)
	return nil
}

// add adds the key open returns as an escrow key.
func (c *keyChange) add(open func() (int, error)) error {
	before := c.conf.ActiveCount()
	j, err := open()
	if err != nil {
		return err
	}
	if c.conf.ActiveCount() == before {
		return fmt.Errorf("volume: rewrap: %s is a key of this volume already (key %d)", c.conf.Keys[j].KeyID, j+1)
	}
	return nil
}

// remove retires the active key name names.
func (c *keyChange) remove(name string) error {
	i := c.find(name, false)
	if i < 0 {
		if c.find(name, true) >= 0 {
			return nil // retiring already: the run finishes the job
		}
		return fmt.Errorf("volume: rewrap: --remove %s is not one of the volume's keys (%s)", name, c.activeIDs())
	}
	if c.conf.ActiveCount() == 1 {
		return fmt.Errorf("volume: rewrap: %s is the volume's only key: removing it would leave files with no stanza; rewrap --to another key instead", c.conf.Keys[i].KeyID)
	}
	c.retire(i)
	return nil
}

func (c *keyChange) activeIDs() string { return strings.Join(keyIDs(c.conf.Active()), ", ") }

// checkFit refuses a key list whose stanzas do not fit the volume's
// header slots, which are fixed when the volume is made. Keys that were
// there before are measured by wrapping a test key (one call each).
func (c *keyChange) checkFit(ctx context.Context, ks *keySet, a *volconf.Anchor) error {
	if len(c.samples) == 0 {
		return nil
	}
	layout, err := c.conf.Layout()
	if err != nil {
		return err
	}
	stanzas := slices.Clone(c.samples)
	for i, k := range c.conf.Active() {
		if slices.Contains(c.newIDs, k.KeyID) {
			continue
		}
		src, err := ks.openApproved(ctx, k, c.host[i], c.vid, Options{})
		if err != nil {
			return fmt.Errorf("key %d (%s): %w", i+1, k.KeyID, err)
		}
		dk := make([]byte, keysource.DataKeySize)
		st, err := src.Wrap(ctx, dk)
		if err != nil {
			return fmt.Errorf("key %d (%s): wrapping a test key: %w", i+1, k.KeyID, err)
		}
		stanzas = append(stanzas, st)
	}
	h := envelope.Header{Version: c.conf.FormatVersion, Stanzas: stanzas}
	if !h.FitsIn(layout) {
		return fmt.Errorf("volume: rewrap: the stanzas of %d keys do not fit this volume's %d-byte header slots (fixed when it was made); use fewer or smaller keys",
			len(stanzas), layout.SlotSize())
	}
	return nil
}

// FinishRewrap takes the retiring keys out of kmsfs.conf of the volume in
// dir once no file has a stanza of one (it checks both header slots of
// every file), so they are no longer needed to open it; the trust anchor
// in trustDir follows as in PrepareRewrap. r, if not nil, gets the keys
// retired, or those still retiring with the files that hold them counted
// as failures (unless r has failures already: those are the files).
func FinishRewrap(ctx context.Context, dir, trustDir string, r *RewrapReport) error {
	a, err := LoadTrusted(dir, trustDir)
	if err != nil {
		return err
	}
	if r == nil {
		r = &RewrapReport{}
	}
	n := a.Conf.ActiveCount()
	r.Keys, r.Retiring = keyIDs(a.Conf.Keys[:n]), keyIDs(a.Conf.Keys[n:])
	store, err := OpenStore(trustDir)
	if err != nil {
		return err
	}
	if n == len(a.Conf.Keys) {
		return adopt(store, a)
	}
	sc, err := ScanRewrap(ctx, dir, &a.Conf)
	if err != nil {
		return err
	}
	left := false
	for _, p := range sc.Need {
		if why, ok := sc.holds[p]; ok {
			if r.FailedFiles == 0 { // else these are the files that failed
				r.fail(p, "", why)
			}
			left = true
		}
	}
	if left {
		return nil
	}
	next := &volconf.Anchor{Version: a.Version, CipherDir: a.CipherDir, Conf: a.Conf, Host: a.Host[:n]}
	next.Conf.Keys = a.Conf.Keys[:n]
	if err := approveAndWrite(store, dir, a, next); err != nil {
		return err
	}
	r.Retired, r.Retiring = r.Retiring, nil
	return nil
}

func keyIDs(keys []volconf.Key) []string {
	var ids []string
	for _, k := range keys {
		ids = append(ids, k.KeyID)
	}
	return ids
}

// RewrapScan is what ScanRewrap found: the files to rewrap and the count
// of the others.
type RewrapScan struct {
	// Need lists, relative to the cipher dir, the files whose headers
	// are not in line with the configuration: a stanza of a retiring key,
	// no stanza of an active key, or a header slot that does not parse.
	Need                  []string
	Files, Empty, Foreign int64
	// holds names the files of Need that keep the retiring keys in
	// kmsfs.conf, with the reason: a stanza of one, or a file that could
	// not be read, which may have one.
	holds map[string]string
	// ino holds the inode number of each file of Need that opened: a
	// mount with encrypted names shows it under another name.
	ino map[string]uint64
}

// ScanRewrap reads the headers of every file in the cipher dir dir (no key
// needed) and lists the files a rewrap to configuration c must rewrite.
func ScanRewrap(ctx context.Context, dir string, c *volconf.Conf) (*RewrapScan, error) {
	layout, err := c.Layout()
	if err != nil {
		return nil, err
	}
	vid, err := c.ID()
	if err != nil {
		return nil, err
	}
	n := c.ActiveCount()
	// With encrypted names the side files of long names and targets hold
	// sealed names, not a file's content: not files to rewrap.
	encNames := c.EncryptedNames()
	s := &RewrapScan{holds: map[string]string{}, ino: map[string]uint64{}}
	// A file that is there but cannot be read (its mode, an I/O error)
	// may depend on a retiring key: it must keep it in kmsfs.conf, not
	// pass for a file of another volume.
	unread := func(rel string, err error) {
		s.Need = append(s.Need, rel)
		s.holds[rel] = "cannot be read, so may still have a stanza of a retiring key: " + err.Error()
	}
	buf := make([]byte, layout.HeaderSize())
	err = cipherWalk{
		visit: func(e cipherEntry) (bool, error) {
			switch {
			case e.rel == JournalName:
				return false, nil
			case e.typ.IsDir():
				return true, nil
			case !e.volumeFile(encNames):
				return false, nil
			}
			s.Files++
			f, size, err := e.open(0, unix.S_IFREG)
			var wrong *safeopen.WrongType
			switch {
			case errors.Is(err, unix.ENOENT) || errors.As(err, &wrong):
				s.Foreign++ // gone, or no longer a file, since the listing
				return false, nil
			case err != nil:
				unread(e.rel, err)
				return false, nil
			}
			defer f.Close()
			if size == 0 {
				s.Empty++
				return false, nil
			}
			if size < layout.HeaderSize() {
				s.Foreign++
				return false, nil
			}
			if _, err := f.ReadAt(buf, 0); err != nil {
				unread(e.rel, err)
				return false, nil
			}
			need, retiring, ok := headerNeeds(layout, vid, buf, c.Keys[:n], c.Keys[n:])
			switch {
			case !ok:
				s.Foreign++
			case need:
				s.Need = append(s.Need, e.rel)
				var st unix.Stat_t
				if unix.Fstat(int(f.Fd()), &st) == nil {
					s.ino[e.rel] = st.Ino
				}
				if retiring {
					s.holds[e.rel] = "still has a stanza of a retiring key"
				}
			}
			return false, nil
		},
		dirErr: func(rel string, err error) error {
			return fmt.Errorf("volume: rewrap %s: %s: %w", dir, rel, err)
		},
	}.run(ctx, dir)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// headerNeeds reads the two header slots in raw: need says the file must
// be rewrapped (a slot that does not parse while the other does, a
// stanza of a retiring key, or no stanza of an active key), retiring that
// a slot holds a retiring key's stanza, ok that a slot parses and names
// this volume. The MACs are not checked here: the rewrap itself opens
// the file under its key.
func headerNeeds(l envelope.Layout, vid envelope.VolumeID, raw []byte, active, retiring []volconf.Key) (need, hasRetiring, ok bool) {
	ss := l.SlotSize()
	bad := 0
	for i := range 2 {
		h, err := envelope.ParseHeaderSlot(l, raw[i*ss:(i+1)*ss])
		if err != nil || h.Volume != vid {
			bad++
			continue
		}
		ok = true
		for _, k := range active {
			if !slices.ContainsFunc(h.Stanzas, func(s keysource.Stanza) bool { return sameKey(s.KeyID, k.KeyID) }) {
				need = true
			}
		}
		for _, s := range h.Stanzas {
			if slices.ContainsFunc(retiring, func(k volconf.Key) bool { return sameKey(s.KeyID, k.KeyID) }) {
				need, hasRetiring = true, true
			}
		}
	}
	return need || (ok && bad > 0), hasRetiring, ok
}

// rewrapper computes the new stanzas of the files of a rewrap, once per
// distinct set of stanzas: files that share a data key share its new
// stanzas too, so the key service is asked once per data key, not once
// per file.
type rewrapper struct {
	conf     *volconf.Conf
	sources  []keysource.KeySource // per key of conf; nil for a retiring key that did not open
	mu       sync.Mutex
	computed map[[sha256.Size]byte]*rewrapEntry
}

type rewrapEntry struct {
	ready   chan struct{}
	stanzas []keysource.Stanza
	err     error
}

func newRewrapper(c *volconf.Conf, sources []keysource.KeySource) *rewrapper {
	return &rewrapper{conf: c, sources: sources, computed: map[[sha256.Size]byte]*rewrapEntry{}}
}

// distinct returns the number of distinct stanza sets seen.
func (r *rewrapper) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.computed)
}

// stanzasDigest identifies a list of stanzas.
func stanzasDigest(ss []keysource.Stanza) [sha256.Size]byte {
	h := sha256.New()
	var n [4]byte
	for _, s := range ss {
		for _, b := range [][]byte{[]byte(s.Type), []byte(s.KeyID), s.Body} {
			binary.BigEndian.PutUint32(n[:], uint32(len(b)))
			h.Write(n[:])
			h.Write(b)
		}
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// target returns the stanzas a file whose header holds old, wrapping data
// key dk, gets: one per active key, primary first (kept if the file has
// it, made otherwise), then the stanzas of keys the volume does not know
// (kept: they are not the volume's to drop). Retiring keys' stanzas go.
func (r *rewrapper) target(ctx context.Context, old []keysource.Stanza, dk []byte) ([]keysource.Stanza, error) {
	d := stanzasDigest(old)
	r.mu.Lock()
	e := r.computed[d]
	if e == nil {
		e = &rewrapEntry{ready: make(chan struct{})}
		r.computed[d] = e
		r.mu.Unlock()
		e.stanzas, e.err = r.compute(ctx, old, dk)
		if e.err != nil {
			// A failure may pass (a key service throttling, a request's
			// deadline): the files waiting get it, the next one tries
			// again rather than failing on this one's account.
			r.mu.Lock()
			delete(r.computed, d)
			r.mu.Unlock()
		}
		close(e.ready)
	} else {
		r.mu.Unlock()
		select {
		case <-e.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return e.stanzas, e.err
}

func (r *rewrapper) compute(ctx context.Context, old []keysource.Stanza, dk []byte) ([]keysource.Stanza, error) {
	n := r.conf.ActiveCount()
	known := func(id string) bool {
		return slices.ContainsFunc(r.conf.Keys, func(k volconf.Key) bool { return sameKey(k.KeyID, id) })
	}
	var out []keysource.Stanza
	for i, k := range r.conf.Keys[:n] {
		if j := slices.IndexFunc(old, func(s keysource.Stanza) bool { return sameKey(s.KeyID, k.KeyID) }); j >= 0 {
			out = append(out, old[j])
			continue
		}
		st, err := r.newStanza(ctx, old, dk, r.sources[i])
		if err != nil {
			return nil, fmt.Errorf("key %d (%s): %w", i+1, k.KeyID, err)
		}
		out = append(out, st)
	}
	for _, s := range old {
		if !known(s.KeyID) {
			out = append(out, s)
		}
	}
	return out, nil
}

// newStanza wraps dk for to: between two AWS KMS keys by ReEncrypt of an
// old stanza (the key service moves the data key itself, and the new
// key's policy needs kms:ReEncryptTo, not kms:Encrypt), otherwise by Wrap.
func (r *rewrapper) newStanza(ctx context.Context, old []keysource.Stanza, dk []byte, to keysource.KeySource) (keysource.Stanza, error) {
	if to.Type() == awskms.Type {
		for _, s := range old {
			from := r.sourceOf(s)
			re, ok := from.(keysource.ReEncrypter)
			if !ok {
				continue
			}
			st, err := re.ReEncrypt(ctx, s, to)
			if err == nil {
				return st, nil
			}
			if !errors.Is(err, keysource.ErrNotMine) && !errors.Is(err, keysource.ErrDenied) {
				return st, err
			}
		}
	}
	return to.Wrap(ctx, dk)
}

// sourceOf returns the opened source of stanza s's key, or nil.
func (r *rewrapper) sourceOf(s keysource.Stanza) keysource.KeySource {
	for i, k := range r.conf.Keys {
		if r.sources[i] != nil && r.sources[i].Type() == s.Type && sameKey(k.KeyID, s.KeyID) {
			return r.sources[i]
		}
	}
	return nil
}
