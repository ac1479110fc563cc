package volume_test

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsfs/kmsfs/envelope/names"
	"github.com/kmsfs/kmsfs/volume"
)

// longDir is a directory name too long for a short backing name: it is
// stored as kmsfs.L… with a side file.
var longDir = strings.Repeat("quarterly-", 20) + "reports"

// namesTree writes, in the cipher dir of a volume with encrypted names,
// what a mount makes of plain paths (docs/FORMAT.md): each name sealed
// under its directory's ID, a long one with its side file, each directory
// with its kmsfs.dirid link.
type namesTree struct {
	t     *testing.T
	vol   *volume.Volume
	codec *names.Codec
	ids   map[string]names.DirID // by plain path of the directory
	rels  map[string]string      // cipher path by plain path
}

func newNamesTree(t *testing.T, vol *volume.Volume) *namesTree {
	t.Helper()
	c, root, err := vol.NameCodec()
	if err != nil || c == nil {
		t.Fatalf("NameCodec: %v, %v", c, err)
	}
	return &namesTree{t: t, vol: vol, codec: c, ids: map[string]names.DirID{"": root}, rels: map[string]string{"": ""}}
}

// namesVolume makes a volume with encrypted names and opens it read-only
// until the test ends, with a namesTree to fill it.
func namesVolume(t *testing.T) (*volume.Volume, *namesTree) {
	t.Helper()
	tv := initVolumeNames(t, true)
	vol, err := tv.open(t, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { vol.Close() })
	return vol, newNamesTree(t, vol)
}

// entry makes the backing name of the plain path p (its directory made
// first) and returns its cipher path.
func (nt *namesTree) entry(p string) string {
	nt.t.Helper()
	dir, base := path.Split(p)
	dir = strings.TrimSuffix(dir, "/")
	nt.mkdir(dir)
	nm, err := nt.codec.Encrypt(nt.ids[dir], base)
	if err != nil {
		nt.t.Fatal(err)
	}
	parent := filepath.Join(nt.vol.Dir, nt.rels[dir])
	if nm.Side != nil {
		if err := os.WriteFile(filepath.Join(parent, nm.Backing+names.LongSuffix), nm.Side, 0o400); err != nil {
			nt.t.Fatal(err)
		}
	}
	rel := path.Join(nt.rels[dir], nm.Backing)
	nt.rels[p] = rel
	return rel
}

// mkdir makes the directory of plain path p and its parents.
func (nt *namesTree) mkdir(p string) {
	nt.t.Helper()
	if _, ok := nt.ids[p]; ok {
		return
	}
	rel := nt.entry(p)
	id, err := names.NewDirID()
	if err != nil {
		nt.t.Fatal(err)
	}
	d := filepath.Join(nt.vol.Dir, rel)
	if err := os.Mkdir(d, 0o700); err != nil {
		nt.t.Fatal(err)
	}
	if err := os.Symlink(id.LinkTarget(), filepath.Join(d, names.DirIDFile)); err != nil {
		nt.t.Fatal(err)
	}
	nt.ids[p] = id
}

// file writes a file of the volume at plain path p with a damaged block,
// so that fsck lists it, and returns its cipher path.
func (nt *namesTree) file(p string) string {
	nt.t.Helper()
	rel := nt.entry(p)
	cp := filepath.Join(nt.vol.Dir, rel)
	encryptTo(nt.t, nt.vol, cp, randomBytes(nt.t, fsckSize(nt.vol)))
	flip(nt.t, cp, nt.vol.Format.Layout().BlockOffset(1)+10)
	return rel
}

// cipher returns the cipher path of an entry made as plain path p.
func (nt *namesTree) cipher(p string) string { return filepath.Join(nt.vol.Dir, nt.rels[p]) }

// dirID returns the cipher path of the kmsfs.dirid link of the directory
// made as plain path p.
func (nt *namesTree) dirID(p string) string { return filepath.Join(nt.cipher(p), names.DirIDFile) }

