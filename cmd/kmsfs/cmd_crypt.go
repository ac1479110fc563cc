package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kmsfs/kmsfs/internal/secmem"
	"github.com/kmsfs/kmsfs/volume"
)

// stdio is the name that means stdin (an input) or stdout (-o).
const stdio = "-"

type cryptFlags struct {
	volume         string
	output         string
	path           string
	passphraseFile string
	publicKeyFile  string
	timeout        time.Duration
}

// addCryptFlags registers the flags encrypt and decrypt share.
func addCryptFlags(c *cobra.Command, f *cryptFlags) {
	fl := c.Flags()
	fl.StringVar(&f.volume, "volume", "", "the cipher dir whose kmsfs.conf (approved on this host) gives the keys and layout (required)")
	fl.StringVarP(&f.output, "output", "o", stdio, "write to this file instead of stdout; it appears whole or not at all (temporary file, then rename)")
	fl.StringVar(&f.path, "path", "", "the file's plain path in the volume (slash-separated, relative to its root, as a mount shows it), read or written in the cipher dir directly")
	fl.StringVar(&f.passphraseFile, "passphrase-file", "", "file holding the passphrase for local:passphrase")
	fl.StringVar(&f.publicKeyFile, "public-key-file", "", "awskms RSA key: wrap with this public key (DER or PEM) only, with no KMS call; such a host can encrypt, not decrypt")
	fl.DurationVar(&f.timeout, "timeout", 60*time.Second, "bound on opening the volume's keys and on each key call")
	c.MarkFlagRequired("volume")
}

func newEncryptCmd() *cobra.Command {
	f := &cryptFlags{}
	c := &cobra.Command{
		Use:   "encrypt --volume CIPHERDIR (--path REL | -o CIPHERFILE) [PLAINFILE|-]",
		Short: "Encrypt a file for a volume without mounting it",
		Long: `encrypt reads plaintext from PLAINFILE (or stdin when it is - or missing) and
writes it as a file of the volume in CIPHERDIR. Its data key comes from the
volume's keys as this host approved them (kmsfs trust); the volume need not be
mounted, and a mount may be running.

With --path REL the file goes straight into the cipher dir at the plain path
REL (relative to the volume's root, as a mount shows it): its name, and the
name of every directory on the way, is stored exactly as a mount stores it
(encrypted under its directory's ID on a volume with encrypted names, the
default), and missing directories are made (mode 0755). The file appears whole
or not at all: it is written under a temporary name in its directory, synced
and renamed over the old file at REL, so a mount or a sync job never sees a
half-written file.

With -o the cipher file goes to CIPHERFILE (default stdout): a file outside
the cipher dir (a staging area, a backup), or, on a volume with names in
clear, a path in it. On a volume with encrypted names -o into the cipher dir
is refused unless it names the stored name of an existing plain path (kmsfs
info PATH of the mount prints it): under any other name the mount would
never show the file, so give --path instead. On stdout the cipher text is
staged first in $TMPDIR (cipher text only; the plaintext never touches the
disk), since a cipher file is written out of order. The new file gets PLAINFILE's
permission bits (0600 from stdin).

A host with only the public key of the volume's AWS RSA key (a producer that
may encrypt but never decrypt) passes --public-key-file: no KMS call is made.
Such a host cannot unwrap the name key, so --path works only on a volume made
with kmsfs init --plaintext-names; on one with encrypted names, write with -o
to a staging area and place the file from a host that holds the key.`,
		Example: `  kmsfs encrypt --volume /srv/cipher --path reports/q3.pdf q3.pdf
  pg_dump app | kmsfs encrypt --volume /srv/cipher --path dumps/app.sql
  kmsfs encrypt --volume /srv/plain-names-cipher --public-key-file /etc/kmsfs/backups.pub --path in/x.tar x.tar
  tar c /etc | kmsfs encrypt --volume /srv/cipher > etc.tar.kmsfs`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCrypt(cmd.Context(), f, trustDirOf(cmd), inputArg(args), true)
		},
	}
	addCryptFlags(c, f)
	return c
}

