package main

import (
	"bytes"
	"fmt"
	"strings"
)

// vreg is a vector register by number; X, Y and Z name its 128-, 256- and
// 512-bit views, so one variable follows a value through code that works
// on several widths of it.
type vreg int

func (r vreg) X() string { return fmt.Sprintf("X%d", int(r)) }
func (r vreg) Y() string { return fmt.Sprintf("Y%d", int(r)) }
func (r vreg) Z() string { return fmt.Sprintf("Z%d", int(r)) }

// num is a decimal immediate: counts, shifts and sizes.
func num(v int) string { return fmt.Sprintf("$%d", v) }

// sel is a hexadecimal immediate: the selector bits of shuffles and
// carry-less multiplies, which read as bit patterns.
func sel(v int) string { return fmt.Sprintf("$0x%02x", v) }

// mem is the operand off(base).
func mem(off int, base string) string {
	if off == 0 {
		return "(" + base + ")"
	}
	return fmt.Sprintf("%d(%s)", off, base)
}

// sym is the operand name<>(SB) of a file-local data symbol.
func sym(name string) string { return name + "<>(SB)" }

// gen collects the text of the assembly file.
type gen struct{ buf bytes.Buffer }

// op emits one instruction in Go assembler operand order (sources first,
// destination last).
func (g *gen) op(name string, args ...string) {
	if len(args) == 0 {
		fmt.Fprintf(&g.buf, "\t%s\n", name)
		return
	}
	fmt.Fprintf(&g.buf, "\t%-16s %s\n", name, strings.Join(args, ", "))
}

// label starts a basic block.
func (g *gen) label(name string) { fmt.Fprintf(&g.buf, "\n%s:\n", name) }

// comment emits each line as an indented comment.
func (g *gen) comment(lines ...string) {
	for _, l := range lines {
		fmt.Fprintf(&g.buf, "\t// %s\n", l)
	}
}

// text emits lines at the left margin (file comments, directives).
func (g *gen) text(lines ...string) {
	for _, l := range lines {
		fmt.Fprintln(&g.buf, l)
	}
}

// data emits a read-only data symbol made of little-endian quadwords.
func (g *gen) data(name string, qwords ...uint64) {
	for i, q := range qwords {
		fmt.Fprintf(&g.buf, "DATA %s<>+%d(SB)/8, $0x%016x\n", name, 8*i, q)
	}
	fmt.Fprintf(&g.buf, "GLOBL %s<>(SB), RODATA|NOPTR, $%d\n\n", name, 8*len(qwords))
}

// fn starts the function name with its Go signature (as a comment), frame
// size zero and args bytes of arguments.
func (g *gen) fn(name, signature string, args int, doc ...string) {
	fmt.Fprintf(&g.buf, "\n// %s\n", signature)
	for _, l := range doc {
		fmt.Fprintf(&g.buf, "// %s\n", l)
	}
	fmt.Fprintf(&g.buf, "TEXT ·%s(SB), NOSPLIT, $0-%d\n", name, args)
}
