package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/kmsfs/kmsfs/envelope"
)

// ErrWrapOnly means the volume was opened with only the public key of its
// RSA key (Options.PublicKeyFile): files can be encrypted here, not
// decrypted.
var ErrWrapOnly = errors.New("volume: the volume's key is opened with its public key only: files can be encrypted here, not decrypted")

// cryptChunk is how much plaintext Encrypt and Decrypt move per call into
// the envelope File: large enough that the File seals and opens in
// parallel and that growing the file re-seals its old last block rarely.
const cryptChunk = 1 << 20

// chunkSize returns cryptChunk rounded up to whole blocks of v, so every
// write but the last ends on a block boundary.
func (v *Volume) chunkSize() int {
	bs := v.Format.Layout().BlockSize()
	return (cryptChunk + bs - 1) / bs * bs
}

// Encrypt reads plaintext from src until EOF and writes it to dst as a
// new cipher file of the volume, exactly as a mount writes one: a fresh
// header over a data key from the volume's keys, then the sealed blocks.
// dst must be empty; Encrypt does not sync or close it. ctx bounds the
// key call; the copy runs until src ends or fails. It returns the
// plaintext size. The volume needs no journal (ReadOnly is fine): dst is
// a file no one else sees until the caller publishes it (WriteAtomic).
func (v *Volume) Encrypt(ctx context.Context, dst envelope.Backing, src io.Reader) (int64, error) {
	dk, stanzas, err := v.Keys.NewDataKey(ctx)
	if err != nil {
		return 0, fmt.Errorf("volume: encrypt: %w", err)
	}
	f, err := v.Format.Create(dst, dk, stanzas)
	clear(dk)
	if err != nil {
		return 0, fmt.Errorf("volume: encrypt: %w", err)
	}
	buf := make([]byte, v.chunkSize())
	defer clear(buf) // plaintext
	var off int64
	for {
		n, rerr := io.ReadFull(src, buf)
		if n > 0 {
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				f.Close()
				return off, fmt.Errorf("volume: encrypt: write at plaintext offset %d: %w", off, err)
			}
			off += int64(n)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			f.Close()
			return off, fmt.Errorf("volume: encrypt: read plaintext at offset %d: %w", off, rerr)
		}
	}
	if err := f.Close(); err != nil {
		return off, fmt.Errorf("volume: encrypt: %w", err)
	}
	return off, nil
}

// Decrypt authenticates the cipher file src, named name in errors, and
// writes its plaintext to dst in order, returning how many bytes it
// wrote. dst only ever receives authenticated plaintext: at the first
// block that fails, Decrypt stops, having written what came before it,
// and the error names the file, the block and its plaintext offset (a
// *envelope.BlockError wrapping envelope.ErrAuth). A caller that must not
// publish a partial file writes to a temporary one (WriteAtomic). ctx
// bounds the key calls; the copy runs until the file ends, a block fails
// or dst fails.
func (v *Volume) Decrypt(ctx context.Context, dst io.Writer, src envelope.Backing, name string) (int64, error) {
	if v.wrapOnly {
		return 0, fmt.Errorf("%w (decrypt %s needs the private key: run it where KMS Decrypt is allowed, without a public key file)", ErrWrapOnly, name)
	}
	f, err := v.Format.Open(ctx, src, v.Keys)
	if errors.Is(err, envelope.ErrNoHeader) {
		// A file created through a mount and never written has no
		// header yet: the mount reads it as empty, and so does decrypt.
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("volume: decrypt %s: %w", name, err)
	}
	defer f.Close()
	buf := make([]byte, v.chunkSize())
	defer clear(buf) // plaintext
	var off int64
	for {
		n, rerr := f.ReadAt(buf, off)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return off, fmt.Errorf("volume: decrypt %s: write plaintext: %w", name, err)
			}
			off += int64(n)
		}
		if rerr == io.EOF {
			return off, nil
		}
		if rerr != nil {
			return off, v.decryptError(name, rerr)
		}
	}
}

// decryptError names the file and, for a block that failed, its index
// and plaintext offset, so a damaged backup can be cut at the right place.
func (v *Volume) decryptError(name string, err error) error {
	var be *envelope.BlockError
	if errors.As(err, &be) {
		return fmt.Errorf("volume: decrypt %s: block %d (plaintext offset %d) is damaged or was changed; nothing from it on was written: %w",
			name, be.Block, be.Block*int64(v.Format.Layout().BlockSize()), err)
	}
	return fmt.Errorf("volume: decrypt %s: %w", name, err)
}