// side returns the cipher path of the side file of the long name made as
// plain path p.
func (nt *namesTree) side(p string) string { return nt.cipher(p) + names.LongSuffix }

// replaceEntry removes the entry at p and has put make what takes its
// place.
func replaceEntry(t *testing.T, p string, put func(p string) error) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := put(p); err != nil {
		t.Fatal(err)
	}
}

func symlinkTo(target string) func(string) error {
	return func(p string) error { return os.Symlink(target, p) }
}

func fileOf(b []byte) func(string) error {
	return func(p string) error { return os.WriteFile(p, b, 0o400) }
}

// TestFsckPlainPaths checks files of a volume with encrypted names, each
// with a damaged block, and what an attacker on the storage did to the
// names on their paths: fsck gives the plain path of a file whose every
// name authenticates, and for the others no plain path (never a guess)
// and a name error that says why.
func TestFsckPlainPaths(t *testing.T) {
	const target = "reports/" + "q3.pdf"
	cases := []struct {
		name string
		// attack changes the cipher dir; it returns the cipher path of
		// the damaged file fsck must list, if it moved it.
		attack  func(t *testing.T, nt *namesTree) string
		want    string // plain path; "" for none
		why     string // in the name error
		nameErr bool   // the error is ErrNameAuth's
	}{
		{"attack=none", nil, target, "", false},
		{"attack=none,path=long-dir", func(t *testing.T, nt *namesTree) string {
			return nt.file(longDir + "/q4.pdf")
		}, longDir + "/q4.pdf", "", false},
		{"attack=name-moved-to-other-dir", func(t *testing.T, nt *namesTree) string {
			nt.mkdir("other")
			to := path.Join(nt.rels["other"], path.Base(nt.rels[target]))
			if err := os.Rename(nt.cipher(target), filepath.Join(nt.vol.Dir, to)); err != nil {
				t.Fatal(err)
			}
			return to
		}, "", "does not authenticate", true},
		{"attack=dir-name-swapped", func(t *testing.T, nt *namesTree) string {
			// The directory keeps its ID; its backing name is another
			// directory's, sealed in another parent.
			nt.mkdir("x/y")
			to := path.Base(nt.rels["x/y"])
			if err := os.Rename(nt.cipher("reports"), filepath.Join(nt.vol.Dir, to)); err != nil {
				t.Fatal(err)
			}
			return path.Join(to, path.Base(nt.rels[target]))
		}, "", "does not authenticate", true},
		{"attack=dirid-replaced", func(t *testing.T, nt *namesTree) string {
			nt.mkdir("other")
			replaceEntry(t, nt.dirID("reports"), symlinkTo(nt.ids["other"].LinkTarget()))
			return ""
		}, "", "does not authenticate", true},
		{"attack=dirid-not-a-link", func(t *testing.T, nt *namesTree) string {
			replaceEntry(t, nt.dirID("reports"), fileOf([]byte(nt.ids["reports"].LinkTarget())))
			return ""
		}, "", "not a symbolic link", false},
		{"attack=dirid-points-away", func(t *testing.T, nt *namesTree) string {
			replaceEntry(t, nt.dirID("reports"), symlinkTo("/etc/passwd"))
			return ""
		}, "", names.DirIDFile, true},
		{"attack=dirid-removed", func(t *testing.T, nt *namesTree) string {
			replaceEntry(t, nt.dirID("reports"), func(string) error { return nil })
			return ""
		}, "", names.DirIDFile, false},
		{"attack=long-side-file-swapped", func(t *testing.T, nt *namesTree) string {
			rel := nt.file(longDir + "/q4.pdf")
			other := strings.Repeat("z", 200)
			nt.mkdir(other)
			b, err := os.ReadFile(nt.side(other))
			if err != nil {
				t.Fatal(err)
			}
			replaceEntry(t, nt.side(longDir), fileOf(b))
			return rel
		}, "", "does not authenticate", true},
		{"attack=long-side-file-huge", func(t *testing.T, nt *namesTree) string {
			rel := nt.file(longDir + "/q4.pdf")
			replaceEntry(t, nt.side(longDir), fileOf(make([]byte, 1<<20)))
			return rel
		}, "", "holds more than", false},
		{"attack=long-side-file-symlink", func(t *testing.T, nt *namesTree) string {
			rel := nt.file(longDir + "/q4.pdf")
			replaceEntry(t, nt.side(longDir), symlinkTo("/etc/passwd"))
			return rel
		}, "", "symbolic link", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vol, nt := namesVolume(t)
			rel := nt.file(target)
			if c.attack != nil {
				if moved := c.attack(t, nt); moved != "" {
					rel = moved
				}
			}
			r, err := vol.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			var got *volume.FsckFile
			for i, p := range r.Problems {
				if p.Path == rel {
					got = &r.Problems[i]
				}
			}
			if got == nil {
				t.Fatalf("fsck did not list %s: %+v", rel, r.Problems)
			}
			if got.State != volume.FsckDamaged || got.PlainPath != c.want {
				t.Fatalf("%s: state %s, plain path %q (name error %q); want damaged, %q", rel, got.State, got.PlainPath, got.NameError, c.want)
			}
			if (c.why == "") != (got.NameError == "") || !strings.Contains(got.NameError, c.why) {
				t.Fatalf("%s: name error %q; want one saying %q", rel, got.NameError, c.why)
			}
			if c.nameErr != strings.Contains(got.NameError, volume.ErrNameAuth.Error()) {
				t.Fatalf("%s: name error %q; want it to say %q: %v", rel, got.NameError, volume.ErrNameAuth, c.nameErr)
			}
		})
	}
}

