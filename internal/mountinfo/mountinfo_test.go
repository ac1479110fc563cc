package mountinfo

import (
	"slices"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		``:               ``,
		`/mnt/plain`:     `/mnt/plain`,
		`/mnt/a\040b`:    `/mnt/a b`,
		`/t\011ab\012nl`: "/t\tab\nnl",
		`/back\134slash`: `/back\slash`,
		`/end\040`:       `/end `,
		`/short\04`:      `/short\04`,
		`/not\999octal`:  `/not\999octal`,
		`/\040\040two`:   `/  two`,
		`/trailing\`:     `/trailing\`,
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	const text = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
36 22 0:32 / /tmp/my\040dir/plain rw,nosuid,nodev,relatime shared:5 master:2 - fuse.kmsfs kmsfs rw,user_id=65534,group_id=65534
short line
37 22 0:33 / /no/separator rw
`
	ms := Parse(text)
	if len(ms) != 3 {
		t.Fatalf("Parse: %d mounts, want 3: %+v", len(ms), ms)
	}
	for i, want := range []struct{ point, typ, source string }{
		{"/", "ext4", "/dev/sda1"},
		{"/tmp/my dir/plain", "fuse.kmsfs", "kmsfs"},
		{"/no/separator", "", ""},
	} {
		if ms[i].Point != want.point || ms[i].FSType != want.typ || ms[i].Source != want.source {
			t.Errorf("mount %d: point %q type %q source %q, want %q %q %q", i, ms[i].Point, ms[i].FSType, ms[i].Source, want.point, want.typ, want.source)
		}
	}
	if f := ms[1].Fields; len(f) != 12 || f[4] != `/tmp/my\040dir/plain` || !slices.Contains(f, "rw,user_id=65534,group_id=65534") {
		t.Errorf("fields of mount 1: %q", f)
	}
}

func TestLookupRoot(t *testing.T) {
	m, ok, err := Lookup("/")
	if err != nil || !ok || m.FSType == "" {
		t.Fatalf(`Lookup("/") = %+v, %v, %v; want the root mount`, m, ok, err)
	}
	if _, ok, _ := Lookup("/no/such/mount/point"); ok {
		t.Error("Lookup of a path that is no mount point found one")
	}
}
