package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// mount(8) runs a FUSE filesystem through fuse3's mount.fuse3 helper:
// for the type fuse.kmsfs it runs `kmsfs CIPHERDIR MOUNTPOINT -o OPTS`,
// with OPTS the fstab options less those mount(8) and mount.fuse3 keep
// for themselves (x-*, comment=, _netdev, nofail, auto, noauto, user,
// users, nouser, setuid=, drop_privileges). mountHelperArgs turns that
// call into `kmsfs mount`: an option named like a flag of kmsfs mount
// (underscores or dashes) sets the flag, a FUSE option passes through
// -o, and anything else is refused here, naming the option, rather than
// by the kernel with a bare EINVAL from a background child.

// helperOption says what a mount option of that name (without a value)
// is to kmsfs.
type helperOption int

const (
	helperFlagOption helperOption = iota // a flag of kmsfs mount, or unknown
	helperFUSE                           // passes through to the FUSE mount
	helperDropped                        // says nothing to kmsfs
)

// classifyOption tells which options pass through to the FUSE mount (the
// generic mount flags the kernel, or fusermount3, takes for a FUSE
// filesystem, and FUSE's own that kmsfs does not set itself) and which
// are dropped. rw and relatime are the defaults (the other atime flags
// fail a FUSE mount). mount.fuse3 appends dev and suid to every mount
// unless the fstab line says nodev or nosuid, and mount(8) hands an
// explicit dev or suid to no helper, so kmsfs cannot tell a request from
// that default and keeps its own, nodev and nosuid: whoever controls the
// cipher dir could plant a device node or a set-user-ID program (`kmsfs
// mount -o dev,suid` asks for them). The rest belong to mount(8), which
// strips them before the helper runs.
func classifyOption(name string) helperOption {
	switch name {
	case "nodev", "nosuid", "exec", "noexec",
		"sync", "async", "dirsync", "lazytime", "nolazytime",
		"atime", "noatime", "default_permissions":
		return helperFUSE
	case "rw", "relatime", "dev", "suid",
		"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev", "nofail":
		return helperDropped
	}
	return helperFlagOption
}

// mountHelperArgs returns args rewritten from mount.fuse3's calling
// convention (CIPHERDIR MOUNTPOINT, then -o OPTS, any number of times)
// into the arguments of `kmsfs mount`, with the options mapped to the
// flags of the mount command of root; other arguments after the two
// paths (the background child's own flags) follow unchanged. args that
// start with a flag or a command of root are returned as they are.
func mountHelperArgs(root *cobra.Command, args []string) ([]string, error) {
	if len(args) < 2 || strings.HasPrefix(args[0], "-") || strings.HasPrefix(args[1], "-") || isCommand(root, args[0]) {
		return args, nil
	}
	mountCmd, _, err := root.Find([]string{"mount"})
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(args[1], "/dev/fd/") {
		return nil, fmt.Errorf("mount point %s: the drop_privileges mount option is not supported", args[1])
	}
	out := []string{"mount"}
	var fuseOpts, rest []string
	for i := 2; i < len(args); i++ {
		a := args[i]
		var opts string
		switch {
		case a == "-o" && i+1 < len(args):
			i++
			opts = args[i]
		case strings.HasPrefix(a, "-o") && a != "-o":
			opts = a[2:]
		default:
			rest = append(rest, a)
			continue
		}
		for _, opt := range strings.Split(opts, ",") {
			flags, fuse, err := mapMountOption(mountCmd, opt)
			if err != nil {
				return nil, err
			}
			out = append(out, flags...)
			fuseOpts = append(fuseOpts, fuse...)
		}
	}
	if len(fuseOpts) > 0 {
		out = append(out, "-o", strings.Join(fuseOpts, ","))
	}
	out = append(out, rest...)
	return append(out, "--", args[0], args[1]), nil
}

// isCommand reports whether name is a command of root, cobra's own help
// and completion commands included.
func isCommand(root *cobra.Command, name string) bool {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == name || c.HasAlias(name) {
			return true
		}
	}
	return strings.HasPrefix(name, "__complete")
}

// mapMountOption maps one mount option to flags of mountCmd or to FUSE
// options.
func mapMountOption(mountCmd *cobra.Command, opt string) (flags, fuse []string, err error) {
	name, value, hasValue := strings.Cut(opt, "=")
	switch {
	case opt == "":
		return nil, nil, nil
	case !hasValue && classifyOption(name) == helperFUSE:
		return nil, []string{name}, nil
	case !hasValue && classifyOption(name) == helperDropped,
		strings.HasPrefix(name, "x-"), name == "comment":
		return nil, nil, nil
	}
	f := helperFlag(mountCmd, strings.ReplaceAll(name, "_", "-"))
	if f == nil {
		return nil, nil, fmt.Errorf("mount option %q is neither a flag of kmsfs mount nor a FUSE option kmsfs passes on (see kmsfs mount --help)", opt)
	}
	switch {
	case hasValue:
		return []string{"--" + f.Name + "=" + value}, nil, nil
	case f.NoOptDefVal != "":
		return []string{"--" + f.Name}, nil, nil
	}
	return nil, nil, fmt.Errorf("mount option %q needs a value: %s=%s", opt, name, strings.ToUpper(f.Value.Type()))
}

// helperFlag returns the flag of mountCmd (or a persistent flag of its
// parents) named name that a mount option may set, or nil.
func helperFlag(mountCmd *cobra.Command, name string) *pflag.Flag {
	// mount(8) waits for the helper to return, so it must not stay in the
	// foreground; options is -o itself.
	if name == "foreground" || name == "options" || name == "help" {
		return nil
	}
	f := mountCmd.Flags().Lookup(name)
	for c := mountCmd.Parent(); f == nil && c != nil; c = c.Parent() {
		f = c.PersistentFlags().Lookup(name)
	}
	if f == nil || f.Hidden {
		return nil
	}
	return f
}