// TestFsckBadName moves the backing name of an intact file into another
// directory of the cipher dir, where it fails to authenticate and a mount
// does not show it: fsck reports the file as bad-name, with no plain path
// and a name error, and the volume as not clean.
func TestFsckBadName(t *testing.T) {
	for _, long := range []bool{false, true} {
		t.Run("long="+boolName(long), func(t *testing.T) {
			vol, nt := namesVolume(t)
			name := "a/x"
			if long {
				name = "a/" + longDir
			}
			rel := nt.entry(name)
			encryptTo(t, vol, nt.cipher(name), randomBytes(t, 100))
			nt.mkdir("b")
			to := path.Join(nt.rels["b"], path.Base(rel))
			if err := os.Rename(nt.cipher(name), filepath.Join(vol.Dir, to)); err != nil {
				t.Fatal(err)
			}
			if long {
				if err := os.Rename(nt.cipher(name)+names.LongSuffix, filepath.Join(vol.Dir, to)+names.LongSuffix); err != nil {
					t.Fatal(err)
				}
			}
			r, err := vol.Fsck(ctx(t), volume.FsckOptions{})
			if err != nil {
				t.Fatalf("Fsck: %v", err)
			}
			if r.Clean() || len(r.Problems) != 1 {
				t.Fatalf("fsck: %+v; want one problem", r)
			}
			p := r.Problems[0]
			if p.Path != to || p.State != volume.FsckBadName || p.PlainPath != "" || !strings.Contains(p.NameError, volume.ErrNameAuth.Error()) {
				t.Fatalf("problem %+v; want %s bad-name, no plain path, a name error saying %q", p, to, volume.ErrNameAuth)
			}
		})
	}
}

