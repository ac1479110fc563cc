// Command vectorgen writes the envelope golden vectors into -out.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/kmsfs/kmsfs/envelope"
	"github.com/kmsfs/kmsfs/envelope/internal/vectorgen"
)

func main() {
	version := flag.Int("version", envelope.Version, "format version of the vectors")
	out := flag.String("out", "", "directory to write the vectors into (default envelope/ + vectorgen.Dir(version))")
	flag.Parse()
	if *out == "" {
		*out = filepath.Join("envelope", vectorgen.Dir(*version))
	}
	m, files, err := vectorgen.Generate(*version)
	if err == nil {
		err = os.MkdirAll(*out, 0o755)
	}
	for name, b := range files {
		if err == nil {
			err = os.WriteFile(filepath.Join(*out, name), b, 0o644)
		}
	}
	if err == nil {
		var j []byte
		j, err = json.MarshalIndent(m, "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(*out, "vectors.json"), append(j, '\n'), 0o644)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "vectorgen:", err)
		os.Exit(1)
	}
	fmt.Printf("vectorgen: wrote %d vectors to %s\n", len(m.Vectors), *out)
}
