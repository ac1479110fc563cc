package volume

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/aws/smithy-go"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
	"github.com/kmsfs/kmsfs/keysource/awskms"
	"github.com/kmsfs/kmsfs/keysource/pkcs11"
)

// Key states of a status report. Every source's own word (AWS KeyState,
// a token's answer) is mapped onto these.
const (
	StateEnabled         = "enabled"
	StateDisabled        = "disabled"
	StatePendingDeletion = "pending-deletion"
	StateMissing         = "missing"
	StateRestricted      = "restricted"
	StateUnavailable     = "unavailable"
	// StateNotChecked is a passphrase key: checking it needs the
	// passphrase, which a status report never asks for.
	StateNotChecked = "not-checked"
	// StateNotConfigured is a key that file headers name but the
	// volume's configuration does not: this volume cannot open it.
	StateNotConfigured = "not-in-configuration"
)

// maxListed bounds the file names a report lists per kind; the counts
// stay exact.
const maxListed = 100

// KeyStatus is one key a volume or its files depend on.
type KeyStatus struct {
	// KeyID is the key ID as stanzas write it.
	KeyID string `json:"key_id"`
	// Type is the stanza type (awskms, pkcs11, local).
	Type string `json:"type"`
	// Spec is the key's spec in kmsfs.conf, "" if not configured.
	Spec string `json:"spec,omitempty"`
	// State is one of the State constants.
	State string `json:"state"`
	// Usable says the key wraps and unwraps now (a passphrase key not
	// checked counts as usable).
	Usable bool `json:"usable"`
	// Deletes is when a key pending deletion goes.
	Deletes *time.Time `json:"deletes,omitempty"`
	// Detail is the source's own sentence, or why it could not be opened.
	Detail string `json:"detail,omitempty"`
	// Files and Bytes count the files with a stanza of this key and their
	// plaintext bytes.
	Files int64 `json:"files"`
	Bytes int64 `json:"bytes"`
	// SoleFiles and SoleBytes count the files that this key alone opens.
	SoleFiles int64 `json:"sole_files"`
	SoleBytes int64 `json:"sole_bytes"`
}

// FileNote names a file of the cipher dir and what the report says of it.
type FileNote struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// StatusReport is what Status found: the keys, the files at risk, and the
// entries that are not files of this volume.
type StatusReport struct {
	Dir    string      `json:"cipher_dir"`
	Volume string      `json:"volume_id"`
	Keys   []KeyStatus `json:"keys"`
	Files  int64       `json:"files"`
	Bytes  int64       `json:"bytes"`
	// AtRisk lists files (at most maxListed; AtRiskFiles counts all) that
	// no usable key opens: every key they name is disabled, pending
	// deletion, missing, unavailable or unknown to this volume.
	AtRisk      []FileNote `json:"at_risk,omitempty"`
	AtRiskFiles int64      `json:"at_risk_files"`
	// Foreign lists regular files that are not kmsfs files of this volume
	// (no header, a damaged one, another volume's); ForeignFiles counts
	// all of them. They are skipped.
	Foreign      []FileNote `json:"foreign,omitempty"`
	ForeignFiles int64      `json:"foreign_files"`
	// Skipped counts entries neither a regular file nor a directory
	// (symbolic links, FIFOs, devices) and, with encrypted names, the side
	// files of long names and symbolic link targets: never opened.
	Skipped int64 `json:"skipped"`
}

// Key returns the report's entry of the key with ID id.
func (r *StatusReport) Key(id string) (KeyStatus, bool) {
	for _, k := range r.Keys {
		if k.KeyID == id {
			return k, true
		}
	}
	return KeyStatus{}, false
}

// Healthy reports whether every file opens under a usable key.
func (r *StatusReport) Healthy() bool { return r.AtRiskFiles == 0 }

// Status reports which keys the volume in cipherDir and its files depend
// on, and each key's state. It reads headers only (key IDs are in clear)
// and unwraps nothing; it opens the keys this host approved for their
// state alone, so a disabled, deleted or unreachable key is reported, not
// an error. A passphrase key is not checked. o.TrustDir and o.Secrets
// (the PKCS#11 PIN) are used.
func Status(ctx context.Context, cipherDir string, o Options) (*StatusReport, error) {
	a, err := LoadTrusted(cipherDir, o.TrustDir)
	if err != nil {
		return nil, err
	}
	vid, err := a.Conf.ID()
	if err != nil {
		return nil, err
	}
	s := &keySet{}
	defer s.Close()
	keys := make([]KeyStatus, len(a.Conf.Keys))
	for i, k := range a.Conf.Keys {
		keys[i] = KeyStatus{KeyID: k.KeyID, Spec: k.Spec}
		if k.Spec == "local:passphrase" {
			keys[i].State, keys[i].Usable = StateNotChecked, true
			continue
		}
		spec, err := hostSpec(k, a.Host[i])
		if err != nil {
			keys[i].State, keys[i].Detail = StateUnavailable, err.Error()
			continue
		}
		var src keysource.KeySource
		if spec.Type == awskms.Type {
			src, err = awskms.Open(ctx, spec, awskms.Options{VolumeID: vid, DescribeOnly: true})
		} else {
			src, _, err = s.open(ctx, spec, vid, k, o, false)
		}
		describeKey(ctx, &keys[i], src, err)
	}
	return statusOf(ctx, cipherDir, &a.Conf, keys)
}

