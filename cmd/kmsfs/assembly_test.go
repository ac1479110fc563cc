package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoAssemblyInCLI keeps the CLI to flags, daemonizing and logging: a
// volume's key sources, data-key manager, journal and envelope volume are
// built by package volume only, so the lifecycle commands and Go programs
// get the same checks a mount does.
func TestNoAssemblyInCLI(t *testing.T) {
	forbidden := map[string]bool{
		"local.Open": true, "pkcs11.Open": true, "pkcs11.NewLoader": true, "awskms.Open": true,
		"keysource.NewManager": true, "journal.Open": true, "envelope.NewVolume": true,
		"volconf.Load": false, // reading kmsfs.conf to show it (kmsfs trust) is the CLI's
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); ok && forbidden[pkg.Name+"."+sel.Sel.Name] {
				t.Errorf("%s: the CLI calls %s.%s; assemble volumes through package volume", fset.Position(sel.Pos()), pkg.Name, sel.Sel.Name)
			}
			return true
		})
	}
	if checked == 0 {
		t.Fatal("no source files checked")
	}
}