func newDecryptCmd() *cobra.Command {
	f := &cryptFlags{}
	c := &cobra.Command{
		Use:   "decrypt --volume CIPHERDIR [-o PLAINFILE] (--path REL | CIPHERFILE | -)",
		Short: "Decrypt one file of a volume without mounting it",
		Long: `decrypt writes the plaintext of one file of the volume in CIPHERDIR to -o
(default stdout): to restore one file out of a backup of the cipher dir, say.

With --path REL it reads the file at the plain path REL of the volume (as a
mount shows it; the volume may be mounted or not): each name on the path is
encrypted under its directory's ID and looked up, so a name moved there from
another directory in the cipher dir does not resolve, and no symbolic link on
the way is followed. Otherwise it reads the cipher file CIPHERFILE (or stdin
when it is - or missing), which may lie anywhere (a restored copy); its header
must name the volume. A symlink is refused: name the cipher file itself.

Every block is authenticated before its plaintext is written. With -o the
plaintext goes to a temporary file renamed over -o only once the whole file
has authenticated: a damaged or altered cipher file leaves no plaintext
behind, and the error names the file, the block and its plaintext offset. On
stdout, output stops at the first block that fails (what came before it is
authentic) and decrypt exits non-zero: check the exit status in pipelines.
The output gets the cipher file's permission bits (0600 from stdin).

decrypt needs a key that decrypts: with --public-key-file it is refused.`,
		Example: `  kmsfs decrypt --volume /mnt/backup/cipher --path reports/q3.pdf -o /tmp/q3.pdf
  kmsfs decrypt --volume /srv/cipher --path dumps/app.sql | psql app
  kmsfs decrypt --volume /srv/cipher < etc.tar.kmsfs | tar t`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCrypt(cmd.Context(), f, trustDirOf(cmd), inputArg(args), false)
		},
	}
	addCryptFlags(c, f)
	return c
}

// inputArg returns the input named by args, stdin by default.
func inputArg(args []string) string {
	if len(args) == 0 || args[0] == "" {
		return stdio
	}
	return args[0]
}

// runCrypt encrypts (or decrypts) in to f.output against f.volume.
func runCrypt(ctx context.Context, f *cryptFlags, trustDir, in string, encrypt bool) error {
	if f.path != "" && encrypt && f.output != stdio {
		return errors.New("encrypt: give --path (into the volume) or -o (a cipher file elsewhere), not both")
	}
	if f.path != "" && !encrypt && in != stdio {
		return errors.New("decrypt: give --path (a file of the volume) or a CIPHERFILE, not both")
	}
	if encrypt && f.path == "" && f.output == stdio && isTerminal(os.Stdout) {
		return errors.New("encrypt: not writing cipher text to a terminal: give -o FILE or redirect stdout")
	}
	// A stop (Ctrl-C, SIGTERM) ends the copy at the next chunk, so that
	// the temporary output is removed, not left beside the final name; a
	// second one kills as usual.
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop()
	}()
	openCtx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	mem := secmem.New(secmem.Options{})
	// Read-only: no journal (the output is a new file published by a
	// rename, so there is nothing to recover) and no data-key pool until
	// encrypt asks for a key; a mount of the volume may be running.
	v, err := volume.Open(openCtx, f.volume, volume.Options{TrustDir: trustDir, ReadOnly: true, PublicKeyFile: f.publicKeyFile,
		Secrets: volume.Secrets{PassphraseFile: f.passphraseFile, Prompt: promptPassphrase}, Mem: mem})
	if err != nil {
		return err
	}
	defer v.Close()
	for _, w := range v.Warnings {
		fmt.Fprintf(os.Stderr, "kmsfs: warning: %s\n", w.Msg)
	}
	// Each key call is bounded on its own: staging a long pipe must not
	// use up the bound of the unwrap that follows it.
	keyCtx := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, f.timeout) }
	if encrypt {
		if f.path == "" && f.output != stdio {
			if err := v.CheckCipherOutput(f.output); err != nil {
				return fmt.Errorf("encrypt: %w", err)
			}
		}
		return runEncrypt(keyCtx, ctx, v, in, f.output, f.path)
	}
	return runDecrypt(keyCtx, ctx, v, in, f.output, f.path)
}

