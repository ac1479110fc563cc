package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestMountHelperArgs checks the mapping of mount.fuse3's calling
// convention onto kmsfs mount, with the argument lists mount.fuse3 builds
// from fstab lines.
func TestMountHelperArgs(t *testing.T) {
	cases := []struct {
		in, want string
	}{
		// `/srv/cipher /mnt/plain fuse.kmsfs defaults,_netdev,allow_other,key-timeout=10s 0 0`:
		// mount(8) drops defaults and _netdev, mount.fuse3 adds dev,suid.
		{"/c /m -o rw,allow_other,key-timeout=10s,dev,suid", "mount --allow-other --key-timeout=10s -- /c /m"},
		{"/c /m -o ro,log_file=/var/log/k.log,log-level=debug,noatime,nodev,nosuid", "mount --ro --log-file=/var/log/k.log --log-level=debug -o noatime,nodev,nosuid -- /c /m"},
		{"/c /m -o passphrase-file=/etc/kmsfs/pass,trust_dir=/etc/t,xattr", "mount --passphrase-file=/etc/kmsfs/pass --trust-dir=/etc/t --xattr -- /c /m"},
		{"/c /m -o x-systemd.requires=kms.service,comment=x,nofail,noauto,user,relatime -o noexec", "mount -o noexec -- /c /m"},
		{"/c /m", "mount -- /c /m"},
		{"/c /m -oro", "mount --ro -- /c /m"},
		// The background child that mountInBackground starts gets the
		// caller's arguments and its own flags after them.
		{"/c /m -o allow_other --foreground --ready-fd=3 --secrets-fd=4", "mount --allow-other --foreground --ready-fd=3 --secrets-fd=4 -- /c /m"},
		// Commands and flags run as they are.
		{"mount -o ro /c /m", "mount -o ro /c /m"},
		{"umount /m", "umount /m"},
		{"status /c", "status /c"},
		{"help mount", "help mount"},
		{"completion bash", "completion bash"},
		{"--trust-dir /t mount /c /m", "--trust-dir /t mount /c /m"},
		{"--version", "--version"},
		{"/c", "/c"},
	}
	for _, c := range cases {
		t.Run("args="+c.in, func(t *testing.T) {
			got, err := mountHelperArgs(newRootCmd(), strings.Fields(c.in))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, " ") != c.want {
				t.Errorf("got %q, want %q", strings.Join(got, " "), c.want)
			}
		})
	}
}

// TestMountHelperRefuses checks that options neither kmsfs nor FUSE
// takes fail before anything runs, naming the option.
func TestMountHelperRefuses(t *testing.T) {
	cases := []struct {
		in, want string
	}{
		{"/c /m -o rw,bogus", `mount option "bogus" is neither a flag of kmsfs mount nor a FUSE option`},
		{"/c /m -o foreground", `mount option "foreground" is neither`},
		{"/c /m -o options=ro", `mount option "options=ro" is neither`},
		{"/c /m -o ready-fd=3", `mount option "ready-fd=3" is neither`},
		{"/c /m -o strictatime", `mount option "strictatime" is neither`},
		{"/c /m -o log-file", `mount option "log-file" needs a value: log-file=STRING`},
		{"/c /m -o key_timeout", `mount option "key_timeout" needs a value: key_timeout=DURATION`},
		{"/c /dev/fd/3 -o rw", `drop_privileges mount option is not supported`},
	}
	for _, c := range cases {
		t.Run("args="+c.in, func(t *testing.T) {
			got, err := mountHelperArgs(newRootCmd(), strings.Fields(c.in))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %q, %v; want an error saying %q", got, err, c.want)
			}
		})
	}
}

// TestMountHelperEveryFlag derives an option from every flag of kmsfs
// mount (less the helper's exceptions) and checks that it sets that flag:
// a flag added to kmsfs mount is a mount option at once.
func TestMountHelperEveryFlag(t *testing.T) {
	root := newRootCmd()
	mountCmd, _, err := root.Find([]string{"mount"})
	if err != nil {
		t.Fatal(err)
	}
	var flags []*pflag.Flag
	mountCmd.Flags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f) })
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f) })
	if len(flags) < 15 {
		t.Fatalf("kmsfs mount has %d flags, want at least 15", len(flags))
	}
	for _, f := range flags {
		if f.Hidden || slices.Contains([]string{"foreground", "options", "help"}, f.Name) {
			continue
		}
		opt := strings.ReplaceAll(f.Name, "-", "_")
		if f.NoOptDefVal == "" {
			opt += "=" + f.DefValue
		}
		t.Run("option="+opt, func(t *testing.T) {
			args, err := mountHelperArgs(newRootCmd(), []string{"/c", "/m", "-o", opt})
			if err != nil {
				t.Fatal(err)
			}
			cmd := newRootCmd()
			mc, rest, err := cmd.Find(args)
			if err != nil {
				t.Fatal(err)
			}
			if err := mc.ParseFlags(rest); err != nil {
				t.Fatalf("%q: %v", args, err)
			}
			if !mc.Flags().Changed(f.Name) {
				t.Errorf("%q does not set --%s", args, f.Name)
			}
			if got := mc.Flags().Args(); !slices.Equal(got, []string{"/c", "/m"}) {
				t.Errorf("%q leaves arguments %q, want /c /m", args, got)
			}
		})
	}
}
