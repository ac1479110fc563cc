module github.com/kmsfs/kmsfs

go 1.26