// keyContext returns a context that bounds one key call.
type keyContext func() (context.Context, context.CancelFunc)

// stoppable passes reads and writes on until stop ends.
type stoppable struct {
	stop context.Context
	r    io.Reader
	w    io.Writer
}

func (s stoppable) Read(p []byte) (int, error) {
	if err := s.stop.Err(); err != nil {
		return 0, fmt.Errorf("stopped: %w", err)
	}
	return s.r.Read(p)
}

func (s stoppable) Write(p []byte) (int, error) {
	if err := s.stop.Err(); err != nil {
		return 0, fmt.Errorf("stopped: %w", err)
	}
	return s.w.Write(p)
}

func runEncrypt(keyCtx keyContext, stop context.Context, v *volume.Volume, in, out, rel string) error {
	var src io.Reader = os.Stdin
	perm := os.FileMode(0o600)
	if in != stdio {
		f, err := os.Open(in)
		if err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		defer f.Close()
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			perm = fi.Mode().Perm()
		}
		src = f
	}
	src = stoppable{stop: stop, r: src}
	ctx, cancel := keyCtx()
	defer cancel()
	if rel != "" {
		if _, err := v.EncryptPath(ctx, rel, perm, src); err != nil {
			return fmt.Errorf("encrypt: %w", err)
		}
		return nil
	}
	if out != stdio {
		return volume.WriteAtomic(out, perm, func(dst *os.File) error {
			_, err := v.Encrypt(ctx, dst, src)
			return err
		})
	}
	// A cipher file is written out of order (the header first, each old
	// last block sealed again as the file grows), so it is staged.
	tmp, err := unlinkedTemp()
	if err != nil {
		return err
	}
	defer tmp.Close()
	if _, err := v.Encrypt(ctx, tmp, src); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(os.Stdout, tmp); err != nil {
		return fmt.Errorf("encrypt: write stdout: %w", err)
	}
	return nil
}

func runDecrypt(keyCtx keyContext, stop context.Context, v *volume.Volume, in, out, rel string) error {
	var src *os.File
	perm, name := os.FileMode(0o600), in
	if rel != "" {
		var err error
		if src, err = v.OpenPath(rel); err != nil {
			return fmt.Errorf("decrypt: %w", err)
		}
		defer src.Close()
		name = rel
		if fi, err := src.Stat(); err == nil {
			perm = fi.Mode().Perm()
		}
	} else if in == stdio {
		name = "stdin"
		fi, err := os.Stdin.Stat()
		if err != nil {
			return fmt.Errorf("decrypt: stdin: %w", err)
		}
		if fi.Mode().IsRegular() {
			src = os.Stdin
		} else {
			// A cipher file is read at its header, then by blocks:
			// a pipe is staged first (cipher text only).
			if src, err = unlinkedTemp(); err != nil {
				return err
			}
			defer src.Close()
			if _, err := io.Copy(src, os.Stdin); err != nil {
				return fmt.Errorf("decrypt: read stdin: %w", err)
			}
		}
	} else {
		var err error
		if src, err = volume.OpenCipherFile(in); err != nil {
			return err
		}
		defer src.Close()
		if fi, err := src.Stat(); err == nil {
			perm = fi.Mode().Perm()
		}
	}
	ctx, cancel := keyCtx()
	defer cancel()
	if out == stdio {
		_, err := v.Decrypt(ctx, stoppable{stop: stop, w: os.Stdout}, src, name)
		return err
	}
	return volume.WriteAtomic(out, perm, func(dst *os.File) error {
		_, err := v.Decrypt(ctx, stoppable{stop: stop, w: dst}, src, name)
		return err
	})
}

// unlinkedTemp returns a new file in $TMPDIR that no name reaches: it
// disappears when closed, whatever happens to the process.
func unlinkedTemp() (*os.File, error) {
	f, err := os.CreateTemp("", "kmsfs-crypt-*")
	if err != nil {
		return nil, fmt.Errorf("staging file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("staging file: %w", err)
	}
	return f, nil
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