// Status is the package's Status for an opened volume: its key sources
// describe themselves.
func (v *Volume) Status(ctx context.Context) (*StatusReport, error) {
	c, sources := v.keysNow()
	keys := make([]KeyStatus, len(c.Keys))
	for i, k := range c.Keys {
		keys[i] = KeyStatus{KeyID: k.KeyID, Spec: k.Spec}
		if k.Spec == "local:passphrase" {
			keys[i].State, keys[i].Usable = StateNotChecked, true
			continue
		}
		if sources[i] == nil {
			describeKey(ctx, &keys[i], nil, errors.New("the retiring key did not open"))
			continue
		}
		describeKey(ctx, &keys[i], sources[i], nil)
	}
	return statusOf(ctx, v.Dir, c, keys)
}

// statusOf scans the cipher dir and completes the report of the
// configured keys.
func statusOf(ctx context.Context, dir string, c *volconf.Conf, keys []KeyStatus) (*StatusReport, error) {
	vid, err := c.ID()
	if err != nil {
		return nil, err
	}
	layout, err := c.Layout()
	if err != nil {
		return nil, err
	}
	for i, k := range c.Keys {
		if sp, err := keysource.ParseSpec(k.Spec); err == nil {
			keys[i].Type = sp.Type
		}
	}
	r := &StatusReport{Dir: dir, Volume: c.VolumeID, Keys: keys}
	sc := &scanner{r: r, layout: layout, vid: vid, hdr: make([]byte, layout.HeaderSize()), encNames: c.EncryptedNames()}
	if err := sc.walk(ctx, dir); err != nil {
		return nil, err
	}
	return r, nil
}

// describeKey fills k from src's Describe, or from openErr when the
// source did not open.
func describeKey(ctx context.Context, k *KeyStatus, src keysource.KeySource, openErr error) {
	if openErr != nil {
		k.Detail = openErr.Error()
		k.State = StateUnavailable
		var apiErr smithy.APIError
		switch {
		case errors.Is(openErr, fs.ErrNotExist), errors.Is(openErr, pkcs11.ErrKeyMissing),
			errors.As(openErr, &apiErr) && apiErr.ErrorCode() == "NotFoundException":
			k.State = StateMissing
		}
		return
	}
	d, ok := src.(keysource.Describer)
	if !ok {
		k.State, k.Usable = StateEnabled, true
		return
	}
	st, err := d.Describe(ctx)
	if err != nil {
		describeKey(ctx, k, nil, err)
		return
	}
	k.Usable, k.Detail = st.Usable, st.Detail
	if !st.Deletes.IsZero() {
		t := st.Deletes.UTC()
		k.Deletes = &t
	}
	switch st.State {
	case "Enabled", "Present", "Updating":
		k.State = StateEnabled
	case "Disabled":
		k.State = StateDisabled
	case "PendingDeletion", "PendingReplicaDeletion":
		k.State = StatePendingDeletion
	case "Missing":
		k.State = StateMissing
	case "Restricted":
		k.State = StateRestricted
	default:
		k.State = StateUnavailable
		if !st.Usable {
			k.Detail = strings.TrimPrefix(k.Detail+"; state "+st.State, "; ")
		}
	}
	if k.State != StateEnabled {
		k.Usable = false
	}
}

// scanner walks a cipher dir and adds each file to its report.
type scanner struct {
	r      *StatusReport
	layout envelope.Layout
	vid    envelope.VolumeID
	hdr    []byte
	// encNames says side files of long names are kmsfs's own, not files.
	encNames bool
}

// walk scans the cipher dir at root.
func (sc *scanner) walk(ctx context.Context, root string) error {
	return cipherWalk{visit: sc.entry, dirErr: func(rel string, err error) error {
		sc.foreign(rel, err.Error())
		return nil
	}}.run(ctx, root)
}

// entry scans one entry of the cipher dir.
func (sc *scanner) entry(e cipherEntry) (bool, error) {
	switch {
	case e.rel == JournalName:
		return false, nil
	case e.typ.IsDir():
		return true, nil
	case e.volumeFile(sc.encNames):
		f, size, err := e.open(0, unix.S_IFREG)
		if err != nil {
			sc.foreign(e.rel, err.Error())
			return false, nil
		}
		defer f.Close()
		sc.file(f, e.rel, size)
		return false, nil
	}
	sc.r.Skipped++
	return false, nil
}

