// Package blockcodec compresses and decompresses one content block at a
// time, for volumes that store blocks compressed. It knows nothing of the
// file format: the caller seals what Compress returns inside a block's
// authenticated payload, records whether it was compressed, and after
// authenticating a stored block hands it to Decompress with the block's
// plaintext length, which the caller knows from the authenticated file
// size. Each block is compressed on its own, so a random read decodes one
// block and nothing before it.
//
// Two algorithms, both from github.com/klauspost/compress (pure Go, so
// cgo-free builds keep working):
//
//	Zstd  one zstd frame: single segment, content size in the header
//	      (window = content size <= block size), no dictionary, no
//	      checksum (the AEAD tag authenticates the block).
//	S2    one s2 block: varint decoded length, then the elements.
//
// A block is stored compressed only if that saves at least a 32nd of it;
// otherwise Compress says so and the caller stores the block as is.
//
// # Why Decompress checks what it checks
//
// A stored block reaches Decompress only after authentication, so its bytes
// were written by a holder of the content key. The checks still hold the
// decoder to what Compress writes, so that a bug or a key holder turned
// hostile cannot make a read allocate or write beyond one block, and so
// that each plaintext block has one accepted stored form:
//
//   - The declared size must equal the expected plaintext length, and that
//     length must be at most the block size, checked from the frame header
//     (zstd) or the length varint (s2) before anything is decoded: a
//     decompression bomb declares a huge size in a few bytes, and is refused
//     at the cost of reading them.
//   - The decoder writes into a buffer whose capacity is the expected
//     length plus one zstd block (zstd's WithDecodeAllCapLimit; s2 decodes
//     into exactly the expected length), and the zstd decoder's memory and
//     window are capped at the block size. The zstd decoder checks the
//     output against the declared size only after each block, so a frame
//     that decodes to more than it declares overshoots by up to one block
//     before it is refused: the slack is there so the overshoot lands in
//     the buffer instead of reallocating it. DecodeRoom gives a caller the
//     capacity that decodes in place; with less, Decompress decodes into a
//     pooled buffer of that size and copies.
//   - A zstd window larger than the block size is refused, and so is any
//     frame that is not single-segment (window = content size): only a
//     single-segment frame decodes straight into the caller's buffer,
//     while any other makes the decoder allocate a history of its window
//     plus a block.
//   - Exactly one zstd frame, its blocks walked header by header to the
//     last byte: the zstd decoder would otherwise go on to decode a second
//     frame, or skip a skippable one, after the first. Raw and RLE blocks
//     whose stated sizes add up past the expected length are refused during
//     the walk, before the decoder runs.
//   - No dictionary (none is ever used) and no checksum (the AEAD tag
//     authenticates the block; a second checksum would only be a second
//     stored form of the same block).
//
// Every failure wraps ErrCorrupt.
//
// # Pooling
//
// A Codec is safe for concurrent use. Its zstd encoder and decoder keep
// GOMAXPROCS states each, and a further caller waits for one. Its buffers
// (the encoder's output, which may exceed the block before the saving test
// throws it away, and the decode buffer of a dst without the room) sit in
// pools of the same size; a burst beyond that allocates buffers that are
// dropped afterwards. Like the zstd library's state pools, these are
// channels rather than sync.Pool, which the garbage collector empties: a
// zstd state holds tables that cost far more to rebuild than the block they
// encode. In steady state neither Compress nor Decompress allocates.
//
// # Backoff
//
// Trying to compress an incompressible block costs about as much as sealing
// it. Backoff, kept by the caller per file, skips the try for 1, 2, 4 … 64
// blocks after each block that was tried and stored as is, and resets when
// a try compresses, so random data costs about one try in 64 blocks.
package blockcodec
