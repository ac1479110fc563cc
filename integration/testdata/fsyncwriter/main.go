// Command fsyncwriter is the writer process of the integration tests of
// stopping a mount: it writes fixed-size records to a file, fsyncs after
// each, and prints "ack N" once record N's fsync has returned, until its
// standard input closes, a write or fsync fails, or it has written the
// maximum. Then it closes the file and prints "closed" (or "error N: …").
//
// Usage: fsyncwriter FILE RECORD-SIZE MAX-RECORDS
//
// Record N is the first RECORD-SIZE bytes of "record %08d|" repeated
// (integration's fsRecord makes the same bytes).
package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: fsyncwriter FILE RECORD-SIZE MAX-RECORDS")
		os.Exit(2)
	}
	size, err1 := strconv.Atoi(os.Args[2])
	maxN, err2 := strconv.Atoi(os.Args[3])
	if err1 != nil || err2 != nil || size <= 0 || maxN <= 0 {
		fmt.Fprintln(os.Stderr, "fsyncwriter: RECORD-SIZE and MAX-RECORDS must be positive numbers")
		os.Exit(2)
	}
	f, err := os.OpenFile(os.Args[1], os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Println("error -1:", err)
		os.Exit(1)
	}
	var stop atomic.Bool
	go func() {
		io.Copy(io.Discard, os.Stdin)
		stop.Store(true)
	}()
	for n := 0; n < maxN && !stop.Load(); n++ {
		if _, err := f.Write(record(n, size)); err != nil {
			fmt.Printf("error %d: write: %v\n", n, err)
			os.Exit(1)
		}
		if err := f.Sync(); err != nil {
			fmt.Printf("error %d: fsync: %v\n", n, err)
			os.Exit(1)
		}
		fmt.Printf("ack %d\n", n)
	}
	if err := f.Close(); err != nil {
		fmt.Println("error -1: close:", err)
		os.Exit(1)
	}
	fmt.Println("closed")
}

func record(n, size int) []byte {
	unit := fmt.Sprintf("record %08d|", n)
	return bytes.Repeat([]byte(unit), size/len(unit)+1)[:size]
}