// file adds the regular file f, named rel, of size bytes.
func (sc *scanner) file(f *os.File, rel string, size int64) {
	h, err := sc.header(f, size)
	if err != nil {
		sc.foreign(rel, err.Error())
		return
	}
	plain := sc.layout.PlainSize(size)
	sc.r.Files++
	sc.r.Bytes += plain
	var idx []int
	for _, s := range h.Stanzas {
		i := sc.key(s.Type, s.KeyID)
		if !slices.Contains(idx, i) {
			idx = append(idx, i)
		}
	}
	usable := false
	for _, i := range idx {
		k := &sc.r.Keys[i]
		k.Files++
		k.Bytes += plain
		if len(idx) == 1 {
			k.SoleFiles++
			k.SoleBytes += plain
		}
		usable = usable || k.Usable
	}
	if !usable {
		sc.r.AtRiskFiles++
		if len(sc.r.AtRisk) < maxListed {
			var ids []string
			for _, i := range idx {
				ids = append(ids, sc.r.Keys[i].KeyID+" ("+strings.ReplaceAll(sc.r.Keys[i].State, "-", " ")+")")
			}
			sc.r.AtRisk = append(sc.r.AtRisk, FileNote{Path: rel, Reason: "only " + strings.Join(ids, ", ") + " opens it"})
		}
	}
}

// header returns the newest header slot of f that parses and names this
// volume. Its MAC is not checked (that needs the data key): the report
// says what the file claims.
func (sc *scanner) header(f *os.File, size int64) (*envelope.Header, error) {
	if size < sc.layout.HeaderSize() {
		return nil, fmt.Errorf("not a kmsfs file: %d bytes, shorter than a header (%d)", size, sc.layout.HeaderSize())
	}
	if _, err := f.ReadAt(sc.hdr, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	var best *envelope.Header
	var firstErr error
	ss := sc.layout.SlotSize()
	for i := range 2 {
		h, err := envelope.ParseHeaderSlot(sc.layout, sc.hdr[i*ss:(i+1)*ss])
		if err == nil && h.Volume != sc.vid {
			err = fmt.Errorf("header names volume %x, not this one: %w", h.Volume, envelope.ErrOtherVolume)
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("not a kmsfs file of this volume: header slot %d: %w", i, err)
			}
			continue
		}
		if best == nil || h.Seq > best.Seq {
			best = h
		}
	}
	if best == nil {
		return nil, firstErr
	}
	return best, nil
}

// key returns the index in the report of the key a stanza names, adding
// a key unknown to the configuration.
func (sc *scanner) key(typ, id string) int {
	for i, k := range sc.r.Keys {
		if k.KeyID == id || (k.Spec != "" && sameKey(k.KeyID, id)) {
			return i
		}
	}
	sc.r.Keys = append(sc.r.Keys, KeyStatus{KeyID: id, Type: typ, State: StateNotConfigured,
		Detail: "not in this volume's configuration: this volume cannot open it"})
	return len(sc.r.Keys) - 1
}

// foreign notes an entry that is not a file of this volume.
func (sc *scanner) foreign(rel, reason string) {
	sc.r.ForeignFiles++
	if len(sc.r.Foreign) < maxListed {
		sc.r.Foreign = append(sc.r.Foreign, FileNote{Path: rel, Reason: reason})
	}
}

// Warnings returns what the report should make a mount log: one Warning
// per key that files depend on alone while it is not usable.
func (r *StatusReport) Warnings() []Warning {
	var ws []Warning
	for _, k := range r.Keys {
		if k.Usable || k.SoleFiles == 0 {
			continue
		}
		f := map[string]any{"key": k.KeyID, "state": k.State, "files": k.SoleFiles, "bytes": k.SoleBytes}
		msg := fmt.Sprintf("%d files (%d bytes) depend on key %s alone, and it is %s", k.SoleFiles, k.SoleBytes, k.KeyID, strings.ReplaceAll(k.State, "-", " "))
		if k.Deletes != nil {
			f["deletes"] = k.Deletes.Format(time.RFC3339)
			msg += ", to be deleted on " + k.Deletes.Format(time.RFC3339)
		}
		ws = append(ws, Warning{Msg: msg + ": rewrap them under another key (kmsfs rewrap) before they are lost", Fields: f})
	}
	if r.AtRiskFiles > 0 && len(ws) == 0 {
		ws = append(ws, Warning{Msg: fmt.Sprintf("%d files open under no usable key", r.AtRiskFiles), Fields: map[string]any{"files": r.AtRiskFiles}})
	}
	return ws
}
