// AES-256-GCM with VAES on 256-bit registers (counter mode, two blocks per
// instruction) and VPCLMULQDQ on 512-bit registers (GHASH, four blocks per
// multiply, one reduction per 32 blocks). The GHASH arithmetic follows
// Gueron and Kounavis, "Intel Carry-Less Multiplication Instruction and its
// Usage for Computing the GCM Mode": blocks are byte-reflected, the hash key is premultiplied by x
// ("H*2"), and a product is reduced by two folds with the constant POLY.

//go:build !purego

#include "textflag.h"

DATA bswap<>+0(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+8(SB)/8, $0x0001020304050607
DATA bswap<>+16(SB)/8, $0x08090a0b0c0d0e0f
DATA bswap<>+24(SB)/8, $0x0001020304050607
GLOBL bswap<>(SB), RODATA|NOPTR, $32

DATA poly<>+0(SB)/8, $0x0000000000000001
DATA poly<>+8(SB)/8, $0xc200000000000000
GLOBL poly<>(SB), RODATA|NOPTR, $16

// Counter increments in the reflected form, where a counter block's last
// four bytes (big-endian) are the low doubleword: VPADDD then wraps them
// modulo 2^32 as GCM's inc32 does.
DATA lane1<>+0(SB)/8, $0
DATA lane1<>+8(SB)/8, $0
DATA lane1<>+16(SB)/8, $1
DATA lane1<>+24(SB)/8, $0
GLOBL lane1<>(SB), RODATA|NOPTR, $32

DATA two<>+0(SB)/8, $2
DATA two<>+8(SB)/8, $0
DATA two<>+16(SB)/8, $2
DATA two<>+24(SB)/8, $0
GLOBL two<>(SB), RODATA|NOPTR, $32

DATA one<>+0(SB)/8, $1
DATA one<>+8(SB)/8, $0
GLOBL one<>(SB), RODATA|NOPTR, $16

// FOLD sets D to the reduced product whose low, high and middle 128-bit
// halves are LO, HI and MID (MID straddles the two: its halves go into
// LO's high and HI's low), folding LO twice with POLY in P. LO, HI and MID
// are clobbered.
#define FOLD(LO, HI, MID, P, D) \
	VPSLLDQ    $8, MID, D; \
	VPXOR      D, LO, LO; \
	VPSRLDQ    $8, MID, MID; \
	VPXOR      MID, HI, HI; \
	VPCLMULQDQ $0x01, LO, P, MID; \
	VPSHUFD    $78, LO, LO; \
	VPXOR      MID, LO, LO; \
	VPCLMULQDQ $0x01, LO, P, MID; \
	VPSHUFD    $78, LO, LO; \
	VPXOR      MID, LO, LO; \
	VPXOR      HI, LO, D

// GFMUL sets D to A*B in GHASH's field (reflected, B premultiplied by x).
// P holds POLY; T1..T3 are clobbered.
#define GFMUL(A, B, D, P, T1, T2, T3) \
	VPCLMULQDQ $0x00, B, A, T1; \
	VPCLMULQDQ $0x11, B, A, T2; \
	VPCLMULQDQ $0x01, B, A, T3; \
	VPCLMULQDQ $0x10, B, A, D; \
	VPXOR      D, T3, T3; \
	FOLD(T1, T2, T3, P, D)

// AES1 encrypts the block in R with the round keys at DI.
#define AES1(R) \
	VPXOR       0(DI), R, R; \
	VAESENC     32(DI), R, R; \
	VAESENC     64(DI), R, R; \
	VAESENC     96(DI), R, R; \
	VAESENC     128(DI), R, R; \
	VAESENC     160(DI), R, R; \
	VAESENC     192(DI), R, R; \
	VAESENC     224(DI), R, R; \
	VAESENC     256(DI), R, R; \
	VAESENC     288(DI), R, R; \
	VAESENC     320(DI), R, R; \
	VAESENC     352(DI), R, R; \
	VAESENC     384(DI), R, R; \
	VAESENC     416(DI), R, R; \
	VAESENCLAST 448(DI), R, R

// KSTORE stores the power of H in R at off(SI)(CX*1) and its Karatsuba
// term (R.lo^R.hi) 512 bytes further; T is clobbered.
#define KSTORE(R, off, T) \
	VMOVDQU R, off(SI)(CX*1); \
	VPSHUFD $78, R, T; \
	VPXOR   R, T, T; \
	VMOVDQU T, off+512(SI)(CX*1)

// EXPAND derives the next AES-256 round key (FIPS 197, 5.2) in DST from
// DST and SRC, with VAESKEYGENASSIST's rcon and the word of its result that
// the step takes (shuf: 0xff, the rotated one, for even keys; 0xaa for odd
// ones), and stores it in both halves of the round key at off(DI).
#define EXPAND(SRC, DST, rcon, shuf, off) \
	VAESKEYGENASSIST $rcon, SRC, X2; \
	VPSHUFD  $shuf, X2, X2; \
	VPSLLDQ  $4, DST, X4; \
	VPXOR    X4, DST, DST; \
	VPSLLDQ  $4, X4, X4; \
	VPXOR    X4, DST, DST; \
	VPSLLDQ  $4, X4, X4; \
	VPXOR    X4, DST, DST; \
	VPXOR    X2, DST, DST; \
	VMOVDQU  DST, off(DI); \
	VMOVDQU  DST, off+16(DI)

// EXPA derives the next even round key in X1, EXPB the next odd one in X3.
#define EXPA(rcon, off) EXPAND(X3, X1, rcon, 0xff, off)
#define EXPB(off) EXPAND(X1, X3, 0, 0xaa, off)

// func initKey(key *[32]byte, rk *[15][32]byte, htab *[64][16]byte)
TEXT ·initKey(SB), NOSPLIT, $0-24
	MOVQ key+0(FP), AX
	MOVQ rk+8(FP), DI
	MOVQ htab+16(FP), SI

	VMOVDQU (AX), X1
	VMOVDQU 16(AX), X3
	VMOVDQU X1, 0(DI)
	VMOVDQU X1, 16(DI)
	VMOVDQU X3, 32(DI)
	VMOVDQU X3, 48(DI)
	EXPA(0x01, 64)
	EXPB(96)
	EXPA(0x02, 128)
	EXPB(160)
	EXPA(0x04, 192)
	EXPB(224)
	EXPA(0x08, 256)
	EXPB(288)
	EXPA(0x10, 320)
	EXPB(352)
	EXPA(0x20, 384)
	EXPB(416)
	EXPA(0x40, 448)

	// H = AES_K(0^128)
	VPXOR X0, X0, X0
	AES1(X0)

	// H*2 in the reflected form.
	VMOVDQU bswap<>(SB), X15
	VMOVDQU poly<>(SB), X14
	VPSHUFB X15, X0, X0
	VPSHUFD $0xff, X0, X5
	VPSRAD  $31, X5, X5
	VPAND   X14, X5, X5
	VPSRLD  $31, X0, X6
	VPSLLDQ $4, X6, X6
	VPSLLD  $1, X0, X0
	VPXOR   X5, X0, X0
	VPXOR   X6, X0, X0

	// htab holds H^32 … H^1, highest first (H^k at 512-16k), then for each
	// H^k H^k.lo^H^k.hi (for Karatsuba) in the same order. Odd and even
	// powers are two independent chains, each multiplied by H^2.
	MOVQ    $480, CX
	KSTORE(X0, 16, X11)
	GFMUL(X0, X0, X12, X14, X1, X2, X3)
	KSTORE(X12, 0, X11)
	VMOVDQA X0, X7
	VMOVDQA X12, X8
	MOVQ    $464, CX

powers:
	GFMUL(X7, X12, X9, X14, X1, X2, X3)
	GFMUL(X8, X12, X10, X14, X4, X5, X6)
	KSTORE(X9, 0, X11)
	KSTORE(X10, -16, X11)
	VMOVDQA X9, X7
	VMOVDQA X10, X8
	SUBQ    $32, CX
	JGE     powers

	VZEROUPPER
	RET

// GHASH4 multiplies the four blocks in R (byte-reflected) by the four
// powers of H at hoff(DI) and adds the products into Z4 (low), Z5 (high) and
// Z6 (middle, Karatsuba: (a.lo^a.hi)*(h.lo^h.hi), whose h part is at
// hoff+512(DI); REDUCE takes the low and high products out of it).
#define GHASH4(R, hoff) \
	VMOVDQU64  hoff(DI), Z12; \
	VPCLMULQDQ $0x00, Z12, R, Z1; \
	VPCLMULQDQ $0x11, Z12, R, Z2; \
	VPSHUFD    $78, R, Z3; \
	VPXORQ     R, Z3, Z3; \
	VPCLMULQDQ $0x00, hoff+512(DI), Z3, Z3; \
	VPXORQ     Z1, Z4, Z4; \
	VPXORQ     Z2, Z5, Z5; \
	VPXORQ     Z3, Z6, Z6

// LOAD4 loads the four blocks at off(CX) into Z0, byte-reflected.
#define LOAD4(off) \
	VMOVDQU64 off(CX), Z0; \
	VPSHUFB   Z15, Z0, Z0

// FOLD4 sums the four lanes of Z4, Z5 and Z6 into X4, X5 and X6.
#define FOLD4 \
	VEXTRACTI64X4 $1, Z4, Y7; \
	VPXOR         Y7, Y4, Y4; \
	VEXTRACTI64X4 $1, Z5, Y7; \
	VPXOR         Y7, Y5, Y5; \
	VEXTRACTI64X4 $1, Z6, Y7; \
	VPXOR         Y7, Y6, Y6; \
	VEXTRACTI128  $1, Y4, X7; \
	VPXOR         X7, X4, X4; \
	VEXTRACTI128  $1, Y5, X7; \
	VPXOR         X7, X5, X5; \
	VEXTRACTI128  $1, Y6, X7; \
	VPXOR         X7, X6, X6

// REDUCE sets the accumulator X13 to the product whose low, high and
// Karatsuba middle halves are X4, X5 and X6.
#define REDUCE \
	VPXOR X4, X6, X6; \
	VPXOR X5, X6, X6; \
	FOLD(X4, X5, X6, X14, X13)

// func ghash(htab *[64][16]byte, acc *[16]byte, data []byte)
// Folds the whole 16-byte blocks of data into acc: 32 blocks per reduction,
// then 16, then the rest together.
TEXT ·ghash(SB), NOSPLIT, $0-40
	MOVQ htab+0(FP), DI
	MOVQ acc+8(FP), SI
	MOVQ data_base+16(FP), CX
	MOVQ data_len+24(FP), BX
	SHRQ $4, BX

	VBROADCASTI32X4 bswap<>(SB), Z15
	VMOVDQU         poly<>(SB), X14
	VMOVDQU         (SI), X13
	VPSHUFB         X15, X13, X13

	CMPQ BX, $32
	JB   sixteen

thirtytwos:
	VPXORQ Z4, Z4, Z4
	VPXORQ Z5, Z5, Z5
	VPXORQ Z6, Z6, Z6
	LOAD4(64)
	GHASH4(Z0, 64)
	LOAD4(128)
	GHASH4(Z0, 128)
	LOAD4(192)
	GHASH4(Z0, 192)
	LOAD4(256)
	GHASH4(Z0, 256)
	LOAD4(320)
	GHASH4(Z0, 320)
	LOAD4(384)
	GHASH4(Z0, 384)
	LOAD4(448)
	GHASH4(Z0, 448)
	// The first four blocks, which take the accumulator, last: the
	// products above need not wait for it.
	LOAD4(0)
	VPXORQ Z13, Z0, Z0
	GHASH4(Z0, 0)
	FOLD4
	REDUCE
	ADDQ $512, CX
	SUBQ $32, BX
	CMPQ BX, $32
	JAE  thirtytwos

sixteen:
	CMPQ BX, $16
	JB   rest
	VPXORQ Z4, Z4, Z4
	VPXORQ Z5, Z5, Z5
	VPXORQ Z6, Z6, Z6
	LOAD4(64)
	GHASH4(Z0, 320)
	LOAD4(128)
	GHASH4(Z0, 384)
	LOAD4(192)
	GHASH4(Z0, 448)
	LOAD4(0)
	VPXORQ Z13, Z0, Z0
	GHASH4(Z0, 256)
	FOLD4
	REDUCE
	ADDQ $256, CX
	SUBQ $16, BX

rest:
	// Block i of the last n < 16 takes H^(n-i): the table from entry 32-n.
	TESTQ BX, BX
	JZ    done
	MOVQ  $32, AX
	SUBQ  BX, AX
	SHLQ  $4, AX
	ADDQ  DI, AX
	VPXOR X4, X4, X4
	VPXOR X5, X5, X5
	VPXOR X6, X6, X6
	VMOVDQU (CX), X0
	VPSHUFB X15, X0, X0
	VPXOR   X13, X0, X0

restloop:
	VMOVDQU    (AX), X12
	VPCLMULQDQ $0x00, X12, X0, X1
	VPXOR      X1, X4, X4
	VPCLMULQDQ $0x11, X12, X0, X2
	VPXOR      X2, X5, X5
	VPSHUFD    $78, X0, X3
	VPXOR      X0, X3, X3
	VPCLMULQDQ $0x00, 512(AX), X3, X3
	VPXOR      X3, X6, X6
	ADDQ       $16, CX
	ADDQ       $16, AX
	DECQ       BX
	JZ         restdone
	VMOVDQU    (CX), X0
	VPSHUFB    X15, X0, X0
	JMP        restloop

restdone:
	REDUCE

done:
	VPSHUFB X15, X13, X13
	VMOVDQU X13, (SI)
	VZEROUPPER
	RET

// EACH8 applies op with the round key at off(DI) to Y0..Y7.
#define EACH8(op, off) \
	VMOVDQU off(DI), Y12; \
	op      Y12, Y0, Y0; \
	op      Y12, Y1, Y1; \
	op      Y12, Y2, Y2; \
	op      Y12, Y3, Y3; \
	op      Y12, Y4, Y4; \
	op      Y12, Y5, Y5; \
	op      Y12, Y6, Y6; \
	op      Y12, Y7, Y7

#define ROUND(off) EACH8(VAESENC, off)

#define NEXTCTR(R) \
	VPSHUFB Y15, Y14, R; \
	VPADDD  Y13, Y14, Y14

#define XORSTORE(R, off) \
	VPXOR   off(CX), R, R; \
	VMOVDQU R, off(DX)

// func ctr(rk *[15][32]byte, counter *[16]byte, dst, src []byte)
// XORs the whole 16-byte blocks of src with the key stream that starts at
// counter (inc32 between blocks) into dst.
TEXT ·ctr(SB), NOSPLIT, $0-64
	MOVQ rk+0(FP), DI
	MOVQ counter+8(FP), SI
	MOVQ dst_base+16(FP), DX
	MOVQ src_base+40(FP), CX
	MOVQ src_len+48(FP), BX
	SHRQ $4, BX

	VMOVDQU        bswap<>(SB), Y15
	VBROADCASTI128 (SI), Y14
	VPSHUFB        Y15, Y14, Y14
	VPADDD         lane1<>(SB), Y14, Y14
	VMOVDQU        two<>(SB), Y13

	CMPQ BX, $16
	JB   ctrsingles

ctrloop:
	NEXTCTR(Y0)
	NEXTCTR(Y1)
	NEXTCTR(Y2)
	NEXTCTR(Y3)
	NEXTCTR(Y4)
	NEXTCTR(Y5)
	NEXTCTR(Y6)
	NEXTCTR(Y7)
	EACH8(VPXOR, 0)
	ROUND(32)
	ROUND(64)
	ROUND(96)
	ROUND(128)
	ROUND(160)
	ROUND(192)
	ROUND(224)
	ROUND(256)
	ROUND(288)
	ROUND(320)
	ROUND(352)
	ROUND(384)
	ROUND(416)
	EACH8(VAESENCLAST, 448)
	XORSTORE(Y0, 0)
	XORSTORE(Y1, 32)
	XORSTORE(Y2, 64)
	XORSTORE(Y3, 96)
	XORSTORE(Y4, 128)
	XORSTORE(Y5, 160)
	XORSTORE(Y6, 192)
	XORSTORE(Y7, 224)
	ADDQ $256, CX
	ADDQ $256, DX
	SUBQ $16, BX
	CMPQ BX, $16
	JAE  ctrloop

ctrsingles:
	TESTQ BX, BX
	JZ    ctrdone

ctrsingle:
	VPSHUFB     X15, X14, X0
	VPADDD      one<>(SB), X14, X14
	AES1(X0)
	VPXOR       (CX), X0, X0
	VMOVDQU     X0, (DX)
	ADDQ        $16, CX
	ADDQ        $16, DX
	DECQ        BX
	JNZ         ctrsingle

ctrdone:
	VZEROUPPER
	RET
