module github.com/kmsfs/kmsfs/envelope/internal/vaesgcm/_asm

go 1.26.0
