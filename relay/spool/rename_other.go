//go:build !linux

package spool

// publish gives a finished file its name in new/; see rename_linux.go.
func publish(from, to string) error { return publishChecked(from, to) }
