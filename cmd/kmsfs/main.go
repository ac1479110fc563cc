// Command kmsfs mounts a cipher dir whose files are encrypted with data keys
// held in a key-management service. The subcommands arrive with issue 4;
// until then it reports its version.
package main

import (
	"fmt"
	"os"
)

const version = "0.1.0-dev"

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "--version" || os.Args[1] == "version") {
		fmt.Println("kmsfs", version)
		return
	}
	fmt.Fprintln(os.Stderr, "kmsfs: no commands yet (see the project's issues); try --version")
	os.Exit(2)
}
