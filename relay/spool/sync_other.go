//go:build !linux

package spool

import "os"

// fdatasync falls back to a full fsync where fdatasync is not offered; the
// relay runs on Linux, and this keeps the package building elsewhere.
func fdatasync(f *os.File) error { return f.Sync() }