// TestNamesSideFiles: the side files of long names and long symbolic
// link targets hold sealed names, not file content: fsck of a clean
// volume with them is clean, and fsck and status count them with the
// skipped entries, not as foreign files, and fsck's progress leaves them
// out of its totals; a problem of kmsfs's own name key
// file has neither a plain path nor a name error.
func TestNamesSideFiles(t *testing.T) {
	vol, nt := namesVolume(t)
	for _, p := range []string{"a", longDir + "/b", longDir + "/" + strings.Repeat("c", 255)} {
		encryptTo(t, vol, filepath.Join(vol.Dir, nt.entry(p)), randomBytes(t, 100))
	}
	// A symbolic link whose encrypted target is kept in a side file, as
	// docs/FORMAT.md lays it out.
	link := filepath.Join(vol.Dir, nt.entry(longDir+"/link"))
	if err := os.Symlink("kmsfs.longtarget", link); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(link+".target", []byte(strings.Repeat("A", 5000)), 0o400); err != nil {
		t.Fatal(err)
	}
	// And one of the current form, whose side file is named by its ID.
	id := strings.Repeat("A", 22)
	if err := os.Symlink("kmsfs.longtarget."+id, filepath.Join(vol.Dir, nt.entry(longDir+"/link2"))); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(link), "kmsfs.T"+id+".target"), []byte(strings.Repeat("A", 5000)), 0o400); err != nil {
		t.Fatal(err)
	}
	st, err := vol.Status(ctx(t))
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	// The three files and kmsfs.names; two side files, a dirid link, the
	// symbolic links and their side files.
	if st.Files != 4 || st.ForeignFiles != 0 || st.Skipped != 7 {
		t.Fatalf("status of a volume with long names: %d files, %d foreign %+v, %d skipped; want 4, 0, 7", st.Files, st.ForeignFiles, st.Foreign, st.Skipped)
	}
	var last volume.FsckProgress
	r, err := vol.Fsck(ctx(t), volume.FsckOptions{Progress: func(p volume.FsckProgress) { last = p }})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if !r.Clean() || r.Files != 4 || r.OK != 4 || r.Skipped != 7 {
		t.Fatalf("fsck of a clean volume with long names: %+v", r)
	}
	if last.Files != 4 || last.TotalFiles != 4 || last.Bytes != r.Bytes || last.TotalBytes != r.Bytes {
		t.Fatalf("fsck's last progress %+v; want 4 files of 4 and %d bytes of %d", last, r.Bytes, r.Bytes)
	}

	flip(t, filepath.Join(vol.Dir, volume.NamesName), vol.Format.Layout().BlockOffset(0)+3)
	r, err = vol.Fsck(ctx(t), volume.FsckOptions{})
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if len(r.Problems) != 1 || r.Problems[0].Path != volume.NamesName || r.Problems[0].PlainPath != "" || r.Problems[0].NameError != "" {
		t.Fatalf("fsck with %s damaged: %+v; want it listed with no plain path and no name error", volume.NamesName, r.Problems)
	}
}

// TestRewrapFailurePlainPath: a file under a long directory name that no
// key of the volume opens fails to rewrap, and the failure gives its plain
// path.
func TestRewrapFailurePlainPath(t *testing.T) {
	tv := initVolumeNames(t, true)
	vol, err := tv.open(t, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	nt := newNamesTree(t, vol)
	plain := longDir + "/orphan"
	rel := nt.entry(plain)
	writeUnknownKeyFile(t, vol, rel, 100)
	vol.Close()
	newKey := filepath.Join(filepath.Dir(tv.key), "new-key")
	newKeyFile(t, newKey)
	r, err := volume.Rewrap(ctx(t), tv.dir, volume.RewrapOptions{To: "local:" + newKey, TrustDir: tv.trust})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if r.FailedFiles != 1 || len(r.Failed) != 1 || r.Foreign != 0 {
		t.Fatalf("report %+v; want the orphan failed, no file foreign", r)
	}
	if f := r.Failed[0]; f.Path != rel || f.PlainPath != plain || f.NameError != "" {
		t.Fatalf("failure %+v; want %s with plain path %s", f, rel, plain)
	}
}
