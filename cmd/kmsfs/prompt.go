package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// promptPassphrase reads a passphrase from the terminal with echo off;
// with confirm it asks twice. It never reads from a pipe: scripts give the
// passphrase through KMSFS_PASSPHRASE or --passphrase-file.
func promptPassphrase(confirm bool) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, errors.New("no terminal to ask for the passphrase: set KMSFS_PASSPHRASE or use --passphrase-file")
	}
	defer tty.Close()
	read := func(label string) ([]byte, error) {
		fmt.Fprint(tty, label)
		fd := int(tty.Fd())
		old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		if err != nil {
			return nil, err
		}
		noEcho := *old
		noEcho.Lflag &^= unix.ECHO
		noEcho.Lflag |= unix.ICANON
		if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
			return nil, err
		}
		defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
		line, err := bufio.NewReader(tty).ReadBytes('\n')
		fmt.Fprintln(tty)
		if err != nil {
			return nil, err
		}
		return bytes.TrimRight(line, "\r\n"), nil
	}
	p, err := read("Passphrase: ")
	if err != nil || !confirm {
		return p, err
	}
	again, err := read("Repeat passphrase: ")
	if err != nil {
		return nil, err
	}
	defer clear(again)
	if !bytes.Equal(p, again) {
		clear(p)
		return nil, errors.New("the passphrases differ")
	}
	return p, nil
}
