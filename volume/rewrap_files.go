package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/internal/volconf"
	"github.com/kmsfs/kmsfs/keysource"
)

// RewrapFiles rewraps every file of the volume, opened read-write, whose
// header is not in line with its configuration (ScanRewrap): up to
// o.Concurrency files at once, each distinct data key unwrapped and
// wrapped once. Files that fail are listed in the report; the others are
// done. It does not change kmsfs.conf (PrepareRewrap, FinishRewrap do).
func (v *Volume) RewrapFiles(ctx context.Context, o RewrapOptions) (*RewrapReport, error) {
	if v.Journal == nil {
		return nil, errors.New("volume: rewrap needs the volume opened read-write")
	}
	c := v.Conf()
	sc, err := ScanRewrap(ctx, v.Dir, c)
	if err != nil {
		return nil, err
	}
	r := &RewrapReport{Dir: v.Dir, Files: sc.Files, Empty: sc.Empty, Foreign: sc.Foreign}
	r.Current = sc.Files - sc.Empty - sc.Foreign - int64(len(sc.Need))
	n := c.ActiveCount()
	r.Keys, r.Retiring = keyIDs(c.Keys[:n]), keyIDs(c.Keys[n:])
	total := int64(len(sc.Need))
	var done int64
	eachFile(ctx, sc.Need, o.Concurrency, func(rel string) error { return v.rewrapPath(ctx, rel) },
		func(rel string, err error) { r.record(rel, "", err, &done, total, o.Progress) })
	r.DataKeys = v.rewrapperNow().distinct()
	r.annotate(v.plainPaths())
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("volume: rewrap %s: %w", v.Dir, err)
	}
	return r, nil
}

// eachFile calls do for each of rels, up to workers (0: the default) at
// once, and done with the outcome, one call of done at a time. It hands
// out no more files once ctx ends.
func eachFile(ctx context.Context, rels []string, workers int, do func(rel string) error, done func(rel string, err error)) {
	if workers <= 0 {
		workers = DefaultRewrapConcurrency
	}
	jobs := make(chan string)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range min(workers, max(len(rels), 1)) {
		wg.Go(func() {
			for rel := range jobs {
				err := do(rel)
				mu.Lock()
				done(rel, err)
				mu.Unlock()
			}
		})
	}
	for _, rel := range rels {
		if ctx.Err() != nil {
			break
		}
		jobs <- rel
	}
	close(jobs)
	wg.Wait()
}

// rewrapPath rewraps the cipher file rel.
func (v *Volume) rewrapPath(ctx context.Context, rel string) error {
	f, err := openInCipherDir(v.Dir, rel, unix.O_RDWR)
	if err != nil {
		return err
	}
	defer f.Close()
	ef, err := v.Format.Open(ctx, f, v.Keys)
	if errors.Is(err, envelope.ErrNoHeader) {
		return nil // emptied since the scan: nothing to rewrap
	}
	if err != nil {
		return err
	}
	err = v.RewrapFile(ctx, ef)
	if cerr := ef.Close(); err == nil {
		err = cerr
	}
	return err
}

// RewrapFile rewrites the header of the open file f with stanzas for the
// volume's keys (see RewrapOptions): the data key is unwrapped through
// the manager (cached), the new stanzas made once per distinct data key.
// A mount calls it for files a rewrap asks it to rewrap.
func (v *Volume) RewrapFile(ctx context.Context, f *envelope.File) error {
	h := f.Header()
	dk, err := v.Keys.UnwrapKey(ctx, h.Stanzas)
	if err != nil {
		return err
	}
	defer clear(dk)
	st, err := v.rewrapperNow().target(ctx, h.Stanzas, dk)
	if err != nil {
		return err
	}
	return f.Rewrap(dk, st)
}

// keysNow returns the configuration in force and a key source per key of
// it: Reload replaces both together, so they are read together.
func (v *Volume) keysNow() (*volconf.Conf, []keysource.KeySource) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return &v.Anchor.Conf, v.Sources
}

// rewrapperNow returns the rewrapper of the keys in force.
func (v *Volume) rewrapperNow() *rewrapper {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.rw == nil {
		v.rw = newRewrapper(&v.Anchor.Conf, v.Sources)
	}
	return v.rw
}

// Reload rereads the volume's kmsfs.conf, checked against the host's
// trust anchor, opens its keys and makes the data-key manager use them:
// new files get the new keys from Reload's return on. A mount calls it
// when a rewrap changed the keys under it. Files already open keep
// their keys.
func (v *Volume) Reload(ctx context.Context) error {
	a, err := LoadTrusted(v.Dir, v.opts.TrustDir)
	if err != nil {
		return err
	}
	ks, err := openAnchor(ctx, a, v.opts, make([]keysource.KeySource, len(a.Conf.Keys)))
	if err != nil {
		return err
	}
	mo := ks.managerOptions(&a.Conf)
	if err := v.Keys.SetKeys(mo.Primary, mo.Escrow, mo.UnwrapOnly); err != nil {
		ks.Close()
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	// Calls started under the old sources may still run: they are closed
	// with the volume.
	v.oldKeys = append(v.oldKeys, v.keys)
	v.keys, v.Anchor, v.Sources, v.rw = ks, a, ks.list, nil
	v.Warnings = append(v.Warnings, ks.warnings...)
	return nil
}
