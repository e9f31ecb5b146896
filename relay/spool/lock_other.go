//go:build !unix

package spool

import "os"

// lockPath only creates the lock file where flock is unavailable; the relay
// runs on Linux, and this keeps the package building elsewhere for tooling.
func lockPath(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
