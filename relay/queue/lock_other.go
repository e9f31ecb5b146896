//go:build !unix

package queue

// lockDir does nothing where flock is missing; run one relay per directory.
func lockDir(string) (func() error, error) {
	return func() error { return nil }, nil
}
