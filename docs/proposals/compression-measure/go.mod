module kmsfs-compression-measure

go 1.26.0

require github.com/klauspost/compress v1.20.5

require golang.org/x/sys v0.50.0
